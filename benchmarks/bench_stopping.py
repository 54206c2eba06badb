"""Speed of the Longstaff–Schwartz policy: fit + stop_times on N=100,000, T=50, F=4.

Target: median under 2 s on two cores. Printed next to the time of one numpy least-squares
solve (``np.linalg.lstsq``) of one per-step regression of the same size, (N, P) with P the number
of basis columns; the LSM fit solves T - 1 such regressions (through their small normal
equations), plus building the bases and applying the policy.

The two sides are interleaved (A B A B ...) and medians reported, with the BLAS thread settings.
Run from the repository root with nothing else busy::

    python benchmarks/bench_stopping.py --out benchmarks/results/bench_stopping.json
    python benchmarks/bench_stopping.py --threads 1   # pin BLAS/OpenMP threads first
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TARGET_SECONDS = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="paths N")
    parser.add_argument("--t", type=int, default=50, help="steps T")
    parser.add_argument("--f", type=int, default=4, help="features F")
    parser.add_argument("--degree", type=int, default=2, help="polynomial degree of the basis")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of each side")
    parser.add_argument(
        "--threads", type=int, default=None, help="set OMP/OPENBLAS/MKL_NUM_THREADS before numpy loads"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_stopping.json"))
    return parser.parse_args(argv)


def thread_settings() -> dict[str, Any]:
    """BLAS/OpenMP thread pools (threadpoolctl when installed) and the thread env vars."""
    info: dict[str, Any] = {"env": {v: os.environ.get(v) for v in THREAD_VARS}, "cpu_count": os.cpu_count()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    else:
        info["threadpools"] = [
            {k: pool.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
            for pool in threadpool_info()
        ]
    return info


def make_problem(n: int, t: int, f: int, seed: int):
    """Synthetic paths: a noisy signal whose reward first rises, then pays a cost per step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, t, f))
    quality = 1.0 / (1.0 + np.exp(-np.cumsum(features[:, :, 0], axis=1) / np.sqrt(t)))
    rewards = quality - 0.01 * np.arange(t) + 0.05 * rng.standard_normal((n, t))
    return rewards, features


def time_interleaved(args: argparse.Namespace, policy: Any, np: Any) -> dict[str, Any]:
    """Times LSM fit + stop_times (A) and one np.linalg.lstsq (B) as A B A B ..."""
    rewards, features = make_problem(args.n, args.t, args.f, args.seed)
    n_basis = policy.basis.design(np.zeros((args.f, 1))).shape[1]
    design = np.asfortranarray(np.random.default_rng(1).standard_normal((args.n, n_basis)))
    target = rewards[:, -1].copy()

    def lsm() -> tuple[float, float]:
        start = time.perf_counter()
        policy.fit(rewards, features)
        mid = time.perf_counter()
        policy.stop_times(features)
        return mid - start, time.perf_counter() - mid

    def lstsq() -> float:
        start = time.perf_counter()
        np.linalg.lstsq(design, target, rcond=None)
        return time.perf_counter() - start

    lsm(), lstsq()  # warm-up
    runs: dict[str, list[float]] = {"fit": [], "stop_times": [], "total": [], "lstsq": []}
    for _ in range(args.repeats):
        fit, stop = lsm()
        runs["fit"].append(fit)
        runs["stop_times"].append(stop)
        runs["total"].append(fit + stop)
        runs["lstsq"].append(lstsq())
    return {"runs": runs, "basis_columns": n_basis}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:  # must happen before numpy is imported
        for var in THREAD_VARS:
            os.environ[var] = str(args.threads)
    import numpy as np

    try:
        from optdepth.stopping import LeastSquaresPolicy
    except ImportError:  # run from a checkout without installing the package
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from optdepth.stopping import LeastSquaresPolicy

    policy = LeastSquaresPolicy("polynomial", args.degree)
    timing = time_interleaved(args, policy, np)
    runs, median = timing["runs"], statistics.median
    ratios = [a / b for a, b in zip(runs["total"], runs["lstsq"], strict=True)]
    result = {
        "benchmark": "LeastSquaresPolicy fit + stop_times",
        "shape": {"N": args.n, "T": args.t, "F": args.f, "basis_columns": timing["basis_columns"]},
        "repeats": args.repeats,
        "median_s": {
            "lsm_fit": median(runs["fit"]),
            "lsm_stop_times": median(runs["stop_times"]),
            "lsm_fit_plus_stop_times": median(runs["total"]),
            "numpy_lstsq_one_regression": median(runs["lstsq"]),
        },
        "median_ratio_lsm_to_one_lstsq": median(ratios),
        "all_s": {"lsm_total": runs["total"], "numpy_lstsq": runs["lstsq"]},
        "target_s": TARGET_SECONDS,
        "meets_target": median(runs["total"]) < TARGET_SECONDS,
        "in_sample_value": policy.in_sample_value_,
        "threads": thread_settings(),
        "platform": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "command": " ".join(["python", "benchmarks/bench_stopping.py", *(argv or sys.argv[1:])]),
    }
    report(result)
    write_json(result, args.out)
    return result


def report(result: dict[str, Any]) -> None:
    med = result["median_s"]
    shape = result["shape"]
    print(
        f"LSM on N={shape['N']:,} T={shape['T']} F={shape['F']} "
        f"({shape['basis_columns']} basis columns), median of {result['repeats']}:"
    )
    print(f"  fit              {med['lsm_fit']:8.3f} s")
    print(f"  stop_times       {med['lsm_stop_times']:8.3f} s")
    print(
        f"  fit + stop_times {med['lsm_fit_plus_stop_times']:8.3f} s   "
        f"(target < {result['target_s']:.1f} s: {'met' if result['meets_target'] else 'MISSED'})"
    )
    print(
        f"  one np.linalg.lstsq ({shape['N']:,} x {shape['basis_columns']}) "
        f"{med['numpy_lstsq_one_regression']:8.3f} s   "
        f"median ratio {result['median_ratio_lsm_to_one_lstsq']:.1f}x"
    )
    print(f"  threads: {result['threads']['env']}; pools: {result['threads']['threadpools']}")
    print(f"  load average: {result['load_average']}")


def write_json(result: dict[str, Any], path: Path) -> None:
    """Atomic write: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(result, handle, indent=2)
        tmp = Path(handle.name)
    tmp.replace(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
