"""Multi-exit ResNet-50 on synthetic ImageNet-sized input: training throughput and early exit.

Two measurements, each as medians of interleaved repeats (A B C A B C ...):

1. **Training throughput** (images/s) of the multi-exit torchvision ResNet-50 (an exit after
   every block, 16 exits) with the multi-exit loss alone (``beta = 0``) and with L_depth
   (``beta > 0``), plus torchvision's single-exit ResNet-50 as a reference. The L_depth
   overhead is the median over rounds of time(L_depth) / time(no L_depth) - 1 (target:
   <= 10%). On CUDA: bf16 autocast and channels-last, as the trainer does.
2. **Early-exit inference** at batch 256 with :func:`optdepth.online.measure_wall_speedups`
   (full-depth final-head baseline, the full multi-exit forward, the real early-exit engine).
   The network is untrained and the input random, so no policy has anything to learn: the
   policy is a per-exit threshold on the max-probability feature, set on the traces of the
   timed images so that an equal share of the samples leaves at each exit (a fixed, uniform
   exit distribution; mean compute = mean exit cost). The speed-up depends on how many samples
   leave where, not on which, so this times the engine for that exit distribution. Inference
   runs in float32 (no autocast, default memory format) on every side.

On one H100/H200 the defaults finish in about 1-2 minutes. On a CPU use a small input::

    python benchmarks/bench_imagenet_gpu.py                        # cuda, 224x224, batch 256
    python benchmarks/bench_imagenet_gpu.py --device cpu --image-size 64 --batch-size 16 \\
        --infer-samples 512 --steps 3 --repeats 3 --threads 2

Writes ``benchmarks/results/bench_imagenet_gpu.json`` (``--out``), recording the device, the
thread count and every per-repeat time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from common import set_threads, write_result

from optdepth.data.loader import Split
from optdepth.losses import create_regularizer, multi_exit_cross_entropy
from optdepth.models import create_model
from optdepth.offline import collect_traces
from optdepth.online import measure_wall_speedups
from optdepth.stopping import StoppingPolicy

log = logging.getLogger("bench_imagenet_gpu")


class UniformExitPolicy(StoppingPolicy):
    """Per-exit thresholds on one feature so that an equal share of samples leaves at each exit.

    ``fit`` walks the exits in order: at exit t it stops the 1 / (T - t) of the still-running
    samples with the largest feature value, so each exit takes 1 / T of them.
    """

    name = "uniform_exits"

    def __init__(self, feature: int = 0) -> None:
        super().__init__()
        self.feature = feature
        self.thresholds_: np.ndarray | None = None

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        values = features[:, :, self.feature]  # (N, T)
        n_steps = values.shape[1]
        running = np.ones(len(values), dtype=bool)
        self.thresholds_ = np.full(n_steps, np.inf)
        for t in range(n_steps - 1):
            share = 1.0 / (n_steps - t)
            self.thresholds_[t] = np.quantile(values[running, t], 1.0 - share)
            running &= values[:, t] < self.thresholds_[t]

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        return window[:, -1, self.feature] >= self.thresholds_[t]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256, help="training batch")
    parser.add_argument("--infer-batch-size", type=int, default=256)
    parser.add_argument("--infer-samples", type=int, default=4096, help="images timed in inference")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--beta", type=float, default=0.5, help="L_depth weight of that side")
    parser.add_argument("--regularizer", default="relative")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast + channels-last (default: on for cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--note", default="", help="free text stored in the JSON (conditions)")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/bench_imagenet_gpu.json"))
    args = parser.parse_args(argv)
    for name in ("image_size", "batch_size", "infer_batch_size", "infer_samples", "steps",
                 "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available; pass --device cpu (with a small --image-size)")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_fn(model: torch.nn.Module, args: argparse.Namespace, beta: float | None,
                  device: torch.device, amp: bool) -> Callable[[], None]:
    """One SGD step on a fixed synthetic batch; ``beta`` None: single-exit torchvision model."""
    fmt = torch.channels_last if amp and device.type == "cuda" else torch.contiguous_format
    model.to(device, memory_format=fmt).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g)
    x = x.to(device, memory_format=fmt)
    y = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)
    reg = None if beta is None else create_regularizer(args.regularizer, beta=beta)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if reg is None:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            else:
                out = model(x)
                loss = multi_exit_cross_entropy(out.logits, y) + reg(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_training(args: argparse.Namespace, device: torch.device, amp: bool) -> dict[str, Any]:
    """Interleaved timing of the three training sides; images/s and the L_depth overhead."""
    torch.manual_seed(0)
    sides = {
        "multi_exit": train_step_fn(create_model("imagenet_resnet50", image_size=args.image_size),
                                    args, 0.0, device, amp),
        "multi_exit_ldepth": train_step_fn(
            create_model("imagenet_resnet50", image_size=args.image_size), args, args.beta,
            device, amp),
        "torchvision_single_exit": train_step_fn(torchvision.models.resnet50(), args, None,
                                                 device, amp),
    }
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, step in sides.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
        log.info("training round %d/%d: %s", r + 1, args.repeats,
                 ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    images = args.steps * args.batch_size
    overhead = statistics.median(a / b - 1 for a, b in zip(times["multi_exit_ldepth"],
                                                           times["multi_exit"], strict=True))
    return {"images_per_s": {n: images / statistics.median(t) for n, t in times.items()},
            "ldepth_overhead": overhead, "ldepth_overhead_target": 0.10,
            "ldepth_overhead_met": overhead <= 0.10, "seconds_per_repeat": times,
            "steps_per_repeat": args.steps, "batch_size": args.batch_size, "beta": args.beta,
            "regularizer": args.regularizer}


def time_inference(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Early-exit engine against full depth, with a uniform exit distribution (see module doc)."""
    torch.manual_seed(1)
    model = create_model("imagenet_resnet50", image_size=args.image_size).to(device).eval()
    images = torch.randn(args.infer_samples, 3, args.image_size, args.image_size)
    split = Split(images, torch.zeros(args.infer_samples, dtype=torch.int64))
    traces = collect_traces(model, split, "synthetic", batch_size=args.infer_batch_size)
    rewards = np.zeros(traces.features.shape[:2])
    policy = UniformExitPolicy().fit(rewards, traces.features)
    record = measure_wall_speedups(model, {"uniform_exits": policy}, images.to(device),
                                   args.infer_batch_size, args.repeats)["uniform_exits"]
    record.pop("accuracy_full_depth", None)
    record.pop("accuracy_early_exit", None)  # labels are meaningless here
    record["exit_costs"] = [float(c) for c in traces.exit_costs]
    return record


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    training = time_training(args, device, amp)
    inference = time_inference(args, device)
    result = {
        "device_type": device.type, "image_size": args.image_size, "amp_bf16": amp,
        "channels_last": amp and device.type == "cuda", "repeats": args.repeats,
        "training": training, "inference": inference,
        "wall_seconds": time.perf_counter() - start, "note": args.note,
    }
    write_result(args.out, result, argv)
    ips = training["images_per_s"]
    log.info("training images/s: multi-exit %.1f, with L_depth %.1f (overhead %.1f%%), "
             "torchvision single-exit %.1f", ips["multi_exit"], ips["multi_exit_ldepth"],
             100 * training["ldepth_overhead"], ips["torchvision_single_exit"])
    log.info("early exit at batch %d: wall speed-up %.2fx (compute speed-up %.2fx)",
             args.infer_batch_size, inference["wall_speedup"], inference["compute_speedup"])
    log.info("wrote %s (%.0f s)", args.out, result["wall_seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
