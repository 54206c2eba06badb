"""The finite-depth theorem on trained nets: at one price of compute, deeper ResNets stop no deeper.

Trains ResNet-20, 32, 56 and 110 (the CIFAR family, 9 to 54 blocks, an exit after every block)
at several seeds on one schedule, then, at one fixed price λ of compute, measures the mean depth
(in blocks run) at which the optimal stopping rule stops each test image, and the finite-depth
certificate t̄ of each net, from one decay fit and fitted stage by stage.

The price is fixed in absolute compute: λ per forward pass of ResNet-20, so a block costs the
same in every net (the CIFAR ResNets' blocks all cost about the same FLOPs: each stage halves
the resolution and doubles the width). On a net whose full pass costs F_d FLOPs, the policies
are fitted with rewards correct − λ·(F_d / F_20)·C_t, C_t its exit costs (full depth = 1).

Two stopping depths: the LSM policy (Longstaff–Schwartz, fitted on the calibration split,
measured on test), the implementable estimate of τ*; and the prophet (argmax_t of the realised
reward, label known), an upper bound on what any rule gains. The theory says E[τ*] levels off as
blocks are added, below t̄. Every run is kept in ``--runs`` and resumes::

    python benchmarks/depth_sweep.py --threads 2      # 4 depths x 3 seeds, about 20 min
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import set_threads, write_result
from torch.utils.flop_counter import FlopCounterMode

from optdepth.data.fashion_mnist import load_fashion_mnist
from optdepth.experiments.image_demo import demo_base_config, demo_plan, fit_plan_to_data
from optdepth.experiments.pipeline import train_and_evaluate
from optdepth.offline.certificate import network_certificate
from optdepth.offline.exit_policies import fit_exit_policy
from optdepth.stopping import fit_diminishing_returns, oracle_stop_times

DEPTHS = (20, 32, 56, 110)


def full_flops(model: torch.nn.Module) -> float:
    """FLOPs of one full-depth forward pass of one image (torch's FlopCounterMode)."""
    x = torch.zeros(1, *model.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval().forward_final(x)
    return float(counter.get_total_flops())


def measure(evaluation: Any, price: float) -> dict[str, Any]:
    """Mean stopping depths (blocks) of LSM and the prophet, and t̄, at ``price`` (normalised)."""
    calibration, test = evaluation.traces["calibration"], evaluation.traces["test"]
    blocks = test.exit_blocks + 1
    lsm = fit_exit_policy("lsm", calibration, price).stop_times(test.features)
    prophet = oracle_stop_times(test.correct() - price * test.exit_costs[None, :])
    fit = fit_diminishing_returns(test.mean_relative_norms())
    certificate = network_certificate(test, fit.K, fit.rho, price, lsm)
    correct = test.correct()
    rows = np.arange(len(lsm))
    return {"blocks": int(test.residual_norms.shape[1]), "price_normalised": price,
            "final_accuracy": float(correct[:, -1].mean()),
            "lsm_depth": float(blocks[lsm].mean()), "lsm_accuracy": float(correct[rows, lsm].mean()),
            "lsm_compute": float(test.exit_costs[lsm].mean()),
            "prophet_depth": float(blocks[prophet].mean()),
            "certificate_depth": certificate["certificate_depth"],
            "stage_certificate_depth": certificate["stage_certificate_depth"],
            "lipschitz": certificate["lipschitz"], "rho": fit.rho, "decay_fit_r2": fit.r_squared}


def run_one(depth: int, seed: int, args: argparse.Namespace, data: Any,
            flops_20: float) -> dict[str, Any]:
    """Train (or resume) ResNet-``depth`` at ``seed`` and measure it at the fixed price."""
    model = f"resnet{depth}"
    plan = fit_plan_to_data(dataclasses.replace(demo_plan(args.schedule, model, args.epochs),
                                                train_subset=args.train_subset), len(data.train))
    config = demo_base_config(plan, None, args.threads, model).replace(beta=0.0, seed=seed)
    evaluation = train_and_evaluate(config, Path(args.runs) / model / f"seed{seed}", data,
                                    progress=False)
    flops = full_flops(evaluation.model)
    result = measure(evaluation, args.price * flops / flops_20)
    return {"depth": depth, "seed": seed, "flops_ratio_to_resnet20": flops / flops_20, **result}


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per depth: the median and range over seeds of each measured figure."""
    out = {}
    for depth in sorted({r["depth"] for r in rows}):
        mine = [r for r in rows if r["depth"] == depth]
        entry = {"seeds": [r["seed"] for r in mine], "blocks": mine[0]["blocks"]}
        for key in ("lsm_depth", "prophet_depth", "certificate_depth", "stage_certificate_depth",
                    "final_accuracy", "lsm_accuracy"):
            values = [r[key] for r in mine if r[key] is not None]
            entry[key] = {"median": statistics.median(values), "min": min(values),
                          "max": max(values)} if values else None
        out[str(depth)] = entry
    return out


def plot(summary: dict[str, dict[str, Any]], path: Path) -> None:
    """Stopping depths and certificates against the net's depth (blocks), median and range."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    blocks = [e["blocks"] for e in summary.values()]
    ax.plot(blocks, blocks, color="0.8", ls=":", label="full depth")
    for key, label, style in (("lsm_depth", "E[τ] of LSM", "o-"),
                              ("prophet_depth", "prophet", "s--"),
                              ("stage_certificate_depth", "t̄ per stage", "^-")):
        points = [(b, e[key]) for b, e in zip(blocks, summary.values(), strict=True) if e[key]]
        xs = [b for b, _ in points]
        med = np.array([s["median"] for _, s in points])
        err = np.array([[s["median"] - s["min"] for _, s in points],
                        [s["max"] - s["median"] for _, s in points]])
        ax.errorbar(xs, med, yerr=err, fmt=style, capsize=3, label=label)
    ax.set_xlabel("blocks in the net")
    ax.set_ylabel("blocks run (median, min–max over seeds)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=list(DEPTHS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--schedule", default="quick", help="a demo schedule")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=20_000)
    parser.add_argument("--price", type=float, default=0.1,
                        help="λ per ResNet-20 forward pass, in accuracy units")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/depth_sweep")
    parser.add_argument("--results", default="benchmarks/results/depth_sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads = set_threads(args.threads)
    data = load_fashion_mnist()
    from optdepth.models import create_model
    flops_20 = full_flops(create_model("resnet20"))
    rows = []
    for seed in args.seeds:
        for depth in args.depths:
            rows.append(run_one(depth, seed, args, data, flops_20))
            print({k: rows[-1][k] for k in ("depth", "seed", "lsm_depth", "prophet_depth",
                                             "stage_certificate_depth", "final_accuracy")})
    summary = summarise(rows)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    plot(summary, results / "depth_sweep.png")
    write_result(results / "depth_sweep.json",
                 {"price_per_resnet20_pass": args.price, "threads": threads,
                  "schedule": {"name": args.schedule, "epochs": args.epochs,
                               "train_subset": args.train_subset},
                  "per_run": rows, "per_depth": summary})
    for depth, entry in summary.items():
        cert = entry["stage_certificate_depth"]
        print(f"resnet{depth}: {entry['blocks']} blocks, LSM depth"
              f" {entry['lsm_depth']['median']:.2f}, prophet {entry['prophet_depth']['median']:.2f},"
              f" t̄ per stage {cert['median'] if cert else float('inf'):.2f}")


if __name__ == "__main__":
    main()
