"""Stopping priced in seconds: FLOP-priced against latency-priced policies, in wall-clock time.

For each image run directory (``checkpoints/last.pt`` and ``evaluation/traces_*.npz``, e.g. the
demo's ``runs/baseline`` and ``runs/ldepth``), this measures the model's latency profile on this
machine at ``--batch-size`` (:func:`optdepth.online.measure_latency_profile`), fits every policy
twice on the calibration traces, once with exits priced at their FLOP shares and once at their
measured time shares, and times all of them in one interleaved run against full depth
(:func:`optdepth.online.measure_wall_speedups`): at the iso-accuracy point and at the guaranteed
point (LTT, ε = 1 point, δ = 0.1). Per policy it reports test accuracy, FLOP compute, compute
speed-up, wall speed-up, wall / compute, the ideal engine's speed-up and the engine's efficiency
(ideal engine time over engine time); per policy kind and point, the latency-priced policy's
wall speed-up over the FLOP-priced one, paired round by round, with a 95% interval. Where
both pricings chose the same exits, that pair is one policy timed twice: the timing noise::

    python benchmarks/latency_priced.py demo_out/runs/baseline demo_out/runs/ldepth --threads 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
from common import require_evaluated, set_threads, write_result

from optdepth.checkpoints import load_checkpoint, load_model
from optdepth.data import load_fashion_mnist
from optdepth.experiments.paired import bootstrap_median_interval, signed_rank_p
from optdepth.offline import evaluate_policies
from optdepth.online import measure_latency_profile, measure_wall_speedups, offline_exits
from optdepth.rundir import RunLayout
from optdepth.traces import load_traces

POLICIES = ("max_prob", "entropy", "osla", "lsm")
GUARANTEE = (0.01, 0.1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="image run directories")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed runs per side")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--out", default="benchmarks/results/latency_priced.json")
    args = parser.parse_args(argv)
    require_evaluated(parser, args.runs)
    return args


def operating_points(cal, test, prices, policies) -> dict[str, Any]:
    """"NAME/iso" and "NAME/guaranteed" -> the policy, fitted with exits priced at ``prices``."""
    evaluations = evaluate_policies(cal, test, tuple(policies), guarantee=GUARANTEE,
                                    prices=prices)
    out = {}
    for name, ev in evaluations.items():
        out[f"{name}/iso"] = ev.policy
        if ev.guaranteed.policy is not None:
            out[f"{name}/guaranteed"] = ev.guaranteed.policy
    return out


def bench_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both pricings of every policy on one run, timed together."""
    layout = RunLayout(run)
    cal, test = load_traces(layout.traces("calibration")), load_traces(layout.traces("test"))
    model = load_model(run)
    split = load_fashion_mnist(load_checkpoint(layout.checkpoint)["config"].get("data_dir")).test
    profile = measure_latency_profile(model, split, args.batch_size, args.repeats)
    pricings = {"flops": None, "latency": profile.prices(cal, args.batch_size)}
    timed = {}
    for pricing, prices in pricings.items():
        for key, policy in operating_points(cal, test, prices, args.policies).items():
            name, point = key.split("/")
            timed[f"{name}/{pricing}/{point}"] = policy
    timing = measure_wall_speedups(model, timed, split, args.batch_size, args.repeats,
                                   all_exits=False)
    exits_of = {key: offline_exits(policy, test) for key, policy in timed.items()}
    records = {}
    for key, exits in exits_of.items():
        t = timing[key]
        records[key] = {"test_accuracy": float(exits.accuracy), "flop_compute": exits.mean_compute,
                        **{k: t[k] for k in ("compute_speedup", "wall_speedup",
                                             "wall_over_compute", "ideal_wall_speedup",
                                             "engine_efficiency")}}
        print(f"{run.name:>9} {key:>26}: acc {100 * exits.accuracy:.2f}%, compute"
              f" {exits.mean_compute:.3f} ({t['compute_speedup']:.2f}x), wall"
              f" {t['wall_speedup']:.2f}x, wall/compute {t['wall_over_compute']:.2f}, engine"
              f" {t['engine_efficiency']:.2f} of ideal", flush=True)
    return {"latency_profile": profile.to_dict(),
            "flop_shares": [float(c) for c in np.asarray(cal.exit_costs)], "policies": records,
            "latency_over_flops": pricing_gains(exits_of, timing, run.name)}


def pricing_gains(exits_of: dict[str, Any], timing: dict[str, Any], label: str) -> dict[str, Any]:
    """Per policy and point: the latency-priced policy's wall speed-up over the FLOP-priced one.

    Round by round (the two were timed back to back in every round), flop time / latency time:
    its median, 95% bootstrap interval and signed-rank p-value (log scale). Where both pricings
    chose the same exits (a threshold family's iso point does not depend on prices), the pair
    is one policy timed twice: ``same_exits`` marks it, and its spread is the timing noise.
    """
    gains = {}
    for key in exits_of:
        name, pricing, point = key.split("/")
        other = f"{name}/latency/{point}"
        if pricing != "flops" or other not in exits_of:
            continue
        ratios = (np.asarray(timing[key]["early_exit_round_s"])
                  / np.asarray(timing[other]["early_exit_round_s"]))
        same = bool(np.array_equal(exits_of[key].exit_index, exits_of[other].exit_index))
        low, high = bootstrap_median_interval(ratios)
        gains[f"{name}/{point}"] = {"median": float(np.median(ratios)), "ci95": [low, high],
                                    "p_value": signed_rank_p(np.log(ratios)),
                                    "same_exits": same, "rounds": ratios.tolist()}
        print(f"{label:>9} {name + '/' + point:>22}: latency / FLOP-priced wall speed-up"
              f" {np.median(ratios):.3f} [{low:.3f}, {high:.3f}]"
              f"{' (same exits: timing noise)' if same else ''}", flush=True)
    return gains


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    threads = set_threads(args.threads)
    results = {str(run): bench_run(run, args) for run in args.runs}
    write_result(args.out, {"batch_size": args.batch_size, "repeats": args.repeats,
                            "threads": threads, "guarantee": list(GUARANTEE), "runs": results})


if __name__ == "__main__":
    main()
