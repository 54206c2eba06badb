"""The utility/compute frontier over the price of compute and target-based operating points."""

from __future__ import annotations

import numpy as np
import pytest

from optdepth.stopping import Frontier, ThresholdPolicy, frontier, operating_point

COST = np.linspace(0.1, 1.0, 8)  # cumulative compute per exit, full depth = 1


def _exits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-exit-like data: correctness per exit and a noisy confidence feature."""
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0, 1, (n, 1))
    p_correct = 1 / (1 + np.exp(-8 * (np.linspace(0, 1, 8)[None, :] - difficulty + 0.3)))
    correct = (rng.uniform(size=(n, 8)) < p_correct).astype(float)
    confidence = p_correct + 0.05 * rng.standard_normal((n, 8))
    return correct, confidence[:, :, None]


def test_frontier_traces_cost_and_utility_for_every_lambda():
    utility, features = _exits(2000, seed=0)
    result = frontier(utility, COST, features, policy="threshold", lambdas=[0.0, 0.05, 0.2, 1.0, 10.0])
    assert isinstance(result, Frontier) and result.in_sample
    assert result.lambdas.shape == result.mean_cost.shape == result.mean_utility.shape == (5,)
    assert len(result.policies) == 5 and all(isinstance(p, ThresholdPolicy) for p in result.policies)
    # Exact in-sample maximisers: cost can only fall as compute gets dearer.
    assert np.all(np.diff(result.mean_cost) <= 1e-12)
    # At lambda = 0 the fitted policy is at least as good as always running to the end.
    assert result.mean_utility[0] >= result.last_step_utility - 1e-12
    assert result.last_step_cost == pytest.approx(1.0)
    # A huge price of compute stops everything at the first exit.
    assert result.mean_cost[-1] == pytest.approx(COST[0])
    assert result.pareto[0] and result.pareto[-1]


def test_operating_point_meets_the_target_on_calibration_data():
    utility, features = _exits(3000, seed=1)
    calibration = _exits(3000, seed=2)
    result = frontier(
        utility, COST, features, policy="least_squares", calibration=(*calibration[:1], COST, calibration[1])
    )
    assert not result.in_sample and result.lambdas[0] == 0.0 and result.lambdas.size == 41
    # Out of sample even lambda = 0 may lose a little utility (in-sample optimism): ask for 1 pt.
    point = operating_point(result, max_utility_loss=0.01)
    assert point.utility_loss <= 0.01 + 1e-12
    feasible = result.utility_loss <= 0.01 + 1e-12
    assert point.mean_cost == pytest.approx(result.mean_cost[feasible].min())
    assert point.policy is result.policies[point.index]
    assert point.mean_cost < 0.9  # early exits save compute at that tolerance
    budget = operating_point(result, cost_budget=0.5)
    within = result.mean_cost <= 0.5 + 1e-12
    assert budget.mean_cost <= 0.5 + 1e-12
    assert budget.mean_utility == pytest.approx(result.mean_utility[within].max())


def test_operating_point_errors_and_factories():
    utility, features = _exits(500, seed=3)
    result = frontier(utility, COST, features, policy=lambda: ThresholdPolicy(0), lambdas=[0.0, 0.1])
    with pytest.raises(ValueError, match="exactly one target"):
        operating_point(result)
    with pytest.raises(ValueError, match="exactly one target"):
        operating_point(result, max_utility_loss=0.1, cost_budget=0.5)
    with pytest.raises(ValueError, match=r"no point of the frontier meets mean cost <= 0.01"):
        operating_point(result, cost_budget=0.01)
    with pytest.raises(ValueError, match="policy_kwargs only apply"):
        frontier(utility, COST, features, policy=lambda: ThresholdPolicy(0), policy_kwargs={"a": 1})
    with pytest.raises(ValueError, match="unknown policy"):
        frontier(utility, COST, features, policy="nope")
    with pytest.raises(ValueError, match=r"cost must be \(T,\) or \(N, T\)"):
        frontier(utility, COST[:5], features)
    with pytest.raises(ValueError, match="lambdas must be a non-empty 1-D array of prices >= 0"):
        frontier(utility, COST, features, lambdas=[-1.0])
    with pytest.raises(ValueError, match="calibration features has N=4 along axis 0 but 3 is required"):
        frontier(utility, COST, features, calibration=(utility[:3], COST, features[:4]))
