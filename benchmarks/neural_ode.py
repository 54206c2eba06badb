"""Neural-ODE multi-exit classifier on Fashion-MNIST, with and without the kinetic regulariser.

Trains (or reuses, when a run with identical settings exists) the ``node`` model with one short
schedule -- once plain (β = 0), once per ``--betas`` weight of the kinetic-energy L_depth
(``kinetic``) -- then for each run: per-exit test accuracy, every exit policy's accuracy vs
mean depth (fitted on calibration, read on test), function evaluations (NFE) at each policy's
iso-accuracy point, and the free-boundary bridge on the net's margin trajectories (the
diffusion's free-boundary rule vs the least-squares policy, values with standard errors).
Writes JSON and plots.

    nohup python benchmarks/neural_ode.py --threads 1 > /tmp/node/bench.log 2>&1 &

``--train-only`` stops after training (to reuse the runs later). Figures taken while other jobs
share the CPU are slower but otherwise identical; re-run on a quiet machine for timings.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import set_threads, write_result

import optdepth
from optdepth.data import load_fashion_mnist
from optdepth.offline import evaluate_policies
from optdepth.offline.policy_evaluation import oracle_exits
from optdepth.online import offline_exits
from optdepth.reports import plot_exit_accuracy, plot_policy_curves
from optdepth.reports.continuous_plots import plot_bridge
from optdepth.stopping import bridge_margin_process
from optdepth.traces import Traces
from optdepth.training import TrainConfig, train_or_resume

log = logging.getLogger("neural_ode")


def configs(args: argparse.Namespace) -> dict[str, TrainConfig]:
    """The runs: identical but for the regulariser's weight (β = 0 is the plain run)."""
    base = TrainConfig(model="node", epochs=args.epochs, train_subset=args.train_subset,
                       batch_size=128, lr=0.1, weight_decay=1e-4, augment=False,
                       regularizer="kinetic", beta_warmup_epochs=0.5, threads=args.threads)
    return {"plain": base} | {f"kinetic_{b:g}": base.replace(beta=b) for b in args.betas}


def nfe_per_exit(model: torch.nn.Module, data: Any) -> np.ndarray:
    """(T,) cumulative function evaluations to reach each exit, counted on a forward pass."""
    with torch.no_grad():
        model(data.test.images[:2])
    return np.cumsum(model.nfe_per_segment)


def policy_figures(cal: Traces, test: Traces, nfe: np.ndarray) -> dict[str, Any]:
    """Every policy's test curve and iso-accuracy point, with the mean NFE there."""
    correct = test.correct()  # (N, T) 0.0 or 1.0
    out = {}
    for name, ev in evaluate_policies(cal, test).items():
        exits = oracle_exits(correct) if ev.policy is None else offline_exits(ev.policy, test).exit_index
        record = ev.metrics()
        record["iso_accuracy"]["mean_nfe"] = float(nfe[exits].mean())
        record["iso_accuracy"]["mean_depth"] = float(((exits + 1) / len(nfe)).mean())
        record["iso_accuracy"]["nfe_saved"] = float(1.0 - nfe[exits].mean() / nfe[-1])
        out[name] = record
    return out


def run_bridge(cal: Traces, test: Traces, lam: float, plots: Path, label: str) -> dict[str, Any]:
    """The free-boundary rule vs LSM on the run's logit-margin trajectories (cal fit, test value)."""
    result = bridge_margin_process(cal.probs, cal.labels, test.probs, test.labels, lam=lam)
    plot_bridge(result, plots / f"bridge_{label}.png", title=f"neural ODE ({label}), λ = {lam:g}")
    return result.summary()


def analyse(label: str, run: Path, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    evaluation = optdepth.evaluate_run(run, data=data, progress=False)
    summary, cal, test = (evaluation.summary, evaluation.traces["calibration"],
                          evaluation.traces["test"])
    nfe = nfe_per_exit(evaluation.model, data)
    policies = policy_figures(cal, test, nfe)
    bridge = {f"{lam:g}": run_bridge(cal, test, lam, Path(args.plots), f"{label}_lam{lam:g}")
              for lam in args.lams}
    for name, rec in policies.items():
        iso = rec["iso_accuracy"]
        print(f"{label:>16} {name:>9}: acc {100 * iso['accuracy']:.2f}% compute "
              f"{iso['mean_compute']:.3f} depth {iso['mean_depth']:.3f} NFE {iso['mean_nfe']:.1f}"
              f"/{nfe[-1]} (saved {100 * iso['nfe_saved']:.1f}%)", flush=True)
    for lam, b in bridge.items():
        print(f"{label:>16} bridge λ={lam}: free boundary {b['free_boundary']['mean']:.4f} ± "
              f"{b['free_boundary']['se']:.4f}, LSM {b['lsm']['mean']:.4f} ± {b['lsm']['se']:.4f}, "
              f"difference {b['difference']['mean']:.4f} ± {b['difference']['se']:.4f}", flush=True)
    return {"exit_accuracy": summary["exit_accuracy"], "exit_compute": summary["exit_compute"],
            "relative_residual_norm": summary["relative_residual_norm"],
            "decay_fit": summary["decay_fit"], "nfe_per_exit": nfe.tolist(),
            "policies": policies, "bridge": bridge}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=30000)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0002, 0.002],
                        help="weights of the kinetic penalty, one run each")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.02, 0.05],
                        help="prices of depth λ (per unit depth s) for the bridge")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/neural_ode")
    parser.add_argument("--out", default="benchmarks/results/neural_ode.json")
    parser.add_argument("--plots", default="benchmarks/results/neural_ode")
    parser.add_argument("--train-only", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_threads(args.threads)
    data = load_fashion_mnist()
    results, seconds = {}, {}
    for label, config in configs(args).items():
        history = train_or_resume(config, Path(args.runs) / label, data=data, progress=False).history
        seconds[label] = [float(record["seconds"]) for record in history]  # when it was trained
        log.info("%s: trained in %.0f s", label, sum(seconds[label]))
    if args.train_only:
        return
    for label in configs(args):
        results[label] = analyse(label, Path(args.runs) / label, data, args)
    for label, record in results.items():  # one figure each: the panels would share a y range
        plot_policy_curves({label: record}, Path(args.plots) / f"policy_curves_{label}.png")
    plot_exit_accuracy(results, Path(args.plots) / "exit_accuracy.png")
    write_result(args.out, {
        "configs": {k: c.to_dict() for k, c in configs(args).items()},
        "threads": args.threads, "train_seconds_per_epoch": seconds,
        "note": "timings taken on a shared 2-core machine under contention", "runs": results})


if __name__ == "__main__":
    main()
