"""Diminishing returns, the finite-depth certificate and the residual-process simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optdepth.stopping import (
    OneStepLookaheadPolicy,
    depth_certificate,
    fit_diminishing_returns,
    oracle_stop_times,
    policy_value,
    simulate_residual_stopping,
    stagewise_depth_certificate,
)


def test_fit_recovers_a_noiseless_geometric_decay():
    t = np.arange(12)
    fit = fit_diminishing_returns(2.5 * 0.7**t)
    assert fit.K == pytest.approx(2.5) and fit.rho == pytest.approx(0.7)
    assert fit.r_squared == pytest.approx(1.0) and fit.rmse_log == pytest.approx(0.0, abs=1e-12)
    assert fit.n_points == 12


def test_fit_on_noisy_per_sample_norms_and_its_envelope():
    rng = np.random.default_rng(0)
    norms = 1.5 * 0.8 ** np.arange(10) * np.exp(0.1 * rng.standard_normal((200, 10)))
    fit = fit_diminishing_returns(norms)
    assert fit.rho == pytest.approx(0.8, abs=0.01) and fit.K == pytest.approx(1.5, rel=0.05)
    assert 0.9 < fit.r_squared < 1.0 and fit.n_points == 2000
    # The envelope constant makes the bound hold at every observed point, and only just.
    bound = fit.K_envelope * fit.rho ** np.arange(10)
    assert np.all(norms <= bound * (1 + 1e-12)) and np.any(norms >= bound * (1 - 1e-9))
    with_depths = fit_diminishing_returns(norms, depths=np.arange(10) * 2.0)
    assert with_depths.rho == pytest.approx(math.sqrt(fit.rho))


def test_certificate_known_values():
    assert depth_certificate(1.0, 0.5, 1.0, 1 / 8) == pytest.approx(3.0)  # 0.5^t = 1/8
    assert depth_certificate(4.0, 0.5, 0.5, 1 / 16) == pytest.approx(5.0)  # 2 * 0.5^t = 1/16
    assert depth_certificate(1.0, 0.5, 1.0, 2.0) == 0.0  # never worth a single step
    assert depth_certificate(1.0, 0.5, 0.0, 0.1) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_certificate_bounds_even_the_prophet(seed):
    # Any path whose utility moves by at most L K rho^t per block is non-increasing after t_bar
    # once the step cost is paid, so even the first argmax (prophet) stops by ceil(t_bar).
    rng = np.random.default_rng(seed)
    K, rho, L, c = 2.0, 0.85, 1.5, 0.02
    t_bar = depth_certificate(K, rho, L, c)
    steps = np.arange(200)
    moves = L * K * rho**steps * rng.uniform(-1, 1, (500, 200))
    moves[:, :5] = np.abs(moves[:, :5])  # make early blocks worth taking
    utility = np.concatenate([np.zeros((500, 1)), np.cumsum(moves, axis=1)], axis=1)
    rewards = utility - c * np.arange(201)
    assert oracle_stop_times(rewards).max() <= math.ceil(t_bar)


def test_optimal_depth_stays_finite_and_below_the_certificate_as_the_horizon_grows():
    sim = simulate_residual_stopping(horizons=(10, 100, 1000, 10_000), n_paths=4000, seed=1)
    assert sim.t_bar == pytest.approx(math.log(100) / math.log(1.25))
    assert np.all(sim.max_stop <= math.ceil(sim.t_bar))
    # Once the horizon exceeds t_bar it no longer matters: same depths, same value.
    np.testing.assert_array_equal(sim.mean_stop[1:], sim.mean_stop[1])
    np.testing.assert_allclose(sim.value[1:], sim.value[1], rtol=1e-12)
    assert sim.infinite_mean_stop == pytest.approx(sim.mean_stop[-1])
    assert 0 < sim.mean_stop[-1] < sim.t_bar
    assert sim.mean_stop[0] <= 10 and sim.value[0] <= sim.value[1] + 1e-12


def test_array_engine_finds_the_same_depths_on_simulated_residual_paths():
    # Simulate the same process as paths (rewards = utility - c t, feature = residual norm)
    # and fit OSLA on arrays: the process is monotone, so OSLA is optimal, and its value must
    # match the exact chain value of simulate_residual_stopping within Monte Carlo error.
    K, rho, L, c, p_up, p_fast, T = 1.0, 0.8, 1.0, 0.01, 0.75, 0.5, 60
    rng = np.random.default_rng(5)
    n = 20_000
    jumps = 1 + (rng.uniform(size=(n, T - 1)) < p_fast)
    levels = np.concatenate([np.zeros((n, 1), dtype=int), np.cumsum(jumps, axis=1)], axis=1)
    norms = K * rho ** levels.astype(float)
    signs = np.where(rng.uniform(size=(n, T - 1)) < p_up, 1.0, -1.0)
    utility = np.concatenate([np.zeros((n, 1)), np.cumsum(L * norms[:, :-1] * signs, axis=1)], axis=1)
    rewards = utility - c * np.arange(T)
    policy = OneStepLookaheadPolicy(degree=1).fit(rewards, norms[:, :, None])
    fresh = simulate_residual_stopping(
        horizons=(T - 1,),
        K=K,
        rho=rho,
        lipschitz=L,
        step_cost=c,
        p_up=p_up,
        p_fast=p_fast,
        n_paths=20_000,
        seed=6,
    )
    value, se = policy_value(rewards, policy.stop_times(norms[:, :, None]))
    assert abs(value - fresh.value[0]) < 4 * se + 1e-3
    assert policy.stop_times(norms[:, :, None]).max() <= math.ceil(fresh.t_bar)


def _last_paying_block(starts, K, rho, lipschitz, cost, horizon=2000):
    """Brute force: the last block (up to ``horizon``) whose one-block bound exceeds ``cost``."""
    ends = [*starts[1:], horizon]
    last = None
    for s, (start, end) in enumerate(zip(starts, ends, strict=True)):
        for t in range(start, end):
            if lipschitz * K[s] * rho[s] ** (t - start) > cost:
                last = t
    return last


def test_stagewise_certificate_matches_the_brute_force_last_paying_block():
    rng = np.random.default_rng(0)
    for _ in range(200):
        stages = int(rng.integers(1, 5))
        starts = np.concatenate([[0], np.cumsum(rng.integers(1, 8, stages - 1))]).astype(int)
        K, rho = rng.uniform(0.2, 3.0, stages), rng.uniform(0.2, 0.95, stages)
        lipschitz, cost = float(rng.uniform(0.1, 2.0)), float(rng.uniform(0.01, 0.5))
        t_bar = stagewise_depth_certificate(starts, K, rho, lipschitz, cost)
        last = _last_paying_block(starts.tolist(), K, rho, lipschitz, cost)
        if last is None:
            assert t_bar == 0.0
        else:  # the continuous depth at which the bound crosses the cost, past the last block
            assert last <= t_bar < last + 1


def test_stagewise_certificate_known_values():
    # one stage: the plain certificate
    assert stagewise_depth_certificate([0], [2.0], [0.5], 1.0, 0.25) == \
        pytest.approx(depth_certificate(2.0, 0.5, 1.0, 0.25)) == pytest.approx(3.0)
    # the last stage's bound starts under the cost: the earlier stage decides, cut at its end
    assert stagewise_depth_certificate([0, 2], [8.0, 0.1], [0.5, 0.5], 1.0, 0.25) == 1.0
    # the last stage starts at 4 with L·K = 1 and ρ = 1/2: 4 + log2(4) = 6
    assert stagewise_depth_certificate([0, 4], [8.0, 1.0], [0.5, 0.5], 1.0, 0.25) == \
        pytest.approx(6.0)
    # a last stage that does not decay has no finite certificate
    assert stagewise_depth_certificate([0, 4], [8.0, 1.0], [0.5, 1.0], 1.0, 0.25) == math.inf
    with pytest.raises(ValueError, match="starts increasing from 0"):
        stagewise_depth_certificate([1, 4], [1.0, 1.0], [0.5, 0.5], 1.0, 0.25)
