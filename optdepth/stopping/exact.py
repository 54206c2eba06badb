"""Exact optimal stopping for finite-state Markov chains.

In state s one may stop and receive ``reward[s]``, or pay ``cost[s]``, move by ``transition``
and have the future discounted by ``discount``. With a finite horizon H one must stop at step
H; the Bellman recursion is

    V_H = r_H,    V_t = max(r_t, -c_t + discount * P_t V_{t+1}),   t = H-1, ..., 0.

Without a horizon the stationary problem V = max(r, -c + discount * P V) is solved exactly by
policy iteration started from "stop everywhere": every iterate is the value of a stopping rule
that stops with probability one, values increase monotonically, and the result is the smallest
excessive majorant of r (the optimal value). This covers discount = 1 with zero cost on finite
chains (for example a random walk stopped at the best time). It fails with a clear error when
continuing forever would pay (for example a negative cost without discounting).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import as_float_array, check_int, check_real, check_transition

__all__ = ["BackwardInductionResult", "backward_induction"]

logger = logging.getLogger(__name__)

#: Relative tolerance for "stopping is at least as good as continuing" (ties stop).
TIE_RTOL = 1e-12


@dataclass(frozen=True)
class BackwardInductionResult:
    """Solution of a finite-state optimal stopping problem.

    Attributes:
        value: Optimal value, (H + 1, S) for a finite horizon H, (S,) for the stationary
            infinite-horizon problem.
        stop: bool, same shape: whether stopping is optimal (ties stop). ``stop[H]`` is all True.
        continuation: Value of continuing once and then acting optimally, same shape
            (-inf at step H, where continuing is not allowed).
        horizon: H, or None for the infinite horizon.
        iterations: Policy-iteration rounds (0 for a finite horizon).
    """

    value: np.ndarray
    stop: np.ndarray
    continuation: np.ndarray
    horizon: int | None
    iterations: int = 0


def _time_length(array: np.ndarray, stationary_ndim: int, offset: int) -> int | None:
    """Horizon implied by a time-varying input (None when it is stationary)."""
    return None if array.ndim == stationary_ndim else array.shape[0] - offset


def _resolve_horizon(
    horizon: Any, transition: np.ndarray, reward: np.ndarray, cost: np.ndarray
) -> int | None:
    """Checks that every time-varying input agrees on one horizon and returns it."""
    implied = {
        "transition (H, S, S)": _time_length(transition, 2, 0),
        "reward (H + 1, S)": _time_length(reward, 1, 1),
        "cost (H, S)": _time_length(cost, 1, 0),
    }
    if horizon is not None:
        horizon = check_int(horizon, "horizon", minimum=0)
        implied["horizon"] = horizon
    given = {k: v for k, v in implied.items() if v is not None}
    if len(set(given.values())) > 1:
        parts = ", ".join(f"{k} -> H={v}" for k, v in given.items())
        raise ValueError(f"inconsistent horizons: {parts}; make the time axes agree")
    return next(iter(given.values()), None)


def _check_inputs(transition: Any, reward: Any, cost: Any, discount: Any) -> tuple:
    transition = check_transition(transition)
    n_states = transition.shape[-1]
    reward = as_float_array(reward, "reward", ndim=(1, 2))
    if reward.shape[-1] != n_states:
        raise ValueError(
            f"reward has {reward.shape[-1]} states but transition has S={n_states}; reward must "
            f"be (S,) or (H + 1, S)"
        )
    cost = as_float_array(cost, "cost", ndim=(0, 1, 2))
    if cost.ndim == 0:
        cost = np.full(n_states, float(cost))
    if cost.shape[-1] != n_states:
        raise ValueError(
            f"cost has {cost.shape[-1]} states but transition has S={n_states}; cost must be "
            f"a scalar, (S,) or (H, S)"
        )
    discount = check_real(discount, "discount", low=0.0, high=1.0, low_inclusive=False)
    return transition, reward, cost, discount


def backward_induction(
    transition: Any,
    reward: Any,
    cost: Any = 0.0,
    discount: float = 1.0,
    horizon: int | None = None,
) -> BackwardInductionResult:
    """Solves an optimal stopping problem on a finite-state Markov chain exactly.

    Args:
        transition: (S, S) row-stochastic matrix, or (H, S, S) for a time-varying chain
            (``transition[t]`` moves from step t to t + 1).
        reward: (S,) reward paid on stopping in state s, or (H + 1, S) per step.
        cost: Cost of continuing: scalar, (S,), or (H, S) per step.
        discount: Discount factor in (0, 1] applied to the next step's value.
        horizon: H (one must stop at step H), or None. When None and every input is
            stationary, the infinite-horizon solution is returned; a time-varying input fixes H.

    Returns:
        :class:`BackwardInductionResult` with value/stop of shape (H + 1, S), or (S,) for the
        infinite horizon.
    """
    transition, reward, cost, discount = _check_inputs(transition, reward, cost, discount)
    h = _resolve_horizon(horizon, transition, reward, cost)
    if h is None:
        return _infinite_horizon(transition, reward, cost, discount)
    return _finite_horizon(transition, reward, cost, discount, h)


def _at(array: np.ndarray, t: int, stationary_ndim: int) -> np.ndarray:
    return array if array.ndim == stationary_ndim else array[t]


def _finite_horizon(
    transition: np.ndarray, reward: np.ndarray, cost: np.ndarray, discount: float, h: int
) -> BackwardInductionResult:
    n_states = transition.shape[-1]
    value = np.empty((h + 1, n_states))
    cont = np.full((h + 1, n_states), -np.inf)
    stop = np.ones((h + 1, n_states), dtype=bool)
    value[h] = _at(reward, h, 1)
    for t in range(h - 1, -1, -1):
        r_t = _at(reward, t, 1)
        cont[t] = -_at(cost, t, 1) + discount * (_at(transition, t, 2) @ value[t + 1])
        stop[t] = r_t >= cont[t] - TIE_RTOL * np.maximum(1.0, np.abs(r_t))
        value[t] = np.where(stop[t], r_t, cont[t])
    return _result(value, stop, cont, h, 0)


def _infinite_horizon(
    transition: np.ndarray, reward: np.ndarray, cost: np.ndarray, discount: float
) -> BackwardInductionResult:
    n_states = reward.shape[0]
    tol = TIE_RTOL * max(1.0, float(np.abs(reward).max()), float(np.abs(cost).max()))
    go = np.zeros(n_states, dtype=bool)  # start from "stop everywhere"
    value = reward.copy()
    for iteration in range(1, 2 * n_states + 50):
        cont = -cost + discount * (transition @ value)
        new_go = np.where(go, cont >= reward - tol, cont > reward + tol)  # ties keep action
        if np.array_equal(new_go, go):
            stop = reward >= cont - tol  # report ties as stops, as in the finite horizon
            logger.debug("policy iteration converged in %d rounds", iteration)
            return _result(value, stop, cont, None, iteration)
        go = new_go
        value = _evaluate(transition, reward, cost, discount, go)
    raise ValueError(
        "the infinite-horizon problem did not converge (policy iteration cycled); set "
        "discount < 1 or a positive cost, or pass a finite horizon"
    )


def _evaluate(
    transition: np.ndarray, reward: np.ndarray, cost: np.ndarray, discount: float, go: np.ndarray
) -> np.ndarray:
    """Value of "continue on ``go``, stop elsewhere" by one linear solve on the go-states."""
    value = reward.copy()
    idx = np.flatnonzero(go)
    if idx.size == 0:
        return value
    p_cc = transition[np.ix_(idx, idx)]
    rhs = -cost[idx] + discount * (transition[np.ix_(idx, np.flatnonzero(~go))] @ reward[~go])
    system = np.eye(idx.size) - discount * p_cc
    fix = (
        "continuing forever pays here, so no optimal stopping rule exists: the infinite "
        "horizon needs discount < 1 or costs > 0 (check for negative costs), or pass a finite "
        "horizon"
    )
    try:
        sol = np.linalg.solve(system, rhs)
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"the infinite-horizon problem does not converge: {fix}") from exc
    residual = np.abs(system @ sol - rhs).max()
    scale = max(1.0, float(np.abs(rhs).max()), float(np.abs(reward).max()))
    if not np.all(np.isfinite(sol)) or residual > 1e-6 * scale or np.abs(sol).max() > 1e12 * scale:
        raise ValueError(f"the infinite-horizon problem does not converge: {fix}")
    value[idx] = sol
    return value


def _result(
    value: np.ndarray, stop: np.ndarray, cont: np.ndarray, horizon: int | None, iterations: int
) -> BackwardInductionResult:
    for array in (value, stop, cont):
        array.setflags(write=False)
    return BackwardInductionResult(value, stop, cont, horizon, iterations)
