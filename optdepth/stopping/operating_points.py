"""Operating points: the utility/compute frontier traced by the price of compute lambda.

For each lambda a policy is fitted to rewards = utility - lambda * cost and evaluated (on
calibration data when given) by its mean cost and mean utility. :func:`operating_point` then
picks the lambda that meets a target: the largest allowed utility loss relative to always
running to the last step, or a compute budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import as_float_array, check_features, check_real, check_rewards
from .base import StoppingPolicy
from .registry import create_policy

__all__ = ["Frontier", "OperatingPoint", "frontier", "operating_point"]

logger = logging.getLogger(__name__)

PolicyFactory = Callable[[], StoppingPolicy]


@dataclass(frozen=True)
class Frontier:
    """Mean cost and mean utility of the policy fitted at each price of compute.

    Attributes:
        lambdas: (K,) prices of compute, ascending.
        mean_cost: (K,) mean cost at the stop times (evaluation data).
        mean_utility: (K,) mean utility at the stop times.
        utility_se: (K,) standard error of ``mean_utility``.
        mean_stop: (K,) mean stop step.
        pareto: (K,) bool, points not dominated (lower-or-equal cost with higher utility).
        last_step_utility: Mean utility of always stopping at the last step.
        last_step_cost: Mean cost of always stopping at the last step.
        policies: The K fitted policies.
        in_sample: True when evaluated on the fitting data (no calibration data given).
    """

    lambdas: np.ndarray
    mean_cost: np.ndarray
    mean_utility: np.ndarray
    utility_se: np.ndarray
    mean_stop: np.ndarray
    pareto: np.ndarray
    last_step_utility: float
    last_step_cost: float
    policies: tuple[StoppingPolicy, ...]
    in_sample: bool

    @property
    def utility_loss(self) -> np.ndarray:
        """(K,) utility lost relative to always running to the last step."""
        return self.last_step_utility - self.mean_utility


@dataclass(frozen=True)
class OperatingPoint:
    """The chosen point of a :class:`Frontier`.

    Attributes:
        index: Position in the frontier arrays.
        lam: The chosen price of compute.
        mean_cost: Mean cost there.
        mean_utility: Mean utility there.
        utility_loss: ``last_step_utility - mean_utility``.
        policy: The policy fitted at ``lam``.
    """

    index: int
    lam: float
    mean_cost: float
    mean_utility: float
    utility_loss: float
    policy: StoppingPolicy


def _as_cost(cost: Any, n_paths: int, n_steps: int, name: str) -> np.ndarray:
    """Cost (T,) or (N, T) -> (N, T)."""
    array = as_float_array(cost, name, ndim=(1, 2))
    if array.ndim == 1:
        array = np.broadcast_to(array, (n_paths, array.shape[0]))
    if array.shape != (n_paths, n_steps):
        raise ValueError(
            f"{name} must be (T,) or (N, T) = ({n_paths}, {n_steps}) to match the utility, got {array.shape}"
        )
    return array


def _check_data(utility: Any, cost: Any, features: Any, prefix: str) -> tuple:
    utility = check_rewards(utility, f"{prefix}utility")
    n_paths, n_steps = utility.shape
    cost = _as_cost(cost, n_paths, n_steps, f"{prefix}cost")
    features = check_features(features, n_paths, n_steps, name=f"{prefix}features")
    return utility, cost, features


def _default_lambdas(utility: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """0 and 40 geometric prices up to lambda_max = utility range / smallest cost step.

    Beyond lambda_max no utility gain can pay for one more step, so every policy stops at
    step 0; the grid spans three decades below it.
    """
    u_span = float(np.ptp(utility))
    steps = np.diff(cost.mean(axis=0))
    positive = steps[steps > 0]
    top = (u_span if u_span > 0 else 1.0) / (positive.min() if positive.size else 1.0)
    return np.r_[0.0, np.geomspace(1e-3 * top, top, 40)]


def _factory(policy: str | PolicyFactory, policy_kwargs: dict[str, Any]) -> PolicyFactory:
    if isinstance(policy, str):
        create_policy(policy, **policy_kwargs)  # validates name and options once, up front
        return lambda: create_policy(policy, **policy_kwargs)
    if callable(policy):
        if policy_kwargs:
            raise ValueError("policy_kwargs only apply when policy is a registry name")
        return policy
    raise ValueError(
        f"policy must be a registry name or a zero-argument callable returning a new "
        f"StoppingPolicy, got {policy!r}"
    )


def frontier(
    utility: Any,
    cost: Any,
    features: Any,
    *,
    policy: str | PolicyFactory = "least_squares",
    lambdas: Any = None,
    calibration: tuple[Any, Any, Any] | None = None,
    policy_kwargs: dict[str, Any] | None = None,
) -> Frontier:
    """Traces the (mean cost, mean utility) frontier over prices of compute.

    Args:
        utility: (N, T) utility of stopping at each step (e.g. correctness of exit t).
        cost: (T,) or (N, T) cumulative cost of reaching step t (e.g. normalised FLOPs).
        features: (N, T, F) observable features.
        policy: Registry name (see :func:`~optdepth.stopping.list_policies`) or a
            zero-argument callable returning a fresh policy.
        lambdas: (K,) non-negative prices of compute; default 0 plus 40 geometric values
            spanning three decades below the price at which every policy stops at step 0.
        calibration: Optional (utility, cost, features) to evaluate on; default: the fit data.
        policy_kwargs: Constructor options when ``policy`` is a name.

    Returns:
        A :class:`Frontier`.
    """
    utility, cost, features = _check_data(utility, cost, features, "")
    make = _factory(policy, dict(policy_kwargs or {}))
    if lambdas is None:
        lambdas = _default_lambdas(utility, cost)
    lambdas = np.sort(as_float_array(lambdas, "lambdas", ndim=1))
    if lambdas.size == 0 or lambdas.min() < 0:
        raise ValueError("lambdas must be a non-empty 1-D array of prices >= 0")
    if calibration is None:
        evaluation = (utility, cost, features)
    else:
        if not isinstance(calibration, tuple) or len(calibration) != 3:
            raise ValueError("calibration must be a tuple (utility, cost, features)")
        evaluation = _check_data(*calibration, prefix="calibration ")
    policies = [make().fit(utility - lam * cost, features) for lam in lambdas]
    mean_cost, mean_utility, utility_se, mean_stop = _evaluate(policies, *evaluation)
    logger.debug("frontier: %d lambdas, cost %.3g..%.3g", lambdas.size, mean_cost.min(), mean_cost.max())
    return Frontier(
        lambdas=lambdas,
        mean_cost=mean_cost,
        mean_utility=mean_utility,
        utility_se=utility_se,
        mean_stop=mean_stop,
        pareto=_pareto(mean_cost, mean_utility),
        last_step_utility=float(evaluation[0][:, -1].mean()),
        last_step_cost=float(evaluation[1][:, -1].mean()),
        policies=tuple(policies),
        in_sample=calibration is None,
    )


def _evaluate(
    policies: list[StoppingPolicy], utility: np.ndarray, cost: np.ndarray, features: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Mean cost, mean utility, its standard error and mean stop step of each policy, (K,)."""
    rows = np.arange(utility.shape[0])
    stats = []
    for fitted in policies:
        times = fitted.stop_times(features)
        u = utility[rows, times]
        se = float(u.std(ddof=1) / np.sqrt(u.size)) if u.size > 1 else float("nan")
        stats.append((cost[rows, times].mean(), u.mean(), se, times.mean()))
    return tuple(np.array(column) for column in zip(*stats, strict=True))


def _pareto(cost: np.ndarray, utility: np.ndarray) -> np.ndarray:
    """Points with no other point of lower-or-equal cost and strictly higher utility."""
    better = (cost[None, :] <= cost[:, None]) & (utility[None, :] > utility[:, None])
    return ~better.any(axis=1)


def operating_point(
    result: Frontier,
    *,
    max_utility_loss: float | None = None,
    cost_budget: float | None = None,
) -> OperatingPoint:
    """Picks the frontier point that meets one target.

    Args:
        result: A :class:`Frontier` (evaluated on calibration data, ideally).
        max_utility_loss: Largest allowed ``last_step_utility - mean_utility``; the cheapest
            point within it is chosen (ties: higher utility).
        cost_budget: Largest allowed mean cost; the highest-utility point within it is chosen
            (ties: lower cost).

    Returns:
        The chosen :class:`OperatingPoint`.
    """
    if not isinstance(result, Frontier):
        raise ValueError(f"result must be a Frontier from frontier(...), got {type(result)}")
    if (max_utility_loss is None) == (cost_budget is None):
        raise ValueError("pass exactly one target: max_utility_loss=... or cost_budget=...")
    loss = result.utility_loss
    if max_utility_loss is not None:
        target = check_real(max_utility_loss, "max_utility_loss")
        feasible = loss <= target + 1e-12
        key = np.lexsort((-result.mean_utility, result.mean_cost))  # cost asc, utility desc
        what = f"utility loss <= {target:g} (smallest achievable loss {loss.min():.4g})"
    else:
        budget = check_real(cost_budget, "cost_budget")
        feasible = result.mean_cost <= budget + 1e-12
        key = np.lexsort((result.mean_cost, -result.mean_utility))  # utility desc, cost asc
        what = f"mean cost <= {budget:g} (smallest achievable cost {result.mean_cost.min():.4g})"
    candidates = [int(i) for i in key if feasible[i]]
    if not candidates:
        raise ValueError(f"no point of the frontier meets {what}; loosen the target or add lambdas")
    i = candidates[0]
    return OperatingPoint(
        index=i,
        lam=float(result.lambdas[i]),
        mean_cost=float(result.mean_cost[i]),
        mean_utility=float(result.mean_utility[i]),
        utility_loss=float(loss[i]),
        policy=result.policies[i],
    )
