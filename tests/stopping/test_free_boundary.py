"""Tests of the free-boundary solver against answers not computed with it.

References used: closed-form perpetual problems (American put under GBM; a two-sided problem for
Brownian motion with drift, discounting and a running cost, whose smooth-fit equations are solved
with scipy root finders; an undiscounted problem with a running cost, V = x^2 + 1/4 on
|x| < 1/2), the Black–Scholes formula (an American call without dividends is never
exercised early), a Cox–Ross–Rubinstein binomial tree (a different algorithm) and a published
finite-difference value (Longstaff & Schwartz 2001, Table 1).

Conventions: GBM problems are posed either in price space (x = S, drift r x, volatility sigma x)
or in log-price space (x = log S, drift r - sigma^2/2, volatility sigma); both are tested.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq, fsolve
from scipy.stats import norm

from optdepth.stopping.free_boundary import (
    FreeBoundary,
    FreeBoundarySolution,
    solve_free_boundary,
)

K, R, SIGMA, T = 40.0, 0.06, 0.2, 1.0
#: Longstaff & Schwartz (2001), "Valuing American options by simulation: a simple least-squares
#: approach", Rev. Financial Studies 14(1), Table 1, row S=36, sigma=0.20, T=1: finite-difference
#: American put value 4.478 (K=40, r=0.06). Their grid is itself approximate (the limit of the
#: binomial tree below, continuous exercise, is about 4.4867), so it is checked to 0.25%.
LS2001_PUT_36 = 4.478


def _put(x: np.ndarray, t: float) -> np.ndarray:
    return np.maximum(K - x, 0.0)


def _log_put(x: np.ndarray, t: float) -> np.ndarray:
    return np.maximum(K - np.exp(x), 0.0)


def _perpetual_put(s: np.ndarray) -> np.ndarray:
    """Closed form: V = (K - S*) (S / S*)^(-a) above S* = K a / (1 + a), a = 2 r / sigma^2."""
    a = 2.0 * R / SIGMA**2
    s_star = K * a / (1.0 + a)
    return np.where(s <= s_star, K - s, (K - s_star) * (np.maximum(s, s_star) / s_star) ** (-a))


def _crr_american_put(s0: float, n: int) -> float:
    """Cox–Ross–Rubinstein binomial tree with n steps (vectorised backward induction)."""
    dt = T / n
    u = math.exp(SIGMA * math.sqrt(dt))
    p = (math.exp(R * dt) - 1.0 / u) / (u - 1.0 / u)
    disc = math.exp(-R * dt)
    s = s0 * u ** (n - 2.0 * np.arange(n + 1))
    v = np.maximum(K - s, 0.0)
    for m in range(n - 1, -1, -1):
        s = s[: m + 1] / u
        v = np.maximum(disc * (p * v[:-1] + (1.0 - p) * v[1:]), K - s)
    return float(v[0])


@pytest.fixture(scope="module")
def crr_put_36() -> float:
    # averaging n and n+1 steps cancels the tree's odd/even oscillation; error ~1e-5 here
    return 0.5 * (_crr_american_put(36.0, 5000) + _crr_american_put(36.0, 5001))


def _price_space_put(nx: int, nt: int, **kw) -> FreeBoundarySolution:
    return solve_free_boundary(
        lambda x, t: R * x,
        lambda x, t: SIGMA * x,
        _put,
        horizon=T,
        discount=R,
        x_min=0.0,
        x_max=4 * K,
        nx=nx,
        nt=nt,
        **kw,
    )


# --------------------------------------------------------------------------- perpetual


def _log_perpetual_put(nx: int, zeta: float) -> FreeBoundarySolution:
    """Perpetual put in log space, grid placed so x* sits a fraction zeta into a coarse cell."""
    x_star = math.log(_s_star())
    x_min = x_star - 3.0 - zeta * 0.2
    return solve_free_boundary(
        R - SIGMA**2 / 2,
        SIGMA,
        _log_put,
        horizon=None,
        discount=R,
        x_min=x_min,
        x_max=x_min + 8.0,
        nx=nx,
    )


def _s_star() -> float:
    a = 2.0 * R / SIGMA**2
    return K * a / (1.0 + a)


def test_perpetual_put_matches_closed_form():
    sol = _log_perpetual_put(801, zeta=0.3)
    s = np.array([25.0, 30.0, 33.0, 36.0, 40.0, 50.0, 80.0])
    np.testing.assert_allclose(sol.value_at(np.log(s)), _perpetual_put(s), rtol=0, atol=2e-3)
    assert sol.boundary.x.shape == (1, 1) and sol.boundary.direction[0, 0] == -1
    assert abs(math.exp(sol.boundary.x[0, 0]) - _s_star()) < 0.03  # a tenth of dx (0.3 in S)
    assert sol.perpetual and sol.t.tolist() == [0.0]


@pytest.mark.parametrize("zeta", [0.0, 0.5])
def test_perpetual_put_converges_at_second_order(zeta):
    # Refining by 3 keeps the boundary at the same fraction zeta of a cell, which fixes the
    # error constant (it depends on zeta: x* on a node is the best case, mid-cell the worst).
    errors = []
    for nx in (41, 121, 361, 1081):
        sol = _log_perpetual_put(nx, zeta)
        window = (sol.x > math.log(20.0)) & (sol.x < math.log(80.0))
        exact = _perpetual_put(np.exp(sol.x[window]))
        errors.append(np.abs(sol.values[0, window] - exact).max())
    orders = np.log(np.array(errors[:-1]) / np.array(errors[1:])) / math.log(3.0)
    assert np.all((orders > 1.6) & (orders < 2.4)), (errors, orders)
    assert errors[-1] < 1e-3


def _two_sided_reference(mu: float, sigma: float, r: float, c: float):
    """Exact solution of sup E[e^{-r tau} X_tau^2 - int c e^{-r s} ds], dX = mu dt + sigma dW.

    Continuation (b1, b2): V = A e^{l1 x} + B e^{l2 x} - c / r with l1, l2 the roots of
    sigma^2/2 l^2 + mu l - r = 0; value matching and smooth fit at b1, b2 give four equations.
    """
    k = math.sqrt(2 * r) / sigma
    b0 = brentq(lambda b: 2 * b / (k * math.tanh(k * b)) - c / r - b * b, 1e-6, 10.0)
    l1, l2 = np.roots([sigma**2 / 2, mu, -r])

    def equations(p):
        a, b, lo, hi = p
        v = lambda x: a * np.exp(l1 * x) + b * np.exp(l2 * x) - c / r  # noqa: E731
        dv = lambda x: a * l1 * np.exp(l1 * x) + b * l2 * np.exp(l2 * x)  # noqa: E731
        return [v(lo) - lo**2, v(hi) - hi**2, dv(lo) - 2 * lo, dv(hi) - 2 * hi]

    a0 = b0 / (k * math.sinh(k * b0))  # symmetric (mu = 0) solution as the starting point
    (a, b, lo, hi), info, ok, msg = fsolve(equations, [a0, a0, -b0, b0], full_output=True)
    assert ok == 1, msg

    def value(x):
        inside = (x > lo) & (x < hi)
        return np.where(inside, a * np.exp(l1 * x) + b * np.exp(l2 * x) - c / r, x * x)

    return value, lo, hi


@pytest.mark.parametrize("mu", [0.0, 0.3, -0.2])
def test_two_sided_perpetual_with_running_cost(mu):
    value, lo, hi = _two_sided_reference(mu, sigma=1.0, r=0.5, c=0.2)
    sol = solve_free_boundary(
        mu,
        1.0,
        lambda x, t: x * x,
        horizon=math.inf,
        discount=0.5,
        running_cost=0.2,
        x_min=-3.0,
        x_max=3.5,
        nx=651,
    )
    np.testing.assert_allclose(sol.values[0], value(sol.x), rtol=0, atol=2e-4)
    dx = sol.x[1] - sol.x[0]
    np.testing.assert_allclose(sol.boundary.x[0], [lo, hi], rtol=0, atol=0.5 * dx)
    assert sol.boundary.direction[0].tolist() == [-1, 1]
    inside = (sol.x > lo + dx) & (sol.x < hi - dx)
    outside = (sol.x < lo - dx) | (sol.x > hi + dx)
    assert not sol.stop_region[0, inside].any() and sol.stop_region[0, outside].all()


def _capped_abs(x: np.ndarray, t: float) -> np.ndarray:
    return np.minimum(np.abs(x), 1.0)


def _capped_abs_value(x: np.ndarray) -> np.ndarray:
    """sup E[min(|W_tau|, 1) - tau] for Brownian motion W: continue on |x| < 1/2, where
    V = x^2 + 1/4 (from V''/2 = 1 with value matching and smooth fit at |x| = 1/2)."""
    return np.where(np.abs(x) < 0.5, x * x + 0.25, np.minimum(np.abs(x), 1.0))


@pytest.mark.parametrize("nx", [101, 201])  # boundary mid-cell, then on a node
def test_undiscounted_perpetual_with_running_cost(nx):
    # the shape of the continuous-depth problem: no discounting, a price per unit time
    sol = solve_free_boundary(
        0.0, 1.0, _capped_abs, horizon=None, running_cost=1.0, x_min=-2.0, x_max=2.0, nx=nx
    )
    np.testing.assert_allclose(sol.values[0], _capped_abs_value(sol.x), rtol=0, atol=1e-3)
    dx = sol.x[1] - sol.x[0]
    np.testing.assert_allclose(sol.boundary.x[0], [-0.5, 0.5], rtol=0, atol=0.5 * dx)


def test_long_horizon_approaches_the_perpetual_value():
    kw = dict(horizon=5.0, running_cost=1.0, x_min=-2.0, x_max=2.0, nx=201, nt=100)
    sol = solve_free_boundary(0.0, 1.0, _capped_abs, **kw)
    np.testing.assert_allclose(sol.values[0], _capped_abs_value(sol.x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(sol.boundary.x[0], [-0.5, 0.5], atol=0.01)
    # With less time left, continuing pays less: the continuation interval shrinks towards T.
    # Checked with the monotone implicit scheme: with Crank-Nicolson and dt >> dx^2 the
    # boundary estimate jitters from step to step (by ~0.1 dx far from T, more close to T).
    implicit = solve_free_boundary(0.0, 1.0, _capped_abs, theta=1.0, **kw)
    widths = np.diff(implicit.boundary.x[:-1], axis=1)[:, 0]
    assert np.all(np.diff(widths) <= 1e-9) and widths[-1] < widths[0] - 0.3


# --------------------------------------------------------------------------- finite horizon


def test_american_put_price_space_vs_tree_and_published(crr_put_36):
    sol = _price_space_put(nx=641, nt=200)  # dx = 0.25, dt = 0.005
    v = sol.value_at(36.0)
    assert abs(v - crr_put_36) / crr_put_36 < 2e-4
    assert abs(v - LS2001_PUT_36) / LS2001_PUT_36 < 2.5e-3


def test_american_put_log_space_vs_tree(crr_put_36):
    x0 = math.log(36.0)
    sol = solve_free_boundary(
        R - SIGMA**2 / 2,
        SIGMA,
        _log_put,
        horizon=T,
        discount=R,
        x_min=x0 - 2.0,
        x_max=x0 + 2.0,
        nx=801,
        nt=400,
    )
    assert abs(sol.value_at(x0) - crr_put_36) / crr_put_36 < 1e-4


def test_american_put_converges_at_about_second_order(crr_put_36):
    values = [
        _price_space_put(nx, nt).value_at(36.0) for nx, nt in [(161, 50), (321, 100), (641, 200), (1281, 400)]
    ]
    diffs = np.abs(np.diff(values))
    orders = np.log2(diffs[:-1] / diffs[1:])  # self-convergence: no reference needed
    assert np.all((orders > 1.5) & (orders < 2.5)), (values, orders)
    errors = np.abs(np.array(values) - crr_put_36)
    assert np.all(np.diff(errors) < 0) and errors[-1] / crr_put_36 < 1e-4


def test_american_put_boundary_and_region():
    sol = _price_space_put(nx=641, nt=200)
    b = sol.boundary
    assert b.x.shape == (201, 1) and b.t is sol.t
    assert np.isnan(b.x[-1, 0]) and sol.stop_region[-1].all()  # stopping is forced at T
    assert np.all(b.direction[:-1, 0] == -1)  # exercise below the boundary
    early = b.x[:-1, 0]
    assert np.all(np.diff(early) > -0.05)  # rises towards K as t -> T (to within dx / 5)
    assert 32.5 < early[0] < 33.3 and early[-1] > 38.0
    s = sol.x
    assert not sol.stop_region[:-1][:, s > K].any()  # never exercise out of the money
    assert np.all(sol.values >= sol.payoff_values)


def test_american_call_without_dividends_equals_black_scholes():
    d_edge = lambda t: 4 * K - K * math.exp(-R * (T - t))  # noqa: E731  exact far-field value
    sol = solve_free_boundary(
        lambda x, t: R * x,
        lambda x, t: SIGMA * x,
        lambda x, t: np.maximum(x - K, 0.0),
        horizon=T,
        discount=R,
        x_min=0.0,
        x_max=4 * K,
        nx=641,
        nt=200,
        boundary=("reflect", d_edge),
    )
    s = np.array([30.0, 36.0, 40.0, 44.0, 50.0])
    d1 = (np.log(s / K) + (R + SIGMA**2 / 2) * T) / (SIGMA * math.sqrt(T))
    bs = s * norm.cdf(d1) - K * math.exp(-R * T) * norm.cdf(d1 - SIGMA * math.sqrt(T))
    np.testing.assert_allclose(sol.value_at(s), bs, rtol=2e-4, atol=1e-4)
    interior = sol.x > 0.0  # at S = 0 the call is worthless and stopping is harmless
    assert not sol.stop_region[:-1][:, interior].any()
    assert np.isnan(sol.boundary.x[:-1]).all()


def test_time_dependent_payoff_running_cost_and_moving_boundary():
    # sigma = mu = 0: V(x, t) = max_{s in [t, T]} -(s - x)^2 - c (s - t); the optimum is
    # s* = clip(x - c/2, t, T), so one stops at t exactly when x <= t + c/2.
    c, horizon = 0.4, 2.0
    sol = solve_free_boundary(
        0.0,
        0.0,
        lambda x, t: -((t - x) ** 2),
        horizon=horizon,
        running_cost=c,
        x_min=-1.0,
        x_max=3.0,
        nx=401,
        nt=400,
    )
    for t in (0.0, 0.5, 1.25):
        s_opt = np.clip(sol.x - c / 2, t, horizon)
        exact = -((s_opt - sol.x) ** 2) - c * (s_opt - t)
        np.testing.assert_allclose(sol.value_at(sol.x, t), exact, rtol=0, atol=1e-4)
    t_inner = sol.t[1:-60]  # away from T, where the boundary t + c/2 runs into x = T
    np.testing.assert_allclose(sol.boundary.x[1:-60, 0], t_inner + c / 2, atol=0.011)


def test_discounting_equals_discounted_time_dependent_payoff():
    # e^{-r t} V_r(x, t) solves the undiscounted problem with payoff e^{-r t} g(x).
    kw = dict(x_min=0.0, x_max=4 * K, nx=321, nt=100, horizon=T)
    v_r = _price_space_put(nx=321, nt=100)
    v_0 = solve_free_boundary(
        lambda x, t: R * x,
        lambda x, t: SIGMA * x,
        lambda x, t: math.exp(-R * t) * np.maximum(K - x, 0.0),
        **kw,
    )
    for t in (0.0, 0.5):
        np.testing.assert_allclose(
            math.exp(-R * t) * v_r.value_at(v_r.x, t), v_0.value_at(v_0.x, t), atol=2e-3
        )


# --------------------------------------------------------------------------- properties


_payoffs = {
    "put": lambda x, t: np.maximum(1.0 - np.exp(x), 0.0),
    "square": lambda x, t: x * x,
    "bump": lambda x, t: np.exp(-4 * (x - 0.3) ** 2),
}


@settings(max_examples=20, deadline=None)
@given(
    sigma=st.floats(0.1, 1.0),
    mu=st.floats(-0.5, 0.5),
    r=st.floats(0.05, 0.5),
    c=st.floats(0.0, 0.3),
    t1=st.floats(0.1, 2.0),
    name=st.sampled_from(sorted(_payoffs)),
)
def test_value_is_sandwiched_between_payoff_and_longer_horizons(sigma, mu, r, c, t1, name):
    # With the monotone implicit scheme and the same dt, the discrete values obey
    # payoff <= V(horizon t1) <= V(horizon 2 t1) <= V(perpetual), exactly.
    kw = dict(discount=r, running_cost=c, x_min=-2.0, x_max=2.0, nx=41, theta=1.0)
    g = _payoffs[name]
    short = solve_free_boundary(mu, sigma, g, horizon=t1, nt=10, **kw)
    long = solve_free_boundary(mu, sigma, g, horizon=2 * t1, nt=20, **kw)
    perp = solve_free_boundary(mu, sigma, g, horizon=None, **kw)
    tol = 1e-9 * (1 + np.abs(perp.values).max())
    assert np.all(short.values[0] >= short.payoff_values[0] - tol)
    assert np.all(long.values[0] >= short.values[0] - tol)
    assert np.all(perp.values[0] >= long.values[0] - tol)


@settings(max_examples=15, deadline=None)
@given(shift=st.floats(-5.0, 5.0), sigma=st.floats(0.1, 1.0), mu=st.floats(-0.5, 0.5))
def test_undiscounted_value_shifts_with_the_payoff(shift, sigma, mu):
    kw = dict(horizon=1.0, running_cost=0.1, x_min=-2.0, x_max=2.0, nx=41, nt=20)
    g = _payoffs["bump"]
    base = solve_free_boundary(mu, sigma, g, **kw)
    moved = solve_free_boundary(mu, sigma, lambda x, t: g(x, t) + shift, **kw)
    np.testing.assert_allclose(moved.values, base.values + shift, atol=1e-9 * (1 + abs(shift)))
    np.testing.assert_array_equal(moved.stop_region, base.stop_region)


# --------------------------------------------------------------------------- contract


def test_result_contract():
    sol = _price_space_put(nx=81, nt=10)
    assert sol.x.shape == (81,) and sol.t.shape == (11,)
    assert sol.values.shape == sol.payoff_values.shape == sol.stop_region.shape == (11, 81)
    assert sol.stop_region.dtype == bool and isinstance(sol.boundary, FreeBoundary)
    assert sol.iterations.min() >= 1 and not sol.perpetual and sol.horizon == T
    for arr in (sol.x, sol.t, sol.values, sol.stop_region, sol.boundary.x):
        with pytest.raises(ValueError):
            arr[0] = 0  # read-only
    assert isinstance(sol.value_at(36.0), float)
    assert sol.value_at(np.full((2, 3), 36.0)).shape == (2, 3)
    np.testing.assert_allclose(sol.value_at(sol.x, sol.t[4]), sol.values[4], atol=1e-12)
    assert sol.value_at(36.0, 0.05) == pytest.approx(
        0.5 * (sol.value_at(36.0, 0.0) + sol.value_at(36.0, 0.1))
    )
    with pytest.raises(ValueError, match="x must lie"):
        sol.value_at(200.0)
    with pytest.raises(ValueError, match="t must lie"):
        sol.value_at(36.0, 2.0)


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; "
        "import optdepth.stopping.free_boundary as m; print(m.solve_free_boundary.__name__)"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": ""},
        check=False,
    )
    assert out.returncode == 0, out.stderr


_GOOD = dict(horizon=1.0, x_min=-1.0, x_max=1.0, nx=21, nt=5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(x_min=1.0, x_max=1.0), "x_min < x_max"),
        (dict(x_min=2.0), "x_min < x_max"),
        (dict(x_max=math.inf), "x_min < x_max"),
        (dict(nx=2), "nx must be an integer >= 3"),
        (dict(nx=0), "nx must be"),
        (dict(nx=50.0), "nx must be"),
        (dict(nt=0), "nt must be an integer >= 1"),
        (dict(horizon=0.0), "horizon must be > 0"),
        (dict(horizon=-1.0), "horizon must be > 0"),
        (dict(horizon=math.nan), "horizon must be > 0"),
        (dict(horizon="1"), "horizon must be a real number"),
        (dict(discount=-0.1), "discount must be finite and >= 0"),
        (dict(theta=0.2), "theta must lie in"),
        (dict(boundary="linear"), "boundary must be one of"),
        (dict(boundary=("stop",)), "boundary must be one of"),
        (dict(volatility=lambda x, t: -0.2 * np.ones_like(x)), "volatility.*negative"),
        (dict(volatility=lambda x, t: np.where(x > 0, np.inf, 0.2)), "volatility.*not finite"),
        (dict(volatility=math.nan), "volatility.*not finite"),
        (dict(payoff=lambda x, t: np.ones((x.size, 1))), r"payoff\(x, t\) returned shape"),
        (dict(payoff=lambda x, t: np.ones(3)), r"payoff\(x, t\) returned shape"),
        (dict(payoff=lambda x, t: max(x, 0)), "payoff"),
        (dict(drift="fast"), "drift must be a real number"),
        (dict(running_cost=lambda x, t: x[:-1]), "running_cost"),
        (dict(boundary=lambda t: math.nan), "edge value"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change, match):
    args = dict(drift=0.0, volatility=0.5, payoff=lambda x, t: x * x, **_GOOD)
    args.update(change)
    drift, vol, payoff = args.pop("drift"), args.pop("volatility"), args.pop("payoff")
    with pytest.raises(ValueError, match=match):
        solve_free_boundary(drift, vol, payoff, **args)
