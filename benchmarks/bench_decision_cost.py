"""What one exit decision costs, exit by exit: ``policy.stop_at`` on a batch of histories.

The early-exit engine asks the policy once per segment and batch, with each sample's feature
history up to the current exit (float32, as the engine keeps it). A decision whose cost grows
with the exit index would tax deep networks most, so this times, for every policy fitted at its
iso-accuracy point on a run's calibration traces, one ``stop_at`` call on ``--rows`` test
histories at each exit t = 0 .. T-2 (median over ``--repeats`` of the mean over ``--calls``).
No network runs: this is the policy's own work only. Run from the repository root::

    python benchmarks/bench_decision_cost.py runs/deep56u/runs/ldepth --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run directories with evaluation/traces_{calibration,test}.npz")
    parser.add_argument("--out", type=Path,
                        default=Path("benchmarks/results/bench_decision_cost.json"))
    parser.add_argument("--rows", type=int, default=256, help="histories per decision (batch)")
    parser.add_argument("--calls", type=int, default=50, help="calls per timed repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP/OPENBLAS/MKL threads, set before numpy loads")
    args = parser.parse_args(argv)
    for name in ("rows", "calls", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    for run in args.runs:
        for split in ("calibration", "test"):
            if not (run / "evaluation" / f"traces_{split}.npz").is_file():
                parser.error(f"{run}: no evaluation/traces_{split}.npz; run "
                             f"`optdepth evaluate {run}` first")
    return args


def decision_ms(policy: Any, histories: Any, repeats: int, calls: int) -> list[float]:
    """(T - 1) milliseconds per ``stop_at`` call at exits 0 .. T-2 on (n, T, F) histories."""
    out = []
    for t in range(histories.shape[1] - 1):
        prefix = histories[:, : t + 1]
        policy.stop_at(prefix, t)  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                policy.stop_at(prefix, t)
            runs.append((time.perf_counter() - start) / calls * 1e3)
        out.append(statistics.median(runs))
    return out


def bench_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from optdepth.offline import evaluate_policies
    from optdepth.rundir import RunLayout
    from optdepth.traces import load_traces

    test = load_traces(RunLayout(run).traces("test"))
    histories = np.ascontiguousarray(test.features[: args.rows], dtype=np.float32)
    evaluations = evaluate_policies(load_traces(RunLayout(run).traces("calibration")),
                                    test)
    return {name: decision_ms(e.policy, histories, args.repeats, args.calls)
            for name, e in evaluations.items() if e.policy is not None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    try:
        import optdepth  # noqa: F401
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import write_result

    runs = {str(run): bench_run(run, args) for run in args.runs}
    for name, policies in runs.items():
        print(f"{name}: ms per decision on {args.rows} histories, exit 0 / middle / T-2")
        for policy, ms in policies.items():
            print(f"  {policy:9s} {ms[0]:.3f} / {ms[len(ms) // 2]:.3f} / {ms[-1]:.3f}")
    out = {"runs": runs,
           "settings": {"rows": args.rows, "calls": args.calls, "repeats": args.repeats,
                        "threads": args.threads}}
    write_result(args.out, out, argv)
    return out


if __name__ == "__main__":
    main()
