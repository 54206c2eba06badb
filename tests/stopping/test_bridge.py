"""The continuous-depth bridge: diffusion fit, free-boundary rule vs LSM, discrete -> continuous."""

import numpy as np
import pytest
from scipy.optimize import minimize

from optdepth.stopping import (
    bridge,
    bridge_margin_process,
    discrete_boundary_convergence,
    fit_diffusion,
    fit_logistic,
    free_boundary_rule,
    margin_paths,
)


def sigmoid(x, t=0.0):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def simulate(n, times, drift, sigma, seed, substeps=8):
    """Euler–Maruyama paths with `substeps` fine steps between observations, X_0 ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    x, out, s = rng.normal(size=n), [], 0.0
    for target in times:
        h = (target - s) / substeps
        for _ in range(substeps):
            x = x + drift(x, s) * h + sigma * np.sqrt(h) * rng.normal(size=n)
            s += h
        out.append(x)
    paths = np.stack(out, axis=1)
    return paths, (rng.random(paths.shape) < sigmoid(paths)).astype(float)


def test_fit_diffusion_recovers_a_time_dependent_drift_and_the_volatility():
    times = np.linspace(0.0, 1.0, 41)
    paths, _ = simulate(3000, times[1:], lambda x, s: 2.0 * s - 0.5 * x, 0.7, seed=0)
    fit = fit_diffusion(paths, times[1:])
    x = np.array([-1.0, 0.0, 1.0])
    for s in (0.3, 0.7):
        np.testing.assert_allclose(fit.drift(x, s), 2.0 * s - 0.5 * x, atol=0.15)
        np.testing.assert_allclose(fit.volatility(x, s), 0.7, rtol=0.05)
    assert fit.volatility(np.array([1e6]), 0.5)[0] > 0  # clamped, never a polynomial's blow-up


def test_fit_logistic_matches_brute_force_likelihood_maximum():
    rng = np.random.default_rng(1)
    x, s = rng.normal(size=4000), rng.random(4000)
    y = (rng.random(4000) < sigmoid(0.3 + 1.7 * x - 0.8 * s)).astype(float)
    fit = fit_logistic(x, y, s, ridge=0.0)

    def nll(b):
        z = b[0] + b[1] * x + b[2] * s
        return np.sum(np.logaddexp(0.0, z) - y * z)

    best = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose([fit.intercept, fit.slope, fit.depth_slope], best, atol=1e-4)
    np.testing.assert_allclose(best, [0.3, 1.7, -0.8], atol=0.2)


def test_margin_paths():
    probs = np.array([[[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]])  # (1, 2, 3)
    np.testing.assert_allclose(margin_paths(probs), [[np.log(3.5), np.log(2.0)]])


def test_rule_stops_exactly_where_the_solver_says():
    times = np.linspace(0.125, 1.0, 8)
    paths, _ = simulate(200, times, lambda x, s: np.ones_like(x), 1.0, seed=2)
    fit = fit_diffusion(paths, times, degree=0, time_degree=0)
    rule = free_boundary_rule(fit, sigmoid, times, 0.1, x_min=-6.0, x_max=8.0, nx=281)
    stop = rule.stop_matrix(paths)
    sol = rule.solution
    for n, k in [(0, 0), (5, 3), (17, 6)]:
        node = int(np.argmin(np.abs(sol.x - paths[n, k])))
        row = int(np.argmin(np.abs(sol.t - (times[k] - times[0]))))
        assert stop[n, k] == sol.stop_region[row, node]
    assert stop[:, -1].all()
    np.testing.assert_array_equal(rule.stop_times(paths), stop.argmax(axis=1))


def test_free_boundary_rule_and_lsm_agree_within_monte_carlo_error():
    times = np.arange(1, 9) / 8
    cal = simulate(8000, times, lambda x, s: np.ones_like(x), 1.0, seed=3, substeps=4)
    test = simulate(8000, times, lambda x, s: np.ones_like(x), 1.0, seed=4, substeps=4)
    result = bridge(*cal, *test, times, lam=0.1)
    v, d = result.values, result.difference
    assert abs(d.mean) <= 3 * d.standard_error + 1e-3, (v, d)
    for name in ("free_boundary", "lsm"):  # both beat the trivial rules
        assert v[name].mean > max(v["first"].mean, v["last"].mean) - 2 * v[name].standard_error
        assert v[name].mean < v["oracle"].mean
    assert abs(result.model_value - v["free_boundary"].mean) < 0.03
    summary = result.summary()
    assert set(summary) >= {"free_boundary", "lsm", "difference", "model_value", "payoff"}


def test_bridge_margin_process_on_exit_probabilities():
    rng = np.random.default_rng(5)
    logits = np.cumsum(rng.normal(0.0, 0.8, (300, 6, 4)), axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, 300)
    result = bridge_margin_process(probs[:150], labels[:150], probs[150:], labels[150:], lam=0.05)
    assert result.times.tolist() == pytest.approx(np.arange(1, 7) / 6)
    assert result.test_paths.shape == (150, 6) and (result.test_paths >= 0).all()


def test_discrete_rules_converge_to_the_free_boundary():
    study = discrete_boundary_convergence(
        lambda x: np.ones_like(x), lambda x: np.ones_like(x), sigmoid, lam=0.1,
        x_min=-6.0, x_max=8.0, nx=281, steps=(4, 8, 16, 32), solver_steps=128)
    d, v = study.max_distance, study.value_error
    assert np.all(np.diff(d) < 0), d  # the boundary distance shrinks with T ...
    assert d[-1] < 0.5 * d[0]
    ratios = v[:-1] / v[1:]  # ... and the value error is first order in the step 1/T
    assert np.all((ratios > 1.5) & (ratios < 2.6)), v
    assert [row["T"] for row in study.table()] == [4, 8, 16, 32]


# --------------------------------------------------------------------------- bad input

TIMES = np.arange(1, 5) / 4


@pytest.mark.parametrize(("paths", "times", "match"), [
    (np.zeros((10, 4)), TIMES, "at least 20"),
    (np.zeros((30, 1)), TIMES[:1], "T >= 2"),
    (np.zeros(30), TIMES, "must be 2-D"),
    (np.full((30, 4), np.nan), TIMES, "NaN or inf"),
    (np.zeros((30, 4)), TIMES[:3], r"times must have shape \(4,\)"),
    (np.zeros((30, 4)), TIMES[::-1], "strictly increasing"),
    (np.zeros((30, 4)), TIMES, "never move"),
])
def test_bad_paths(paths, times, match):
    with pytest.raises(ValueError, match=match):
        fit_diffusion(paths, times)


def test_bad_bridge_inputs():
    rng = np.random.default_rng(0)
    paths, correct = rng.normal(size=(30, 4)), rng.integers(0, 2, (30, 4)).astype(float)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        bridge(paths, correct, paths, correct, TIMES, lam=-0.1)
    with pytest.raises(ValueError, match="cal_correct must be 0/1 outcomes"):
        bridge(paths, correct * 0.5 + 0.25, paths, correct, TIMES, lam=0.1)
    with pytest.raises(ValueError, match="test_correct must be 0/1 outcomes of the paths' shape"):
        bridge(paths, correct, paths, correct[:, :3], TIMES, lam=0.1)
    with pytest.raises(ValueError, match=r"probs must be \(N, T, C\) probabilities"):
        margin_paths(np.full((3, 2, 1), 1.0))
    with pytest.raises(ValueError, match="test_labels must have shape"):
        probs = np.full((30, 4, 3), 1 / 3)
        bridge_margin_process(probs, np.zeros(30), probs, np.zeros(29), lam=0.1)
    with pytest.raises(ValueError, match="must divide solver_steps"):
        discrete_boundary_convergence(np.ones_like, np.ones_like, sigmoid, lam=0.1, x_min=-1.0,
                                      x_max=1.0, steps=(3,), solver_steps=8)
    with pytest.raises(ValueError, match="edge_margin must be < 0.5"):
        discrete_boundary_convergence(np.ones_like, np.ones_like, sigmoid, lam=0.1, x_min=-1.0,
                                      x_max=1.0, steps=(2,), solver_steps=8, edge_margin=0.6)
    with pytest.raises(ValueError, match="y must be 0/1"):
        fit_logistic(np.zeros(5), np.full(5, 0.5))
