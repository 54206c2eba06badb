"""Wall-clock speed-up of real early exit over full-depth inference.

The full-depth baseline is the cheapest honest full-depth path, ``model.forward_final``: for the
ResNets the stem, every block and the **last exit head only** (no intermediate heads, no residual
norms), batch by batch, under ``torch.inference_mode`` in eval mode. This is what a plain
(single-exit) deployment of the same network would run, so the speed-up is not inflated by heads
the baseline does not need. Models that do not override ``forward_final`` fall back to the full
multi-exit forward, and the result says which baseline was timed. Both sides run the model and
inputs as given (NCHW for the demo nets): the memory format changes full-depth and early-exit
time by different factors, so a comparison is only fair with one memory format on both sides.

Timing follows the project's rules for benchmarks on shared CPUs: the two sides are interleaved
(A B C C B A ...), each side runs once untimed first, and the median of the per-pair ratios is
reported together with the torch thread count.

Where early blocks are slower per FLOP than late ones (on CPUs, the wide shallow activations of
the first stage), no engine can turn a compute saving into the same wall-clock saving.
:func:`exit_time_shares` measures the time to reach each exit as a share of the full-depth
pass, and each record's ``ideal_wall_speedup`` is the speed-up of the ideal engine, which
replays the pass's network calls with nothing between them: the best any engine could do on
this hardware for the same exits and batches.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from optdepth.data.loader import Split
from optdepth.models.base import MultiExitModel, inference
from optdepth.offline.prices import LatencyProfile
from optdepth.online.engine import (
    check_batch_size,
    early_exit_predict,
    replay_schedule,
    split_images,
)
from optdepth.stopping import StoppingPolicy

log = logging.getLogger(__name__)


def baseline_kind(model: MultiExitModel) -> str:
    """"final_head" when the model runs full depth with its last head only, else "all_exits"."""
    overridden = type(model).forward_final is not MultiExitModel.forward_final
    return "final_head" if overridden else "all_exits"


def full_depth_predict(model: MultiExitModel, data: Split | Tensor, batch_size: int = 256, *,
                       all_exits: bool = False) -> np.ndarray:
    """(N,) int64 predictions of the last exit at full depth (eval mode, inference mode).

    Args:
        model: the multi-exit model.
        data: a Split or an images tensor (N, C, H, W).
        batch_size: samples per batch.
        all_exits: run the full multi-exit forward ``model(x)`` (every head and residual norm)
            instead of the final-head baseline.
    """
    batch_size = check_batch_size(batch_size)
    images, _ = split_images(data)
    if images.shape[0] == 0:
        raise ValueError("the data is empty (N=0 samples): nothing to predict")
    model.check_input(images)
    forward = (lambda x: model(x).logits[-1]) if all_exits else model.forward_final
    device = next(model.parameters()).device
    with inference(model):
        out = [forward(images[s:s + batch_size].to(device, non_blocking=True)).argmax(-1).cpu()
               for s in range(0, images.shape[0], batch_size)]
    return torch.cat(out).numpy().astype(np.int64)


def _timed(fn: Callable[[], Any], device: torch.device | None = None) -> float:
    start = time.perf_counter()
    fn()
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels are asynchronous: wait before reading the clock
    return time.perf_counter() - start


def exit_time_shares(model: MultiExitModel, images: Tensor, repeats: int = 5) -> np.ndarray:
    """(T,) time to reach and evaluate each exit, as a share of the final-head full-depth pass.

    Times the stem and each segment (``model.step``) on one batch (``images``, (B, C, H, W),
    the timed batch size), median of ``repeats`` runs each, in eval and inference mode. Compare
    it with ``model.exit_costs()`` (the FLOP shares): a ratio above 1 at early exits means
    early blocks cost more time per FLOP than the net's average.

    Raises:
        ValueError: no images. DataError: images of the wrong shape for the model.
    """
    if images.shape[0] == 0:
        raise ValueError("exit_time_shares needs at least one image (got a batch of 0)")
    model.check_input(images)
    device = next(model.parameters()).device
    images = images.to(device)

    def median_time(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        return statistics.median(_timed(fn, device) for _ in range(repeats))

    with inference(model):
        states = [model.stem(images)]
        for t in range(model.num_exits):
            states.append(model.step(states[-1], t).state)
        segments = [median_time(lambda: model.stem(images))]
        segments += [median_time(lambda t=t: model.step(states[t], t))
                     for t in range(model.num_exits)]
        full = median_time(lambda: model.forward_final(images))
    return np.cumsum(segments)[1:] / full


def measure_latency_profile(model: MultiExitModel, data: Split | Tensor, batch_size: int = 256,
                            repeats: int = 5) -> LatencyProfile:
    """The time to reach each exit of ``model`` on its device at ``batch_size``
    (:func:`exit_time_shares` on the first ``batch_size`` samples of ``data``), as a
    :class:`~optdepth.offline.prices.LatencyProfile` that prices exits in seconds.

    Raises:
        ValueError: a bad batch size or repeats, or no data. DataError: images of the wrong
            shape for the model.
    """
    batch_size = check_batch_size(batch_size)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    images, _ = split_images(data)
    if images.shape[0] < batch_size:
        raise ValueError(f"a latency profile at batch size {batch_size} needs at least"
                         f" {batch_size} samples, got {images.shape[0]}")
    shares = exit_time_shares(model, images[:batch_size], repeats)
    return LatencyProfile(getattr(model, "arch_name", None),
                          tuple(float(c) for c in model.exit_costs()), batch_size,
                          str(next(model.parameters()).device), torch.get_num_threads(),
                          tuple(float(s) for s in shares))


def interleaved_times(sides: Mapping[Any, Callable[[], Any]], repeats: int,
                      device: torch.device | None = None) -> dict[Any, list[float]]:
    """Seconds of each side's run, ``repeats`` rounds in which every side runs once.

    Odd rounds run the sides in reverse order: a side that always ran late in a round would be
    favoured (or penalised) by what ran before it, through caches and clock speeds. Entry r of
    every list comes from round r, so two sides are compared round by round (:func:`paired`).
    Warm the sides up first: the first round is timed like the others.
    """
    times: dict[Any, list[float]] = {name: [] for name in sides}
    for round_index in range(repeats):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(_timed(sides[name], device))
    return times


def paired(times: Mapping[Any, list[float]], numerator: Any, denominator: Any) -> float | None:
    """Median over rounds of numerator time / denominator time (None if a side is missing)."""
    if numerator not in times or denominator not in times:
        return None
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


ENGINE_PARTS = ("stem", "segments", "decide", "retire", "regroup")


def engine_time_breakdown(model: MultiExitModel, policy: StoppingPolicy, data: Split | Tensor,
                          batch_size: int = 256, *, refill: bool = True) -> dict[str, float]:
    """Where one early-exit pass spends its time, from the engine's profiler ranges.

    Runs :func:`early_exit_predict` once untimed, then once under :mod:`torch.profiler` (CPU)
    and sums the inclusive CPU time of the ``optdepth::*`` ranges: ``stem``, ``segments`` (all
    ``optdepth::segment_{t}``: blocks, exit heads and residual norms), ``decide`` (features and
    policy), ``retire`` (selecting the continuing samples) and ``regroup`` (gathering a
    batch from the queues, which copies the continuing states). The profiler's own overhead
    inflates code with many small operators, so read the shares, not the absolute times, and
    time speed-ups with :func:`measure_wall_speedups`.
    On CUDA the network runs asynchronously and its time lands in ``decide``, which waits for it.

    Returns:
        seconds per part, ``other`` (the rest of the pass: Python scheduling), ``total``
        (the pass's wall time under the profiler), and ``share_<part>`` = part / total.
    """
    early_exit_predict(model, policy, data, batch_size, refill=refill)  # warm-up; checks inputs
    seconds = dict.fromkeys(ENGINE_PARTS, 0.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        total = _timed(lambda: early_exit_predict(model, policy, data, batch_size, refill=refill))
    for event in prof.key_averages():
        if event.key.startswith("optdepth::"):
            part = event.key.removeprefix("optdepth::")
            part = "segments" if part.startswith("segment_") else part
            seconds[part] += event.cpu_time_total * 1e-6  # microseconds
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    seconds["total"] = total
    return {**seconds, **{f"share_{k}": v / total for k, v in seconds.items() if k != "total"}}


def measure_wall_speedups(model: MultiExitModel, policies: Mapping[str, StoppingPolicy],
                          data: Split | Tensor, batch_size: int = 256, repeats: int = 5, *,
                          refill: bool = True, all_exits: bool = True) -> dict[str, dict[str, Any]]:
    """Time full-depth inference against early exit under several policies, interleaved.

    The sides run in turn, ``repeats`` times, after one untimed warm-up run each: the
    final-head baseline, the full multi-exit forward ``model(x)``, early exit under each
    policy, and each policy's ideal engine (:func:`~optdepth.online.engine.replay_schedule`:
    the network calls its pass made, with no decisions, copies or scheduling between them).
    Each ratio is the median over repeats of the per-round ratio of two sides' times, so every
    ratio compares runs made in the same round; odd rounds run the sides in reverse order.

    Args:
        model: the multi-exit model.
        policies: name -> policy fitted for this model (see :func:`early_exit_predict`).
        data: the split to time (the test split, for the demo).
        batch_size: samples per network call on every side.
        repeats: timed runs of each side.
        refill: passed to :func:`early_exit_predict`.
        all_exits: also time the full multi-exit forward ``model(x)`` (one more side).

    Returns:
        name -> dict: ``wall_speedup`` (against the final-head baseline),
        ``wall_speedup_all_exits`` (against ``model(x)``; None unless ``all_exits``), median
        seconds per pass ``full_depth_s``, ``all_exits_s``, ``early_exit_s`` (and the
        ``repeats`` rounds' own seconds, ``full_depth_round_s`` and ``early_exit_round_s``, in
        round order, to pair policies round by round); ``mean_compute``,
        ``compute_speedup`` (1 / mean compute), ``wall_over_compute``; ``ideal_engine_s``
        and ``ideal_wall_speedup`` (the ideal engine's time and speed-up over the baseline:
        what no engine can beat on this hardware), ``engine_efficiency`` (ideal engine time /
        early-exit time: the share of the ideal engine's speed-up the real one keeps) and
        ``exit_time_share`` (T, :func:`exit_time_shares`);
        ``accuracy_full_depth`` and ``accuracy_early_exit`` (None without labels); ``baseline``, ``threads``,
        ``batch_size``, ``refill``, ``repeats``, ``n_samples``.
    """
    batch_size = check_batch_size(batch_size)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    images, labels = split_images(data)
    sides = {"full_depth": lambda: full_depth_predict(model, data, batch_size)}
    if all_exits:
        sides["all_exits"] = lambda: full_depth_predict(model, data, batch_size, all_exits=True)
    for name, policy in policies.items():
        sides[name] = (lambda p=policy: early_exit_predict(model, p, data, batch_size,
                                                           refill=refill))
    outputs = {name: fn() for name, fn in sides.items()}  # warm-up; validates every input
    for name in policies:  # the ideal engine of each pass: its network calls, nothing else
        sides[IDEAL, name] = replay_schedule(model, outputs[name].schedule, images[:batch_size])
        sides[IDEAL, name]()  # warm-up
    shares = exit_time_shares(model, images[:batch_size], repeats)
    times = interleaved_times(sides, repeats, next(model.parameters()).device)
    full_pred = outputs["full_depth"]
    common = {"accuracy_full_depth": None if labels is None else float((full_pred == labels).mean()),
              "full_depth_s": statistics.median(times["full_depth"]),
              "full_depth_round_s": times["full_depth"],
              "all_exits_s": statistics.median(times["all_exits"]) if all_exits else None,
              "baseline": baseline_kind(model), "threads": torch.get_num_threads(),
              "batch_size": batch_size, "refill": refill, "repeats": repeats,
              "n_samples": int(len(full_pred)), "exit_time_share": shares.tolist()}
    return {name: _speedup_record(times, name, outputs[name], common) for name in policies}


#: Key of a policy's ideal-engine side in the timing loop: (IDEAL, name) cannot clash with a name.
IDEAL = "ideal engine"


def _speedup_record(times: dict[Any, list[float]], name: str, early: Any,
                    common: dict[str, Any]) -> dict[str, Any]:
    wall, compute_speedup = paired(times, "full_depth", name), 1.0 / early.mean_compute
    log.info("%s: wall speed-up %.2fx (compute speed-up %.2fx, %d threads, batch %d)", name,
             wall, compute_speedup, common["threads"], common["batch_size"])
    return {"wall_speedup": wall, "wall_speedup_all_exits": paired(times, "all_exits", name),
            "early_exit_s": statistics.median(times[name]), "mean_compute": early.mean_compute,
            "compute_speedup": compute_speedup, "wall_over_compute": wall / compute_speedup,
            "early_exit_round_s": times[name],
            "ideal_engine_s": statistics.median(times[IDEAL, name]),
            "ideal_wall_speedup": paired(times, "full_depth", (IDEAL, name)),
            "engine_efficiency": paired(times, (IDEAL, name), name),
            "accuracy_early_exit": early.accuracy, **common}


__all__ = ["ENGINE_PARTS", "baseline_kind", "engine_time_breakdown", "exit_time_shares",
           "full_depth_predict", "interleaved_times", "measure_latency_profile",
           "measure_wall_speedups", "paired"]
