"""Does the guarantee hold on real nets? Re-split calibration and test many times and count.

For each run directory (with ``evaluation/traces_{calibration,test}.npz``), the calibration and
test traces are pooled. A fixed random ``--fit`` of them builds each policy's candidates
(:func:`optdepth.offline.guarantees.candidate_family`), once. The rest is then re-split
``--splits`` times into ``--certify`` samples, on which the guaranteed point is chosen
(:func:`optdepth.stopping.risk_control`), and a test part, on which its risk is measured. With
Learn-then-Test at (ε, δ) the test risk should exceed ε in at most a fraction δ of the splits
(up to the sampling error of the test part itself); the script reports that rate with its
binomial standard error, and the chosen point's test compute. Numpy only, no network runs::

    python benchmarks/risk_control_resplits.py demo_out/runs/baseline demo_out/runs/ldepth
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from common import require_evaluated, write_result

from optdepth.offline.exit_policies import FitContext
from optdepth.offline.guarantees import RISKS, candidate_family
from optdepth.rundir import RunLayout
from optdepth.stopping.risk_control import METHODS, risk_control
from optdepth.traces import PER_SAMPLE, Traces, load_traces

POLICIES = ("max_prob", "entropy", "patience", "osla", "lsm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--method", choices=METHODS, default="ltt")
    parser.add_argument("--risk", choices=RISKS, default="accuracy_gap")
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--fit", type=int, default=2500, help="samples that build the candidates")
    parser.add_argument("--certify", type=int, default=2500, help="samples that certify")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/risk_control_resplits.json")
    args = parser.parse_args(argv)
    require_evaluated(parser, args.runs, checkpoint=False)
    return args


def pooled(run: Path) -> Traces:
    """The calibration and test traces of ``run`` as one set of samples."""
    cal, test = (load_traces(RunLayout(run).traces(s)) for s in ("calibration", "test"))
    return Traces(**{name: np.concatenate([getattr(cal, name), getattr(test, name)])
                     for name in PER_SAMPLE},
                  exit_costs=cal.exit_costs, exit_blocks=cal.exit_blocks, metadata=cal.metadata)


def resplit_policy(name: str, fit: Traces, rest: Traces, args: argparse.Namespace,
                   rng: np.random.Generator) -> dict[str, Any]:
    """Build ``name``'s candidates on ``fit``; certify and test on ``args.splits`` re-splits."""
    family = candidate_family(name, fit, FitContext.from_traces(fit), args.risk)
    losses = family.losses(rest, args.risk)  # (n_rest, K) in testing order
    compute = np.asarray(rest.exit_costs, float)[family.stop_times(rest)]
    risks, computes, uncertified = [], [], 0
    for _ in range(args.splits):
        order = rng.permutation(len(losses))
        certify, test = order[:args.certify], order[args.certify:]
        control = risk_control(losses[certify], args.epsilon, args.delta, args.method)
        if control.index is None:
            uncertified += 1
            continue
        risks.append(float(losses[test, control.index].mean()))
        computes.append(float(compute[test, control.index].mean()))
    violations = sum(r > args.epsilon for r in risks) / args.splits
    se = math.sqrt(args.delta * (1 - args.delta) / args.splits)
    return {"candidates_tested": int(len(family.order)), "uncertified_splits": uncertified,
            "violation_rate": violations, "violation_se": se,
            "holds": violations <= args.delta + 2 * se,
            "test_risk_median": statistics.median(risks) if risks else None,
            "test_risk_max": max(risks) if risks else None,
            "test_compute_median": statistics.median(computes) if computes else None,
            "test_compute_p90": float(np.quantile(computes, 0.9)) if computes else None}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results: dict[str, Any] = {}
    for run in args.runs:
        samples = pooled(run)
        rng = np.random.default_rng(args.seed)
        order = rng.permutation(len(samples.labels))
        fit, rest = samples.take(np.sort(order[:args.fit])), samples.take(np.sort(order[args.fit:]))
        results[str(run)] = {}
        for name in args.policies:
            record = resplit_policy(name, fit, rest, args, rng)
            results[str(run)][name] = record
            print(f"{run} {name:>9}: test risk > {100 * args.epsilon:g} pt in"
                  f" {100 * record['violation_rate']:.1f}% of {args.splits} splits"
                  f" (δ = {args.delta:g}, 2 se = {200 * record['violation_se']:.1f}%),"
                  f" median test compute {_fmt(record['test_compute_median'])}", flush=True)
    write_result(args.out, {"epsilon": args.epsilon, "delta": args.delta, "method": args.method,
                            "risk": args.risk, "splits": args.splits, "fit": args.fit,
                            "certify": args.certify, "seed": args.seed, "runs": results})


if __name__ == "__main__":
    main()
