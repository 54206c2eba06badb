"""Ablation of the L_depth variants: accuracy, residual-norm decay and compute at iso-accuracy.

Trains (or reuses, when a run with identical settings exists) one ResNet-20 per variant on
Fashion-MNIST with the same schedule, evaluates it on the test split, fits every exit policy on
the calibration split and records its test accuracy and mean compute at the iso-accuracy point
(what issue 4 asks L_depth to lower), and writes a JSON summary.

    python benchmarks/ablate_ldepth.py --variants none relative:0.5 distill:1.0 \
        --epochs 5 --no-augment --threads 1 --runs runs/ablation --seeds 0 1 2

A variant is ``none`` (β = 0) or ``NAME:BETA`` with NAME from list_regularizers().
Run ``--runs/LABEL/seedS`` trains variant LABEL with seed S (initialisation and batch order; the
calibration split is the same for every seed). With several seeds the summary also gives, per
variant and policy, each seed's iso-accuracy compute over the baseline's (``none``) compute with
the same seed, and the median and spread of those paired ratios: seed-to-seed noise in the
iso-accuracy compute is as large as the effect L_depth is asked to show, so one seed proves
nothing either way.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import set_threads, write_result

from optdepth.data import load_fashion_mnist
from optdepth.experiments.pipeline import train_and_evaluate
from optdepth.losses import list_regularizers
from optdepth.losses.multi_exit import EXIT_WEIGHTINGS
from optdepth.offline import RunEvaluation, evaluate_policies
from optdepth.training import TrainConfig


def parse_variant(text: str) -> tuple[str, str, float]:
    """'none' -> ('none', 'relative', 0.0); 'relative:0.5' -> ('relative_0.5', 'relative', 0.5)."""
    if text == "none":
        return "none", "relative", 0.0
    name, _, beta = text.partition(":")
    if name not in list_regularizers() or not beta:
        raise SystemExit(f"bad variant {text!r}: use none or NAME:BETA, NAME in "
                         f"{list_regularizers()}")
    return f"{name}_{beta}", name, float(beta)


def iso_points(evaluation: RunEvaluation) -> dict[str, dict[str, float]]:
    """Each policy's test accuracy and mean compute at its iso-accuracy point (chosen on cal)."""
    traces = evaluation.traces
    return {name: ev.metrics()["iso_accuracy"]
            for name, ev in evaluate_policies(traces["calibration"], traces["test"]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["none", "relative:0.1", "relative:0.5",
                                                           "decay_hinge:0.5", "distill:1.0"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--exit-weighting", default="uniform", choices=EXIT_WEIGHTINGS,
                        help="multi-exit loss weighting of every variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/ablation", help="folder of the per-variant runs")
    parser.add_argument("--out", default="benchmarks/results/ablate_ldepth.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    data = load_fashion_mnist()
    results: dict[str, dict[str, Any]] = {}
    for text in args.variants:
        label, name, beta = parse_variant(text)
        results[label] = {"regularizer": name, "beta": beta, "seeds": {}}
        for seed in args.seeds:
            config = TrainConfig(epochs=args.epochs, augment=not args.no_augment,
                                 exit_weighting=args.exit_weighting, regularizer=name,
                                 beta=beta, threads=args.threads, seed=seed)
            record = run_variant(config, Path(args.runs) / label / f"seed{seed}", data)
            results[label]["seeds"][str(seed)] = record
            iso = record["iso_accuracy"]
            print(f"{label:>18} seed {seed}: final exit {100 * record['final_exit_accuracy']:.2f}%,"
                  f" rho {record['rho']:.3f}, K {record['K']:.2f}, iso compute "
                  + ", ".join(f"{n} {v['mean_compute']:.3f}" for n, v in iso.items()), flush=True)
    if "none" in results:
        add_paired_ratios(results, results["none"])
    write_result(args.out, {"epochs": args.epochs, "augment": not args.no_augment,
                            "exit_weighting": args.exit_weighting, "threads": args.threads,
                            "seeds": args.seeds, "variants": results})
    print_summary(results)


def run_variant(config: TrainConfig, run: Path, data) -> dict[str, Any]:
    """Train (or reuse) one run, evaluate it and fit every policy: the per-seed record."""
    start = time.perf_counter()
    evaluation = train_and_evaluate(config, run, data, progress=False)
    summary = evaluation.summary
    return {"iso_accuracy": iso_points(evaluation),
            "final_exit_accuracy": summary["exit_accuracy"][-1],
            "exit_accuracy": summary["exit_accuracy"],
            "relative_residual_norm": summary["relative_residual_norm"],
            **summary["decay_fit"], "seconds": time.perf_counter() - start}


def add_paired_ratios(results: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> None:
    """Per variant and policy: iso compute / baseline iso compute, paired by seed.

    Adds ``compute_ratio`` = {policy: {"per_seed": {seed: ratio}, "median", "min", "max"}} and
    ``final_exit_delta`` (accuracy minus the same seed's baseline, in points) to each variant
    that shares at least one seed with the baseline.
    """
    for record in results.values():
        seeds = [s for s in record["seeds"] if s in baseline["seeds"]]
        if not seeds:
            continue
        policies = record["seeds"][seeds[0]]["iso_accuracy"]
        ratios = {}
        for policy in policies:
            per_seed = {s: record["seeds"][s]["iso_accuracy"][policy]["mean_compute"]
                        / baseline["seeds"][s]["iso_accuracy"][policy]["mean_compute"]
                        for s in seeds}
            values = list(per_seed.values())
            ratios[policy] = {"per_seed": per_seed, "median": float(np.median(values)),
                              "min": min(values), "max": max(values)}
        record["compute_ratio"] = ratios
        record["final_exit_delta"] = {
            s: 100 * (record["seeds"][s]["final_exit_accuracy"]
                      - baseline["seeds"][s]["final_exit_accuracy"]) for s in seeds}


def print_summary(results: dict[str, dict[str, Any]]) -> None:
    """One line per variant: median (min-max) paired compute ratio for LSM, OSLA, max_prob."""
    for label, record in results.items():
        if "compute_ratio" not in record or label == "none":
            continue
        ratio = record["compute_ratio"]
        deltas = list(record["final_exit_delta"].values())
        print(f"{label:>18} / none over {len(deltas)} seeds: "
              + ", ".join(f"{p} {ratio[p]['median']:.3f} ({ratio[p]['min']:.3f}-"
                          f"{ratio[p]['max']:.3f})" for p in ("lsm", "osla", "max_prob"))
              + f"; final exit {np.median(deltas):+.2f} points (median)", flush=True)


if __name__ == "__main__":
    main()
