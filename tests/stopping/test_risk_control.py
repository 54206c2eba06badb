"""Risk control: known p-values, the guarantees over many calibration draws, bad input.

The synthetic families are nested: sample i has a uniform u_i and candidate k loses on it iff
u_i < r_k, with true risks r_k rising along the family (as a confidence threshold that stops
more samples early). The violation rates are checked against δ within binomial error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from optdepth.errors import ConfigError
from optdepth.stopping import hoeffding_bentkus_p_value, risk_control
from optdepth.stopping.risk_control import samples_needed

TRUE_RISKS = np.linspace(0.0, 0.05, 26)  # candidate k's risk; ε = 0.01 sits at k = 5
EPSILON, DELTA = 0.01, 0.1


def nested_losses(rng: np.random.Generator, n: int, risks: np.ndarray = TRUE_RISKS) -> np.ndarray:
    """(n, K) 0/1 losses whose column k has mean risks[k] in expectation."""
    return (rng.random(n)[:, None] < risks[None, :]).astype(float)


def test_hoeffding_bentkus_p_value_matches_its_two_closed_forms():
    n, eps = 500, 0.05
    for risk in (0.0, 0.01, 0.03, 0.05, 0.2):
        a = min(risk, eps)
        h = (a * math.log(a / eps) if a > 0 else 0.0) + (1 - a) * math.log((1 - a) / (1 - eps))
        bentkus = math.e * stats.binom.cdf(math.ceil(n * risk - 1e-9), n, eps)
        expected = min(math.exp(-n * h), bentkus, 1.0)
        assert hoeffding_bentkus_p_value(risk, n, eps) == pytest.approx(expected, rel=1e-12)
    # no observed loss: both terms are (1 - ε)^n and e·(1 - ε)^n; the smaller wins
    assert hoeffding_bentkus_p_value(0.0, n, eps) == pytest.approx((1 - eps) ** n, rel=1e-12)
    assert hoeffding_bentkus_p_value(0.3, n, eps) == 1.0  # above ε: no evidence at all


def test_p_values_are_valid_under_the_null():
    """At true risk exactly ε, P(p <= δ) <= δ (the p-value is super-uniform)."""
    rng = np.random.default_rng(1)
    draws, n = 4000, 300
    risks = rng.binomial(n, EPSILON * 5, size=draws) / n  # true risk 0.05 = ε of this test
    rate = float((hoeffding_bentkus_p_value(risks, n, 0.05) <= DELTA).mean())
    assert rate <= DELTA + 2 * math.sqrt(DELTA * (1 - DELTA) / draws)


@pytest.mark.parametrize("n", [500, 2000])
def test_ltt_holds_its_guarantee_over_calibration_draws(n):
    """P(true risk of the chosen candidate > ε) <= δ + 2 standard errors, over 1000 draws."""
    rng = np.random.default_rng(n)
    draws = 1000
    chosen = [risk_control(nested_losses(rng, n), EPSILON, DELTA).index for _ in range(draws)]
    true = np.array([0.0 if k is None else TRUE_RISKS[k] for k in chosen])
    violations = float((true > EPSILON + 1e-12).mean())
    assert violations <= DELTA + 2 * math.sqrt(DELTA * (1 - DELTA) / draws)


def test_ltt_is_no_more_conservative_than_its_bound_requires():
    """With many samples the chosen candidate's true risk approaches ε: it is at least the
    largest risk whose expected p-value clears δ with room to spare."""
    rng = np.random.default_rng(7)
    n = 20_000
    for _ in range(20):
        k = risk_control(nested_losses(rng, n), EPSILON, DELTA).index
        assert k is not None and TRUE_RISKS[k] <= EPSILON
        # the Bentkus term clears δ once the mean count sits ~3 sd below n·ε
        margin = 3 * math.sqrt(EPSILON / n)
        assert TRUE_RISKS[k] >= EPSILON - margin - (TRUE_RISKS[1] - TRUE_RISKS[0])


def test_crc_bounds_the_expected_risk():
    """E[true risk of the chosen candidate] <= ε over 1000 draws (within 2 standard errors)."""
    rng = np.random.default_rng(3)
    n, draws = 300, 1000
    chosen = [risk_control(nested_losses(rng, n), EPSILON, method="crc").index
              for _ in range(draws)]
    true = np.array([0.0 if k is None else TRUE_RISKS[k] for k in chosen])
    assert true.mean() <= EPSILON + 2 * true.std() / math.sqrt(draws)
    assert true.mean() >= EPSILON / 3  # and it is not trivially conservative


def test_crc_makes_non_monotone_losses_monotone():
    losses = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]] * 40, dtype=float)
    result = risk_control(losses, 0.5, method="crc")
    np.testing.assert_allclose(result.risks, [0.0, 1 / 3, 2 / 3])  # running max per sample
    assert result.index == 1 and result.bounds[1] == pytest.approx((40 + 1) / 121)


@settings(max_examples=60, deadline=None)
@given(st.integers(230, 800), st.integers(1, 12), st.floats(0.0, 0.05), st.integers(0, 10_000))
def test_the_choice_is_always_justified(n, k, top, seed):
    """Whatever the draw: LTT's chosen candidate and all before it have p <= δ and the next has
    p > δ; CRC's bound holds at its choice and fails just after it."""
    rng = np.random.default_rng(seed)
    losses = nested_losses(rng, n, np.linspace(0, top, k))
    ltt = risk_control(losses, EPSILON, DELTA)
    last = -1 if ltt.index is None else ltt.index
    assert (ltt.p_values[:last + 1] <= DELTA).all()
    assert last == k - 1 or ltt.p_values[last + 1] > DELTA
    crc = risk_control(losses, EPSILON, method="crc")
    following = 0 if crc.index is None else crc.index + 1
    if crc.index is not None:
        assert crc.bounds[crc.index] <= EPSILON
    assert following == k or crc.bounds[following] > EPSILON


def test_samples_needed_is_the_threshold_of_certifiability():
    need = samples_needed(EPSILON, DELTA, "ltt")
    assert need == 230  # (1 - 0.01)^n <= 0.1  <=>  n >= 229.1
    zero = np.zeros((need, 3))
    assert risk_control(zero, EPSILON, DELTA).index == 2
    with pytest.raises(ConfigError, match="at least 230 are needed"):
        risk_control(zero[:-1], EPSILON, DELTA)
    assert samples_needed(EPSILON, DELTA, "crc") == 99  # 1 / (n + 1) <= 0.01
    with pytest.raises(ConfigError, match="at least 99 are needed"):
        risk_control(np.zeros((98, 2)), EPSILON, method="crc")


def test_a_family_with_too_much_risk_certifies_nothing():
    losses = np.ones((1000, 4))
    assert risk_control(losses, EPSILON, DELTA).index is None
    assert risk_control(losses, EPSILON, method="crc").index is None
    assert risk_control(losses, EPSILON, DELTA).summary()["calibration_risk"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": 0.0}, "epsilon must be a number in \\(0, 1\\)"),
    ({"epsilon": 1.5}, "epsilon must be a number in \\(0, 1\\)"),
    ({"epsilon": float("nan")}, "epsilon must be"),
    ({"delta": 1.0}, "delta must be a number in \\(0, 1\\)"),
    ({"delta": True}, "delta must be"),
    ({"method": "bonferroni"}, "method must be one of ltt, crc"),
    ({"losses": np.full((300, 2), 1.5)}, "losses must lie in \\[0, 1\\]"),
    ({"losses": np.full((300, 2), -0.1)}, "losses must lie in \\[0, 1\\]"),
    ({"losses": np.array([[np.nan, 0.0]] * 300)}, "NaN or infinite"),
    ({"losses": np.zeros(300)}, "\\(n_calibration, n_candidates\\) array"),
    ({"losses": [["a", "b"]]}, "numeric"),
    ({"costs": [0.5, 0.9]}, "ordered from the most conservative"),
    ({"costs": [0.5]}, "one per candidate"),
])
def test_bad_input_is_one_clear_error(kwargs, message):
    args = {"losses": np.zeros((300, 2)), "epsilon": EPSILON, "delta": DELTA, **kwargs}
    with pytest.raises(ConfigError, match=message):
        risk_control(**args)
