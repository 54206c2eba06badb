"""Fit a one-dimensional diffusion and a logistic payoff to trajectories on a time grid.

Given N paths of a scalar process observed at times s_0 < ... < s_{T-1} (for a network: a
confidence margin at the exit depths), :func:`fit_diffusion` estimates

    dX = mu(X, s) ds + sigma(X, s) dW

by the Euler (discretised-likelihood) regression estimator: with increments
dX_k = X_{k+1} - X_k over ds_k,

* drift: weighted least squares of dX_k / ds_k on a polynomial basis phi(X_k, s_k) (weights
  ds_k, since Var(dX_k / ds_k) = sigma^2 / ds_k), so E[dX_k | X_k] = mu(X_k, s_k) ds_k + O(ds^2);
* variance: least squares of (dX_k - mu(X_k, s_k) ds_k)^2 / ds_k on the same basis, since its
  conditional mean is sigma^2(X_k, s_k) + O(ds); the fit is floored at ``variance_floor`` times
  the mean squared-increment rate, because a polynomial can dip below zero where data are thin.

The basis is the tensor product of powers of the standardised state (degree ``degree``) and of the
time (degree ``time_degree``). Outside the range of observed states the state is clamped to that
range before the basis is applied, so the fitted coefficients stay bounded and constant there
rather than following a polynomial's extrapolation. :func:`fit_logistic` fits
P(y = 1 | x, s) = sigmoid(a + b x + c s) by Newton's method (the payoff "probability that the
prediction is correct given the margin"). Both are numpy only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.polynomial import polynomial as P

from ._basis import ridge_solve
from ._validation import as_float_array, check_int, check_real

__all__ = ["DiffusionFit", "LogisticFit", "check_paths", "fit_diffusion", "fit_logistic"]

logger = logging.getLogger(__name__)

#: Fewest paths accepted: the regressions need many more rows than basis terms.
MIN_PATHS = 20


def check_paths(paths: Any, times: Any, name: str = "paths") -> tuple[np.ndarray, np.ndarray]:
    """Check (N, T) finite paths, N >= MIN_PATHS, T >= 2, on (T,) strictly increasing times."""
    paths = as_float_array(paths, name, ndim=2)
    n, t = paths.shape
    if n < MIN_PATHS:
        raise ValueError(f"{name} has {n} paths; at least {MIN_PATHS} are needed to fit a diffusion "
                         f"(pass more samples)")
    if t < 2:
        raise ValueError(f"{name} must have T >= 2 time points (columns), got shape ({n}, {t})")
    times = as_float_array(times, "times", ndim=1)
    if times.shape != (t,):
        raise ValueError(f"times must have shape ({t},) to match {name} of shape ({n}, {t}), "
                         f"got {times.shape}")
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"times must be strictly increasing, got {times.tolist()}")
    return paths, times


@dataclass(frozen=True)
class DiffusionFit:
    """A fitted dX = mu(X, s) ds + sigma(X, s) dW; callables take (x array, s float).

    Attributes:
        drift_coef: (degree + 1, time_degree + 1) coefficients of mu in the scaled basis.
        variance_coef: same shape, coefficients of sigma^2.
        center, scale: x is standardised as (x - center) / scale before the basis.
        x_range: (lo, hi): states are clamped to this observed range before the basis.
        time_range: (s_first, s_last) of the observation grid.
        variance_floor: smallest sigma^2 returned.
    """

    drift_coef: np.ndarray
    variance_coef: np.ndarray
    center: float
    scale: float
    x_range: tuple[float, float]
    time_range: tuple[float, float]
    variance_floor: float

    def _basis_eval(self, coef: np.ndarray, x: np.ndarray, s: float | np.ndarray) -> np.ndarray:
        z = (np.clip(x, *self.x_range) - self.center) / self.scale
        s = np.clip(np.broadcast_to(s, z.shape), *self.time_range)
        return P.polyval2d(z, s, coef)

    def drift(self, x: np.ndarray, s: float = 0.0) -> np.ndarray:
        """mu(x, s) in x-units per unit time, shape of ``x``."""
        return self._basis_eval(self.drift_coef, np.asarray(x, float), s)

    def variance(self, x: np.ndarray, s: float = 0.0) -> np.ndarray:
        """sigma^2(x, s) >= variance_floor, shape of ``x``."""
        return np.maximum(self._basis_eval(self.variance_coef, np.asarray(x, float), s),
                          self.variance_floor)

    def volatility(self, x: np.ndarray, s: float = 0.0) -> np.ndarray:
        """sigma(x, s) > 0 in x-units per sqrt(unit time), shape of ``x``."""
        return np.sqrt(self.variance(x, s))


def fit_diffusion(paths: Any, times: Any, *, degree: int = 2, time_degree: int = 1,
                  variance_floor: float = 0.01, ridge: float = 1e-8) -> DiffusionFit:
    """Fit drift and volatility of a 1-D diffusion to paths by regression of increments.

    Args:
        paths: (N, T) observations X_{n, k} at ``times``; N >= :data:`MIN_PATHS`, T >= 2.
        times: (T,) strictly increasing observation times s_k.
        degree: polynomial degree in the state.
        time_degree: polynomial degree in time (0: time-homogeneous coefficients).
        variance_floor: floor of sigma^2 as a fraction of the mean squared-increment rate.
        ridge: ridge penalty of the least-squares solves (numerical safety only).

    Returns:
        The fitted :class:`DiffusionFit`.

    Raises:
        ValueError: malformed or non-finite paths or times, too few paths, bad degrees, or
            paths that never move (no variance to fit).
    """
    paths, times = check_paths(paths, times)
    degree = check_int(degree, "degree", minimum=0, maximum=6)
    time_degree = check_int(time_degree, "time_degree", minimum=0, maximum=3)
    variance_floor = check_real(variance_floor, "variance_floor", low=0.0, high=1.0,
                                low_inclusive=False)
    x0, dx = paths[:, :-1], np.diff(paths, axis=1)  # (N, T-1) each
    ds = np.broadcast_to(np.diff(times), x0.shape)
    s0 = np.broadcast_to(times[:-1], x0.shape)
    rate = float(np.mean(dx**2 / ds))
    if rate == 0.0:
        raise ValueError("paths never move (all increments are zero): there is no diffusion to fit")
    center, scale = float(x0.mean()), float(x0.std()) or 1.0
    x_range = (float(x0.min()), float(x0.max()))
    z = (x0.ravel() - center) / scale
    design = P.polyvander2d(z, s0.ravel(), [degree, time_degree])  # (n, (d+1)(td+1))
    root = np.sqrt(ds.ravel())[:, None]  # weights ds for the drift regression
    drift = ridge_solve(design * root, [(dx / ds).ravel() * root[:, 0]], ridge, False)[:, 0]
    resid = dx.ravel() - (design @ drift) * ds.ravel()
    var = ridge_solve(design, [resid**2 / ds.ravel()], ridge, False)[:, 0]
    shape = (degree + 1, time_degree + 1)
    fit = DiffusionFit(drift.reshape(shape), var.reshape(shape), center, scale, x_range,
                       (float(times[0]), float(times[-2])), variance_floor * rate)
    logger.debug("diffusion fit on %d increments: mean sigma^2 %.4g", dx.size, rate)
    return fit


@dataclass(frozen=True)
class LogisticFit:
    """P(y = 1 | x, s) = sigmoid(intercept + slope * x + depth_slope * s)."""

    intercept: float
    slope: float
    depth_slope: float

    def __call__(self, x: np.ndarray, s: float | np.ndarray = 0.0) -> np.ndarray:
        z = self.intercept + self.slope * np.asarray(x, float) + self.depth_slope * np.asarray(s, float)
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow


def fit_logistic(x: Any, y: Any, s: Any | None = None, *, ridge: float = 1e-6,
                 max_iter: int = 100) -> LogisticFit:
    """Logistic regression of binary ``y`` on ``x`` (and ``s``) by Newton's method.

    Args:
        x: (n,) covariate (e.g. a margin).
        y: (n,) outcomes in {0, 1} (e.g. whether the exit is correct).
        s: optional (n,) second covariate (e.g. depth); None fits depth_slope = 0.
        ridge: ridge penalty on the slopes (keeps separable data finite).
        max_iter: Newton iterations at most.

    Raises:
        ValueError: shapes disagree, values not finite, or y not in {0, 1}.
    """
    x = as_float_array(x, "x", ndim=1)
    y = as_float_array(y, "y", ndim=1)
    if y.shape != x.shape or not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y must be 0/1 outcomes of the same shape as x {x.shape}, got {y.shape}")
    cols = [np.ones_like(x), x] + ([] if s is None else [as_float_array(s, "s", ndim=1)])
    if cols[-1].shape != x.shape:
        raise ValueError(f"s must have the shape of x {x.shape}, got {cols[-1].shape}")
    design = np.stack(cols, axis=1)  # (n, p)
    beta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], ridge * len(x))
    penalty[0] = 0.0
    for _ in range(max_iter):
        p = 0.5 * (1.0 + np.tanh(0.5 * design @ beta))
        grad = design.T @ (p - y) + penalty * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    depth_slope = 0.0 if s is None else float(beta[2])
    return LogisticFit(float(beta[0]), float(beta[1]), depth_slope)
