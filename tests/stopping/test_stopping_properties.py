"""Property-based tests (hypothesis) of the stopping engine."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from optdepth.stopping import (
    LeastSquaresPolicy,
    OneStepLookaheadPolicy,
    PatiencePolicy,
    ThresholdPolicy,
    backward_induction,
    create_policy,
    oracle_stop_times,
    policy_value,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FINITE = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def float_problems(draw):
    n = draw(st.integers(1, 25))
    t = draw(st.integers(2, 6))
    f = draw(st.integers(1, 3))
    rewards = draw(arrays(np.float64, (n, t), elements=FINITE))
    features = draw(arrays(np.float64, (n, t, f), elements=FINITE))
    return rewards, features


POLICY_OPTIONS = st.one_of(
    st.builds(
        lambda basis, degree, history, ridge: (
            "least_squares",
            {"basis": basis, "degree": degree, "history": history, "ridge": ridge},
        ),
        st.sampled_from(["polynomial", "laguerre", "hermite"]),
        st.integers(0, 3),
        st.integers(0, 2),
        st.sampled_from([0.0, 1e-6, 1.0]),
    ),
    st.builds(lambda degree: ("one_step_lookahead", {"degree": degree}), st.integers(0, 2)),
    st.just(("threshold", {})),
    st.just(("patience", {})),
)


@SETTINGS
@given(problem=float_problems(), options=POLICY_OPTIONS, seed=st.integers(0, 2**16))
def test_stop_times_always_lie_in_range(problem, options, seed):
    rewards, features = problem
    name, kwargs = options
    policy = create_policy(name, **kwargs).fit(rewards, features)
    n, t_total = rewards.shape
    fresh = np.random.default_rng(seed).normal(0, 5, (7, t_total, features.shape[2]))
    for times, rows in ((policy.stop_times(features), n), (policy.stop_times(fresh), 7)):
        assert times.shape == (rows,) and times.dtype == np.int64
        assert times.min() >= 0 and times.max() <= t_total - 1
    assert np.all(policy.stop_at(fresh, t_total - 1) | ~policy.fixed_horizon)


def _exact_lsm(t_total, binary_onehot):
    # One-hot of the whole prefix (history = T - 1): regression = empirical conditional mean.
    return LeastSquaresPolicy(binary_onehot(t_total), history=t_total - 1, standardize=False, ridge=0.0)


@st.composite
def binary_problems(draw):
    n = draw(st.integers(1, 30))
    t = draw(st.integers(2, 4))
    rewards = draw(arrays(np.int64, (n, t), elements=st.integers(-5, 5))).astype(float)
    features = draw(arrays(np.int64, (n, t, 1), elements=st.integers(0, 1))).astype(float)
    rule = draw(arrays(np.bool_, (t, 2**t)))
    return rewards, features, rule


@SETTINGS
@given(problem=binary_problems())
def test_snell_envelope_dominates_every_other_policy_in_sample(problem, binary_onehot):
    rewards, features, rule = problem
    n, t_total = rewards.shape
    snell = _exact_lsm(t_total, binary_onehot).fit(rewards, features).value(rewards, features).mean
    others = [
        ThresholdPolicy(0).fit(rewards, features),
        PatiencePolicy(0).fit(rewards, features),
        OneStepLookaheadPolicy(binary_onehot(1), standardize=False, ridge=0.0).fit(rewards, features),
        LeastSquaresPolicy(degree=1).fit(rewards, features),
    ]
    values = [p.value(rewards, features).mean for p in others]
    values += [rewards[:, t].mean() for t in range(t_total)]  # every fixed-time rule
    # A random adapted rule: stop at (t, prefix code) according to the drawn table.
    bits = features[:, :, 0].astype(np.int64)
    times = np.full(n, t_total - 1)
    for t in range(t_total - 2, -1, -1):
        code = bits[:, : t + 1] @ (2 ** np.arange(t + 1))
        times = np.where(rule[t, code], t, times)
    values.append(policy_value(rewards, times).mean)
    assert all(snell >= v - 1e-9 for v in values)
    assert snell <= policy_value(rewards, oracle_stop_times(rewards)).mean + 1e-9
    # Stronger: it equals the best of *all* adapted rules (brute force, up to 2^14 rules).
    assert abs(snell - _best_adapted_rule(rewards, bits)) < 1e-9


def _best_adapted_rule(rewards: np.ndarray, bits: np.ndarray) -> float:
    """Best mean reward over every map (t, binary prefix) -> stop, for t < T - 1."""
    n, t_total = rewards.shape
    n_bits = sum(2 ** (t + 1) for t in range(t_total - 1))
    rules = np.arange(2**n_bits)[:, None]  # (R, 1), bit k of r = decision k
    times = np.full((rules.shape[0], n), t_total - 1)
    offset = n_bits
    for t in range(t_total - 2, -1, -1):
        offset -= 2 ** (t + 1)
        code = bits[:, : t + 1] @ (2 ** np.arange(t + 1))  # (n,)
        stop = (rules >> (offset + code)[None, :]) & 1  # (R, n)
        times = np.where(stop == 1, t, times)
    return float(rewards[np.arange(n)[None, :], times].mean(axis=1).max())


@st.composite
def monotone_problems(draw):
    """Paths with non-increasing integer gains d_0 >= d_1 >= ... (diminishing returns).

    The gain of the next step is observable (feature at t = d_t), so the problem is monotone:
    once the expected one-step gain is <= 0 it stays <= 0.
    """
    n = draw(st.integers(1, 30))
    t = draw(st.integers(2, 6))
    gains = -np.sort(-draw(arrays(np.int64, (n, t - 1), elements=st.integers(-5, 5))), axis=1)
    start = draw(arrays(np.int64, (n, 1), elements=st.integers(-5, 5)))
    rewards = np.concatenate([start, start + np.cumsum(gains, axis=1)], axis=1).astype(float)
    features = np.concatenate([gains, np.zeros((n, 1), dtype=np.int64)], axis=1)[:, :, None]
    return rewards, features.astype(float)


@SETTINGS
@given(problem=monotone_problems())
def test_one_step_lookahead_is_optimal_on_monotone_problems(problem):
    rewards, features = problem
    optimum = policy_value(rewards, oracle_stop_times(rewards)).mean  # no policy beats it
    osla = OneStepLookaheadPolicy(degree=1, ridge=0.0).fit(rewards, features)
    assert abs(osla.value(rewards, features).mean - optimum) < 1e-9


@SETTINGS
@given(
    pmf=arrays(np.float64, 8, elements=st.floats(0.01, 1.0)),
    cost=st.floats(0.01, 3.0),
    discount=st.sampled_from([1.0, 0.95]),
)
def test_one_step_lookahead_set_is_the_exact_stop_set_when_monotone(pmf, cost, discount):
    # House selling with recall: state = best offer so far, which never decreases, so the
    # one-step look-ahead set {stay ahead by waiting one more offer does not pay} is closed.
    pmf = pmf / pmf.sum()
    levels = np.arange(8.0)
    transition = np.zeros((8, 8))
    for m in range(8):
        np.add.at(transition[m], np.maximum(m, np.arange(8)), pmf)
    exact = backward_induction(transition, levels, cost=cost, discount=discount)
    one_step = -cost + discount * transition @ levels
    osla_stop = levels >= one_step - 1e-12
    np.testing.assert_array_equal(exact.stop, osla_stop)
