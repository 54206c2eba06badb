"""Real early exit on trained runs: every exit policy at its iso-accuracy point, timed.

For each run directory (holding ``checkpoints/last.pt`` and ``evaluation/traces_*.npz`` from
``optdepth evaluate``) the script fits every policy on the calibration traces, picks its
iso-accuracy point on calibration (least mean compute within 0.5 points of the final exit),
reads its test accuracy and mean compute, runs the network with real early exit on the test
split (checking that it gives exactly the exits of the offline traces), and times it against
full-depth inference (stem + every block + the last head), batch 256, interleaved A B C C B A,
median of per-repeat ratios. It also measures the time share of each exit (stem + segments up
to it, per sample, at the same batch size) next to its FLOP share: where early blocks are
slower per FLOP than late ones, no engine can turn the compute saving into the same wall-clock
saving, and ``ideal_wall_speedup`` (the speed-up of an engine with no overhead replaying
the same network calls, in each policy's timing record) says how much is possible.
``engine_time`` splits one early-exit pass, under the profiler, into the network segments
and the engine's own work (:func:`optdepth.online.engine_time_breakdown`).

Give two runs (baseline first, then L_depth) to also get the ratio of their iso-accuracy
compute under each policy. Run from the repository root with nothing else busy::

    python benchmarks/bench_early_exit.py demo_out/runs/baseline demo_out/runs/ldepth
    python benchmarks/bench_early_exit.py RUN --threads 1 --repeats 3 --timing-subset 2000
    python benchmarks/bench_early_exit.py RUN_BASELINE RUN_LDEPTH --device cuda   # one GPU
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (baseline first)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_early_exit.json"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, and OMP/OPENBLAS/MKL threads before numpy loads")
    parser.add_argument("--timing-subset", type=int, default=None,
                        help="time only the first N test images (all figures but wall time "
                             "still use the whole test split)")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: auto)")
    parser.add_argument("--device", default="cpu",
                        help="cpu | cuda | cuda:N: where both sides run (the traces stay CPU-made, "
                             "so online == offline may then fail by a last bit)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "threads", "timing_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for run in args.runs:
        for part in ("checkpoints/last.pt", "evaluation/traces_calibration.npz",
                     "evaluation/traces_test.npz"):
            if not (run / part).is_file():
                parser.error(f"{run / part} is missing; train and run `optdepth evaluate {run}`")
    return args


def bench_run(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """All policies on one run: iso-accuracy figures, online == offline check, wall time."""
    import numpy as np

    from optdepth.checkpoints import load_checkpoint, load_model
    from optdepth.data import load_fashion_mnist
    from optdepth.offline import evaluate_policies, gap_summary
    from optdepth.online import (
        early_exit_predict,
        engine_time_breakdown,
        measure_wall_speedups,
        offline_exits,
    )
    from optdepth.rundir import RunLayout
    from optdepth.traces import load_traces

    layout = RunLayout(run)
    cal, test = load_traces(layout.traces("calibration")), load_traces(layout.traces("test"))
    model = load_model(run).to(args.device)
    data_dir = args.data_dir or load_checkpoint(layout.checkpoint)["config"].get(
        "data_dir")
    split = load_fashion_mnist(data_dir).test
    if not np.array_equal(split.labels.numpy(), test.labels):
        raise SystemExit(f"{run}: the test traces do not match the test split's labels; "
                         f"re-run `optdepth evaluate {run}`")
    timed = split if args.timing_subset is None else split.subset(args.timing_subset)
    evaluations = evaluate_policies(cal, test)
    policies: dict[str, Any] = {}
    for name, evaluation in evaluations.items():
        record = {**evaluation.metrics(), "param": evaluation.iso_param,
                  "calibration": evaluation.calibration_curve[evaluation.iso_index].tolist()}
        if evaluation.policy is not None:
            online = early_exit_predict(model, evaluation.policy, split, args.batch_size)
            offline = offline_exits(evaluation.policy, test)
            record["online_matches_offline"] = bool(
                np.array_equal(online.exit_index, offline.exit_index)
                and np.array_equal(online.predictions, offline.predictions))
            record["timing"] = measure_wall_speedups(model, {name: evaluation.policy}, timed,
                                                     args.batch_size, args.repeats)[name]
            record["iso_accuracy"]["wall_speedup"] = record["timing"]["wall_speedup"]
            record["engine_time"] = engine_time_breakdown(model, evaluation.policy, timed,
                                                          args.batch_size)
            record["exit_index"] = np.bincount(offline.exit_index,
                                               minlength=model.num_exits).tolist()
        policies[name] = record
    # every timing record carries the net's exit time shares: read them, do not time them again
    fractions = next(r["timing"]["exit_time_share"] for r in policies.values() if "timing" in r)
    return {"final_exit_test_accuracy": float(test.exit_accuracy()[-1]),
            "exit_costs": [float(c) for c in test.exit_costs],
            "exit_time_fraction": fractions, "policies": policies,
            "gap": gap_summary(evaluations)}


def check_device(name: str) -> None:
    """Exit with a clear message unless ``name`` is a device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"--device {name!r} is not a device name ({exc})") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise SystemExit(f"--device {name}: no such CUDA device here "
                         f"({torch.cuda.device_count()} visible)")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: only cpu and cuda are supported")


def _fmt(value: float | None, width: int = 6) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.2f}"


def report(name: str, result: dict[str, Any]) -> None:
    from optdepth.online.timing import ENGINE_PARTS

    print(f"\n{name}: final exit {100 * result['final_exit_test_accuracy']:.2f}% on test")
    print(f"  {'policy':9s} {'param':>9s} {'test acc':>8s} {'compute':>8s} {'speed-up':>8s} "
          f"{'wall':>6s} {'wall/cmp':>8s} {'ideal':>6s} {'online=offline':>14s}")
    for policy, rec in result["policies"].items():
        iso, timing = rec["iso_accuracy"], rec.get("timing", {})
        print(f"  {policy:9s} {rec['param']:9.4g} {100 * iso['accuracy']:8.2f} "
              f"{iso['mean_compute']:8.4f} {1 / iso['mean_compute']:8.2f} "
              f"{_fmt(timing.get('wall_speedup'))} {_fmt(timing.get('wall_over_compute'), 8)} "
              f"{_fmt(timing.get('ideal_wall_speedup'))} "
              f"{str(rec.get('online_matches_offline', '-')):>14s}")
    gap = result["gap"]
    if gap["compute_saving_vs_rule"] is not None:
        closed = gap["oracle_gap_closed"]
        print(f"  best ours ({gap['best_ours']}) vs best rule ({gap['best_rule']}): "
              f"{100 * gap['compute_saving_vs_rule']:.1f}% less compute; closes "
              f"{'-' if closed is None else f'{100 * closed:.0f}%'} of the gap to the oracle")
    print("  exit time share " + " ".join(f"{f:.3f}" for f in result["exit_time_fraction"]))
    for policy, rec in result["policies"].items():
        if "engine_time" in rec:
            parts = rec["engine_time"]
            print(f"  {policy} early-exit pass under the profiler, share of its time: " + ", ".join(
                f"{k} {parts['share_' + k]:.2f}" for k in (*ENGINE_PARTS, "other")))
    print("  exit FLOP share " + " ".join(f"{c:.3f}" for c in result["exit_costs"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:  # before numpy and torch load
        for var in THREAD_VARS:
            os.environ[var] = str(args.threads)
    try:
        import optdepth  # noqa: F401
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from common import set_threads, write_result

    set_threads(args.threads)
    check_device(args.device)
    names = [str(run) for run in args.runs]
    runs = {name: bench_run(run, args) for name, run in zip(names, args.runs, strict=True)}
    for name, result in runs.items():
        report(name, result)
    out: dict[str, Any] = {"runs": runs}
    if len(runs) == 2:
        base, ldepth = (runs[n]["policies"] for n in names)
        out["compute_ratio_second_to_first"] = {
            p: ldepth[p]["iso_accuracy"]["mean_compute"] / base[p]["iso_accuracy"]["mean_compute"]
            for p in base}
        print("\niso-accuracy compute, second run / first: " + ", ".join(
            f"{p} {r:.3f}" for p, r in out["compute_ratio_second_to_first"].items()))
    out["settings"] = {"batch_size": args.batch_size, "repeats": args.repeats,
                       "device": args.device,
                       "device_name": (torch.cuda.get_device_name(args.device)
                                       if args.device.startswith("cuda") else None),
                       "timing_subset": args.timing_subset}
    write_result(args.out, out, argv)
    return out


if __name__ == "__main__":
    main()
