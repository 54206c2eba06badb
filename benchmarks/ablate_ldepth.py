"""Ablation of the L_depth variants: accuracy, residual-norm decay and compute at iso-accuracy.

Trains (or reuses, when a run with identical settings exists) one ResNet-20 per variant on
Fashion-MNIST with the same schedule, evaluates it on the test split, fits every exit policy on
the calibration split and records its test accuracy and mean compute at the iso-accuracy point
(what issue 4 asks L_depth to lower), and writes a JSON summary.

    python benchmarks/ablate_ldepth.py --variants none relative:0.5 distill:1.0 \
        --epochs 5 --no-augment --threads 1 --runs runs/ablation

A variant is ``none`` (β = 0) or ``NAME:BETA`` with NAME from optdepth.list_regularizers().
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

import optdepth
from optdepth.data import load_fashion_mnist
from optdepth.inference import evaluate_policies
from optdepth.io import write_json
from optdepth.training import TrainConfig, train_or_resume


def parse_variant(text: str) -> tuple[str, str, float]:
    """'none' -> ('none', 'relative', 0.0); 'relative:0.5' -> ('relative_0.5', 'relative', 0.5)."""
    if text == "none":
        return "none", "relative", 0.0
    name, _, beta = text.partition(":")
    if name not in optdepth.list_regularizers() or not beta:
        raise SystemExit(f"bad variant {text!r}: use none or NAME:BETA, NAME in "
                         f"{optdepth.list_regularizers()}")
    return f"{name}_{beta}", name, float(beta)


def iso_points(run: Path) -> dict[str, dict[str, float]]:
    """Each policy's test accuracy and mean compute at its iso-accuracy point (chosen on cal)."""
    cal, test = (optdepth.load_traces(run / "evaluation" / f"traces_{split}.npz")
                 for split in ("calibration", "test"))
    return {name: ev.metrics()["iso_accuracy"] for name, ev in evaluate_policies(cal, test).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["none", "relative:0.1", "relative:0.5",
                                                           "decay_hinge:0.5", "distill:1.0"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/ablation", help="folder of the per-variant runs")
    parser.add_argument("--out", default="benchmarks/results/ablate_ldepth.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    data = load_fashion_mnist()
    results = {}
    for text in args.variants:
        label, name, beta = parse_variant(text)
        config = TrainConfig(epochs=args.epochs, augment=not args.no_augment, regularizer=name,
                             beta=beta, threads=args.threads)
        start = time.perf_counter()
        run = Path(args.runs) / label
        train_or_resume(config, run, data=data, progress=False)
        summary = optdepth.evaluate_run(run, data=data, progress=False)
        results[label] = {"regularizer": name, "beta": beta, "iso_accuracy": iso_points(run),
                          "final_exit_accuracy": summary["exit_accuracy"][-1],
                          "exit_accuracy": summary["exit_accuracy"],
                          "relative_residual_norm": summary["relative_residual_norm"],
                          **summary["decay_fit"], "seconds": time.perf_counter() - start}
        iso = results[label]["iso_accuracy"]
        print(f"{label:>18}: final exit {100 * results[label]['final_exit_accuracy']:.2f}%, "
              f"rho {results[label]['rho']:.3f}, K {results[label]['K']:.2f}, iso compute "
              + ", ".join(f"{n} {v['mean_compute']:.3f}" for n, v in iso.items()), flush=True)
    write_json(args.out, {"epochs": args.epochs, "augment": not args.no_augment,
                          "threads": args.threads, "torch": torch.__version__,
                          "machine": platform.processor() or platform.machine(),
                          "variants": results})
    print(json.dumps({k: round(v["final_exit_accuracy"], 4) for k, v in results.items()}))


if __name__ == "__main__":
    main()
