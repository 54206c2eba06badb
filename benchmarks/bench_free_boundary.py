"""Accuracy, convergence order and run time of the free-boundary solver.

Cases (all references are computed without the solver):

* ``put_price`` / ``put_log``: American put K=40, r=0.06, sigma=0.2, T=1, S=36, in price space
  (x = S) and log-price space (x = log S), against a Cox–Ross–Rubinstein tree (average of n and
  n+1 steps) and, for context, the published finite-difference value 4.478 of Longstaff & Schwartz
  (2001, Table 1), itself a slightly low approximation of the continuous-exercise value.
* ``perpetual_put``: closed form V = (K - S*)(S/S*)^(-2r/sigma^2), log space, grids refined by 3
  with the free boundary mid-cell (the worst case for the error constant).
* ``two_sided``: Brownian motion with drift, discount and running cost, payoff x^2; reference
  from the smooth-fit equations (scipy ``fsolve``), two free boundaries.

Run from the repository root with nothing else busy (times are wall clock, median of repeats)::

    python benchmarks/bench_free_boundary.py --out benchmarks/results/bench_free_boundary.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy
from scipy.optimize import brentq, fsolve

from optdepth.stopping.free_boundary import solve_free_boundary

K, R, SIGMA, T, S0 = 40.0, 0.06, 0.2, 1.0, 36.0
LS2001_PUT_36 = 4.478  # Longstaff & Schwartz (2001), Rev. Fin. Stud. 14(1), Table 1, FD value
TARGET_REL_ERROR, TARGET_SECONDS = 5e-3, 5.0


def crr_put(n: int) -> float:
    """Cox–Ross–Rubinstein American put, n steps, vectorised backward induction."""
    dt = T / n
    u = math.exp(SIGMA * math.sqrt(dt))
    p = (math.exp(R * dt) - 1 / u) / (u - 1 / u)
    disc = math.exp(-R * dt)
    s = S0 * u ** (n - 2.0 * np.arange(n + 1))
    v = np.maximum(K - s, 0.0)
    for m in range(n - 1, -1, -1):
        s = s[: m + 1] / u
        v = np.maximum(disc * (p * v[:-1] + (1 - p) * v[1:]), K - s)
    return float(v[0])


def timed(fn, repeats: int):
    """Run fn() `repeats` times; return (last result, median seconds)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def orders(errors: list[float], ratio: float) -> list[float | None]:
    """Observed order between consecutive grids: log(e_k / e_{k+1}) / log(ratio)."""
    return [None] + [
        math.log(a / b) / math.log(ratio) if a > 0 and b > 0 else None
        for a, b in zip(errors[:-1], errors[1:], strict=True)
    ]


def put_case(space: str, reference: float, repeats: int) -> list[dict]:
    if space == "price":
        grids = [(161, 50), (321, 100), (641, 200), (1281, 400), (2561, 800)]
        args = (lambda x, t: R * x, lambda x, t: SIGMA * x, lambda x, t: np.maximum(K - x, 0))
        box, point = dict(x_min=0.0, x_max=4 * K), S0
    else:
        grids = [(101, 50), (201, 100), (401, 200), (801, 400), (1601, 800)]
        args = (R - SIGMA**2 / 2, SIGMA, lambda x, t: np.maximum(K - np.exp(x), 0))
        box, point = dict(x_min=math.log(S0) - 2, x_max=math.log(S0) + 2), math.log(S0)
    rows = []
    for nx, nt in grids:
        sol, sec = timed(
            lambda nx=nx, nt=nt: solve_free_boundary(*args, horizon=T, discount=R, nx=nx, nt=nt, **box),
            repeats,
        )
        value = sol.value_at(point)
        rows.append(
            dict(
                nx=nx,
                nt=nt,
                value=value,
                abs_error=abs(value - reference),
                rel_error=abs(value - reference) / reference,
                seconds=sec,
                boundary_t0=float(sol.boundary.x[0, 0]),
                mean_policy_iterations=float(sol.iterations.mean()),
            )
        )
    for row, p in zip(rows, orders([r["abs_error"] for r in rows], 2.0), strict=True):
        row["order_vs_reference"] = p
    diffs = [abs(b["value"] - a["value"]) for a, b in zip(rows[:-1], rows[1:], strict=True)]
    for row, p in zip(rows[1:], orders(diffs, 2.0), strict=True):
        row["order_self_convergence"] = p
    return rows


def perpetual_put_case(repeats: int) -> list[dict]:
    a = 2 * R / SIGMA**2
    s_star = K * a / (1 + a)
    x_min = math.log(s_star) - 3.0 - 0.1  # x* mid-cell on every grid (refinement by 3)
    rows = []
    for nx in (41, 121, 361, 1081, 3241):
        sol, sec = timed(
            lambda nx=nx: solve_free_boundary(
                R - SIGMA**2 / 2,
                SIGMA,
                lambda x, t: np.maximum(K - np.exp(x), 0),
                horizon=None,
                discount=R,
                x_min=x_min,
                x_max=x_min + 8,
                nx=nx,
            ),
            repeats,
        )
        w = (sol.x > math.log(20)) & (sol.x < math.log(80))
        s = np.exp(sol.x[w])
        exact = np.where(s <= s_star, K - s, (K - s_star) * (np.maximum(s, s_star) / s_star) ** -a)
        rows.append(
            dict(
                nx=nx,
                max_abs_error=float(np.abs(sol.values[0, w] - exact).max()),
                boundary_error_S=abs(math.exp(sol.boundary.x[0, 0]) - s_star),
                policy_iterations=int(sol.iterations[0]),
                seconds=sec,
            )
        )
    for row, p in zip(rows, orders([r["max_abs_error"] for r in rows], 3.0), strict=True):
        row["order"] = p
    return rows


def two_sided_reference(mu: float, sig: float, r: float, c: float):
    """Exact value function and boundaries (b1, b2) of the two-sided problem (smooth fit)."""
    k = math.sqrt(2 * r) / sig
    b0 = brentq(lambda b: 2 * b / (k * math.tanh(k * b)) - c / r - b * b, 1e-6, 10.0)
    l1, l2 = np.roots([sig**2 / 2, mu, -r])

    def value(p, x):
        return p[0] * np.exp(l1 * x) + p[1] * np.exp(l2 * x) - c / r

    def slope(p, x):
        return p[0] * l1 * np.exp(l1 * x) + p[1] * l2 * np.exp(l2 * x)

    def eqs(p):
        b1, b2 = p[2], p[3]
        return [value(p, b1) - b1**2, value(p, b2) - b2**2, slope(p, b1) - 2 * b1, slope(p, b2) - 2 * b2]

    a0 = b0 / (k * math.sinh(k * b0))
    p = fsolve(eqs, [a0, a0, -b0, b0], xtol=1e-13)
    return (lambda x: np.where((x > p[2]) & (x < p[3]), value(p, x), x * x)), p[2:]


def two_sided_case(repeats: int) -> list[dict]:
    mu, sig, r, c = 0.3, 1.0, 0.5, 0.2
    exact, bounds = two_sided_reference(mu, sig, r, c)
    rows = []
    for nx in (66, 131, 261, 521, 1041):
        sol, sec = timed(
            lambda nx=nx: solve_free_boundary(
                mu,
                sig,
                lambda x, t: x * x,
                horizon=None,
                discount=r,
                running_cost=c,
                x_min=-3.0,
                x_max=3.5,
                nx=nx,
            ),
            repeats,
        )
        rows.append(
            dict(
                nx=nx,
                max_abs_error=float(np.abs(sol.values[0] - exact(sol.x)).max()),
                boundary_errors=[float(e) for e in np.abs(sol.boundary.x[0] - bounds)],
                seconds=sec,
            )
        )
    for row, q in zip(rows, orders([r["max_abs_error"] for r in rows], 2.0), strict=True):
        row["order"] = q
    return rows


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_put(name: str, rows: list[dict]) -> None:
    print(f"\n{name}: American put at S=36 (K=40, r=0.06, sigma=0.2, T=1)")
    print(
        f"{'nx':>6} {'nt':>5} {'value':>10} {'rel.err %':>10} {'order':>6} {'self':>6} "
        f"{'time s':>8} {'PI/step':>7} {'S*(0)':>8}"
    )
    for r in rows:
        print(
            f"{r['nx']:>6} {r['nt']:>5} {r['value']:>10.6f} {100 * r['rel_error']:>10.4f} "
            f"{fmt(r['order_vs_reference'], '6.2f'):>6} "
            f"{fmt(r.get('order_self_convergence'), '6.2f'):>6} {r['seconds']:>8.4f} "
            f"{r['mean_policy_iterations']:>7.2f} {r['boundary_t0']:>8.4f}"
        )


def print_table(name: str, rows: list[dict], keys: list[str]) -> None:
    print(f"\n{name}")
    print(" ".join(f"{k:>18}" for k in keys))
    for r in rows:
        cells = [max(r[k]) if isinstance(r[k], list) else r[k] for k in keys]
        print(" ".join(f"{fmt(c, '18.6g'):>18}" for c in cells))
    first, last = rows[0], rows[-1]
    overall = math.log(first["max_abs_error"] / last["max_abs_error"]) / math.log(
        (last["nx"] - 1) / (first["nx"] - 1)
    )
    print(f"overall order, nx={first['nx']} -> {last['nx']}: {overall:.2f}")


def check_target(rows: list[dict]) -> dict:
    """First price-space grid under the error target, and whether it ran within the time."""
    first = next((r for r in rows if r["rel_error"] < TARGET_REL_ERROR), None)
    met = bool(first and first["seconds"] < TARGET_SECONDS)
    where = (
        (
            f" at nx={first['nx']}, nt={first['nt']}: {100 * first['rel_error']:.3f}% in "
            f"{first['seconds']:.3f} s"
        )
        if first
        else ""
    )
    print(
        f"\ntarget (rel. error < {TARGET_REL_ERROR:.1%} within {TARGET_SECONDS} s): "
        f"{'met' if met else 'MISSED'}{where}"
    )
    return dict(rel_error=TARGET_REL_ERROR, seconds=TARGET_SECONDS, met=met, first_grid=first)


def environment(repeats: int) -> dict:
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return dict(
        python=platform.python_version(),
        numpy=np.__version__,
        scipy=scipy.__version__,
        cpu_count=os.cpu_count(),
        load_average_at_end=os.getloadavg(),
        repeats=repeats,
        thread_env={k: os.environ.get(k) for k in names},
    )


def write_json(path: Path, payload: dict) -> None:
    """Write atomically: a temporary file, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_free_boundary.json"))
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--tree-steps", type=int, default=20000, help="CRR reference steps")
    args = parser.parse_args()

    start, n = time.perf_counter(), args.tree_steps
    reference = 0.5 * (crr_put(n) + crr_put(n + 1))
    print(
        f"CRR reference ({n}/{n + 1} steps, {time.perf_counter() - start:.1f} s): "
        f"{reference:.6f}; Longstaff-Schwartz 2001 FD value: {LS2001_PUT_36}"
    )
    results = {
        "put_price": put_case("price", reference, args.repeats),
        "put_log": put_case("log", reference, args.repeats),
        "perpetual_put": perpetual_put_case(args.repeats),
        "two_sided": two_sided_case(args.repeats),
    }
    print_put("price space (x = S, x in [0, 160])", results["put_price"])
    print_put("log space (x = log S, x in log 36 +- 2)", results["put_log"])
    print_table(
        "perpetual put, log space, x* mid-cell, refinement x3",
        results["perpetual_put"],
        ["nx", "max_abs_error", "order", "boundary_error_S", "policy_iterations", "seconds"],
    )
    print_table(
        "two-sided perpetual (mu=0.3, sigma=1, r=0.5, c=0.2, payoff x^2)",
        results["two_sided"],
        ["nx", "max_abs_error", "order", "boundary_errors", "seconds"],
    )
    target = check_target(results["put_price"])
    write_json(
        args.out,
        dict(
            reference=dict(crr=reference, crr_steps=n, ls2001_fd=LS2001_PUT_36),
            target=target,
            environment=environment(args.repeats),
            results=results,
        ),
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
