"""The policy contract, the simple rules (fitted exactly), the oracle and policy_value."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optdepth.stopping import (
    POLICIES,
    LeastSquaresPolicy,
    OneStepLookaheadPolicy,
    PatiencePolicy,
    StoppingPolicy,
    ThresholdPolicy,
    create_policy,
    list_policies,
    oracle_stop_times,
    policy_value,
)


def _problem(n: int = 300, t: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rewards with an interior optimum; feature 0 tracks the reward, 1 is a noisy label id."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.0, 1.0, (n, 1))
    steps = np.arange(t)
    rewards = (1 - np.exp(-(quality + 0.2) * steps)) - 0.15 * steps + 0.1 * rng.standard_normal((n, t))
    prediction = (rng.uniform(size=(n, t)) < quality + 0.1 * steps).astype(float)
    features = np.stack([rewards + 0.05 * rng.standard_normal((n, t)), prediction], axis=2)
    return rewards, features


def _first_stop_by_stop_at(policy: StoppingPolicy, features: np.ndarray) -> np.ndarray:
    n, t_total, _ = features.shape
    times = np.full(n, t_total - 1)
    decided = np.zeros(n, dtype=bool)
    for t in range(t_total - 1):
        stop = policy.stop_at(features[:, : t + 1], t) & ~decided
        times[stop] = t
        decided |= stop
    return times


def test_registry_lists_all_policies():
    assert list_policies() == ["least_squares", "one_step_lookahead", "patience", "threshold"]
    assert POLICIES["least_squares"] is LeastSquaresPolicy
    assert POLICIES["one_step_lookahead"] is OneStepLookaheadPolicy
    assert isinstance(create_policy("threshold", feature=1), ThresholdPolicy)
    assert create_policy("patience", patience=2).patience == 2


@pytest.mark.parametrize("name", ["least_squares", "one_step_lookahead", "threshold", "patience"])
def test_contract_every_policy(name):
    rewards, features = _problem()
    kwargs = {"feature": 1} if name == "patience" else {}
    policy = create_policy(name, **kwargs)
    assert policy.fit(rewards, features) is policy
    fresh_rewards, fresh = _problem(n=123, seed=1)
    times = policy.stop_times(fresh)
    assert times.dtype == np.int64 and times.shape == (123,)
    assert times.min() >= 0 and times.max() <= 5
    # The online hook agrees with stop_times, step by step.
    np.testing.assert_array_equal(_first_stop_by_stop_at(policy, fresh), times)
    # Empty batches (every sample already left) are fine online.
    assert policy.stop_times(fresh[:0]).shape == (0,)
    assert policy.stop_at(fresh[:0, :3], 2).shape == (0,)
    # Fitted on data, every policy is no better than the prophet.
    value = policy.value(fresh_rewards, fresh).mean
    assert value <= policy_value(fresh_rewards, oracle_stop_times(fresh_rewards)).mean + 1e-12
    assert repr(policy).startswith(type(policy).__name__)


def test_fixed_horizon_policies_stop_at_the_last_step():
    rewards, features = _problem()
    policy = LeastSquaresPolicy().fit(rewards, features)
    assert policy.stop_at(features, 5).all()


def test_policy_value_known_answer():
    rewards = np.array([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0], [2.0, 2.0, 9.0]])
    mean, se = policy_value(rewards, [1, 2, 0])  # realised 5, 4, 2
    assert mean == pytest.approx(11 / 3)
    assert se == pytest.approx(np.std([5, 4, 2], ddof=1) / np.sqrt(3))
    assert np.isnan(policy_value(rewards[:1], [0]).standard_error)


def test_oracle_is_the_first_argmax():
    rewards = np.array([[1.0, 3.0, 3.0], [0.0, -1.0, -2.0], [2.0, 1.0, 5.0]])
    np.testing.assert_array_equal(oracle_stop_times(rewards), [1, 0, 2])


def _brute_force_threshold(signal, rewards, candidates):
    n, t_total = signal.shape
    best = -np.inf
    for theta in candidates:
        crossed = signal >= theta
        times = np.where(crossed.any(axis=1), crossed.argmax(axis=1), t_total - 1)
        best = max(best, rewards[np.arange(n), times].mean())
    return best


@pytest.mark.parametrize("seed", range(5))
def test_threshold_fit_is_exact(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.standard_normal((40, 5)).cumsum(axis=1)
    signal = np.round(rng.standard_normal((40, 5)), 1)  # ties on purpose
    candidates = np.r_[np.unique(signal), np.inf]
    policy = ThresholdPolicy(feature=0).fit(rewards, signal)
    best = _brute_force_threshold(signal, rewards, candidates)
    assert policy.value(rewards, signal).mean == pytest.approx(best, abs=1e-12)
    assert policy.threshold_ in candidates


def test_threshold_given_needs_no_fit():
    features = np.array([[[0.1], [0.5], [0.9]], [[0.7], [0.2], [0.1]], [[0.0], [0.0], [0.0]]])
    np.testing.assert_array_equal(ThresholdPolicy(0, threshold=0.6).stop_times(features), [2, 0, 2])


def test_patience_semantics():
    ids = np.array([[3, 3, 3, 1, 1], [1, 2, 1, 2, 1], [0, 0, 5, 5, 5]], dtype=float)
    np.testing.assert_array_equal(PatiencePolicy(0, patience=0).stop_times(ids), [0, 0, 0])
    np.testing.assert_array_equal(PatiencePolicy(0, patience=1).stop_times(ids), [1, 4, 1])
    np.testing.assert_array_equal(PatiencePolicy(0, patience=2).stop_times(ids), [2, 4, 4])


@pytest.mark.parametrize("seed", range(5))
def test_patience_fit_is_exact(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 2, (50, 6)).astype(float)
    rewards = rng.standard_normal((50, 6))
    best = max(PatiencePolicy(0, patience=k).value(rewards, ids).mean for k in range(7))
    fitted = PatiencePolicy(0).fit(rewards, ids)
    assert fitted.value(rewards, ids).mean == pytest.approx(best, abs=1e-12)


def test_lsm_in_sample_value_is_its_mean_reward_on_the_training_paths():
    rewards, features = _problem(n=500)
    policy = LeastSquaresPolicy(degree=2).fit(rewards, features)
    assert policy.in_sample_value_ == pytest.approx(policy.value(rewards, features).mean, abs=1e-9)


def test_history_uses_previous_steps():
    # Stopping at 0 is never worth it; stopping at 1 pays 2 c_0 - 1 for a coin c_0 shown at step
    # 0, while step 1 shows an independent coin. Only a policy that sees step 0 at step 1
    # (history=1) can stop exactly when c_0 = 1 (value 1/2); without it the value is ~0.
    rng = np.random.default_rng(3)
    coins = rng.integers(0, 2, (4000, 3)).astype(float)
    rewards = np.stack([np.full(4000, -10.0), 2 * coins[:, 0] - 1, np.zeros(4000)], axis=1)
    plain = LeastSquaresPolicy(degree=1).fit(rewards, coins).value(rewards, coins).mean
    lagged = LeastSquaresPolicy(degree=1, history=1).fit(rewards, coins).value(rewards, coins).mean
    assert abs(plain) < 0.05
    assert lagged == pytest.approx(np.mean(coins[:, 0]), abs=1e-12)


@pytest.mark.parametrize("basis", ["polynomial", "laguerre", "hermite"])
def test_polynomial_families_span_the_same_space(basis):
    rewards, features = _problem(n=400)
    reference = LeastSquaresPolicy("polynomial", 3, ridge=0.0).fit(rewards, features)
    other = LeastSquaresPolicy(basis, 3, ridge=0.0).fit(rewards, features)
    assert other.in_sample_value_ == pytest.approx(reference.in_sample_value_, abs=1e-8)


def test_osla_predicts_the_one_step_gain():
    # Gain R_{t+1} - R_t = 2 x_t - 1 exactly: OSLA with a linear basis recovers it.
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(300, 5))
    rewards = np.concatenate([np.zeros((300, 1)), np.cumsum(2 * x[:, :-1] - 1, axis=1)], axis=1)
    policy = OneStepLookaheadPolicy(degree=1, ridge=0.0).fit(rewards, x)
    for t in range(4):
        np.testing.assert_allclose(policy.predicted_gain(x[:, : t + 1], t), 2 * x[:, t] - 1, atol=1e-9)


def test_unchanged_count_and_exhaustive_small_rules():
    # Every deterministic rule on two binary steps is no better than the exact LSM (one-hot).
    rewards = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [2.0, -1.0]])
    features = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    lsm = LeastSquaresPolicy(lambda s: np.eye(2)[s[:, 0].astype(int)], standardize=False, ridge=0.0)
    value = lsm.fit(rewards, features).value(rewards, features).mean
    best = max(
        rewards[np.arange(4), [0 if rule[int(f)] else 1 for f in features[:, 0]]].mean()
        for rule in itertools.product([False, True], repeat=2)
    )
    assert value == pytest.approx(best)


def test_continuation_value_and_observed_immediate_modes():
    # T = 2: the continuation value at t = 0 is E[R_1 | x_0] = 2 x_0 + 1 exactly (linear basis).
    rng = np.random.default_rng(6)
    x = rng.uniform(-1, 1, (500, 2))
    rewards = np.stack([np.full(500, 0.5), 2 * x[:, 0] + 1], axis=1)
    features = np.stack([x, rewards], axis=2)  # feature 1 = the immediate reward, observed
    expected_stop = 0.5 >= 2 * x[:, 0] + 1
    for immediate in ("regress", 1, lambda f, t: f[:, 1]):
        policy = LeastSquaresPolicy(degree=1, immediate=immediate, regressors=[0], ridge=0.0)
        policy.fit(rewards, features)
        np.testing.assert_allclose(policy.continuation_value(features[:, :1], 0), 2 * x[:, 0] + 1, atol=1e-9)
        np.testing.assert_array_equal(policy.stop_times(features) == 0, expected_stop)
    with pytest.raises(ValueError, match=r"immediate\(features_t, t\) must return shape"):
        LeastSquaresPolicy(immediate=lambda f, t: f[:3, 0]).fit(rewards, features)


def test_a_new_policy_is_two_small_hooks():
    class FixedStep(StoppingPolicy):
        """Stops at the single step with the best mean reward."""

        name = "fixed"

        def _fit(self, rewards, features):
            self.step_ = int(np.argmax(rewards.mean(axis=0)))

        def _stop_window(self, window, t):
            return np.full(window.shape[0], t >= self.step_)

    rewards, features = _problem()
    policy = FixedStep().fit(rewards, features)
    assert np.all(policy.stop_times(features) == policy.step_)
    assert policy.value(rewards, features).mean == pytest.approx(rewards.mean(axis=0).max())
    POLICIES["fixed"] = FixedStep
    try:
        assert isinstance(create_policy("fixed"), FixedStep) and "fixed" in list_policies()
    finally:
        del POLICIES["fixed"]
