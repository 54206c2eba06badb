"""The bridge from discrete exits to continuous depth: free-boundary stopping rules on a grid.

Pipeline (:func:`bridge`), for a scalar process X observed on a depth grid s_0 < ... < s_{T-1}
(for a multi-exit network, the log-margin between its two most probable classes at each exit):

1. fit the diffusion dX = mu(X, s) ds + sigma(X, s) dW to calibration paths
   (:func:`~optdepth.stopping.diffusion_fit.fit_diffusion`, the Euler regression estimator);
2. fit the payoff p(x, s) = P(correct | X_s = x) as a logistic in x and s
   (:func:`~optdepth.stopping.diffusion_fit.fit_logistic`, pooled over the exits);
3. solve the free-boundary problem "stop at s and receive p(X_s, s), pay lam per unit depth"
   on [s_0, s_{T-1}] with :func:`~optdepth.stopping.free_boundary.solve_free_boundary`;
4. turn its stopping region into a rule on the grid: at s_k stop iff (X_{s_k}, s_k) lies in it
   (nearest solver node); stop at s_{T-1} regardless;
5. compare, on held-out paths and the realised rewards R_k = correct_k - lam * s_k, with the
   Longstaff–Schwartz policy (:class:`~optdepth.stopping.LeastSquaresPolicy`) fitted on the same
   calibration paths with X as its only feature: both means with standard errors, and their
   paired difference with its standard error.

:func:`discrete_boundary_convergence` is the synthetic check of the same correspondence: for a
known time-homogeneous diffusion, a "ResNet with T blocks of step 1/T" is the Euler–Maruyama
chain X_{k+1} = X_k + mu(X_k)/T + sigma(X_k) xi_k/sqrt(T); its optimal stopping rule, solved
exactly by backward induction on a fine state grid, has a boundary that approaches the free
boundary of the continuous problem as T grows. Numpy/scipy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr

from ._validation import as_float_array, check_int, check_real
from .base import PolicyValue, oracle_stop_times, policy_value
from .diffusion_fit import DiffusionFit, LogisticFit, check_paths, fit_diffusion, fit_logistic
from .exact import backward_induction
from .free_boundary import FreeBoundarySolution, solve_free_boundary
from .regression import LeastSquaresPolicy

__all__ = ["BoundaryRule", "BridgeResult", "ConvergenceStudy", "bridge", "bridge_margin_process",
           "discrete_boundary_convergence", "euler_chain", "free_boundary_rule", "margin_paths"]

logger = logging.getLogger(__name__)


def margin_paths(probs: Any) -> np.ndarray:
    """(N, T, C) class probabilities -> (N, T) log-margin log p_(1) - log p_(2) >= 0.

    Raises:
        ValueError: not (N, T, C) with C >= 2, or values outside [0, 1] / not finite.
    """
    probs = as_float_array(probs, "probs", ndim=3)
    if probs.shape[2] < 2 or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
        raise ValueError(f"probs must be (N, T, C) probabilities in [0, 1] with C >= 2, got shape "
                         f"{probs.shape} and range [{probs.min():.3g}, {probs.max():.3g}]")
    top2 = np.log(np.clip(np.sort(probs, axis=2)[:, :, -2:], 1e-30, None))  # (N, T, 2)
    return top2[:, :, 1] - top2[:, :, 0]


@dataclass(frozen=True, eq=False)
class BoundaryRule:
    """A free-boundary solution read as a stopping rule on a grid of decision times.

    Attributes:
        solution: the solved problem, in solver time t = s - times[0].
        times: (T,) decision times s_k (the last one forces a stop).
    """

    solution: FreeBoundarySolution
    times: np.ndarray

    def stop_matrix(self, paths: Any) -> np.ndarray:
        """(N, T) bool: whether (X_{n,k}, s_k) lies in the stopping region (nearest node)."""
        paths = as_float_array(paths, "paths", ndim=2)
        if paths.shape[1] != self.times.size:
            raise ValueError(f"paths must have T={self.times.size} columns, got shape {paths.shape}")
        sol = self.solution
        dx = sol.x[1] - sol.x[0]
        cols = np.clip(np.rint((paths - sol.x[0]) / dx), 0, sol.x.size - 1).astype(np.int64)
        rows = np.abs(sol.t[:, None] - (self.times - self.times[0])[None, :]).argmin(axis=0)  # (T,)
        stop = sol.stop_region[rows[None, :], cols]
        stop[:, -1] = True
        return stop

    def stop_times(self, paths: Any) -> np.ndarray:
        """(N,) int64 index of the first decision time in the stopping region."""
        return self.stop_matrix(paths).argmax(axis=1).astype(np.int64)


def free_boundary_rule(diffusion: DiffusionFit, payoff: Callable[[np.ndarray, float], np.ndarray],
                       times: Any, lam: float, *, x_min: float, x_max: float, nx: int = 401,
                       steps_per_interval: int = 25) -> BoundaryRule:
    """Solve "stop at s for payoff(X_s, s), pay ``lam`` per unit s" on [times[0], times[-1]].

    Args:
        diffusion: the process (drift and volatility as functions of x and s).
        payoff: reward of stopping, ``payoff(x array, s) -> array``.
        times: (T,) strictly increasing decision times.
        lam: running cost >= 0 per unit time (the price of depth).
        x_min, x_max: the solver's space grid; both edges reflect (V_x = 0).
        nx: space nodes. steps_per_interval: solver time steps per unit of min spacing of times.

    Returns:
        The :class:`BoundaryRule` (solver times aligned with ``times`` on a uniform grid).
    """
    times = as_float_array(times, "times", ndim=1)
    if times.size < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be >= 2 strictly increasing decision times, got {times.tolist()}")
    lam = check_real(lam, "lam", low=0.0)
    steps = check_int(steps_per_interval, "steps_per_interval", minimum=1)
    s0, horizon = float(times[0]), float(times[-1] - times[0])
    nt = int(np.ceil(horizon / np.diff(times).min() - 1e-9)) * steps
    sol = solve_free_boundary(lambda x, t: diffusion.drift(x, s0 + t),
                              lambda x, t: diffusion.volatility(x, s0 + t),
                              lambda x, t: payoff(x, s0 + t), horizon=horizon, running_cost=lam,
                              x_min=x_min, x_max=x_max, nx=nx, nt=nt)
    return BoundaryRule(sol, times)


@dataclass(frozen=True, eq=False)
class BridgeResult:
    """What :func:`bridge` found; :meth:`summary` is its JSON form.

    Attributes:
        diffusion, payoff: the fitted process and payoff.
        rule: the free-boundary rule; lsm: the least-squares policy (fitted on calibration).
        lam: price of depth; times: (T,) depth grid.
        values: name -> test PolicyValue (mean realised reward, standard error) for
            "free_boundary", "lsm", and the references "first", "last", "oracle".
        difference: paired free_boundary - lsm on test paths (mean, standard error).
        model_value: the PDE's own prediction, mean over test paths of V(X_0, 0) - lam s_0.
        test_paths: (N, T) held-out paths (for plots).
        mean_stop: name -> mean stopping depth on test.
    """

    diffusion: DiffusionFit
    payoff: LogisticFit
    rule: BoundaryRule
    lsm: LeastSquaresPolicy
    lam: float
    times: np.ndarray
    values: dict[str, PolicyValue]
    difference: PolicyValue
    model_value: float
    test_paths: np.ndarray
    mean_stop: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: values with standard errors, mean depth, fitted payoff."""
        out: dict[str, Any] = {name: {"mean": v.mean, "se": v.standard_error,
                                      "mean_stop_depth": self.mean_stop[name]}
                               for name, v in self.values.items()}
        out["difference"] = {"mean": self.difference.mean, "se": self.difference.standard_error,
                             "within_2_se": bool(abs(self.difference.mean)
                                                 <= 2 * self.difference.standard_error)}
        out["model_value"] = self.model_value
        out["lam"], out["times"] = self.lam, self.times.tolist()
        out["payoff"] = {"intercept": self.payoff.intercept, "slope": self.payoff.slope,
                         "depth_slope": self.payoff.depth_slope}
        out["n_test_paths"] = int(self.test_paths.shape[0])
        return out


def _check_outcomes(correct: Any, paths: np.ndarray, name: str) -> np.ndarray:
    correct = as_float_array(correct, name, ndim=2)
    if correct.shape != paths.shape or not np.all((correct == 0) | (correct == 1)):
        raise ValueError(f"{name} must be 0/1 outcomes of the paths' shape {paths.shape}, got "
                         f"shape {correct.shape}")
    return correct


def bridge(cal_paths: Any, cal_correct: Any, test_paths: Any, test_correct: Any, times: Any, *,
           lam: float, degree: int = 2, time_degree: int = 1, lsm_degree: int = 3,
           nx: int = 401) -> BridgeResult:
    """Fit the diffusion on calibration paths, solve its free boundary, compare with LSM on test.

    Args:
        cal_paths, test_paths: (N, T) process values at ``times`` (N >= 20 each).
        cal_correct, test_correct: (N, T) 0/1 outcome of stopping at each time.
        times: (T,) strictly increasing depths s_k.
        lam: price of depth (reward R_k = correct_k - lam * s_k).
        degree, time_degree: polynomial degrees of the diffusion fit.
        lsm_degree: polynomial degree of the least-squares policy's regressions.
        nx: space nodes of the free-boundary solver.

    Returns:
        A :class:`BridgeResult`.
    """
    cal_paths, times = check_paths(cal_paths, times, "cal_paths")
    test_paths, _ = check_paths(test_paths, times, "test_paths")
    cal_correct = _check_outcomes(cal_correct, cal_paths, "cal_correct")
    test_correct = _check_outcomes(test_correct, test_paths, "test_correct")
    lam = check_real(lam, "lam", low=0.0)
    diffusion = fit_diffusion(cal_paths, times, degree=degree, time_degree=time_degree)
    depth = np.broadcast_to(times, cal_paths.shape)
    payoff = fit_logistic(cal_paths.ravel(), cal_correct.ravel(), depth.ravel())
    lo = min(cal_paths.min(), test_paths.min())
    hi = max(cal_paths.max(), test_paths.max())
    rule = free_boundary_rule(diffusion, payoff, times, lam, x_min=lo, x_max=hi + 0.1 * (hi - lo),
                              nx=nx)
    lsm = LeastSquaresPolicy(degree=lsm_degree).fit(cal_correct - lam * times,
                                                    cal_paths[:, :, None])
    rewards = test_correct - lam * times  # (N, T)
    n, t = rewards.shape
    stops = {"free_boundary": rule.stop_times(test_paths),
             "lsm": lsm.stop_times(test_paths[:, :, None]),
             "first": np.zeros(n, np.int64), "last": np.full(n, t - 1, np.int64),
             "oracle": oracle_stop_times(rewards)}
    values = {name: policy_value(rewards, s) for name, s in stops.items()}
    realised = {name: rewards[np.arange(n), s] for name, s in stops.items()}
    diff = realised["free_boundary"] - realised["lsm"]
    difference = PolicyValue(float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(n)))
    model_value = float(np.mean(rule.solution.value_at(test_paths[:, 0], 0.0))) - lam * times[0]
    logger.info("bridge lam=%g: free boundary %.4f +- %.4f, LSM %.4f +- %.4f", lam,
                values["free_boundary"].mean, values["free_boundary"].standard_error,
                values["lsm"].mean, values["lsm"].standard_error)
    return BridgeResult(diffusion, payoff, rule, lsm, lam, times, values, difference, model_value,
                        test_paths, {k: float(times[s].mean()) for k, s in stops.items()})


def bridge_margin_process(cal_probs: Any, cal_labels: Any, test_probs: Any, test_labels: Any, *,
                          lam: float, times: Any | None = None, **kwargs: Any) -> BridgeResult:
    """:func:`bridge` on a multi-exit network's log-margin trajectories.

    Args:
        cal_probs, test_probs: (N, T, C) exit probabilities (e.g. ``Traces.probs``).
        cal_labels, test_labels: (N,) true classes.
        lam: price of depth per unit s.
        times: (T,) exit depths; default s_k = (k + 1) / T (a neural ODE's equal segments).
        **kwargs: passed to :func:`bridge`.
    """
    paths = {}
    for split, probs, labels in (("cal", cal_probs, cal_labels), ("test", test_probs, test_labels)):
        x = margin_paths(probs)
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"{split}_labels must have shape ({x.shape[0]},), got {labels.shape}")
        correct = (np.asarray(probs).argmax(axis=2) == labels[:, None]).astype(float)
        paths[split] = (x, correct)
    t = paths["cal"][0].shape[1]
    times = np.arange(1, t + 1) / t if times is None else times
    return bridge(*paths["cal"], *paths["test"], times, lam=lam, **kwargs)


@dataclass(frozen=True, eq=False)
class ConvergenceStudy:
    """Discrete optimal stopping of Euler chains with T steps vs the continuous free boundary.

    Attributes:
        steps: (K,) numbers of blocks T.
        max_distance: (K,) max over decision times t_k = k h / T (k < T) of the Hausdorff distance
            between the discrete rule's boundary points and the free boundary at t_k (x-units;
            points near the grid's edges excluded, see ``edge_margin``).
        value_error: (K,) max over the grid of |V_T(x, 0) - V(x, 0)| (discrete vs continuous).
        discrete: per T, a list over k < T of (t_k, boundary points array).
        solution: the continuous problem's solution.
    """

    steps: np.ndarray
    max_distance: np.ndarray
    value_error: np.ndarray
    discrete: list[list[tuple[float, np.ndarray]]]
    solution: FreeBoundarySolution

    def table(self) -> list[dict[str, float]]:
        """One row per T: max boundary distance and value error."""
        return [{"T": int(t), "max_boundary_distance": float(d), "max_value_error": float(v)}
                for t, d, v in zip(self.steps, self.max_distance, self.value_error, strict=True)]


def _switch_points(x: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring nodes where the stop decision changes."""
    i = np.flatnonzero(stop[:-1] != stop[1:])
    return 0.5 * (x[i] + x[i + 1])


def _hausdorff(a: np.ndarray, b: np.ndarray, width: float) -> float:
    """Hausdorff distance of two finite point sets; ``width`` when exactly one is empty."""
    if a.size == 0 and b.size == 0:
        return 0.0
    if a.size == 0 or b.size == 0:
        return width  # a boundary that one rule has and the other lacks: the worst case
    d = np.abs(a[:, None] - b[None, :])
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def euler_chain(x: np.ndarray, mean_step: np.ndarray, sd_step: np.ndarray) -> np.ndarray:
    """(S, S) transition of X + mean_step + sd_step * xi, xi ~ N(0, 1), binned onto the nodes
    ``x`` (cells between midpoints; the end cells take the tails, as a reflecting edge would)."""
    edges = np.concatenate([[-np.inf], 0.5 * (x[1:] + x[:-1]), [np.inf]])
    z = (edges[None, :] - (x + mean_step)[:, None]) / np.maximum(sd_step, 1e-300)[:, None]
    return np.diff(ndtr(z), axis=1)


def discrete_boundary_convergence(drift: Callable[[np.ndarray], np.ndarray],
                                  volatility: Callable[[np.ndarray], np.ndarray],
                                  payoff: Callable[[np.ndarray, float], np.ndarray], *, lam: float,
                                  x_min: float, x_max: float, horizon: float = 1.0,
                                  steps: tuple[int, ...] = (4, 8, 16, 32, 64), nx: int = 801,
                                  solver_steps: int = 512, edge_margin: float = 0.1) -> ConvergenceStudy:
    """Discrete optimal stopping rules of T-block Euler chains approach the free boundary.

    Args:
        drift, volatility: time-homogeneous mu(x), sigma(x) > 0 of the diffusion (arrays in/out).
        payoff: reward of stopping, payoff(x, t) (arrays in/out).
        lam: running cost per unit time (price of depth).
        x_min, x_max: common space grid of the chains and the solver (nx nodes).
        horizon: final time (stopping forced there).
        steps: block counts T; each must divide ``solver_steps``.
        solver_steps: time steps of the continuous solver.
        edge_margin: boundary points closer than this fraction of (x_max - x_min) to an edge are
            ignored (truncation artefacts); put the edges well outside the boundaries.

    Returns:
        A :class:`ConvergenceStudy`.
    """
    lam = check_real(lam, "lam", low=0.0)
    horizon = check_real(horizon, "horizon", low=0.0, low_inclusive=False)
    solver_steps = check_int(solver_steps, "solver_steps", minimum=1)
    edge_margin = check_real(edge_margin, "edge_margin", low=0.0, high=0.5, high_inclusive=False)
    steps = tuple(check_int(t, "steps", minimum=1) for t in steps)
    if not steps or any(solver_steps % t for t in steps):
        raise ValueError(f"every T in steps {steps} must divide solver_steps={solver_steps}")
    sol = solve_free_boundary(lambda x, t: drift(x), lambda x, t: volatility(x), payoff,
                              horizon=horizon, running_cost=lam, x_min=x_min, x_max=x_max, nx=nx,
                              nt=solver_steps)
    x, width = sol.x, x_max - x_min

    def inner(points: np.ndarray) -> np.ndarray:
        # switches next to the truncated edges, where stopping and continuing are worth the
        # same to rounding, are artefacts of the truncation, not boundaries
        margin = edge_margin * width
        return points[np.isfinite(points) & (points > x_min + margin) & (points < x_max - margin)]

    mu, sigma = np.asarray(drift(x), float), np.asarray(volatility(x), float)
    distances, value_errors, discrete = [], [], []
    for t_blocks in steps:
        h = horizon / t_blocks
        chain = euler_chain(x, mu * h, sigma * np.sqrt(h))
        chain /= chain.sum(axis=1, keepdims=True)  # exact row sums despite rounding
        rewards = np.stack([payoff(x, k * h) for k in range(t_blocks + 1)])  # (T + 1, S)
        exact = backward_induction(chain, rewards, cost=lam * h, horizon=t_blocks)
        rows, worst = [], 0.0
        for k in range(t_blocks):
            points = inner(_switch_points(x, exact.stop[k]))
            reference = inner(sol.boundary.x[k * solver_steps // t_blocks])
            worst = max(worst, _hausdorff(points, reference, width))
            rows.append((k * h, points))
        discrete.append(rows)
        distances.append(worst)
        value_errors.append(float(np.abs(exact.value[0] - sol.values[0]).max()))
    return ConvergenceStudy(np.asarray(steps), np.asarray(distances), np.asarray(value_errors),
                            discrete, sol)
