"""Early exit against full depth at several batch sizes, all timed in one interleaved run.

The wall speed-up of early exit depends on the batch size far more than full-depth time does:
every network call of the engine carries its own cost (features, the policy's decision,
retiring and regrouping samples), which grows more slowly than the call, so a larger call
spreads it over more samples. This script
fits each policy at its iso-accuracy point on one run's calibration traces and, for every
batch size, times full depth, the engine and the engine's ideal replay
(:func:`optdepth.online.replay_schedule`) in the same rounds
(:func:`optdepth.online.timing.interleaved_times`), so that batch sizes are compared round by
round as well as sides. Per batch size and policy it reports the wall speed-up, wall / compute,
the ideal engine's wall / compute (the most any engine could reach on this machine for these
exits and batches), the engine's efficiency and the minor page faults of one pass of each side.
It also reports the best against the best: the fastest full-depth batch size against each
policy's fastest batch size, paired round by round.

Page faults. glibc hands freed memory back to the kernel (chunks above its mmap threshold, and
the heap's top above its trim threshold), and the next allocation faults fresh pages in on first
touch. Which batch sizes pay for it depends on the activation sizes; the script counts the minor
faults of one pass of each side. Run it again under
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456``
to see the batch sizes without them (jemalloc or tcmalloc preloaded are the usual alternative,
not measured here); the result records the ``MALLOC_*`` variables it ran under. Run from the
repository root with nothing else busy::

    python benchmarks/batch_size_sweep.py demo_out/runs/ldepth --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import require_evaluated, set_threads, write_result

from optdepth.checkpoints import load_checkpoint, load_model
from optdepth.data import load_fashion_mnist
from optdepth.offline import evaluate_policies
from optdepth.online import early_exit_predict, full_depth_predict, replay_schedule
from optdepth.online.timing import interleaved_times, paired
from optdepth.rundir import RunLayout
from optdepth.traces import load_traces

POLICIES = ("max_prob", "entropy", "osla", "lsm")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="an evaluated image run directory")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--policies", nargs="+", default=["max_prob", "lsm"], choices=POLICIES)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/batch_size_sweep.json")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.repeats < 1:
        parser.error("--batch-sizes and --repeats must be >= 1")
    require_evaluated(parser, [args.run])
    return args


def minor_faults(fn: Callable[[], Any]) -> int:
    """Minor page faults of this process during one call of ``fn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def build_sides(model, policies, split, batch_sizes) -> tuple[dict[Any, Callable[[], Any]], dict]:
    """Every timed side, keyed (batch, "full_depth"), (batch, policy) and (batch, policy,
    "ideal"), each run once here (the warm-up), and each policy's pass at each batch size."""
    sides: dict[Any, Callable[[], Any]] = {}
    passes = {}
    for batch in batch_sizes:
        sides[batch, "full_depth"] = lambda b=batch: full_depth_predict(model, split, b)
        sides[batch, "full_depth"]()
        for name, policy in policies.items():
            sides[batch, name] = lambda b=batch, p=policy: early_exit_predict(model, p, split, b)
            passes[batch, name] = sides[batch, name]()
            sides[batch, name, "ideal"] = replay_schedule(model, passes[batch, name].schedule,
                                                          split.images[:batch])
            sides[batch, name, "ideal"]()
    return sides, passes


def records(times, faults, passes, batch_sizes, policies) -> dict[str, Any]:
    """Per batch size: full-depth seconds and faults, and each policy's timing figures."""
    out: dict[str, Any] = {}
    for batch in batch_sizes:
        full = (batch, "full_depth")
        entry: dict[str, Any] = {"full_depth_s": statistics.median(times[full]),
                                 "full_depth_faults": faults[full], "policies": {}}
        for name in policies:
            early, ideal = (batch, name), (batch, name, "ideal")
            compute_speedup = 1.0 / passes[early].mean_compute
            wall, ideal_wall = paired(times, full, early), paired(times, full, ideal)
            entry["policies"][name] = {
                "early_exit_s": statistics.median(times[early]),
                "ideal_engine_s": statistics.median(times[ideal]),
                "wall_speedup": wall, "compute_speedup": compute_speedup,
                "wall_over_compute": wall / compute_speedup,
                "ideal_wall_over_compute": ideal_wall / compute_speedup,
                "engine_efficiency": paired(times, ideal, early),
                "network_calls": len(passes[early].schedule),
                "early_exit_faults": faults[early], "ideal_engine_faults": faults[ideal]}
        out[str(batch)] = entry
    return out


def best_against_best(times, batch_sizes, policies) -> dict[str, Any]:
    """Each policy's fastest batch size against full depth's fastest, paired by round."""
    def fastest(side: str) -> int:
        return min(batch_sizes, key=lambda b: statistics.median(times[b, side]))

    full = fastest("full_depth")
    return {"full_depth_batch": full, "policies": {
        name: {"batch": fastest(name),
               "wall_speedup": paired(times, (full, "full_depth"), (fastest(name), name))}
        for name in policies}}


def report(result: dict[str, Any]) -> None:
    print(f"{'batch':>6s} {'policy':9s} {'full s':>7s} {'early s':>7s} {'wall':>5s} "
          f"{'w/c':>5s} {'ideal w/c':>9s} {'eff':>5s} {'calls':>5s} {'faults full/early':>17s}")
    for batch, entry in result["batch_sizes"].items():
        for name, rec in entry["policies"].items():
            print(f"{batch:>6s} {name:9s} {entry['full_depth_s']:7.3f} {rec['early_exit_s']:7.3f} "
                  f"{rec['wall_speedup']:5.2f} {rec['wall_over_compute']:5.2f} "
                  f"{rec['ideal_wall_over_compute']:9.2f} {rec['engine_efficiency']:5.2f} "
                  f"{rec['network_calls']:5d} "
                  f"{entry['full_depth_faults']:>8d}/{rec['early_exit_faults']:<8d}")
    best = result["best_against_best"]
    for name, rec in best["policies"].items():
        print(f"best against best, {name}: batch {rec['batch']} early exit vs batch "
              f"{best['full_depth_batch']} full depth: {rec['wall_speedup']:.2f}x wall")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    layout = RunLayout(args.run)
    cal, test = load_traces(layout.traces("calibration")), load_traces(layout.traces("test"))
    model = load_model(args.run)
    split = load_fashion_mnist(load_checkpoint(layout.checkpoint)["config"].get("data_dir")).test
    evaluations = evaluate_policies(cal, test, tuple(args.policies))
    policies = {name: ev.policy for name, ev in evaluations.items()}
    batch_sizes = sorted(set(args.batch_sizes))
    sides, passes = build_sides(model, policies, split, batch_sizes)
    faults = {key: minor_faults(fn) for key, fn in sides.items()}
    times = interleaved_times(sides, args.repeats)
    result = {"run": str(args.run), "threads": threads, "repeats": args.repeats,
              "n_samples": len(split.labels),
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "batch_sizes": records(times, faults, passes, batch_sizes, policies),
              "best_against_best": best_against_best(times, batch_sizes, policies)}
    report(result)
    write_result(args.out, result, argv)
    return result


if __name__ == "__main__":
    main()
