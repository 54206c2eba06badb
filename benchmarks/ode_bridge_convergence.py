"""Synthetic check: the optimal stopping rule of a T-block "ResNet" converges to the free boundary.

The margin process dX = mu dt + sigma dW (constants), stopping pays P(correct | x) =
sigmoid(x) and depth costs lam per unit. A ResNet with T blocks of step 1/T is the Euler chain
X_{k+1} = X_k + mu/T + sigma xi_k/sqrt(T); its optimal rule is solved exactly by backward
induction on the solver's space grid and compared with the continuous free boundary of
``solve_free_boundary``: the max distance between the boundaries over all decision times, and the
max value error at t = 0, for each T. Also runs the bridge on simulated paths of the same
process (fitted diffusion's free-boundary rule vs LSM, with standard errors).

    python benchmarks/ode_bridge_convergence.py

Writes benchmarks/results/ode_bridge_convergence.json and the plots
benchmarks/results/ode_bridge_convergence.png, ode_bridge_synthetic.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from optdepth.io import write_json
from optdepth.reports.continuous_plots import plot_bridge, plot_convergence
from optdepth.stopping import bridge, discrete_boundary_convergence


def sigmoid(x: np.ndarray, t: float = 0.0) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, float)))


def simulate(n: int, times: np.ndarray, mu: float, sigma: float, seed: int) -> tuple:
    """Exact paths of dX = mu dt + sigma dW from X_0 ~ N(0, 1), and Bernoulli(sigmoid(X)) outcomes."""
    rng = np.random.default_rng(seed)
    steps = np.diff(np.concatenate([[0.0], times]))
    x = rng.normal(0.0, 1.0, n)[:, None] + np.cumsum(
        mu * steps + sigma * np.sqrt(steps) * rng.normal(size=(n, times.size)), axis=1)
    correct = (rng.random(x.shape) < sigmoid(x)).astype(float)
    return x, correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mu", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--paths", type=int, default=20000, help="paths per split for the bridge")
    parser.add_argument("--nx", type=int, default=1121, help="space nodes (chains and solver)")
    parser.add_argument("--out", default="benchmarks/results/ode_bridge_convergence.json")
    args = parser.parse_args()
    start = time.perf_counter()
    study = discrete_boundary_convergence(
        lambda x: np.full_like(x, args.mu), lambda x: np.full_like(x, args.sigma), sigmoid,
        lam=args.lam, x_min=-6.0, x_max=8.0, nx=args.nx, steps=tuple(args.steps),
        solver_steps=4 * max(args.steps))
    seconds = time.perf_counter() - start
    table = study.table()
    rates = np.diff(np.log(study.max_distance)) / np.diff(np.log(study.steps))
    for row in table:
        print(f"T={row['T']:4d}: max boundary distance {row['max_boundary_distance']:.4f}, "
              f"max value error {row['max_value_error']:.2e}")
    print(f"observed orders (boundary): {np.round(-rates, 2).tolist()}  ({seconds:.1f} s)")
    out = Path(args.out)
    plot_convergence(study, out.with_suffix(".png"), shown=(4, 16, 64),
                     title=f"dX = {args.mu:g} dt + {args.sigma:g} dW, payoff sigmoid(x), λ = {args.lam:g}")
    times = np.arange(1, 9) / 8
    cal, test = (simulate(args.paths, times, args.mu, args.sigma, seed) for seed in (1, 2))
    result = bridge(*cal, *test, times, lam=args.lam)
    plot_bridge(result, out.with_name("ode_bridge_synthetic.png"),
                title="bridge on simulated paths (8 exits)")
    write_json(out, {"model": {"mu": args.mu, "sigma": args.sigma, "lam": args.lam,
                               "payoff": "sigmoid(x)", "x_grid": [-6.0, 8.0, args.nx]},
                     "convergence": table, "boundary_orders": (-rates).tolist(),
                     "seconds": seconds, "bridge_synthetic": result.summary()})
    print(json.dumps(result.summary()["difference"]))


if __name__ == "__main__":
    main()
