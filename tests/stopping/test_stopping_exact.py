"""backward_induction against brute force and classical problems with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binom

from optdepth.stopping import backward_induction


def _random_chain(rng, n_states, horizon=None):
    shape = (n_states, n_states) if horizon is None else (horizon, n_states, n_states)
    p = rng.uniform(size=shape) ** 3
    return p / p.sum(axis=-1, keepdims=True)


def _policy_value_finite(transition, reward, cost, discount, stop_table):
    """Value of a Markov rule stop_table (H, S) (must stop at H), by backward evaluation."""
    horizon = stop_table.shape[0]
    value = reward.copy()
    for t in range(horizon - 1, -1, -1):
        p = transition if transition.ndim == 2 else transition[t]
        value = np.where(stop_table[t], reward, -cost + discount * p @ value)
    return value


@pytest.mark.parametrize("seed", range(6))
def test_finite_horizon_matches_brute_force_over_all_rules(seed):
    rng = np.random.default_rng(seed)
    n_states, horizon = 3, 3
    time_varying = seed % 2 == 1
    transition = _random_chain(rng, n_states, horizon if time_varying else None)
    reward = rng.normal(size=n_states)
    cost = rng.uniform(-0.2, 0.5, n_states)
    discount = rng.uniform(0.7, 1.0)
    best = np.full(n_states, -np.inf)
    for bits in itertools.product([False, True], repeat=n_states * horizon):
        table = np.array(bits).reshape(horizon, n_states)
        best = np.maximum(best, _policy_value_finite(transition, reward, cost, discount, table))
    result = backward_induction(transition, reward, cost, discount, horizon=horizon)
    assert result.value.shape == (horizon + 1, n_states) and result.stop[horizon].all()
    np.testing.assert_allclose(result.value[0], best, atol=1e-12)
    # The returned rule attains the optimum.
    attained = _policy_value_finite(transition, reward, cost, discount, result.stop[:horizon])
    np.testing.assert_allclose(attained, best, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_infinite_horizon_matches_brute_force_over_stationary_rules(seed):
    rng = np.random.default_rng(10 + seed)
    n_states = 5
    transition = _random_chain(rng, n_states)
    reward = rng.normal(size=n_states)
    cost, discount = rng.uniform(0.0, 0.3, n_states), 0.9
    best = np.full(n_states, -np.inf)
    for bits in itertools.product([False, True], repeat=n_states):
        go = np.array(bits)
        value = reward.copy()
        if go.any():  # V_go = (I - g P_gg)^-1 (-c_go + g P_g,stop r_stop)
            a = np.eye(go.sum()) - discount * transition[np.ix_(go, go)]
            b = -cost[go] + discount * transition[np.ix_(go, ~go)] @ reward[~go]
            value[go] = np.linalg.solve(a, b)
        best = np.maximum(best, value)
    result = backward_induction(transition, reward, cost, discount)
    assert result.horizon is None and result.value.shape == (n_states,)
    np.testing.assert_allclose(result.value, best, atol=1e-10)
    # ... and the long finite horizon converges to it.
    long = backward_induction(transition, reward, cost, discount, horizon=400)
    np.testing.assert_allclose(long.value[0], best, atol=1e-10)


def _secretary_exact(n: int) -> float:
    """Closed form: max over cutoffs r of (r-1)/n * sum_{i=r}^{n} 1/(i-1) (1/n for r = 1)."""
    best = 1.0 / n
    for r in range(2, n + 1):
        best = max(best, (r - 1) / n * sum(1.0 / (i - 1) for i in range(r, n + 1)))
    return best


def _secretary_chain(n: int):
    """States (i, relatively best) for i = 1..n plus an absorbing 'gone' state (index 2n)."""
    n_states = 2 * n + 1
    transition = np.zeros((n_states, n_states))
    reward = np.zeros(n_states)
    for i in range(1, n + 1):
        for best in (0, 1):
            s = 2 * (i - 1) + best
            reward[s] = i / n if best else 0.0  # P(overall best | relatively best at i) = i/n
            if i < n:
                transition[s, 2 * i + 1] = 1.0 / (i + 1)
                transition[s, 2 * i] = 1.0 - 1.0 / (i + 1)
            else:
                transition[s, 2 * n] = 1.0
    transition[2 * n, 2 * n] = 1.0
    return transition, reward


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 10, 25])
def test_secretary_problem_exact_values(n):
    transition, reward = _secretary_chain(n)
    result = backward_induction(transition, reward)  # infinite horizon, no cost, no discount
    assert result.value[1] == pytest.approx(_secretary_exact(n), abs=1e-12)  # state (1, best)


def test_secretary_known_decimals_and_one_over_e():
    assert _secretary_exact(4) == pytest.approx(11 / 24)  # classical small-n values
    assert _secretary_exact(10) == pytest.approx(0.398690, abs=1e-6)
    # Large n with a 2-state time-varying chain: state = "current candidate relatively best".
    n = 3000
    i = np.arange(1, n + 1)
    p_best_next = 1.0 / (i[:-1] + 1)
    transition = np.stack(
        [np.stack([1 - p_best_next, p_best_next], 1)] * 2, axis=1
    )  # (n-1, 2, 2): same row for both states
    reward = np.stack([np.zeros(n), i / n], axis=1)  # (n, 2), steps 0..n-1 are candidates 1..n
    result = backward_induction(transition, reward)
    value = result.value[0, 1]
    assert value == pytest.approx(_secretary_exact(n), abs=1e-12)
    assert abs(value - 1 / math.e) < 2e-4
    cutoff = np.argmax(result.stop[:, 1]) + 1  # first candidate index that is accepted
    assert abs(cutoff / n - 1 / math.e) < 2e-3


def _concave_majorant(g: np.ndarray) -> np.ndarray:
    n = len(g) - 1
    out = g.copy()
    for a in range(n + 1):
        for b in range(a + 1, n + 1):
            x = np.arange(a, b + 1)
            out[a : b + 1] = np.maximum(out[a : b + 1], g[a] + (g[b] - g[a]) * (x - a) / (b - a))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_random_walk_value_is_the_concave_majorant(seed):
    # Symmetric random walk absorbed at 0 and n, no cost, no discount: V = least concave
    # majorant of the reward (Dynkin & Yushkevich).
    rng = np.random.default_rng(seed)
    n = 12
    g = rng.uniform(0, 1, n + 1)
    transition = np.zeros((n + 1, n + 1))
    transition[0, 0] = transition[n, n] = 1.0
    for s in range(1, n):
        transition[s, s - 1] = transition[s, s + 1] = 0.5
    result = backward_induction(transition, g)
    majorant = _concave_majorant(g)
    np.testing.assert_allclose(result.value, majorant, atol=1e-10)
    np.testing.assert_array_equal(result.stop, np.isclose(g, majorant, atol=1e-10, rtol=0))


def _bermudan_put_chain(s0, strike, rate, sigma, maturity, dates, substeps):
    """Recombining CRR lattice as a stationary chain: one transition per exercise date."""
    n_total = dates * substeps
    dt = maturity / n_total
    up = math.exp(sigma * math.sqrt(dt))
    p = (math.exp(rate * dt) - 1 / up) / (up - 1 / up)
    k = np.arange(-n_total, n_total + 1)  # net up-moves
    moves = 2 * np.arange(substeps + 1) - substeps
    probs = binom.pmf(np.arange(substeps + 1), substeps, p)
    transition = np.zeros((k.size, k.size))
    for move, prob in zip(moves, probs, strict=True):
        target = np.clip(np.arange(k.size) + move, 0, k.size - 1)
        np.add.at(transition, (np.arange(k.size), target), prob)
    reward = np.maximum(strike - s0 * up**k, 0.0)
    return transition, reward, math.exp(-rate * maturity / dates), n_total


@pytest.mark.parametrize(("s0", "published"), [(36.0, 4.478), (40.0, 2.314), (44.0, 1.110)])
def test_bermudan_put_on_a_binomial_lattice_matches_published_values(s0, published):
    # Longstaff & Schwartz (2001), Table 1, finite-difference column (K = 40, r = 0.06,
    # sigma = 0.2, T = 1, 50 exercise dates a year). Values quoted from memory of the table
    # and cross-checked against other public replications of it (36 -> 4.478, 40 -> 2.314,
    # 44 -> 1.110); a separate CRR pricer gives 4.4782 / 2.3136 / 1.1108 with 10 substeps.
    transition, reward, discount, centre = _bermudan_put_chain(s0, 40.0, 0.06, 0.2, 1.0, 50, 10)
    result = backward_induction(transition, reward, discount=discount, horizon=50)
    assert result.value[0, centre] == pytest.approx(published, abs=1.5e-3)


def test_house_selling_with_recall_is_monotone_and_osla_is_optimal():
    # Offers X ~ uniform{0..20}, each look costs c; state = best offer so far (recall).
    # Closed form: stop iff E[(X - m)^+] <= c (Chow, Robbins & Siegmund, Great Expectations).
    levels, c = np.arange(21), 0.8
    pmf = np.full(21, 1 / 21)
    transition = np.zeros((21, 21))
    for m in levels:
        for x, px in zip(levels, pmf, strict=True):
            transition[m, max(m, x)] += px
    result = backward_induction(transition, levels.astype(float), cost=c)
    gain = np.array([np.sum(pmf * np.maximum(levels - m, 0)) for m in levels])
    np.testing.assert_array_equal(result.stop, gain <= c)
    m_star = int(np.argmax(gain <= c))
    # Value from the start (m = 0 after the first offer): E[cost-adjusted best] solved by hand:
    # V(m) = m for m >= m*, and V(m) = (-c + sum_{x >= m*} p x) / P(X >= m*) for m < m*.
    tail = levels >= m_star
    assert result.value[0] == pytest.approx((-c + np.sum(pmf[tail] * levels[tail])) / pmf[tail].sum())


def test_horizon_zero_and_horizon_inferred_from_time_varying_reward():
    transition = np.array([[0.5, 0.5], [0.0, 1.0]])
    zero = backward_induction(transition, [1.0, 2.0], horizon=0)
    np.testing.assert_array_equal(zero.value, [[1.0, 2.0]])
    assert zero.stop.all() and zero.horizon == 0
    reward = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 1.0]])  # (H + 1, S): H = 2
    result = backward_induction(transition, reward)
    assert result.horizon == 2
    np.testing.assert_allclose(result.value[0], [1.5, 1.0])  # E[reward at step 2] = P^2 r
    assert not result.stop[0].any() and result.stop[2].all()
    assert np.isneginf(result.continuation[2]).all()
