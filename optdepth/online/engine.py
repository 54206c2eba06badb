"""Real early exit: run a multi-exit network block by block and retire samples as they stop.

:func:`early_exit_predict` runs the stem, then segment after segment (``model.step``) on the
samples that are still running only. After each exit it computes the policy's features online
with the very function the offline traces use (:func:`optdepth.traces.step_features`), asks the
policy (``policy.stop_at(features_prefix, t)``, with each sample's feature history), records the
stopped samples' predictions and drops them from the state tensor: no later block runs for them.
By default (``refill=True``) the samples that go on wait for segment t + 1 until a full batch of
them has gathered (from later input batches too), so deep segments do not run on a few samples
at a time; ``refill=False`` runs each input batch alone, shrinking as its samples stop.

Why online equals offline. In eval mode every layer acts on each sample alone (BatchNorm uses
its running statistics), the features come from one row-wise function, and the decision from
the same policy code. What is left is floating-point summation order, and we pin it:

* on oneDNN (the CPU build here) a sample's logits are bitwise equal for every batch size >= 2,
  but a batch of one takes other kernels (up to 2e-6 off), so a lone sample runs as a pair;
* numpy reduces a single row in another order than a batch (1e-17 off), so
  :class:`~optdepth.offline.exit_policies.ExitPolicy` also decides a lone sample as a pair.

The tests check exits and predictions for exact equality with :func:`offline_exits` on traces,
for every policy and several batch sizes (on the real ResNet-20 traces: all 10,000 test
samples, every policy, and the online features bitwise equal to the trace file's). On other
hardware, kernels whose summation order changes with batch size could move a feature by a last
bit, which can only flip a decision whose score lies within that rounding of its threshold (a
tie); ``record_features=True`` returns the online features so such a case can be inspected.
Plain :class:`~optdepth.stopping.StoppingPolicy` objects (not wrapped in ``ExitPolicy``) get
the same features but not the pairing of lone samples in numpy.

Where the time goes. Under :mod:`torch.profiler` the engine's work shows up in labelled ranges:
``optdepth::stem``, ``optdepth::segment_{t}`` (the blocks of segment t, its exit head and the
residual norms), ``optdepth::decide`` (features and the policy's decision),
``optdepth::retire`` (selecting the continuing samples) and ``optdepth::regroup``
(gathering a batch from the queue: the one copy of each continuing sample's state);
:func:`optdepth.online.engine_time_breakdown` sums them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.profiler import record_function

from optdepth.data.loader import Split
from optdepth.data.source import BatchSource
from optdepth.models.base import MultiExitModel, StepOutput, inference
from optdepth.offline.exit_policies import ExitPolicy, TraceSource, check_traces
from optdepth.stopping import NotFittedError, StoppingPolicy
from optdepth.traces import FEATURES, Traces, step_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EarlyExitResult:
    """Per-sample outcome of early exit.

    Attributes:
        predictions: (N,) int64 predicted class (argmax of the chosen exit).
        exit_index: (N,) int64 exit each sample stopped at, in [0, T - 1].
        compute: (N,) float64 compute used, ``exit_costs[exit_index]`` (fraction of full depth).
        probs: (N, C) float32 class probabilities of the chosen exit (None offline).
        exit_costs: (T,) float64 cumulative compute fraction of each exit.
        labels: (N,) int64 true classes when known (a Split or traces), else None.
        features: (N, T, F) float32 features computed online (NaN past a sample's exit),
            only with ``record_features=True``.
        schedule: the network calls made, in order: ``(-1, b)`` the stem on b inputs,
            ``(t, k)`` segment t on k samples (None offline). :func:`replay_schedule` runs the
            same calls with nothing between them: the ideal engine for this pass.
    """

    predictions: np.ndarray
    exit_index: np.ndarray
    compute: np.ndarray
    probs: np.ndarray | None
    exit_costs: np.ndarray
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    schedule: tuple[tuple[int, int], ...] | None = None

    @property
    def mean_compute(self) -> float:
        """Mean compute per sample (fraction of full depth)."""
        return float(self.compute.mean())

    @property
    def accuracy(self) -> float | None:
        """Fraction of correct predictions (None without labels)."""
        if self.labels is None:
            return None
        return float((self.predictions == self.labels).mean())


def check_policy(policy: StoppingPolicy, source: TraceSource, what: str) -> None:
    """Raise a clear error unless ``policy`` is fitted for the network described by ``source``.

    Raises:
        NotFittedError: the policy was never fitted.
        ValueError: it was fitted for another number of exits or features, or another model.
    """
    if not isinstance(policy, StoppingPolicy):
        raise ValueError(f"policy must be a fitted optdepth.stopping.StoppingPolicy "
                         f"(e.g. from fit_exit_policy), got {type(policy).__name__}")
    if policy.n_steps_ is None:
        raise NotFittedError(f"{type(policy).__name__} is not fitted; fit it on calibration "
                             "traces first (fit_exit_policy or policy.fit)")
    if policy.n_steps_ != source.num_exits:
        raise ValueError(f"the policy was fitted for a network with {policy.n_steps_} exits but "
                         f"{what} has {source.num_exits}; fit it on traces of this model")
    if policy.n_features_ != len(source.feature_names):
        raise ValueError(f"the policy was fitted on {policy.n_features_} features but {what} "
                         f"provides {len(source.feature_names)} ({', '.join(source.feature_names)})")
    fitted_for = getattr(policy, "source", None)
    if isinstance(fitted_for, TraceSource):
        fitted_for.check_matches(source, "the policy", what)


def model_source(model: MultiExitModel) -> TraceSource:
    """The :class:`TraceSource` a policy must match to run on ``model``."""
    costs = model.exit_costs().numpy()
    return TraceSource(getattr(model, "arch_name", None), tuple(float(c) for c in costs))


def offline_exits(policy: StoppingPolicy, traces: Traces) -> EarlyExitResult:
    """Apply a fitted policy to exit traces: what early exit gives, without running the net.

    Args:
        policy: fitted policy (:class:`ExitPolicy` or any StoppingPolicy on FEATURES).
        traces: traces of the network the policy was fitted for.

    Returns:
        :class:`EarlyExitResult` (``probs`` None) from ``policy.stop_times(traces.features)``.
    """
    check_traces(traces, "the traces")
    check_policy(policy, TraceSource.of_traces(traces), "the traces")
    times = policy.stop_times(np.asarray(traces.features, dtype=np.float64)).astype(np.int64)
    costs = np.asarray(traces.exit_costs, dtype=np.float64)
    rows = np.arange(len(times))
    predictions = traces.probs[rows, times].argmax(-1).astype(np.int64)
    return EarlyExitResult(predictions, times, costs[times], None, costs,
                           np.asarray(traces.labels, dtype=np.int64))


def split_images(data: Split | Tensor) -> tuple[Tensor, np.ndarray | None]:
    if isinstance(data, Split):
        return data.images, data.labels.numpy().astype(np.int64)
    if isinstance(data, Tensor):
        return data, None
    raise ValueError(f"data must be an optdepth.data.Split or an images tensor (N, C, H, W), "
                     f"got {type(data).__name__}")


class _Inputs:
    """The engine's input batches, in order, from an images tensor or any batch source.

    An in-memory tensor is sliced; any other :class:`~optdepth.data.source.BatchSource` (an
    on-disk ImageFolder split, say) is streamed batch by batch, each checked as it arrives, so
    a split need not fit in memory. ``labels`` holds the labels seen so far (None for a bare
    tensor).
    """

    def __init__(self, model: MultiExitModel, data: Any, batch_size: int) -> None:
        if isinstance(data, Split | Tensor):
            images, labels = split_images(data)
            if images.dim() >= 1 and images.shape[0] == 0:
                raise ValueError("the data is empty (N=0 samples): nothing to predict")
            model.check_input(images)
            model.check_finite(images)
            self.n = images.shape[0]
            self._batches = ((images[s:s + batch_size], None)
                             for s in range(0, self.n, batch_size))
            self.labels = labels
        elif hasattr(data, "batches") and hasattr(data, "__len__"):
            self.n = len(data)
            if self.n == 0:
                raise ValueError("the data is empty (N=0 samples): nothing to predict")
            self._batches = iter(data.batches(batch_size))
            self.labels = np.empty(self.n, dtype=np.int64)
        else:
            raise ValueError(f"data must be a batch source (an optdepth.data.Split, an ImageFolder"
                             f" split) or an images tensor (N, C, H, W), got {type(data).__name__}")
        self.model, self.fed = model, 0

    def next(self) -> Tensor:
        """The next input batch (b, C, H, W); ValueError when the source runs dry early."""
        try:
            images, labels = next(self._batches)
        except StopIteration:
            raise ValueError(f"the batch source yielded {self.fed} samples but has length"
                             f" {self.n}") from None
        if labels is not None:  # a streamed source: check each batch, keep its labels
            self.model.check_input(images)
            self.model.check_finite(images)
            self.labels[self.fed:self.fed + len(labels)] = labels.numpy()
        self.fed += images.shape[0]
        return images


def check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@dataclass
class _Outputs:
    """Per-sample outputs of one split, filled as samples stop (internal, mutable)."""

    predictions: np.ndarray
    exit_index: np.ndarray
    probs: np.ndarray
    features: np.ndarray | None
    schedule: list[tuple[int, int]]


def _nhwc(state: Tensor) -> bool:
    """Whether ``state`` is a channels-last 4-D tensor (contiguous only as NHWC)."""
    return state.dim() == 4 and not state.is_contiguous() \
        and state.is_contiguous(memory_format=torch.channels_last)


def gather_rows(parts: list[tuple[Tensor, Tensor | None]]) -> Tensor:
    """The chosen rows of several states stacked along dim 0 into one new tensor.

    Args:
        parts: (state (n_i, ...), index (k_i,) int64 rows of it, or None for all of them).

    Returns:
        (sum k_i, ...) tensor; every row is copied once, straight into place (no intermediate
        ``state[index]``). ``index_select`` is the fast row copy (8x faster than ``state[index]``
        on CPU) but returns NCHW, which would make every later convolution reorder its input,
        so a channels-last state is gathered on its NHWC view and stays channels-last.
    """
    first = parts[0][0]
    channels_last = _nhwc(first)
    view = (lambda x: x.permute(0, 2, 3, 1)) if channels_last else (lambda x: x)
    sizes = [state.shape[0] if index is None else len(index) for state, index in parts]
    out = torch.empty((sum(sizes), *view(first).shape[1:]), dtype=first.dtype, device=first.device)
    start = 0
    for (state, index), size in zip(parts, sizes, strict=True):
        rows = out[start:start + size]
        if index is None:
            rows.copy_(view(state))
        else:
            torch.index_select(view(state), 0, index, out=rows)
        start += size
    return out.permute(0, 3, 1, 2) if channels_last else out


@dataclass(frozen=True)
class _Cohort:
    """Samples waiting to run the same segment.

    Attributes:
        rows: (k,) sample indices into the data.
        state: (n, ...) network state holding theirs: all of it when ``index`` is None, else
            its rows ``index`` (k,). Retiring samples only narrows the index; the states are
            copied once, when a batch is gathered for the next segment (:meth:`merge`).
        history: (k, T, F) float32 features of the exits passed so far.
        previous: (k,) prediction of the previous exit (None before the first exit).
    """

    rows: np.ndarray
    state: Tensor
    history: np.ndarray
    previous: np.ndarray | None
    index: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, keep: np.ndarray) -> _Cohort:
        """The sub-cohort at the (k,) bool mask ``keep`` (its state is not copied)."""
        index = np.flatnonzero(keep)
        index_t = torch.from_numpy(index).to(self.state.device)
        return _Cohort(self.rows[index], self.state, self.history[index],
                       None if self.previous is None else self.previous[index],
                       index_t if self.index is None else self.index[index_t])

    def split(self, n: int) -> tuple[_Cohort, _Cohort]:
        """The first ``n`` samples and the rest (views, no state copy)."""
        prev = (None, None) if self.previous is None else (self.previous[:n], self.previous[n:])
        if self.index is None:
            states, index = (self.state[:n], self.state[n:]), (None, None)
        else:
            states, index = (self.state, self.state), (self.index[:n], self.index[n:])
        return (_Cohort(self.rows[:n], states[0], self.history[:n], prev[0], index[0]),
                _Cohort(self.rows[n:], states[1], self.history[n:], prev[1], index[1]))

    @staticmethod
    def merge(cohorts: list[_Cohort]) -> _Cohort:
        """One gathered cohort (``index`` None) of every sample of ``cohorts``, in order."""
        if len(cohorts) == 1 and cohorts[0].index is None:
            return cohorts[0]
        previous = [c.previous for c in cohorts]
        return _Cohort(np.concatenate([c.rows for c in cohorts]),
                       gather_rows([(c.state, c.index) for c in cohorts]),
                       np.concatenate([c.history for c in cohorts]),
                       None if previous[0] is None else np.concatenate(previous))


def _range(name: str) -> AbstractContextManager[Any]:
    """A :mod:`torch.profiler` range while a profiler records, else nothing: the engine opens
    five per segment, and an idle ``record_function`` still costs a few microseconds each."""
    return record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


def _as_pair(x: Tensor) -> Tensor:
    """A lone sample runs as a pair: on oneDNN, batch size 1 selects other convolution kernels,
    whose results differ from batched ones in the last bits (measured: up to 2e-6 in the
    logits). Running it twice keeps each sample's numbers those of the batched trace pass."""
    return torch.cat([x, x]) if x.shape[0] == 1 else x


def _stem(model: MultiExitModel, x: Tensor) -> Tensor:
    return model.stem(_as_pair(x))[: x.shape[0]]


def _step(model: MultiExitModel, state: Tensor, t: int) -> StepOutput:
    n = state.shape[0]
    out = model.step(_as_pair(state), t)
    if n > 1:
        return out
    return StepOutput(out.state[:n], out.logits[:n], out.residual_norms[:, :n],
                      out.state_norms[:, :n])


def _decide(policy: StoppingPolicy, cohort: _Cohort, step: StepOutput, t: int,
            costs: np.ndarray, out: _Outputs) -> tuple[np.ndarray, np.ndarray]:
    """Features of exit t, the policy's decision, the stopped samples' outputs recorded.

    Returns:
        stop: (k,) bool, the samples that exit at t. predicted: (k,) int64 argmax of exit t.
    """
    probs = step.logits.softmax(-1).cpu().numpy()  # (k, C) float32, as in the traces
    relative = step.residual_norms[-1].cpu().numpy() / np.maximum(
        step.state_norms[-1].cpu().numpy(), 1e-12)
    history = cohort.history
    history[:, t] = step_features(probs, cohort.previous, relative, costs[t])
    if out.features is not None:
        out.features[cohort.rows, t] = history[:, t]
    stop = (np.ones(len(cohort), dtype=bool) if t == len(costs) - 1
            else np.asarray(policy.stop_at(history[:, : t + 1], t), dtype=bool))
    predicted = probs.argmax(-1)
    rows = cohort.rows[stop]
    out.exit_index[rows], out.probs[rows], out.predictions[rows] = t, probs[stop], predicted[stop]
    return stop, predicted


def _advance(model: MultiExitModel, policy: StoppingPolicy, cohort: _Cohort, t: int,
             costs: np.ndarray, out: _Outputs) -> _Cohort | None:
    """Run segment t on a cohort, record the samples that stop, return the others (or None)."""
    with _range(f"optdepth::segment_{t}"):
        step = _step(model, cohort.state, t)
    with _range("optdepth::decide"):
        stop, predicted = _decide(policy, cohort, step, t, costs, out)
    if stop.all():
        return None
    running = _Cohort(cohort.rows, step.state, cohort.history, predicted)
    if not stop.any():
        return running
    with _range("optdepth::retire"):
        return running.take(~stop)  # retired: no later block; the state is copied at regroup


def _next_segment(sizes: list[int], batch_size: int, inputs_left: bool, refill: bool) -> int | None:
    """Which queue runs next: -1 feeds a new input batch, None means done.

    With ``refill``, a segment runs once batch_size samples wait for it (deepest first), so
    every network call but the final flush gets a full batch. Without it, each input batch
    runs to completion (shallowest queue first) before the next one enters.
    """
    ready = [t for t, size in enumerate(sizes) if size >= batch_size]
    if refill and ready:
        return ready[-1]
    if inputs_left and (refill or not any(sizes)):
        return -1
    waiting = [t for t, size in enumerate(sizes) if size > 0]
    return waiting[0] if waiting else None


def _first_batch(queue: list[_Cohort], batch_size: int) -> tuple[list[_Cohort], list[_Cohort]]:
    """The queue's first ``batch_size`` samples (as cohorts) and the rest, which waits: the
    cohort that crosses the boundary is split, and nothing is copied."""
    batch, room = [], batch_size
    for i, cohort in enumerate(queue):
        if room == 0:
            return batch, queue[i:]
        if len(cohort) > room:
            head, tail = cohort.split(room)
            return [*batch, head], [tail, *queue[i + 1:]]
        batch.append(cohort)
        room -= len(cohort)
    return batch, []


def _run(model: MultiExitModel, policy: StoppingPolicy, inputs: _Inputs, costs: np.ndarray,
         out: _Outputs, batch_size: int, refill: bool) -> None:
    """Schedule every sample through the segments until it stops."""
    n, n_exits = inputs.n, len(costs)
    queues: list[list[_Cohort]] = [[] for _ in range(n_exits)]
    device = next(model.parameters()).device  # input batches move there; decisions on the CPU
    while (t := _next_segment([sum(map(len, q)) for q in queues], batch_size, inputs.fed < n,
                              refill)) is not None:
        if t == -1:
            start = inputs.fed
            batch = inputs.next()
            rows = np.arange(start, inputs.fed)
            history = np.empty((len(rows), n_exits, len(FEATURES)), dtype=np.float32)
            with _range("optdepth::stem"):
                queues[0].append(_Cohort(rows, _stem(model, batch.to(device, non_blocking=True)),
                                         history, None))
            out.schedule.append((-1, len(rows)))
            continue
        with _range("optdepth::regroup"):
            batch, queues[t] = _first_batch(queues[t], batch_size)
            cohort = _Cohort.merge(batch)
        out.schedule.append((t, len(cohort)))
        survivors = _advance(model, policy, cohort, t, costs, out)
        if survivors is not None:
            queues[t + 1].append(survivors)


def early_exit_predict(model: MultiExitModel, policy: StoppingPolicy, data: BatchSource | Tensor,
                       batch_size: int = 256, *, refill: bool = True,
                       record_features: bool = False) -> EarlyExitResult:
    """Predict with real early exit: each sample runs only up to the exit its policy picks.

    Args:
        model: a multi-exit model (run in eval mode; its mode is restored afterwards).
        policy: a policy fitted on this model's traces (:func:`fit_exit_policy`, or any
            :class:`~optdepth.stopping.StoppingPolicy` fitted on the trace FEATURES).
        data: any batch source (an in-memory :class:`~optdepth.data.Split`, an on-disk
            ImageFolder split, streamed batch by batch) or an images tensor (N, C, H, W).
        batch_size: samples per network call (at most).
        refill: keep batches full: samples that continue past exit t wait until
            ``batch_size`` of them (from later input batches too) are ready for segment t + 1.
            With False each input batch runs alone and shrinks as its samples stop (the
            latency-bound serving case). Results are identical either way.
        record_features: also return the online features (N, T, F), for inspection.

    Returns:
        :class:`EarlyExitResult` with per-sample prediction, exit index and compute.

    Raises:
        ValueError: batch size < 1, empty data, or a policy fitted for another network
            (different number of exits or features, another architecture).
        DataError: images of the wrong shape for the model.
    """
    batch_size = check_batch_size(batch_size)
    inputs = _Inputs(model, data, batch_size)
    source = model_source(model)
    check_policy(policy, source, f"the model ({source.arch or type(model).__name__})")
    costs = np.asarray(source.exit_costs, dtype=np.float32)
    n = inputs.n
    out = _Outputs(np.empty(n, np.int64), np.empty(n, np.int64),
                   np.empty((n, model.num_classes), np.float32),
                   np.full((n, len(costs), len(FEATURES)), np.nan, np.float32)
                   if record_features else None, [])
    with inference(model):
        _run(model, policy, inputs, costs, out, batch_size, refill)
    costs64 = costs.astype(np.float64)
    return EarlyExitResult(out.predictions, out.exit_index, costs64[out.exit_index], out.probs,
                           costs64, inputs.labels, out.features, tuple(out.schedule))


def replay_schedule(model: MultiExitModel, schedule: tuple[tuple[int, int], ...],
                    images: Tensor) -> Callable[[], None]:
    """The ideal engine of one early-exit pass: the same network calls, with nothing between.

    Args:
        model: the multi-exit model the pass ran on.
        schedule: the pass's :attr:`EarlyExitResult.schedule`.
        images: (B, C, H, W) inputs; B must be at least the largest call of the schedule.

    Returns:
        A function that makes the pass's calls back to back (the stem on the first b images,
        segment t on the first k rows of the state these images reach at exit t), in eval and
        inference mode, with no decisions, copies or scheduling: timing it gives the time an
        engine with no overhead would take for this schedule. The states are computed here,
        once, so the function times the network alone.

    Raises:
        ValueError: an empty schedule, a segment outside the model, or too few images.
    """
    if not schedule:
        raise ValueError("the schedule is empty: pass an EarlyExitResult.schedule from"
                         " early_exit_predict")
    largest = max(k for _, k in schedule)
    if images.shape[0] < largest:
        raise ValueError(f"the schedule runs batches of up to {largest} samples but only"
                         f" {images.shape[0]} images were given")
    if any(not -1 <= t < model.num_exits for t, _ in schedule):
        raise ValueError(f"the schedule has segments outside the model's {model.num_exits}"
                         " exits: it comes from another model")
    model.check_input(images)
    device = next(model.parameters()).device
    images = images[:largest].to(device)
    with inference(model):
        states = [_stem(model, images)]
        for t in range(model.num_exits - 1):
            states.append(_step(model, states[-1], t).state)

    def replay() -> None:
        with inference(model):
            for t, k in schedule:
                if t == -1:
                    _stem(model, images[:k])
                else:
                    _step(model, states[t][:k], t)

    return replay


__all__ = ["EarlyExitResult", "ExitPolicy", "check_policy", "early_exit_predict",
           "model_source", "offline_exits", "replay_schedule"]
