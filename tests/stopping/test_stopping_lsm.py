"""Longstaff–Schwartz against brute force and against the published Bermudan put prices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from optdepth.stopping import LeastSquaresPolicy, OneStepLookaheadPolicy, backward_induction, policy_value


def _prefix_codes(features: np.ndarray) -> list[np.ndarray]:
    """Per step t, an integer code of each path's binary prefix (phi_0..phi_t)."""
    n, t_total = features.shape[:2]
    bits = features[:, :, 0].astype(np.int64)
    return [bits[:, : t + 1] @ (2 ** np.arange(t + 1)) for t in range(t_total)]


@pytest.mark.parametrize("seed", range(4))
def test_lsm_with_an_exact_basis_equals_brute_force_over_all_stopping_rules(seed, binary_onehot):
    # T = 3 binary observations: a stopping rule is any map from (t, prefix) to stop/continue
    # for t < 2; there are 2^(2 + 4) = 64 of them. The empirical Snell envelope (LSM with a
    # one-hot basis of the whole prefix) must attain the best in-sample value among them.
    rng = np.random.default_rng(seed)
    n, t_total = 200, 3
    features = rng.integers(0, 2, (n, t_total, 1)).astype(float)
    rewards = features[:, :, 0].cumsum(axis=1) * rng.uniform(0.5, 1.5, (1, t_total))
    rewards += rng.normal(0, 0.3, (n, t_total)) - 0.4 * np.arange(t_total)
    policy = LeastSquaresPolicy(binary_onehot(3), history=2, standardize=False, ridge=0.0)
    lsm_value = policy.fit(rewards, features).value(rewards, features).mean
    codes = _prefix_codes(features)
    best = -np.inf
    for bits in itertools.product([False, True], repeat=2 + 4):
        rule = [np.array(bits[:2]), np.array(bits[2:])]
        times = np.full(n, t_total - 1)
        for t in (1, 0):  # earliest stop wins
            times = np.where(rule[t][codes[t]], t, times)
        best = max(best, policy_value(rewards, times).mean)
    assert lsm_value == pytest.approx(best, abs=1e-12)
    assert policy.in_sample_value_ == pytest.approx(best, abs=1e-12)


def test_lsm_recovers_the_exact_chain_solution(onehot_levels):
    # A Markov chain with observable state: LSM fitted on simulated paths (one-hot basis of
    # the state) must reproduce the exact backward-induction rule and value.
    rng = np.random.default_rng(7)
    n_states, horizon, n = 4, 5, 40_000
    transition = rng.uniform(size=(n_states, n_states))
    transition /= transition.sum(axis=1, keepdims=True)
    reward = np.array([0.0, 1.0, 2.5, 1.5])
    exact = backward_induction(transition, reward, cost=0.3, horizon=horizon)
    states = np.zeros((n, horizon + 1), dtype=np.int64)
    states[:, 0] = rng.integers(0, n_states, n)
    cumulative = transition.cumsum(axis=1)
    for t in range(horizon):
        u = rng.uniform(size=n)
        states[:, t + 1] = np.minimum((u[:, None] > cumulative[states[:, t]]).sum(axis=1), n_states - 1)
    rewards = reward[states] - 0.3 * np.arange(horizon + 1)
    features = states[:, :, None].astype(float)
    policy = LeastSquaresPolicy(onehot_levels(n_states), standardize=False, ridge=0.0)
    times = policy.fit(rewards, features).stop_times(features)
    exact_times = np.argmax(exact.stop[np.arange(horizon + 1), states], axis=1)
    assert np.mean(times == exact_times) > 0.99
    expected = exact.value[0, states[:, 0]].mean()
    value, se = policy_value(rewards, times)
    assert abs(value - expected) < 4 * se


def _put_paths(n, s0, seed, strike=40.0, rate=0.06, sigma=0.2, maturity=1.0, dates=50):
    """Discounted put payoffs (N, 50) at the exercise dates and features [S/K, payoff]."""
    rng = np.random.default_rng(seed)
    dt = maturity / dates
    increments = (rate - 0.5 * sigma**2) * dt + sigma * np.sqrt(dt) * rng.standard_normal((n, dates))
    prices = s0 * np.exp(np.cumsum(increments, axis=1))
    payoff = np.exp(-rate * dt * np.arange(1, dates + 1)) * np.maximum(strike - prices, 0.0)
    return payoff, np.stack([prices / strike, payoff], axis=2)


def _lsm_put_value(s0, n_fit, n_value):
    policy = LeastSquaresPolicy("laguerre", 3, immediate=1, in_the_money=True, regressors=[0])
    policy.fit(*_put_paths(n_fit, s0, seed=1))
    rewards, features = _put_paths(n_value, s0, seed=2)  # fresh paths: an unbiased lower bound
    return policy_value(rewards, policy.stop_times(features))


# Longstaff & Schwartz (2001), Table 1 (K = 40, r = 0.06, T = 1, 50 exercise dates a year),
# columns "finite difference American" and "simulated American (LSM)". Quoted from memory of
# the paper and cross-checked against public replications of the table; the finite-difference
# values also agree with a 50-date Bermudan CRR lattice (see test_stopping_exact.py).
LS_TABLE_1 = {36.0: (4.478, 4.472), 40.0: (2.314, 2.313), 44.0: (1.110, 1.118)}


def test_bermudan_put_reproduces_longstaff_schwartz_table_1():
    fd, lsm = LS_TABLE_1[36.0]
    value, se = _lsm_put_value(36.0, n_fit=50_000, n_value=100_000)
    # A fitted exercise rule applied to fresh paths is a lower bound: within Monte Carlo error
    # of the finite-difference value, or a little below it (LS report 4.472).
    assert fd - 0.015 - 3 * se < value < fd + 3 * se
    assert abs(value - lsm) < 3 * se + 0.01


@pytest.mark.slow
@pytest.mark.parametrize("s0", [40.0, 44.0])
def test_bermudan_put_other_rows(s0):
    fd, _ = LS_TABLE_1[s0]
    value, se = _lsm_put_value(s0, n_fit=100_000, n_value=200_000)
    assert fd - 0.015 - 3 * se < value < fd + 3 * se


def test_regressed_immediate_reward_also_prices_the_put():
    # The neural-network mode (immediate reward unknown when deciding, so it is regressed too)
    # must still price the option close to the published value.
    policy = LeastSquaresPolicy("hermite", 3, regressors=[0]).fit(*_put_paths(40_000, 36.0, seed=3))
    rewards, features = _put_paths(60_000, 36.0, seed=4)
    value, se = policy_value(rewards, policy.stop_times(features))
    assert 4.478 - 0.05 - 3 * se < value < 4.478 + 3 * se


def test_osla_is_suboptimal_on_a_non_monotone_problem():
    # The put is not monotone: OSLA stops too early, LSM does not. (OSLA is only guaranteed
    # optimal on monotone problems; see test_stopping_properties.py.)
    rewards, features = _put_paths(30_000, 36.0, seed=5)
    osla = OneStepLookaheadPolicy("hermite", 3, regressors=[0]).fit(rewards, features)
    lsm = LeastSquaresPolicy("hermite", 3, immediate=1, in_the_money=True, regressors=[0])
    lsm.fit(rewards, features)
    fresh_r, fresh_f = _put_paths(30_000, 36.0, seed=6)
    assert lsm.value(fresh_r, fresh_f).mean > osla.value(fresh_r, fresh_f).mean + 0.05
