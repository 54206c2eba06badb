"""Training-step time of ViT sizes against ResNet-20: how the demo ViT was sized.

One step = forward through every exit, multi-exit cross-entropy, backward, AdamW step, batch 256
of 28x28 images. The models are timed interleaved (A B C A B C ...), the first round is dropped
as warm-up, and the median per model is reported with its ratio to ResNet-20. With the ResNet-20
demo epoch known on a machine (~55 s on two quiet cores), the ratio estimates a ViT demo epoch.
Run from the repository root with nothing else busy::

    python benchmarks/vit_step_time.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import set_threads, write_result

import optdepth

CANDIDATES = {
    "resnet20": ("resnet20", {}),
    "vit (patch 7, 16 tokens)": ("vit", {}),
    "vit patch 4 (49 tokens)": ("vit", {"patch_size": 4}),
    "vit_small (patch 4, dim 96, 8 blocks)": ("vit_small", {}),
}


def time_steps(rounds: int, batch_size: int) -> dict[str, list[float]]:
    """Seconds per training step of each candidate, ``rounds`` interleaved rounds."""
    torch.manual_seed(0)
    models = {k: optdepth.create_model(n, **kw) for k, (n, kw) in CANDIDATES.items()}
    optims = {k: torch.optim.AdamW(m.parameters(), 1e-3) for k, m in models.items()}
    x, y = torch.randn(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            loss = optdepth.multi_exit_cross_entropy(model(x).logits, y)
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vit_step_time.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    times = time_steps(args.rounds, args.batch_size)
    reference = statistics.median(times["resnet20"][1:])
    results = {}
    for name, seconds in times.items():
        median = statistics.median(seconds[1:])
        results[name] = {"median_step_s": median, "ratio_to_resnet20": median / reference}
        print(f"{name:40s} {median:.3f} s/step  {median / reference:.2f}x ResNet-20")
    write_result(args.out, {"batch_size": args.batch_size, "rounds": args.rounds,
                            "results": results})


if __name__ == "__main__":
    main()
