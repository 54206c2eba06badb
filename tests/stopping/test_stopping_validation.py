"""Bad input gives a ValueError that names the argument and says how to fix it."""

from __future__ import annotations

import numpy as np
import pytest

from optdepth.stopping import (
    LeastSquaresPolicy,
    NotFittedError,
    OneStepLookaheadPolicy,
    PatiencePolicy,
    ThresholdPolicy,
    backward_induction,
    create_policy,
    depth_certificate,
    fit_diminishing_returns,
    oracle_stop_times,
    policy_value,
)

RNG = np.random.default_rng(0)
REWARDS = RNG.standard_normal((20, 5))
FEATURES = RNG.standard_normal((20, 5, 3))


@pytest.mark.parametrize("name", ["least_squares", "one_step_lookahead", "threshold", "patience"])
@pytest.mark.parametrize(
    ("rewards", "features", "match"),
    [
        (REWARDS, FEATURES[:19], "features has N=19"),
        (REWARDS, FEATURES[:, :4], "features has T=4"),
        (REWARDS[:, :1], FEATURES[:, :1], "T=1 step"),
        (REWARDS[:0], FEATURES[:0], "N=0 paths"),
        (REWARDS[:, 0], FEATURES, "rewards must be 2-D"),
        (np.where(np.eye(20, 5) > 0, np.nan, REWARDS), FEATURES, "rewards contains NaN or inf"),
        (REWARDS, np.where(FEATURES > 2.5, np.inf, FEATURES), "features contains NaN or inf"),
        (REWARDS, np.ones((20, 5, 3, 1)), "features must be 2-D or 3-D"),
        ([["a", "b"], ["c", "d"]], FEATURES, "rewards must be a numeric array"),
    ],
)
def test_fit_rejects_bad_arrays(name, rewards, features, match):
    with pytest.raises(ValueError, match=match):
        create_policy(name).fit(rewards, features)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"basis": "fourier"}, "unknown basis 'fourier'"),
        ({"basis": 3}, "unknown basis"),
        ({"degree": -1}, "degree must be >= 0"),
        ({"degree": 2.5}, "degree must be an integer"),
        ({"ridge": -1.0}, "ridge must be >= 0"),
        ({"ridge": float("nan")}, "ridge must be finite"),
        ({"history": -1}, "history must be >= 0"),
        ({"regressors": []}, "regressors must name at least one"),
        ({"standardize": "yes"}, "standardize must be True or False"),
        ({"immediate": "observe"}, "immediate must be 'regress'"),
        ({"immediate": -2}, "immediate must be >= 0"),
        ({"in_the_money": True}, "in_the_money=True needs an observed immediate"),
    ],
)
def test_lsm_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LeastSquaresPolicy(**kwargs)


def test_too_many_basis_terms_is_a_clear_error():
    features = RNG.standard_normal((20, 5, 12))
    with pytest.raises(ValueError, match="has 1820 terms.*lower degree"):
        LeastSquaresPolicy(degree=4).fit(REWARDS, features)


def test_out_of_range_feature_indices_are_named():
    with pytest.raises(ValueError, match="regressors"):
        LeastSquaresPolicy(regressors=[5]).fit(REWARDS, FEATURES)
    with pytest.raises(ValueError, match="immediate=7 is out of range"):
        LeastSquaresPolicy(immediate=7).fit(REWARDS, FEATURES)
    with pytest.raises(ValueError, match="feature=3 is out of range"):
        ThresholdPolicy(feature=3).fit(REWARDS, FEATURES)
    with pytest.raises(ValueError, match="feature=9 is out of range"):
        PatiencePolicy(feature=9, patience=1).stop_times(FEATURES)


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown policy 'bandit'.*least_squares"):
        create_policy("bandit")


def test_unfitted_policies_raise_not_fitted():
    for policy in (LeastSquaresPolicy(), OneStepLookaheadPolicy(), ThresholdPolicy(), PatiencePolicy()):
        with pytest.raises(NotFittedError, match="fit"):
            policy.stop_times(FEATURES)
    assert issubclass(NotFittedError, ValueError)


def test_stop_time_and_stop_at_shape_checks():
    policy = LeastSquaresPolicy().fit(REWARDS, FEATURES)
    with pytest.raises(ValueError, match="features has T=4"):
        policy.stop_times(FEATURES[:, :4])
    with pytest.raises(
        ValueError, match="features have F=2 features but LeastSquaresPolicy was fitted with F=3"
    ):
        policy.stop_times(FEATURES[:, :, :2])
    with pytest.raises(ValueError, match="features_prefix has T=3"):
        policy.stop_at(FEATURES[:, :3], 1)
    with pytest.raises(ValueError, match="t must be <= 4"):
        policy.stop_at(FEATURES, 5)
    with pytest.raises(ValueError, match="t must be an integer"):
        policy.stop_at(FEATURES[:, :2], 1.0)


def test_policy_value_and_oracle_checks():
    with pytest.raises(ValueError, match=r"stop_times must lie in \[0, 4\]"):
        policy_value(REWARDS, np.full(20, 5))
    with pytest.raises(ValueError, match=r"stop_times must have shape \(20,\)"):
        policy_value(REWARDS, np.zeros(19, dtype=int))
    with pytest.raises(ValueError, match="integer step indices"):
        policy_value(REWARDS, np.full(20, 0.5))
    with pytest.raises(ValueError, match="T=1 step"):
        oracle_stop_times(REWARDS[:, :1])


P_OK = np.array([[0.5, 0.5], [0.2, 0.8]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transition": [[0.5, 0.4], [0.2, 0.8]]}, r"row-stochastic.*row \(0,\) sums to 0.9"),
        ({"transition": [[1.5, -0.5], [0.2, 0.8]]}, "negative probability"),
        ({"transition": np.ones((2, 3)) / 3}, "must be square"),
        ({"transition": [[np.nan, 1.0], [0.2, 0.8]]}, "transition contains NaN"),
        ({"reward": [1.0, 2.0, 3.0]}, "reward has 3 states but transition has S=2"),
        ({"cost": [1.0, 2.0, 3.0]}, "cost has 3 states"),
        ({"discount": 0.0}, "discount must be > 0"),
        ({"discount": 1.5}, "discount must be <= 1"),
        ({"horizon": -1}, "horizon must be >= 0"),
        ({"transition": np.stack([P_OK] * 3), "horizon": 4}, "inconsistent horizons"),
        ({"reward": np.ones((4, 2)), "horizon": 2}, "inconsistent horizons"),
    ],
)
def test_backward_induction_rejects_bad_input(kwargs, match):
    args = {"transition": P_OK, "reward": [1.0, 0.0], **kwargs}
    with pytest.raises(ValueError, match=match):
        backward_induction(**args)


def test_infinite_horizon_that_cannot_converge_is_a_clear_error():
    # Continuing earns 1 per step forever (negative cost, no discount): no optimum exists.
    with pytest.raises(ValueError, match="discount < 1 or costs > 0"):
        backward_induction(P_OK, [1.0, 0.0], cost=-1.0, discount=1.0)
    with pytest.raises(ValueError, match="discount < 1"):
        backward_induction(np.eye(2), [1.0, 0.0], cost=[-1.0, -1.0])


def test_theory_input_checks():
    with pytest.raises(ValueError, match="rho must be < 1"):
        depth_certificate(1.0, 1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="step_cost must be > 0"):
        depth_certificate(1.0, 0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="residual_norms must be > 0"):
        fit_diminishing_returns([1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="at least 2 depths"):
        fit_diminishing_returns([1.0])
