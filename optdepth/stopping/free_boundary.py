"""Free-boundary solver for optimal stopping of a one-dimensional diffusion.

The state follows ``dX = drift(X, t) dt + volatility(X, t) dW``. Stopping at time ``t`` pays
``payoff(X_t, t)``; continuing costs ``running_cost(X_t, t)`` per unit time; everything is
discounted at the constant rate ``discount``. The value

    V(x, t) = sup_tau E[ e^{-r(tau-t)} payoff(X_tau, tau) - int_t^tau e^{-r(s-t)} c(X_s, s) ds ]

solves the variational inequality (obstacle problem)

    min( -(V_t + mu V_x + 1/2 sigma^2 V_xx - r V - c),  V - payoff ) = 0,   V(x, T) = payoff(x, T).

The contact set ``{V = payoff}`` is the stopping region; its edge is the free boundary. For
``horizon=None`` (or ``math.inf``) the stationary problem (time-homogeneous coefficients, evaluated
at ``t = 0``) is solved directly.

Numerics (all choices documented here once):

* Space: uniform grid of ``nx`` nodes on ``[x_min, x_max]``; central differences, switched per node
  to one-sided (upwind) drift differences wherever central ones would break monotonicity
  (``|drift| dx > volatility^2``). The discrete generator is then an M-matrix.
* Time: theta-scheme (``theta=0.5`` Crank–Nicolson, ``theta=1`` fully implicit) on ``nt`` uniform
  steps, marching backward from ``t = horizon``. With Crank–Nicolson the first ``rannacher_steps``
  steps are each replaced by two implicit half steps (Rannacher start-up) to damp the oscillations
  a kinked payoff would otherwise cause.
* Complementarity: each step is a linear complementarity problem ``min(A v - b, v - g) = 0``,
  solved exactly by policy iteration (Howard's algorithm) with a tridiagonal solve per iteration,
  warm-started from the previous step's stopping set. It terminates in a finite number of
  iterations: typically 1-3 per time step; for the perpetual problem, which starts from
  "stop everywhere", roughly one per node between the payoff's kink and the boundary (cheap:
  each iteration is one O(nx) solve).
* Edges: ``boundary="reflect"`` (default) imposes ``V_x = 0`` (a reflecting barrier; the drift term
  vanishes there); ``boundary="stop"`` forces stopping there, ``V = payoff``; a callable
  ``h(t) -> float`` prescribes the edge value ``V = max(h(t), payoff)`` (an absorbing edge with a
  known value, e.g. ``S_max - K exp(-r (T - t))`` for a call). A pair ``(lower, upper)`` chooses
  per edge. The truncation error decays as the edges move away from the region of interest; put
  them where the process rarely goes. Choose the condition that matches the payoff's behaviour
  at the edge: reflecting an edge where the payoff keeps growing (a call's upper edge) makes
  stopping look optimal in a band next to that edge. Degenerate edges (``volatility = drift = 0``,
  e.g. ``x = 0`` for geometric Brownian motion in price space) need no condition and are
  unaffected by the choice.

Coordinates are the user's: the solver never transforms ``x``. For geometric Brownian motion one
can pass ``drift = r x``, ``volatility = sigma x`` in price space, or ``drift = r - sigma^2/2``,
``volatility = sigma`` with ``payoff(exp(x))`` in log-price space (both are tested).
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import LinAlgError, solve_banded

from optdepth.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["FreeBoundary", "FreeBoundarySolution", "solve_free_boundary"]

#: A model coefficient: a callable ``f(x, t)`` taking the grid, shape (nx,), and a time, returning
#: an array of shape (nx,) or a scalar; or simply a constant number.
Coefficient = Callable[[np.ndarray, float], "np.ndarray | float"] | float

#: An edge condition: "reflect", "stop", or a callable h(t) -> float giving the edge value.
EdgeCondition = str | Callable[[float], float]

_EDGE_KINDS = ("reflect", "stop")


@dataclass(frozen=True, eq=False)
class FreeBoundary:
    """Positions of the free boundary, one row per time.

    Attributes:
        t: Times, shape (n_t,), same as ``FreeBoundarySolution.t``.
        x: Boundary positions, shape (n_t, k), in the units of ``x``; ``k`` is the largest number of
            boundary points at any time (at least 1). Row ``i`` lists the points of time ``t[i]``
            in increasing order, padded with NaN. A row of NaN means no boundary at that time (all
            continue, or all stop -- e.g. at ``t = horizon``, where stopping is forced).
        direction: Shape (n_t, k), int8: ``+1`` where the stopping region lies above the point
            (larger x), ``-1`` where it lies below, ``0`` for padding.
    """

    t: np.ndarray
    x: np.ndarray
    direction: np.ndarray


@dataclass(frozen=True, eq=False)
class FreeBoundarySolution:
    """Solution of a free-boundary problem on the grid (all arrays read-only).

    Attributes:
        x: Space grid, shape (nx,), uniform, from ``x_min`` to ``x_max``.
        t: Time grid, shape (n_t,): ``nt + 1`` times from 0 to ``horizon``; ``[0.0]`` for the
            perpetual problem.
        values: Value function V on the grid, shape (n_t, nx).
        payoff_values: The payoff (obstacle) on the grid, shape (n_t, nx).
        stop_region: Where stopping is optimal, bool, shape (n_t, nx): the solver's stopping
            policy, which stops only where stopping is strictly better than continuing (to
            rounding) -- so far out-of-the-money points where V is positive but negligible
            are not flagged. At ``t = horizon`` all True.
        boundary: Free-boundary positions per time, see `FreeBoundary`.
        horizon: Time horizon; ``math.inf`` for the perpetual problem.
        iterations: Policy-iteration count of each linear complementarity solve, shape (n_solves,).
    """

    x: np.ndarray
    t: np.ndarray
    values: np.ndarray
    payoff_values: np.ndarray
    stop_region: np.ndarray
    boundary: FreeBoundary
    horizon: float
    iterations: np.ndarray

    @property
    def perpetual(self) -> bool:
        """True for the stationary (infinite-horizon) problem."""
        return math.isinf(self.horizon)

    def value_at(self, x: float | np.ndarray, t: float = 0.0) -> float | np.ndarray:
        """Value function at arbitrary points, by linear interpolation in x and t.

        Args:
            x: Points in ``[x_min, x_max]``, any shape.
            t: Time in ``[0, horizon]``; ignored for the perpetual problem.

        Returns:
            V(x, t) with the shape of ``x`` (a float for scalar ``x``).
        """
        xq = np.asarray(x, dtype=float)
        lo, hi = self.x[0], self.x[-1]
        slack = 1e-12 * (hi - lo)
        if not np.all(np.isfinite(xq)) or xq.min(initial=lo) < lo - slack or xq.max(initial=hi) > hi + slack:
            raise ConfigError(
                f"value_at: x must lie in the solved grid [{lo}, {hi}]; re-solve with a wider "
                "x_min/x_max to evaluate outside it"
            )
        row = self.values[0] if self.perpetual else self._row_at(float(t))
        out = np.interp(xq.ravel(), self.x, row).reshape(xq.shape)
        return float(out) if out.ndim == 0 else out

    def _row_at(self, t: float) -> np.ndarray:
        """Value on the x grid at time ``t``, linear in t between grid times."""
        if not (math.isfinite(t) and 0.0 <= t <= self.horizon * (1 + 1e-12)):
            raise ConfigError(f"value_at: t must lie in [0, {self.horizon}], got {t}")
        k = int(np.clip(np.searchsorted(self.t, t, side="right") - 1, 0, len(self.t) - 2))
        w = (t - self.t[k]) / (self.t[k + 1] - self.t[k])
        return (1.0 - w) * self.values[k] + w * self.values[k + 1]


@dataclass(frozen=True)
class _Problem:
    drift: Coefficient
    volatility: Coefficient
    payoff: Coefficient
    running_cost: Coefficient
    discount: float
    dx: float
    edges: tuple[EdgeCondition, EdgeCondition]
    forced: np.ndarray  # (nx,) bool: edge nodes with a prescribed value ("stop" or callable)
    max_iter: int


@dataclass(frozen=True)
class _Coefficients:
    """Discrete generator L (tridiagonal: lo couples i to i-1, up to i+1), cost c, payoff g."""

    lo: np.ndarray
    diag: np.ndarray
    up: np.ndarray
    cost: np.ndarray
    payoff: np.ndarray
    obstacle: np.ndarray  # payoff, with the prescribed values at callable edges


# --------------------------------------------------------------------------- input checks


def _check_real(name: str, value: object, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {value!r}; {hint}")
    return float(value)


def _check_int(name: str, value: object, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")
    return int(value)


def _check_horizon(horizon: float | None) -> float:
    if horizon is None:
        return math.inf
    h = _check_real("horizon", horizon, "pass a positive time, or None/math.inf for perpetual")
    if math.isnan(h) or h <= 0.0:
        raise ConfigError(
            f"horizon must be > 0 (or None/math.inf for the perpetual problem), got {horizon!r}"
        )
    return h


def _check_edges(
    boundary: EdgeCondition | tuple[EdgeCondition, EdgeCondition],
) -> tuple[EdgeCondition, EdgeCondition]:
    single = isinstance(boundary, str) or callable(boundary)
    edges = (boundary, boundary) if single else tuple(boundary)  # type: ignore[arg-type]
    if len(edges) != 2 or any(not callable(e) and e not in _EDGE_KINDS for e in edges):
        raise ConfigError(
            f"boundary must be one of {_EDGE_KINDS}, a callable h(t) giving the edge value, or "
            f"a (lower, upper) pair of these; got {boundary!r}"
        )
    return edges  # type: ignore[return-value]


def _obstacle(prob: _Problem, payoff: np.ndarray, t: float) -> np.ndarray:
    """The payoff with prescribed edge values max(h(t), payoff) at callable edges."""
    obstacle = payoff.copy()
    for node, edge in ((0, prob.edges[0]), (-1, prob.edges[1])):
        if callable(edge):
            try:
                value = float(edge(t))
            except (TypeError, ValueError) as err:
                raise ConfigError(f"boundary edge value h(t) must return a float: {err}") from err
            if not math.isfinite(value):
                raise ConfigError(f"boundary edge value h(t) is not finite at t={t:g}: {value}")
            obstacle[node] = max(value, payoff[node])
    return obstacle


def _check_domain(x_min: float, x_max: float, nx: int, nt: int) -> tuple[float, float, int, int]:
    lo = _check_real("x_min", x_min, "pass the lower edge of the space grid")
    hi = _check_real("x_max", x_max, "pass the upper edge of the space grid")
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ConfigError(
            f"need finite x_min < x_max, got x_min={x_min!r}, x_max={x_max!r}; swap or widen them"
        )
    nx = _check_int("nx", nx, 3, "it is the number of space nodes; try 401")
    nt = _check_int("nt", nt, 1, "it is the number of time steps; try 200")
    return lo, hi, nx, nt


def _evaluate(name: str, f: Coefficient, x: np.ndarray, t: float) -> np.ndarray:
    """Evaluate a coefficient on the grid and check it: shape (nx,) (or scalar), finite."""
    try:
        arr = np.asarray(f(x, t) if callable(f) else f, dtype=float)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{name}(x, t) failed on the grid ({err}); it must accept a float array x of shape "
            f"{x.shape} and a float t, and return real numbers (use numpy ufuncs, not max/if)"
        ) from err
    if arr.ndim == 0:
        arr = np.full(x.shape, float(arr))
    elif arr.shape != x.shape:
        raise ConfigError(
            f"{name}(x, t) returned shape {arr.shape}, expected {x.shape} (one value per grid "
            "point) or a scalar; make it elementwise in x, e.g. use np.maximum instead of max"
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ConfigError(
            f"{name}(x, t) is not finite at x={x[bad][0]:g}, t={t:g}; fix the function or "
            "shrink [x_min, x_max] to where it is defined"
        )
    return arr


def _coefficients(prob: _Problem, x: np.ndarray, t: float) -> _Coefficients:
    """Evaluate the model at time t and build the monotone discrete generator."""
    mu = _evaluate("drift", prob.drift, x, t)
    sigma = _evaluate("volatility", prob.volatility, x, t)
    if (sigma < 0).any():
        raise ConfigError(
            f"volatility(x, t) is negative at x={x[sigma < 0][0]:g}, t={t:g}; return the "
            "diffusion coefficient sigma >= 0 (the sign of dW is immaterial, use abs)"
        )
    dx = prob.dx
    half_var = 0.5 * sigma**2 / dx**2
    lo = half_var - mu / (2 * dx)
    up = half_var + mu / (2 * dx)
    upwind = (lo < 0) | (up < 0)  # central differences not monotone here
    if upwind.any():
        lo = np.where(upwind, half_var + np.maximum(-mu, 0.0) / dx, lo)
        up = np.where(upwind, half_var + np.maximum(mu, 0.0) / dx, up)
    up[0] += lo[0]  # reflecting edges: ghost node mirrors the first interior node
    lo[-1] += up[-1]
    lo[0] = up[-1] = 0.0
    payoff = _evaluate("payoff", prob.payoff, x, t)
    return _Coefficients(
        lo=lo,
        diag=-(lo + up),
        up=up,
        cost=_evaluate("running_cost", prob.running_cost, x, t),
        payoff=payoff,
        obstacle=_obstacle(prob, payoff, t),
    )


# --------------------------------------------------------------------------- numerics


def _tridiag_matvec(lo: np.ndarray, diag: np.ndarray, up: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = diag * v
    out[1:] += lo[1:] * v[:-1]
    out[:-1] += up[:-1] * v[1:]
    return out


def _solve_lcp(
    lo: np.ndarray,
    diag: np.ndarray,
    up: np.ndarray,
    b: np.ndarray,
    g: np.ndarray,
    stop: np.ndarray,
    prob: _Problem,
    prefer_continue: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Solve min(A v - b, v - g) = 0 (A tridiagonal M-matrix) by policy iteration.

    Args:
        lo, diag, up: Bands of A, each shape (n,). b, g: shape (n,).
        stop: Initial stopping set, bool (n,) (warm start).
        prefer_continue: Resolve ties (both residuals zero) as "continue", which lets the
            continuation set grow by many nodes per iteration. Only safe where every principal
            submatrix of A is non-singular (A strictly diagonally dominant); otherwise ties keep
            the current choice, which always converges but may take O(n) iterations.

    Returns:
        (v, stop, iterations).
    """
    n = b.size
    scale = np.where(diag > 0, diag, 1.0)  # puts both residuals in units of v
    for it in range(1, prob.max_iter + 1):
        ab = np.zeros((3, n))
        ab[0, 1:] = np.where(stop[:-1], 0.0, up[:-1])
        ab[1] = np.where(stop, 1.0, diag)
        ab[2, :-1] = np.where(stop[1:], 0.0, lo[1:])
        try:
            v = solve_banded((1, 1), ab, np.where(stop, g, b), check_finite=False)
        except LinAlgError as err:
            raise _singular_error() from err
        if not np.all(np.isfinite(v)):
            raise _singular_error()
        cont_res = (_tridiag_matvec(lo, diag, up, v) - b) / scale
        stop_res = v - g
        tol = 1e-11 * (1.0 + np.max(np.abs(v)))
        tie = np.abs(cont_res - stop_res) <= tol
        new_stop = np.where(tie, stop & (not prefer_continue), stop_res < cont_res) | prob.forced
        if np.array_equal(new_stop, stop):
            return np.maximum(v, g), stop, it  # v >= g exactly, not just to rounding
        stop = new_stop
    raise RuntimeError(
        f"policy iteration did not converge in {prob.max_iter} iterations; pass a larger max_iter"
    )


def _singular_error() -> ConfigError:
    return ConfigError(
        "the continuation problem is singular (the process can continue forever at no cost): use "
        "discount > 0, a positive running_cost, or boundary='stop' on at least one edge"
    )


def _theta_step(
    prob: _Problem,
    v_next: np.ndarray,
    c_next: _Coefficients,
    c_now: _Coefficients,
    dt: float,
    theta: float,
    stop: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One backward step t+dt -> t of the theta-scheme, with the obstacle at time t."""
    r = prob.discount
    rhs = v_next / dt - theta * c_now.cost - (1.0 - theta) * c_next.cost
    if theta < 1.0:
        lv = _tridiag_matvec(c_next.lo, c_next.diag, c_next.up, v_next)
        rhs += (1.0 - theta) * (lv - r * v_next)
    lo, up = -theta * c_now.lo, -theta * c_now.up
    diag = 1.0 / dt + theta * (r - c_now.diag)
    return _solve_lcp(lo, diag, up, rhs, c_now.obstacle, stop, prob, prefer_continue=True)


def _march(
    prob: _Problem, x: np.ndarray, t: np.ndarray, theta: float, rannacher_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Backward time marching. Returns values, payoff grid, stop grid (all (n_t, nx)), iters."""
    n_t = t.size
    values = np.empty((n_t, x.size))
    payoffs = np.empty_like(values)
    stops = np.empty(values.shape, dtype=bool)
    c_next = _coefficients(prob, x, float(t[-1]))
    payoffs[-1] = c_next.payoff
    values[-1] = c_next.obstacle
    stops[-1] = True
    stop = np.ones(x.size, dtype=bool)
    iters: list[int] = []
    for n in range(n_t - 2, -1, -1):
        v = values[n + 1]
        dt = float(t[n + 1] - t[n])
        if theta < 1.0 and (n_t - 2 - n) < rannacher_steps:
            t_mid = float(0.5 * (t[n] + t[n + 1]))
            c_mid = _coefficients(prob, x, t_mid)
            v, stop, k = _theta_step(prob, v, c_next, c_mid, 0.5 * dt, 1.0, stop)
            iters.append(k)
            c_next = c_mid
            c_now = _coefficients(prob, x, float(t[n]))
            v, stop, k = _theta_step(prob, v, c_next, c_now, 0.5 * dt, 1.0, stop)
        else:
            c_now = _coefficients(prob, x, float(t[n]))
            v, stop, k = _theta_step(prob, v, c_next, c_now, dt, theta, stop)
        iters.append(k)
        values[n], payoffs[n], stops[n] = v, c_now.payoff, stop
        c_next = c_now
    return values, payoffs, stops, iters


def _stationary(prob: _Problem, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Perpetual problem: min((r - L) v + c, v - g) = 0 with coefficients at t = 0."""
    coef = _coefficients(prob, x, 0.0)
    diag = prob.discount - coef.diag
    stop0 = np.ones(x.size, dtype=bool)  # start from "stop everywhere": always non-singular
    safe = prob.discount > 0.0  # strictly diagonally dominant
    v, stop, k = _solve_lcp(-coef.lo, diag, -coef.up, -coef.cost, coef.obstacle, stop0, prob, safe)
    return v, coef.payoff, stop, k


# --------------------------------------------------------------------------- boundary


def _boundary_point(x: np.ndarray, gap: np.ndarray, stop: np.ndarray, i: int) -> float:
    """Locate the free boundary between nodes i and i+1 (one stops, the other continues).

    With smooth fit, the gap V - payoff has a double zero at the boundary x*: it behaves like
    a (x - x*)^2 on the continuation side. The vertex of the parabola through the gap at the three
    nearest continuation nodes estimates x*; unlike the last contact node it is insensitive to a
    constant error in V, so it converges at the rate of V rather than O(dx). Falls back to the
    midpoint of the two nodes when three continuation nodes are not available or the fit is not
    convex or puts the vertex more than two cells away (the discrete contact set can lag the
    true boundary by a cell or so, because errors in V of O(dx^2) are as large as the gap there).
    """
    dx = x[1] - x[0]
    j, step = (i, -1) if stop[i + 1] else (i + 1, 1)  # j: continuation node; step: into it
    midpoint = float(x[i] + 0.5 * dx)
    idx = j + step * np.arange(3)
    if idx.min() < 0 or idx.max() >= x.size or stop[idx].any():
        return midpoint
    g0, g1, g2 = gap[idx]
    curvature = g0 - 2.0 * g1 + g2  # = 2 a dx^2 for the parabola a (x - x*)^2
    if not curvature > 0.0:
        return midpoint
    offset = (3.0 * g0 - 4.0 * g1 + g2) / (2.0 * curvature)  # vertex, in cells from j inward
    vertex = float(x[j] + step * offset * dx)
    return vertex if abs(vertex - midpoint) <= 2.0 * dx else midpoint


def _locate_boundary(
    x: np.ndarray, t: np.ndarray, gaps: np.ndarray, stops: np.ndarray, forced: np.ndarray
) -> FreeBoundary:
    """Find the switches of the stopping region in every row; see `FreeBoundary` for shapes."""
    rows: list[list[tuple[float, int]]] = []
    for gap, stop in zip(gaps, stops, strict=True):
        switch = np.flatnonzero(stop[:-1] != stop[1:])
        # a switch next to a forced ("stop") edge node is the edge condition, not a boundary
        keep = ~((forced[:-1] | forced[1:])[switch] & ((switch == 0) | (switch == x.size - 2)))
        points = [(_boundary_point(x, gap, stop, i), 1 if stop[i + 1] else -1) for i in switch]
        rows.append([p for p, k in zip(points, keep, strict=True) if k])
    k = max(1, max(len(r) for r in rows))
    pos = np.full((t.size, k), np.nan)
    direction = np.zeros((t.size, k), dtype=np.int8)
    for n, row in enumerate(rows):
        for m, (p, d) in enumerate(row):
            pos[n, m], direction[n, m] = p, d
    return FreeBoundary(t=t, x=pos, direction=direction)


# --------------------------------------------------------------------------- public API


def solve_free_boundary(
    drift: Coefficient,
    volatility: Coefficient,
    payoff: Coefficient,
    *,
    horizon: float | None,
    discount: float = 0.0,
    running_cost: Coefficient | None = None,
    x_min: float,
    x_max: float,
    nx: int = 401,
    nt: int = 200,
    boundary: EdgeCondition | tuple[EdgeCondition, EdgeCondition] = "reflect",
    theta: float = 0.5,
    rannacher_steps: int = 2,
    max_iter: int | None = None,
) -> FreeBoundarySolution:
    """Solve the optimal stopping problem of a 1-D diffusion as a free-boundary problem.

    Args:
        drift: mu(x, t) of ``dX = mu dt + sigma dW``, in x-units per time unit. A callable taking
            the grid, a float array of shape (nx,), and a time (float), returning shape (nx,) or
            a scalar; or a constant.
        volatility: sigma(x, t) >= 0, in x-units per sqrt(time unit); same calling convention.
        payoff: Reward for stopping at (x, t); same calling convention.
        horizon: Final time T > 0 (stopping is forced at T), or None / ``math.inf`` for the
            perpetual problem (coefficients must then not depend on t; they are read at t = 0).
        discount: Discount rate r >= 0, per time unit.
        running_cost: Cost per unit time of continuing, c(x, t); default 0.
        x_min, x_max: Edges of the space grid (truncate the state space where X rarely goes).
        nx: Number of space nodes (>= 3).
        nt: Number of time steps (>= 1); ignored when perpetual.
        boundary: Edge condition: ``"reflect"`` (V_x = 0), ``"stop"`` (V = payoff), or a
            callable ``h(t) -> float`` (V = max(h(t), payoff)); or a ``(lower, upper)`` pair of
            these. See the module docstring.
        theta: 0.5 for Crank–Nicolson (second order), 1.0 for fully implicit (first order,
            monotone); any value in [0.5, 1].
        rannacher_steps: Number of initial Crank–Nicolson steps done as two implicit half steps.
        max_iter: Cap on policy iterations per step; default nx + 2 (the theoretical bound).

    Returns:
        A `FreeBoundarySolution` holding the grids, values, stopping region and free boundary.

    Raises:
        ConfigError: (a ValueError) for invalid inputs, coefficients of the wrong shape,
            non-finite or negative volatility, or a singular (ill-posed) continuation problem.
    """
    x_min, x_max, nx, nt = _check_domain(x_min, x_max, nx, nt)
    horizon = _check_horizon(horizon)
    r = _check_real("discount", discount, "pass a rate per unit time, e.g. 0.05")
    if not (math.isfinite(r) and r >= 0.0):
        raise ConfigError(f"discount must be finite and >= 0, got {discount!r}")
    theta = _check_real("theta", theta, "use 0.5 (Crank–Nicolson) or 1.0 (implicit)")
    if not 0.5 <= theta <= 1.0:
        raise ConfigError(f"theta must lie in [0.5, 1] for a stable scheme, got {theta!r}")
    rannacher_steps = _check_int("rannacher_steps", rannacher_steps, 0, "the default is 2")
    edges = _check_edges(boundary)
    coefs = {"drift": drift, "volatility": volatility, "payoff": payoff, "running_cost": running_cost}
    for name, f in coefs.items():
        if f is not None and not callable(f):
            _check_real(name, f, "pass a callable f(x, t) or a constant")
    x = np.linspace(x_min, x_max, nx)
    x.setflags(write=False)
    forced = np.zeros(nx, dtype=bool)
    forced[0], forced[-1] = (e != "reflect" for e in edges)
    prob = _Problem(
        drift=drift,
        volatility=volatility,
        payoff=payoff,
        running_cost=0.0 if running_cost is None else running_cost,
        discount=r,
        dx=(x_max - x_min) / (nx - 1),
        edges=edges,
        forced=forced,
        max_iter=nx + 2 if max_iter is None else _check_int("max_iter", max_iter, 1, "or None"),
    )
    return _solve(prob, x, horizon, nt, theta, rannacher_steps)


def _solve(
    prob: _Problem, x: np.ndarray, horizon: float, nt: int, theta: float, rannacher_steps: int
) -> FreeBoundarySolution:
    start = time.perf_counter()
    if math.isinf(horizon):
        t = np.zeros(1)
        v, g, stop, k = _stationary(prob, x)
        values, payoffs, stops, iters = v[None], g[None], stop[None], [k]
    else:
        t = np.linspace(0.0, horizon, nt + 1)
        values, payoffs, stops, iters = _march(prob, x, t, theta, rannacher_steps)
    for node, edge in ((0, prob.edges[0]), (-1, prob.edges[1])):
        if callable(edge):  # a prescribed edge value is "stop" only where it equals the payoff
            stops[:, node] = values[:, node] <= payoffs[:, node]
    boundary = _locate_boundary(x, t, values - payoffs, stops, prob.forced)
    iterations = np.asarray(iters, dtype=np.int64)
    for arr in (t, values, payoffs, stops, boundary.x, boundary.direction, iterations):
        arr.setflags(write=False)
    elapsed = time.perf_counter() - start
    logger.debug("nx=%d, n_t=%d: %d policy iterations, %.3f s", x.size, t.size, sum(iters), elapsed)
    return FreeBoundarySolution(x, t, values, payoffs, stops, boundary, horizon, iterations)
