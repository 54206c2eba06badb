"""Guaranteed operating points of exit policies (numpy only): known answers, the protocol's
separation of fit and certify samples, bad input."""

import numpy as np
import pytest
from test_exit_policies import make_traces

from optdepth.errors import ConfigError
from optdepth.offline import Guarantee, evaluate_policies, oracle_exits
from optdepth.offline.guarantees import pareto_chain, risk_losses
from optdepth.offline.prices import LatencyProfile


@pytest.fixture(scope="module")
def toy():
    return make_traces(n=600, seed=0), make_traces(n=600, seed=1)


def test_the_known_zero_risk_point_is_the_guaranteed_one(toy):
    """In the toy traces every final exit is right and a max_prob threshold in (0.55, 0.85]
    keeps all of them right at compute 0.4; cheaper thresholds lose hard samples. At ε = 1
    point with 300 certify samples only zero observed risk is certifiable ((0.99)^300 = 0.049 <=
    δ, while one loss gives p = 0.54), so the guaranteed point must be exactly that one."""
    evaluations = evaluate_policies(*toy, ("max_prob", "patience", "lsm"), folds=5,
                                    guarantee=(0.01, 0.1))
    point = evaluations["max_prob"].guaranteed
    assert point.control.certified and point.control.risks[point.control.index] == 0.0
    # the threshold clears every hard sample of the certify part (their exit-0 max_prob is
    # 0.46-0.54); on test a hard sample or two may sit above it
    assert 0.5 < point.param <= 0.85
    assert point.test_compute == pytest.approx(0.4, abs=0.002) and point.test_risk <= 0.005
    record = evaluations["max_prob"].metrics()["guaranteed"]
    assert record["certified"] and record["mean_compute"] == point.test_compute
    assert record["n_fit"] + record["n_calibration"] == 600 and record["method"] == "ltt"
    for name in ("patience", "lsm"):  # every family gets a point; none can beat the bound
        other = evaluations[name].guaranteed
        assert other.control.certified and other.test_compute >= 0.4 - 0.002, name
    assert evaluations["max_prob"].iso_test == evaluate_policies(
        *toy, ("max_prob",), folds=5)["max_prob"].iso_test  # iso point unchanged


def test_crc_and_disagreement_risk(toy):
    """CRC at ε = 1 point on 300 samples allows (300·R̂ + 1) / 301 <= 0.01: two losses."""
    guarantee = Guarantee(0.01, method="crc", risk="disagreement")
    point = evaluate_policies(*toy, ("max_prob",), folds=5, guarantee=guarantee)["max_prob"]
    g = point.guaranteed
    assert g.control.method == "crc" and g.control.bounds[g.control.index] <= 0.01
    assert 0 < g.control.risks[g.control.index] * 300 <= 2 + 1e-9
    assert 0.38 < g.test_compute < 0.4  # a few hard samples stop at exit 0
    assert g.test_risk < 0.03


def test_fit_and_certify_parts_are_disjoint_and_reproducible(toy):
    cal = toy[0]
    fit, certify = Guarantee(0.1, certify_fraction=0.25, seed=3).split(cal)
    assert len(fit.labels) == 450 and len(certify.labels) == 150
    again = Guarantee(0.1, certify_fraction=0.25, seed=3).split(cal)
    np.testing.assert_array_equal(again[1].probs, certify.probs)
    rows = {tuple(r) for r in cal.probs.reshape(600, -1).round(6).tolist()}
    seen = [tuple(r) for r in np.concatenate([fit.probs, certify.probs]).reshape(600, -1)
            .round(6).tolist()]
    assert set(seen) == rows and len(seen) == 600


def test_risk_losses_and_pareto_chain_known_answers(toy):
    traces = toy[0]
    hard = traces.probs[:, 0].argmax(-1) != 0  # exit 0 wrong exactly on the hard samples
    at_zero = risk_losses(traces, np.zeros(600, dtype=np.int64), "accuracy_gap")
    np.testing.assert_array_equal(at_zero, hard.astype(float))
    np.testing.assert_array_equal(risk_losses(traces, np.zeros(600, dtype=np.int64),
                                              "disagreement"), hard.astype(float))
    compute = np.array([1.0, 0.4, 0.7, 0.2, 0.4])
    risk = np.array([0.0, 0.0, 0.1, 0.5, 0.2])
    # 0.7 (risk 0.1) is beaten by 0.4 (risk 0); the second 0.4 by the first
    np.testing.assert_array_equal(pareto_chain(compute, risk), [1, 3])


@pytest.mark.parametrize("guarantee, message", [
    ((0.0, 0.1), "epsilon must be a number in \\(0, 1\\)"),
    ((0.01, 1.0), "delta must be a number in \\(0, 1\\)"),
    ((0.01,), "must be \\(epsilon, delta\\)"),
    ("tight", "must be \\(epsilon, delta\\)"),
])
def test_bad_guarantees_are_one_clear_error(toy, guarantee, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_policies(*toy, ("max_prob",), guarantee=guarantee)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "holm"}, "method must be one of ltt, crc"),
    ({"risk": "latency"}, "risk must be one of accuracy_gap, disagreement"),
    ({"certify_fraction": 1.0}, "certify_fraction must be a number in \\(0, 1\\)"),
])
def test_bad_guarantee_fields(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Guarantee(0.01, **kwargs)


def test_too_few_calibration_samples_say_how_many_are_needed(toy):
    small = make_traces(n=200, seed=2)
    with pytest.raises(ConfigError, match="at least 230 are needed"):
        evaluate_policies(small, toy[1], ("max_prob",), guarantee=(0.01, 0.1))


# ----------------------------------------------------------------------------- prices
def test_pricing_exits_at_their_flop_shares_changes_nothing(toy):
    cal, test = toy
    plain = evaluate_policies(cal, test, ("max_prob", "lsm", "oracle"), folds=5)
    priced = evaluate_policies(cal, test, ("max_prob", "lsm", "oracle"), folds=5,
                               prices=cal.exit_costs)
    for name in plain:
        np.testing.assert_array_equal(plain[name].test_curve, priced[name].test_curve)


def test_curves_are_in_the_units_of_the_prices(toy):
    """Priced exits: the oracle's "compute" is the mean price of the exits it takes."""
    cal, test = toy
    prices = np.array([0.55, 0.6, 1.0])
    priced = evaluate_policies(cal, test, ("oracle",), folds=5, prices=prices)
    exits = oracle_exits(test.correct())
    assert priced["oracle"].iso_test[0] == pytest.approx(prices[exits].mean())


@pytest.mark.parametrize("prices, message", [
    ([0.2, 1.0], "3 finite positive numbers"),
    ([0.5, 0.3, 1.0], "must not decrease"),
    ([0.0, 0.5, 1.0], "finite positive"),
    (["a", "b", "c"], "one per exit"),
])
def test_bad_prices_are_one_clear_error(toy, prices, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_policies(*toy, ("max_prob",), prices=prices)


def test_a_latency_profile_prices_only_its_model_at_its_batch_size(toy):
    cal = toy[0]
    profile = LatencyProfile("toy", tuple(float(c) for c in cal.exit_costs), 256, "cpu", 2,
                             (0.3, 0.7, 1.02))
    np.testing.assert_allclose(profile.prices(cal, 256), [0.3, 0.7, 1.02])
    with pytest.raises(ConfigError, match="measured at batch size 256, not 64"):
        profile.prices(cal, 64)
    other = LatencyProfile("resnet20", profile.flop_costs, 256, "cpu", 2, profile.time_shares)
    with pytest.raises(ConfigError, match="measured for 'resnet20'"):
        other.prices(cal, 256)
    fewer = LatencyProfile("toy", (0.5, 1.0), 256, "cpu", 2, (0.5, 1.0))
    with pytest.raises(ConfigError, match="not for these traces"):
        fewer.prices(cal, 256)


def test_the_pipeline_skips_guarantees_a_small_calibration_split_cannot_give(toy, caplog):
    """A demo on a small data folder still runs: no guaranteed points, one warning."""
    from optdepth.experiments.pipeline import policy_suite
    from optdepth.offline.evaluate import RunEvaluation

    small = RunEvaluation(None, {"calibration": make_traces(n=300, seed=4), "test": toy[1]}, {})
    suite = policy_suite(small, lambda fitted: {})
    assert all(e.guaranteed is None for e in suite.evaluations.values())
    assert "no guaranteed operating points" in caplog.text
    full = RunEvaluation(None, {"calibration": toy[0], "test": toy[1]}, {})
    assert policy_suite(full, lambda fitted: {}).evaluations["lsm"].guaranteed is not None
