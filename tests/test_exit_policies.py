"""Exit policies on traces (numpy only): known answers, causality, cross-fitting, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optdepth.offline import (
    EXIT_POLICIES,
    NETWORK_POLICIES,
    TraceSource,
    evaluate_policies,
    fit_exit_policy,
    gap_summary,
    iso_accuracy_index,
    list_exit_policies,
    matched_accuracy_comparison,
    oracle_exits,
)
from optdepth.offline.exit_policies import (
    CalibratedState,
    Column,
    ExitCalibrator,
    ExitPolicy,
    FitContext,
    check_traces,
    cross_fit_logits,
    fold_ids,
    run_length,
)
from optdepth.online import offline_exits
from optdepth.stopping import ThresholdPolicy
from optdepth.traces import FEATURES, Traces, exit_features

COSTS = np.array([0.2, 0.6, 1.0], dtype=np.float32)


def make_traces(n=400, seed=0, arch="toy", costs=COSTS, hard_fraction=0.5):
    """Three exits, three classes, label 0. Easy samples: every exit right, max_prob ~0.95.
    Hard samples: exit 0 says class 1 (max_prob ~0.5), exits 1 and 2 right (~0.9).

    Known answer: a max_prob threshold in (0.55, 0.85] stops easy samples at exit 0 and hard
    ones at exit 1: full-depth accuracy 1.0 at compute 0.5 * 0.2 + 0.5 * 0.6 = 0.4.
    """
    rng = np.random.default_rng(seed)
    hard = np.arange(n) < int(hard_fraction * n)
    t = len(costs)
    top = np.where(hard[:, None], 0.9, 0.95) + rng.uniform(-0.03, 0.03, (n, t))
    top[hard, 0] = 0.5 + rng.uniform(-0.04, 0.04, hard.sum())
    probs = np.empty((n, t, 3))
    probs[:, :, 0] = top
    probs[:, :, 1] = (1 - top) * 0.7
    probs[:, :, 2] = (1 - top) * 0.3
    probs[hard, 0] = probs[hard, 0][:, [1, 0, 2]]  # exit 0 predicts class 1 for hard samples
    probs = probs.astype(np.float32)
    rel = rng.uniform(0.1, 1.0, (n, t)).astype(np.float32)
    blocks = np.arange(t)
    return Traces(probs=probs, labels=np.zeros(n, dtype=np.int64),
                  features=exit_features(probs, rel, blocks, costs), exit_costs=costs,
                  residual_norms=rel, state_norms=np.ones_like(rel), exit_blocks=blocks,
                  metadata={"arch": arch, "feature_names": list(FEATURES)})


@pytest.fixture(scope="module")
def toy():
    return make_traces(seed=0), make_traces(seed=1)


@pytest.fixture(scope="module")
def toy_evaluations(toy):
    return evaluate_policies(*toy, folds=5)


@pytest.fixture(scope="module")
def small_evaluations():
    """100 samples: one wrong sample costs 1 point > the 0.5-point tolerance, so the only
    accurate-enough operating points are exactly those at full-depth accuracy 1.0."""
    return evaluate_policies(make_traces(n=100, seed=4), make_traces(n=100, seed=5), folds=5,
                             names=("max_prob", "entropy", "oracle"))


def test_iso_accuracy_index_known_answers():
    acc = np.array([0.80, 0.86, 0.895, 0.90, 0.91])
    compute = np.array([0.1, 0.2, 0.3, 0.3, 1.0])
    # reference 0.90, tolerance 0.005: points with acc >= 0.895 are 2, 3, 4; cheapest compute
    # 0.3 is shared by 2 and 3 -> the more accurate one, 3.
    assert iso_accuracy_index(acc, compute, 0.90, 0.005) == 3
    assert iso_accuracy_index(acc, compute, 0.90, 0.04) == 1
    assert iso_accuracy_index(acc, compute, 0.80, 0.0) == 0
    with pytest.raises(ValueError, match="no operating point reaches accuracy 0.9500"):
        iso_accuracy_index(acc, compute, 0.96, 0.01)
    with pytest.raises(ValueError, match="equal non-empty 1-D"):
        iso_accuracy_index(acc, compute[:3], 0.9)


@pytest.mark.parametrize("name", ["max_prob", "entropy", "oracle"])
def test_iso_accuracy_point_on_a_trace_set_with_a_known_answer(small_evaluations, name):
    evaluation = small_evaluations[name]
    compute, accuracy = evaluation.iso_test
    assert accuracy == 1.0
    assert compute == pytest.approx(0.4, abs=1e-6)
    assert evaluation.calibration_curve[evaluation.iso_index, 0] == pytest.approx(0.4, abs=1e-6)
    if name == "max_prob":  # the cheapest threshold that still sends every hard sample on
        assert 0.54 < evaluation.iso_param <= 0.87


@pytest.mark.parametrize("name", ["lsm", "osla"])
def test_regression_policies_find_the_known_answer_up_to_fitting_noise(toy_evaluations, name):
    evaluation = toy_evaluations[name]
    compute, accuracy = evaluation.iso_test
    assert accuracy >= 0.995 and 0.4 - 1e-6 <= compute <= 0.42
    assert evaluation.cross_fitted and evaluation.policy.kind == name


def test_patience_known_answer(toy_evaluations):
    # Predictions change between exits 0 and 1 on hard samples only: patience 1 stops easy
    # samples at exit 1 and hard ones at exit 2 (0.5 * 0.6 + 0.5 * 1.0 = 0.8); k = 2 is full depth.
    evaluation = toy_evaluations["patience"]
    np.testing.assert_array_equal(evaluation.params, [1, 2])
    np.testing.assert_allclose(evaluation.test_curve, [[0.8, 1.0], [1.0, 1.0]], atol=1e-6)
    assert evaluation.iso_param == 1


def test_metrics_record_and_gap_summary(toy_evaluations):
    record = toy_evaluations["max_prob"].metrics(wall_speedup=2.5)
    assert set(record) == {"curve", "iso_accuracy"}
    compute, accuracy = toy_evaluations["max_prob"].iso_test
    assert record["iso_accuracy"] == {"accuracy": accuracy, "mean_compute": compute,
                                      "wall_speedup": 2.5, "reached": True}
    curve = np.array(record["curve"])
    assert curve.shape[1] == 2 and (np.diff(curve[:, 0]) >= 0).all()
    assert toy_evaluations["oracle"].metrics()["iso_accuracy"]["wall_speedup"] is None
    summary = gap_summary(toy_evaluations)
    assert summary["best_rule"] in ("max_prob", "entropy", "patience")
    assert summary["oracle_compute"] == pytest.approx(0.4)
    assert list(toy_evaluations) == list(NETWORK_POLICIES)


def test_matched_accuracy_reads_both_curves_at_the_lower_final_exit():
    def net(final, curves):
        return {"exit_accuracy": [0.5, final],
                "policies": {name: {"curve": curve} for name, curve in curves.items()}}

    nets = {"baseline": net(0.92, {"max_prob": [[0.2, 0.90], [0.3, 0.916], [1.0, 0.92]],
                                   "lsm": [[0.1, 0.90], [0.25, 0.915], [1.0, 0.92]]}),
            "ldepth": net(0.91, {"max_prob": [[0.1, 0.904], [0.4, 0.906], [1.0, 0.91]],
                                 "lsm": [[0.2, 0.9], [1.0, 0.904]]})}
    matched = matched_accuracy_comparison(nets)
    # the lower final exit is 91%: both curves are read at 90.5%, not each at its own bar
    assert matched["accuracy"] == pytest.approx(0.905)
    assert matched["policies"]["max_prob"] == {"baseline": 0.3, "ldepth": 0.4,
                                               "ratio": pytest.approx(4 / 3)}
    # a curve that never reaches the level gives no ratio rather than a made-up one
    assert matched["policies"]["lsm"] == {"baseline": 0.25, "ldepth": None, "ratio": None}


def test_gap_summary_arithmetic():
    class Fake:
        def __init__(self, compute):
            self.iso_test = (compute, 0.9)

    evaluations = {"max_prob": Fake(0.32), "patience": Fake(0.5), "lsm": Fake(0.28),
                   "osla": Fake(0.30), "oracle": Fake(0.20)}
    summary = gap_summary(evaluations)
    assert summary["best_rule"] == "max_prob" and summary["best_ours"] == "lsm"
    assert summary["compute_saving_vs_rule"] == pytest.approx(1 - 0.28 / 0.32)
    assert summary["oracle_gap_closed"] == pytest.approx(0.04 / 0.12)


def test_oracle_exits():
    correct = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(oracle_exits(correct), [1, 0, 2, 2])


@pytest.mark.parametrize("name", list_exit_policies())
def test_feature_maps_are_causal(toy, name):
    """A map's output at step s uses steps <= s only, and equals it bit for bit on a prefix."""
    ctx = FitContext.from_traces(toy[0], folds=5)
    feature_map = EXIT_POLICIES[name].feature_map(ctx)
    features = np.asarray(toy[1].features, dtype=np.float64)
    full = feature_map(features)
    for s in range(1, features.shape[1] + 1):
        np.testing.assert_array_equal(feature_map(np.ascontiguousarray(features[:, :s])),
                                      full[:, :s])


def test_calibrated_state_of_the_last_steps_equals_the_full_maps_tail(toy):
    """The engine decides from ``trailing``; it must be the full map's last steps, bit for bit."""
    state = EXIT_POLICIES["lsm"].feature_map(FitContext.from_traces(toy[0], folds=5))
    assert isinstance(state, CalibratedState)
    features = np.asarray(toy[1].features, dtype=np.float64)
    for s in range(1, features.shape[1] + 1):
        prefix = np.ascontiguousarray(features[:, :s])
        full = state(prefix)
        for steps in range(1, s + 2):
            np.testing.assert_array_equal(state.trailing(prefix, steps), full[:, -steps:])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 1.0]), min_size=6, max_size=6),
                min_size=1, max_size=5))
def test_run_length_matches_its_recurrence(rows):
    """run[0] = 0 and run[t] = (run[t-1] + 1) * agreement[t]: the definition, step by step."""
    agreement = np.array(rows)
    expected = np.zeros_like(agreement)
    for t in range(1, agreement.shape[1]):
        expected[:, t] = (expected[:, t - 1] + 1.0) * agreement[:, t]
    np.testing.assert_array_equal(run_length(agreement), expected)


def test_a_feature_map_without_trailing_decides_like_the_builtin_one_and_is_checked(toy):
    """A user map (no ``trailing``) is applied to the whole prefix and sliced; its output is
    validated like any features (a NaN is a clear error, not a silent decision)."""
    calibration, test = toy
    builtin = fit_exit_policy("max_prob", calibration, 0.7)
    features = np.asarray(test.features, dtype=np.float64)
    plain = ExitPolicy(ThresholdPolicy(0, threshold=0.7), lambda f: Column(0)(f), kind="max_prob")
    plain.fit(calibration.correct(), np.asarray(calibration.features, dtype=np.float64))
    np.testing.assert_array_equal(plain.stop_times(features), builtin.stop_times(features))
    broken = ExitPolicy(ThresholdPolicy(0, threshold=0.7), lambda f: f[:, :, :1] * np.nan)
    calibration_features = np.asarray(calibration.features, dtype=np.float64)
    broken.fit(calibration.correct(), calibration_features, derived=calibration_features[:, :, :1])
    with pytest.raises(ValueError, match="the feature map's output contains NaN"):
        broken.stop_at(features[:, :2], 1)


@pytest.mark.parametrize("name", list_exit_policies())
def test_decisions_do_not_depend_on_batch_composition(toy, name):
    ctx = FitContext.from_traces(toy[0], folds=5)
    param = {"max_prob": 0.7, "entropy": -0.5, "patience": 1, "lsm": 0.1, "osla": 0.1}[name]
    policy = fit_exit_policy(name, ctx, param)
    features = np.asarray(toy[1].features, dtype=np.float64)
    for t in range(features.shape[1]):
        batch = policy.stop_at(features[:, : t + 1], t)
        alone = [policy.stop_at(features[i:i + 1, : t + 1], t)[0] for i in range(0, 400, 37)]
        np.testing.assert_array_equal(alone, batch[::37])


def test_run_length_and_fold_ids():
    agreement = np.array([[0, 1, 1, 0, 1], [0, 0, 1, 1, 1]], dtype=float)
    np.testing.assert_array_equal(run_length(agreement), [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]])
    folds = fold_ids(103, 10, seed=0)
    assert np.bincount(folds).min() == 10 and np.bincount(folds).max() == 11
    np.testing.assert_array_equal(folds, fold_ids(103, 10, seed=0))
    with pytest.raises(ValueError, match="at least 20 calibration samples"):
        fold_ids(19, 10, seed=0)


def test_calibrator_is_calibrated_and_cross_fitting_is_out_of_fold():
    rng = np.random.default_rng(0)
    traces = make_traces(n=2000, seed=3)
    correct = traces.correct()
    noisy = np.where(rng.random(correct.shape) < 0.1, 1 - correct, correct)  # 10% label noise
    features = np.asarray(traces.features, dtype=np.float64)
    prob = 1 / (1 + np.exp(-ExitCalibrator.fit(features, noisy).logits(features)))
    np.testing.assert_allclose(prob.mean(axis=0), noisy.mean(axis=0), atol=0.01)
    folds = fold_ids(2000, 5, seed=0)
    oof = cross_fit_logits(features, noisy, folds)
    held = folds == 0
    expected = ExitCalibrator.fit(features[~held], noisy[~held]).logits(features[held])
    np.testing.assert_array_equal(oof[held], expected)


def test_bad_traces_and_mismatched_models_are_clear_errors(toy):
    with pytest.raises(ValueError, match="must be optdepth.traces.Traces"):
        check_traces(np.zeros((3, 3)), "calibration traces")
    empty = make_traces(n=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate_policies(empty, toy[1])
    other_arch = make_traces(seed=2, arch="resnet56")
    with pytest.raises(ValueError, match="'toy' model but the test traces from a 'resnet56'"):
        evaluate_policies(toy[0], other_arch)
    four_exits = make_traces(seed=2, costs=np.array([0.1, 0.4, 0.7, 1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="3 exits but the test traces has 4"):
        evaluate_policies(toy[0], four_exits)
    other_costs = make_traces(seed=2, costs=np.array([0.3, 0.6, 1.0], dtype=np.float32))
    with pytest.raises(ValueError, match="different models"):
        evaluate_policies(toy[0], other_costs)
    policy = fit_exit_policy("max_prob", toy[0], 0.7)
    with pytest.raises(ValueError, match="3 exits but the traces has 4"):
        offline_exits(policy, four_exits)
    with pytest.raises(ValueError, match="unknown exit policy 'bogus'"):
        fit_exit_policy("bogus", toy[0], 0.5)
    with pytest.raises(ValueError, match="unknown exit policy"):
        evaluate_policies(*toy, names=("max_prob", "bogus"))


def test_plain_stopping_policies_need_the_right_shape(toy):
    wrong_features = ThresholdPolicy(0).fit(np.zeros((5, 3)), np.zeros((5, 3, 2)))
    with pytest.raises(ValueError, match="fitted on 2 features but the traces provides 6"):
        offline_exits(wrong_features, toy[1])
    right = ThresholdPolicy(0, threshold=0.8).fit(np.zeros((5, 3)), np.zeros((5, 3, 6)))
    result = offline_exits(right, toy[1])
    assert result.exit_index.shape == (400,) and result.probs is None
    np.testing.assert_array_equal(result.compute, COSTS.astype(float)[result.exit_index])


def test_trace_source_of_traces(toy):
    source = TraceSource.of_traces(toy[0])
    assert source.num_exits == 3 and source.arch == "toy" and source.feature_names == FEATURES
    source.check_matches(TraceSource.of_traces(toy[1]), "a", "b")


def test_unreachable_accuracy_target_reports_the_most_accurate_point(toy):
    cal, test = toy
    # A negative tolerance asks for more than the final exit's accuracy (1.0): unreachable.
    evaluations = evaluate_policies(cal, test, ("max_prob",), tolerance=-0.01)
    record = evaluations["max_prob"]
    assert not record.reached and record.metrics()["iso_accuracy"]["reached"] is False
    assert record.calibration_curve[record.iso_index, 1] == record.calibration_curve[:, 1].max()
