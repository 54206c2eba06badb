"""Regression policies: Longstaff–Schwartz (LSM) and one-step look-ahead (OSLA).

Both fit one ridge regression per step t on a basis of the *state* at t: the features of step
t and, with ``history = h``, of steps t-1, ..., t-h (steps before 0 repeat step 0), optionally
restricted to the columns ``regressors``. Each step's state is standardised with its own mean
and standard deviation before the basis is applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._basis import Basis, Standardizer, Transform, predict, ridge_solve
from ._validation import (
    as_float_array,
    check_feature_index,
    check_features,
    check_int,
    check_real,
    check_step,
)
from .base import StoppingPolicy

__all__ = ["LeastSquaresPolicy", "OneStepLookaheadPolicy"]

logger = logging.getLogger(__name__)

#: Immediate reward observable at decision time: callable (features_t (n, F), t) -> (n,).
ImmediateFn = Callable[[np.ndarray, int], np.ndarray]


class _RegressionPolicy(StoppingPolicy):
    """Shared machinery: state construction, per-step standardisation, basis and ridge."""

    fixed_horizon = True

    def __init__(
        self,
        basis: str | Transform = "polynomial",
        degree: int = 2,
        *,
        interactions: bool = True,
        history: int = 0,
        regressors: Sequence[int] | None = None,
        standardize: bool = True,
        ridge: float = 1e-6,
    ) -> None:
        super().__init__()
        self.basis = Basis.create(basis, degree, interactions)
        self.history = check_int(history, "history", minimum=0)
        if regressors is not None:
            regressors = [check_int(r, "regressors[i]", minimum=0) for r in regressors]
            if not regressors:
                raise ValueError("regressors must name at least one feature column, or be None")
        self.regressors = None if regressors is None else tuple(regressors)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}")
        self.standardize = standardize
        self.ridge = check_real(ridge, "ridge", low=0.0)
        self._scalers: list[Standardizer] = []
        self._coefs: list[np.ndarray | None] = []

    @property
    def window_size(self) -> int:
        return self.history + 1

    def _check_regressors(self, n_features: int) -> None:
        for r in self.regressors or ():
            check_feature_index(r, n_features, "regressors[i]")

    def _state(self, window: np.ndarray) -> np.ndarray:
        """(n, w, F) trailing window -> (D, n) transposed state [phi_t, ..., phi_{t-h}]."""
        cols = window if self.regressors is None else window[:, :, list(self.regressors)]
        lags = [cols[:, max(cols.shape[1] - 1 - k, 0)].T for k in range(self.history + 1)]
        return np.ascontiguousarray(np.concatenate(lags, axis=0) if len(lags) > 1 else lags[0])

    def _fit_regression(
        self,
        window: np.ndarray,
        t: int,
        targets: Sequence[np.ndarray],
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fits step t: its standardiser, then one ridge regression per target.

        Args:
            window: (N, w, F) trailing window of features up to step t.
            t: The step.
            targets: k targets of shape (N,).
            rows: Optional bool (N,) mask of the paths to regress on.

        Returns:
            The (N, P) design matrix at t and the (P, k) coefficients.
        """
        state = self._state(window)
        scaler = Standardizer.fit(state, self.standardize)
        self._scalers[t] = scaler
        design = self.basis.design(scaler(state))  # (N, P)
        if rows is not None:
            design_rows, targets = design[rows], [y[rows] for y in targets]
        else:
            design_rows = design
        coef = ridge_solve(design_rows, targets, self.ridge, self.basis.penalize_intercept)
        return design, coef

    def _design(self, window: np.ndarray, t: int) -> np.ndarray:
        return self.basis.design(self._scalers[t](self._state(window)))

    def _start_fit(self, n_steps: int, n_features: int) -> None:
        self._check_regressors(n_features)
        self._scalers = [Standardizer(np.zeros((0, 1)), np.ones((0, 1)))] * n_steps
        self._coefs = [None] * n_steps

    def _windows(self, features: np.ndarray, t: int) -> np.ndarray:
        return features[:, max(0, t + 1 - self.window_size) : t + 1]

    def __repr__(self) -> str:
        kind = self.basis.kind
        return (
            f"{type(self).__name__}(basis={kind!r}, degree={self.basis.degree}, "
            f"history={self.history}, ridge={self.ridge:g})"
        )


class LeastSquaresPolicy(_RegressionPolicy):
    """Longstaff–Schwartz: backward regression of continuation values (Snell envelope).

    Backward in t, with the realised cash flow ``cash`` = reward at the stop time chosen so far
    for steps > t (initially R_{T-1}):

    * regress ``cash`` on the basis of the state at t -> continuation value C_t;
    * the immediate reward I_t is either *observed* (``immediate`` = a feature column index or
      a callable of the step's features), or estimated by regressing R_t on the same basis
      (``immediate="regress"``, the default: in the neural-network use the label, hence R_t, is
      unknown when deciding);
    * stop where I_t >= C_t; there ``cash`` becomes R_t.

    Because the regression target is the realised future cash flow along the path, the fitted
    in-sample value ``in_sample_value_`` equals the mean reward of :meth:`stop_times` on the
    training features. ``in_the_money=True`` (observed immediate only) regresses and stops only
    on paths with I_t > 0, as in Longstaff & Schwartz (2001).

    Args:
        basis: "polynomial", "laguerre", "hermite", or a callable (n, D) -> (n, P).
        degree: Total degree of the polynomial basis.
        immediate: "regress", an int feature index, or a callable (features_t (n, F), t) -> (n,).
        in_the_money: Restrict regression and stopping to paths with positive immediate reward.
        interactions: Include cross terms between regressors.
        history: Number of previous steps whose features are added to the state.
        regressors: Feature columns used as regressors (default: all).
        standardize: Standardise each step's state before applying the basis.
        ridge: Ridge penalty on the standardised coefficients (intercept not penalised).
    """

    name = "least_squares"

    def __init__(
        self,
        basis: str | Transform = "polynomial",
        degree: int = 2,
        *,
        immediate: str | int | ImmediateFn = "regress",
        in_the_money: bool = False,
        interactions: bool = True,
        history: int = 0,
        regressors: Sequence[int] | None = None,
        standardize: bool = True,
        ridge: float = 1e-6,
    ) -> None:
        super().__init__(
            basis,
            degree,
            interactions=interactions,
            history=history,
            regressors=regressors,
            standardize=standardize,
            ridge=ridge,
        )
        if isinstance(immediate, str):
            if immediate != "regress":
                raise ValueError(
                    f"immediate must be 'regress', a feature column index, or a callable "
                    f"(features_t, t) -> (n,), got {immediate!r}"
                )
        elif not callable(immediate):
            immediate = check_int(immediate, "immediate", minimum=0)
        if not isinstance(in_the_money, bool):
            raise ValueError(f"in_the_money must be True or False, got {in_the_money!r}")
        if in_the_money and immediate == "regress":
            raise ValueError(
                "in_the_money=True needs an observed immediate reward; pass immediate=<feature "
                "index> or a callable, or set in_the_money=False"
            )
        self.immediate = immediate
        self.in_the_money = in_the_money
        self.in_sample_value_: float | None = None
        self._continuation: list[np.ndarray | None] = []  # (P,) coefficients of C_t per step

    @property
    def _regress_immediate(self) -> bool:
        return isinstance(self.immediate, str)

    def _observed(self, window: np.ndarray, t: int) -> np.ndarray:
        """Observed immediate reward (n,) at step t."""
        current = window[:, -1]
        if callable(self.immediate):
            out = as_float_array(self.immediate(current, t), "immediate(features_t, t)", 1)
            if out.shape != (current.shape[0],):
                raise ValueError(
                    f"immediate(features_t, t) must return shape ({current.shape[0]},), got {out.shape}"
                )
            return out
        return current[:, self.immediate]

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        n_steps = rewards.shape[1]
        self._start_fit(n_steps, features.shape[2])
        self._continuation = [None] * n_steps
        if isinstance(self.immediate, int):
            check_feature_index(self.immediate, features.shape[2], "immediate")
        cash = rewards[:, -1].copy()  # (N,) realised cash flow of the policy from t+1 on
        for t in range(n_steps - 2, -1, -1):
            window = self._windows(features, t)
            stop = self._fit_step(window, t, rewards[:, t], cash)
            cash = np.where(stop, rewards[:, t], cash)
        self.in_sample_value_ = float(cash.mean())
        logger.debug("LSM in-sample value %.6g (N=%d, T=%d)", self.in_sample_value_, *rewards.shape)

    def _fit_step(self, window: np.ndarray, t: int, reward_t: np.ndarray, cash: np.ndarray) -> np.ndarray:
        """Fits step t and returns the in-sample stop decisions (N,)."""
        if self._regress_immediate:
            design, coef = self._fit_regression(window, t, (reward_t, cash))  # coef (P, 2)
            self._continuation[t] = coef[:, 1]
            self._coefs[t] = coef[:, 0] - coef[:, 1]  # advantage of stopping, by linearity
            return predict(design, self._coefs[t]) >= 0.0
        immediate = self._observed(window, t)
        rows = immediate > 0.0 if self.in_the_money else None
        if rows is not None and not np.any(rows):
            self._scalers[t] = Standardizer.fit(self._state(window), self.standardize)
            self._coefs[t] = None  # no path in the money: never stop at t
            return np.zeros(len(cash), dtype=bool)
        design, coef = self._fit_regression(window, t, (cash,), rows)
        self._coefs[t] = self._continuation[t] = coef[:, 0]  # (P,) continuation value
        return self._decide(design, immediate, t)

    def _decide(self, design: np.ndarray, immediate: np.ndarray | None, t: int) -> np.ndarray:
        coef = self._coefs[t]
        if coef is None:
            return np.zeros(design.shape[0], dtype=bool)
        if immediate is None:
            return predict(design, coef) >= 0.0
        stop = immediate >= predict(design, coef)
        return stop & (immediate > 0.0) if self.in_the_money else stop

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        if window.shape[0] == 0 or self._coefs[t] is None:
            return np.zeros(window.shape[0], dtype=bool)
        design = self._design(window, t)
        immediate = None if self._regress_immediate else self._observed(window, t)
        return self._decide(design, immediate, t)

    def continuation_value(self, features_prefix: Any, t: int) -> np.ndarray:
        """Regressed continuation value C_t = E[realised future reward | state at t].

        Args:
            features_prefix: (N, t + 1, F) features up to step t.
            t: Step in [0, n_steps_ - 2].

        Returns:
            (N,) C_t (zeros at a step where no path was in the money).
        """
        t = check_step(t, None if self.n_steps_ is None else self.n_steps_ - 1)
        prefix = check_features(features_prefix, n_steps=t + 1, name="features_prefix")
        self._check_ready(prefix.shape[2])
        coef = self._continuation[t]
        design = self._design(prefix[:, max(0, t + 1 - self.window_size) :], t)
        return np.zeros(prefix.shape[0]) if coef is None else predict(design, coef)


class OneStepLookaheadPolicy(_RegressionPolicy):
    """One-step look-ahead: stop when the predicted gain E[R_{t+1} - R_t | state_t] <= 0.

    One ridge regression of R_{t+1} - R_t per step t < T - 1. Optimal on monotone problems
    (once the predicted one-step gain is <= 0 it stays <= 0), which is what geometrically
    diminishing returns give. Takes the same basis options as :class:`LeastSquaresPolicy`.
    """

    name = "one_step_lookahead"

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        n_steps = rewards.shape[1]
        self._start_fit(n_steps, features.shape[2])
        gains = np.diff(rewards, axis=1)  # (N, T-1)
        for t in range(n_steps - 1):
            _, coef = self._fit_regression(self._windows(features, t), t, (gains[:, t],))
            self._coefs[t] = coef[:, 0]

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        if window.shape[0] == 0:
            return np.zeros(0, dtype=bool)
        return predict(self._design(window, t), self._coefs[t]) <= 0.0

    def predicted_gain(self, features_prefix: Any, t: int) -> np.ndarray:
        """Predicted one-step gain E[R_{t+1} - R_t | state_t], shape (N,), for t < T - 1."""
        t = check_step(t, None if self.n_steps_ is None else self.n_steps_ - 1)
        prefix = check_features(features_prefix, n_steps=t + 1, name="features_prefix")
        self._check_ready(prefix.shape[2])
        return predict(self._design(prefix[:, max(0, t + 1 - self.window_size) :], t), self._coefs[t])
