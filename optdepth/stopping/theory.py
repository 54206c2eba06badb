"""Diminishing returns and the finite-depth certificate (docs/mathematics.md).

If the residual updates shrink geometrically, ||F_t(h_t)|| <= K rho^t with rho < 1, and the
exit utility is L-Lipschitz in h, then one more block from depth t gains at most L K rho^t,
while it costs ``step_cost`` = lambda * Delta C. Continuing m blocks gains at most
L K (rho^t + ... + rho^(t+m-1)) <= m L K rho^t, so once L K rho^t <= step_cost no number of
further blocks pays. Hence the optimal stopping depth satisfies tau* <= ceil(t_bar) with

    t_bar = log(L K / step_cost) / log(1 / rho).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import as_float_array, check_int, check_real
from .exact import backward_induction

__all__ = [
    "DiminishingReturnsFit",
    "ResidualStoppingSimulation",
    "depth_certificate",
    "fit_diminishing_returns",
    "simulate_residual_stopping",
    "stagewise_depth_certificate",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiminishingReturnsFit:
    """Least-squares fit of log ||F_t|| = log K + t log rho.

    Attributes:
        K: Fitted scale.
        rho: Fitted per-step decay (diminishing returns iff rho < 1).
        r_squared: Coefficient of determination of the fit on the log scale.
        rmse_log: Root mean squared residual on the log scale.
        K_envelope: Smallest K' with norms <= K' rho^t at every observed point (use it for a
            certificate that holds on the data, not just on average).
        n_points: Number of (depth, norm) pairs used.
    """

    K: float
    rho: float
    r_squared: float
    rmse_log: float
    K_envelope: float
    n_points: int


def fit_diminishing_returns(residual_norms: Any, depths: Any = None) -> DiminishingReturnsFit:
    """Fits ||F_t|| ~= K * rho^t by least squares on log norms.

    Args:
        residual_norms: (T,) norms per depth, or (N, T) per sample and depth (pooled fit).
            Must be positive and finite.
        depths: (T,) depth of each column; default 0, 1, ..., T - 1.

    Returns:
        A :class:`DiminishingReturnsFit`.
    """
    norms = as_float_array(residual_norms, "residual_norms", ndim=(1, 2))
    norms = norms[None, :] if norms.ndim == 1 else norms
    n_rows, n_steps = norms.shape
    if n_rows == 0 or n_steps < 2:
        raise ValueError(f"residual_norms needs at least 2 depths and 1 sample, got shape {norms.shape}")
    if np.any(norms <= 0):
        raise ValueError(
            "residual_norms must be > 0 (they are fitted on a log scale); drop or clip zero norms"
        )
    t = np.arange(n_steps, dtype=np.float64) if depths is None else as_float_array(depths, "depths", ndim=1)
    if t.shape != (n_steps,) or np.ptp(t) == 0:
        raise ValueError(f"depths must be (T,) = ({n_steps},) with at least two distinct values")
    x = np.broadcast_to(t, norms.shape).ravel()
    y = np.log(norms).ravel()
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r_squared = 1.0 - float(np.sum(resid**2)) / total if total > 0 else 1.0
    return DiminishingReturnsFit(
        K=float(np.exp(intercept)),
        rho=float(np.exp(slope)),
        r_squared=r_squared,
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        K_envelope=float(np.exp(intercept + resid.max())),
        n_points=int(y.size),
    )


def depth_certificate(K: float, rho: float, lipschitz: float, step_cost: float) -> float:
    """Depth t_bar beyond which continuing never pays: tau* <= ceil(t_bar).

    Args:
        K: Scale of the residual-norm bound ||F_t|| <= K rho^t (> 0).
        rho: Decay per step, in (0, 1).
        lipschitz: Lipschitz constant L of the exit utility in h (>= 0).
        step_cost: Price of one more step, lambda * Delta C (> 0).

    Returns:
        t_bar = max(0, log(L K / step_cost) / log(1 / rho)).
    """
    K = check_real(K, "K", low=0.0, low_inclusive=False)
    rho = check_real(rho, "rho", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    lipschitz = check_real(lipschitz, "lipschitz", low=0.0)
    step_cost = check_real(step_cost, "step_cost", low=0.0, low_inclusive=False)
    if lipschitz * K <= step_cost:
        return 0.0
    return math.log(lipschitz * K / step_cost) / math.log(1.0 / rho)


def stagewise_depth_certificate(starts: Any, K: Any, rho: Any, lipschitz: float,
                                step_cost: float) -> float:
    """The certificate of :func:`depth_certificate` when the decay restarts at each stage.

    Within stage s (blocks t_s ≤ t < t_{s+1}) the one-block gain is at most L·K_s·ρ_s^(t − t_s);
    the last stage is taken to go on for ever (a deeper net of the same stages). Continuing
    past t̄ never pays, with t̄ the last depth at which some stage's bound still exceeds the
    step cost: t_s + log(L K_s / c) / log(1/ρ_s) for the last stage s with L·K_s > c, cut at
    that stage's end unless it is the last stage. With a single stage this is
    :func:`depth_certificate`.

    Args:
        starts: (S,) first block index of each stage, increasing from 0.
        K, rho: (S,) the stages' fitted scales (> 0) and decays (ρ_s ≥ 1: the stage does not
            decay, so its bound holds to its end).
        lipschitz: L ≥ 0.
        step_cost: λ·ΔC > 0.

    Returns:
        t̄ as a block index (0 when no block's bound exceeds the cost; inf when the last stage
        that exceeds it does not decay).
    """
    starts = as_float_array(starts, "starts", ndim=1)
    K, rho = as_float_array(K, "K", ndim=1), as_float_array(rho, "rho", ndim=1)
    if not (len(starts) == len(K) == len(rho) >= 1) or starts[0] != 0 or np.any(np.diff(starts) <= 0):
        raise ValueError(f"starts, K and rho must be (S,) arrays of one length, starts increasing"
                         f" from 0; got starts {starts.tolist()}, {len(K)} K and {len(rho)} rho")
    lipschitz = check_real(lipschitz, "lipschitz", low=0.0)
    step_cost = check_real(step_cost, "step_cost", low=0.0, low_inclusive=False)
    for s in range(len(starts) - 1, -1, -1):
        if lipschitz * K[s] <= step_cost:
            continue
        end = math.inf if s == len(starts) - 1 else starts[s + 1] - starts[s] - 1
        if end == 0:  # a one-block stage: its block is the last whose bound exceeds the cost
            return float(starts[s])
        if rho[s] >= 1:  # no decay within the stage: the bound holds to its end
            return float(starts[s] + end)
        return float(starts[s] + min(depth_certificate(float(K[s]), float(rho[s]), lipschitz,
                                                       step_cost), end))
    return 0.0


@dataclass(frozen=True)
class ResidualStoppingSimulation:
    """Optimal stopping depths of a synthetic residual process for growing horizons.

    Attributes:
        horizons: (H,) horizons T (maximum depths) simulated.
        t_bar: The certificate :func:`depth_certificate` for the process's K, rho, L, cost.
        mean_stop: (H,) mean optimal stopping depth E[tau*] over simulated paths.
        max_stop: (H,) largest optimal stopping depth seen.
        value: (H,) exact optimal expected gain E[R_tau* - R_0].
        infinite_mean_stop: E[tau*] under the stationary (infinite-horizon) optimal rule.
    """

    horizons: np.ndarray
    t_bar: float
    mean_stop: np.ndarray
    max_stop: np.ndarray
    value: np.ndarray
    infinite_mean_stop: float


def _residual_chain(
    K: float, rho: float, lipschitz: float, step_cost: float, p_up: float, p_fast: float, t_bar: float
) -> tuple[np.ndarray, np.ndarray]:
    """Transition (S, S) over decay levels j and the cost of continuing from each level."""
    n_levels = int(math.ceil(t_bar)) + 3  # the last level is absorbing with zero residual
    norms = K * rho ** np.arange(n_levels, dtype=np.float64)
    norms[-1] = 0.0
    transition = np.zeros((n_levels, n_levels))
    for j in range(n_levels):
        transition[j, min(j + 1, n_levels - 1)] += 1.0 - p_fast
        transition[j, min(j + 2, n_levels - 1)] += p_fast
    expected_gain = lipschitz * norms * (2.0 * p_up - 1.0)
    return transition, step_cost - expected_gain


def _simulate_levels(stop: np.ndarray, n_paths: int, p_fast: float, seed: int) -> np.ndarray:
    """Stop depths of paths of the level chain started at level 0 under ``stop`` (H+1, S)."""
    rng = np.random.default_rng(seed)
    n_last = stop.shape[1] - 1
    level = np.zeros(n_paths, dtype=np.int64)
    depth = np.full(n_paths, stop.shape[0] - 1, dtype=np.int64)
    active = np.arange(n_paths)
    for t in range(stop.shape[0]):
        halt = stop[t, level[active]]
        depth[active[halt]] = t
        active = active[~halt]
        if active.size == 0:
            break
        level[active] = np.minimum(level[active] + 1 + (rng.random(active.size) < p_fast), n_last)
    return depth


def simulate_residual_stopping(
    horizons: Sequence[int] = (10, 100, 1000, 10_000),
    *,
    K: float = 1.0,
    rho: float = 0.8,
    lipschitz: float = 1.0,
    step_cost: float = 0.01,
    p_up: float = 0.75,
    p_fast: float = 0.5,
    n_paths: int = 10_000,
    seed: int = 0,
) -> ResidualStoppingSimulation:
    """Exact optimal stopping depths of a synthetic residual process as the horizon grows.

    The residual norm at depth t is K rho^(j_t), where the decay level j_t starts at 0 and
    grows by 1 (or, with probability ``p_fast``, by 2) per block, so ||F_t|| <= K rho^t. One
    more block moves the exit utility by +L ||F_t|| with probability ``p_up`` and by
    -L ||F_t|| otherwise (an L-Lipschitz utility) and costs ``step_cost``. The level is
    observed. The problem is a finite Markov chain over levels, solved exactly by
    :func:`~optdepth.stopping.backward_induction` for every horizon; stop depths are then
    simulated on ``n_paths`` paths.

    Returns:
        A :class:`ResidualStoppingSimulation`; its ``max_stop`` stays <= ceil(t_bar) and its
        ``mean_stop`` stops changing once the horizon exceeds t_bar.
    """
    horizons_arr = np.array([check_int(h, "horizons[i]", minimum=1) for h in horizons])
    if horizons_arr.size == 0:
        raise ValueError("horizons must list at least one horizon")
    p_up = check_real(p_up, "p_up", low=0.0, high=1.0)
    p_fast = check_real(p_fast, "p_fast", low=0.0, high=1.0)
    n_paths = check_int(n_paths, "n_paths", minimum=1)
    t_bar = depth_certificate(K, rho, lipschitz, step_cost)
    transition, cost = _residual_chain(K, rho, lipschitz, step_cost, p_up, p_fast, t_bar)
    zeros = np.zeros(transition.shape[0])  # rewards measured relative to R_0
    means, maxima, values = [], [], []
    for h in horizons_arr:
        solved = backward_induction(transition, zeros, cost=cost, horizon=int(h))
        depth = _simulate_levels(solved.stop, n_paths, p_fast, seed)
        means.append(depth.mean())
        maxima.append(depth.max())
        values.append(solved.value[0, 0])
    stationary = backward_induction(transition, zeros, cost=cost).stop
    # Levels grow by >= 1 per block and the last level always stops, so S + 1 steps suffice.
    depth_inf = _simulate_levels(np.tile(stationary, (len(stationary) + 1, 1)), n_paths, p_fast, seed)
    logger.debug("residual simulation: t_bar=%.3g, E[tau*]=%s", t_bar, means)
    return ResidualStoppingSimulation(
        horizons=horizons_arr,
        t_bar=t_bar,
        mean_stop=np.array(means),
        max_stop=np.array(maxima),
        value=np.array(values),
        infinite_mean_stop=float(depth_inf.mean()),
    )
