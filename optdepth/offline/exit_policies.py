"""Exit policies for multi-exit networks, built on the stopping engine (numpy only, no torch).

A network exit policy is an :class:`ExitPolicy`: a *feature map* that turns the trace FEATURES
observed so far (``optdepth.traces.FEATURES``, shape (n, t + 1, F)) into the features a
stopping policy of :mod:`optdepth.stopping` decides on, plus that stopping policy. The map is
causal (its output at step s uses steps <= s only), so the same object decides offline on a
trace file (:meth:`~optdepth.stopping.StoppingPolicy.stop_times`) and online inside a forward
pass (:meth:`~optdepth.stopping.StoppingPolicy.stop_at`, called by the early-exit engine).

Registered policies (:data:`EXIT_POLICIES`; ``oracle`` is evaluated on labels only):

=========  ==========================================================  ==================
name       rule                                                        parameter
=========  ==========================================================  ==================
max_prob   stop once the largest class probability >= theta (SDN)      theta
entropy    stop once the entropy <= theta (BranchyNet)                 -theta (>= rule)
patience   stop once the prediction is unchanged for k exits (PABEE)   k
lsm        Longstaff–Schwartz on the calibrated state (ours)           price lambda
osla       one-step look-ahead on the calibrated state (ours)          price lambda
=========  ==========================================================  ==================

The *calibrated state* of ``lsm``/``osla`` at exit t is [logit P(correct_t | exit t),
logit max_prob_t, run length of agreement, logit max_prob_{t-1}], where P(correct_t | ...) is a
per-exit logistic regression (:class:`ExitCalibrator`) on logit max_prob, log margin, entropy
and log relative residual norm. The stopping policy is
:class:`~optdepth.stopping.LeastSquaresPolicy` (or OSLA) with a degree-2 polynomial basis on
that state, ridge 1e-3, and the immediate reward regressed on the same basis. It is fitted on
rewards ``correct - lambda * C_t`` with the calibrated logits computed *out of fold*
(cross-fitting), so the calibrator's in-sample optimism does not leak into the stopping rule.

Why this state (found while developing on one ResNet-20 trace set, 87.5%, and checked on a
second, 89.5%; their test splits were looked at, so new nets are the independent check): a
degree-2 basis on all six raw features, or with more history, overfits
the 5,000 calibration samples (best in sample, worse on test); compressing the per-exit
confidence features into one calibrated log-odds and adding only the agreement run and the
previous exit's confidence gave the lowest compute at iso-accuracy. Log-likelihood utility
instead of correctness, and calibrated probabilities as smoothed rewards, both did worse.

Grids: thresholds at 201 quantiles of the calibration values and the midpoints between them
(so a gap in the data gets a threshold in its middle, not on its edge); patience 1..T-1;
lambda from -0.3 to 3 (negative prices reward depth: the way a regression policy reaches
full-depth accuracy when noise, or OSLA's myopia, would stop it early).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from optdepth.registry import Registry
from optdepth.stopping import (
    LeastSquaresPolicy,
    OneStepLookaheadPolicy,
    PatiencePolicy,
    StoppingPolicy,
    ThresholdPolicy,
)
from optdepth.stopping._validation import check_features
from optdepth.traces import FEATURES, Traces

log = logging.getLogger(__name__)

MAX_PROB, MARGIN, ENTROPY, AGREEMENT, REL_NORM, COST = (
    FEATURES.index(name) for name in
    ("max_prob", "margin", "entropy", "agreement", "relative_residual_norm", "cost"))
_EPS = 1e-7

FeatureMap = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- trace identity
@dataclass(frozen=True)
class TraceSource:
    """What identifies the network a policy was fitted for.

    Attributes:
        arch: architecture name (None when unknown).
        exit_costs: (T,) cumulative compute fractions, as a tuple.
        feature_names: the feature columns, in order.
    """

    arch: str | None
    exit_costs: tuple[float, ...]
    feature_names: tuple[str, ...] = FEATURES

    @property
    def num_exits(self) -> int:
        return len(self.exit_costs)

    @staticmethod
    def of_traces(traces: Traces) -> TraceSource:
        """The source of a :class:`~optdepth.traces.Traces` (from its metadata and costs)."""
        return TraceSource(traces.metadata.get("arch"),
                           tuple(float(c) for c in np.asarray(traces.exit_costs)),
                           tuple(traces.feature_names))

    def check_matches(self, other: TraceSource, what: str, other_what: str) -> None:
        """Raise ValueError unless ``other`` describes the same network.

        Args:
            other: the source to compare with.
            what: how to name ``self`` in the message (e.g. "the policy").
            other_what: how to name ``other`` (e.g. "the test traces").
        """
        if self.num_exits != other.num_exits:
            raise ValueError(f"{what} is for a network with {self.num_exits} exits but "
                             f"{other_what} has {other.num_exits}; use traces and policies of "
                             "the same model")
        if self.feature_names != other.feature_names:
            raise ValueError(f"{what} uses {len(self.feature_names)} features "
                             f"{list(self.feature_names)} but {other_what} has "
                             f"{len(other.feature_names)} {list(other.feature_names)}")
        if self.arch and other.arch and self.arch != other.arch:
            raise ValueError(f"{what} comes from a {self.arch!r} model but {other_what} from a "
                             f"{other.arch!r} model; use traces and policies of the same model")
        if not np.allclose(self.exit_costs, other.exit_costs, rtol=0.0, atol=1e-6):
            raise ValueError(f"{what} has exit costs {np.round(self.exit_costs, 4).tolist()} but "
                             f"{other_what} has {np.round(other.exit_costs, 4).tolist()}: they "
                             "come from different models")


# ------------------------------------------------------------------------ causal feature maps
def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def run_length(agreement: np.ndarray) -> np.ndarray:
    """(n, s) 0/1 agreement flags -> (n, s) float64 consecutive agreements ending at each step.

    Step 0 has no previous exit to agree with, so its run is 0 whatever its flag. Vectorised:
    the run at step t is t minus the last step <= t that breaks the run (a 0 flag, or step 0).
    """
    steps = np.arange(agreement.shape[1])
    breaks = np.where((agreement == 0) | (steps == 0), steps, 0)
    return (steps - np.maximum.accumulate(breaks, axis=1)).astype(np.float64)


@dataclass(frozen=True)
class Column:
    """One FEATURES column, times ``sign`` (-1 turns "entropy <= theta" into a >= rule)."""

    index: int
    sign: float = 1.0

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return (self.sign * features[:, :, self.index])[:, :, None]  # (n, s, 1)


@dataclass(frozen=True)
class SegmentIds:
    """Id of the current run of unchanged predictions: cumsum(1 - agreement), (n, s, 1).

    Two exits have the same id exactly when no prediction changed between them, so
    :class:`~optdepth.stopping.PatiencePolicy` on this column is PABEE's patience rule.
    """

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return np.cumsum(1.0 - features[:, :, AGREEMENT], axis=1)[:, :, None]


def calibration_inputs(features: np.ndarray) -> np.ndarray:
    """(n, s, F) FEATURES -> (n, s, 4) [logit max_prob, log margin, entropy, log rel. norm]."""
    columns = (_logit(np.ascontiguousarray(features[:, :, MAX_PROB])),
               np.log(np.ascontiguousarray(features[:, :, MARGIN]) + 1e-6),
               features[:, :, ENTROPY],
               np.log(np.ascontiguousarray(features[:, :, REL_NORM]) + 1e-6))
    return np.stack(columns, axis=-1)


@dataclass(frozen=True)
class ExitCalibrator:
    """Per-exit logistic regression of P(exit t is correct | features of exit t).

    Attributes:
        mean: (T, D) input means. scale: (T, D) input standard deviations.
        coef: (T, D + 1) intercept and weights on the standardised inputs.
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray

    @staticmethod
    def fit(features: np.ndarray, correct: np.ndarray, l2: float = 1e-3) -> ExitCalibrator:
        """Fit on FEATURES (N, T, F) and correctness (N, T) (Newton's method, L2 penalty)."""
        x = calibration_inputs(features)  # (N, T, D)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        coef = np.stack([_logistic_newton((x[:, t] - mean[t]) / scale[t], correct[:, t], l2)
                         for t in range(x.shape[1])])
        return ExitCalibrator(mean, scale, coef)

    def logits(self, features: np.ndarray, first: int = 0) -> np.ndarray:
        """(n, s, F) FEATURES of steps first..first+s-1 -> (n, s) calibrated log-odds of correctness.

        Every entry is computed elementwise from its own step's features, so the logits of a
        step do not depend on which other steps (or rows) are passed with it.
        """
        x = calibration_inputs(features)
        steps = slice(first, first + x.shape[1])
        z = (x - self.mean[steps]) / self.scale[steps]
        coef = self.coef[steps]
        out = np.broadcast_to(coef[:, 0], z.shape[:2]).copy()
        for j in range(z.shape[2]):  # explicit sum: each row's result is independent of n
            out += coef[:, j + 1] * z[:, :, j]
        return out


def _logistic_newton(z: np.ndarray, y: np.ndarray, l2: float, iters: int = 50) -> np.ndarray:
    """(n, D) standardised inputs, (n,) 0/1 targets -> (D + 1,) penalised logistic weights."""
    design = np.concatenate([np.ones((z.shape[0], 1)), z], axis=1)
    w = np.zeros(design.shape[1])
    penalty = l2 * np.eye(design.shape[1])  # the intercept too: finite if a step is all right
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.einsum("ij,j->i", design, w)))
        grad = np.einsum("ij,i->j", design, p - y) / len(y) + penalty @ w
        hess = np.einsum("ij,ik->jk", design * (p * (1 - p))[:, None], design) / len(y) + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """(n,) fold index in [0, folds) of each sample, balanced and shuffled with ``seed``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2 (cross-fitting), got {folds!r}")
    if n < 2 * folds:
        raise ValueError(f"cross-fitting with {folds} folds needs at least {2 * folds} "
                         f"calibration samples, got {n}; pass fewer folds or more data")
    return np.random.default_rng(seed).permutation(np.arange(n) % folds)


def cross_fit_logits(features: np.ndarray, correct: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Out-of-fold calibrated logits (N, T): sample i's from a calibrator not fitted on it."""
    out = np.empty(correct.shape)
    for k in np.unique(folds):
        held = folds == k
        out[held] = ExitCalibrator.fit(features[~held], correct[~held]).logits(features[held])
    return out


def state_features(features: np.ndarray, calibrated_logits: np.ndarray) -> np.ndarray:
    """The calibrated state of the regression policies (see the module docstring).

    Args:
        features: (n, s, F) FEATURES of steps 0..s-1.
        calibrated_logits: (n, k) calibrated log-odds of the last k <= s steps.

    Returns:
        (n, k, 4) state of the last k steps, equal to the last k of the full (n, s, 4) state.
    """
    k = calibrated_logits.shape[1]
    first = features.shape[1] - k
    lmp = _logit(np.ascontiguousarray(features[:, max(first - 1, 0):, MAX_PROB]))
    # the previous exit's confidence; step 0 has none and repeats its own
    previous = lmp[:, :-1] if first > 0 else np.concatenate([lmp[:, :1], lmp[:, :-1]], axis=1)
    run = run_length(features[:, :, AGREEMENT])[:, first:]
    return np.stack([calibrated_logits, lmp[:, -k:], run, previous], axis=-1)


@dataclass(frozen=True)
class CalibratedState:
    """Feature map of ``lsm``/``osla``: :func:`state_features` with a fitted calibrator."""

    calibrator: ExitCalibrator

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return state_features(features, self.calibrator.logits(features))

    def trailing(self, features: np.ndarray, steps: int) -> np.ndarray:
        """``self(features)[:, -steps:]`` without calibrating the earlier steps (n, k, 4).

        The early-exit engine decides at step t from the last step only, so this keeps a
        decision's cost flat in depth instead of growing with t.
        """
        first = max(features.shape[1] - steps, 0)
        return state_features(features, self.calibrator.logits(features[:, first:], first))


# ------------------------------------------------------------------------------ the policy
class ExitPolicy(StoppingPolicy):
    """A stopping policy on features derived from the trace FEATURES by a causal map.

    Fitted for one network: ``n_steps_`` is its number of exits, ``n_features_`` the number of
    trace FEATURES, ``source`` its identity (checked by the early-exit engine).

    Args:
        inner: the stopping policy deciding on the derived features.
        feature_map: causal map (n, s, F) -> (n, s, k).
        kind: registry name (e.g. "lsm"); param: its parameter (threshold, patience or lambda).
        source: the network the policy is for (set by :func:`fit_exit_policy`).
    """

    name = "exit"
    fixed_horizon = True

    def __init__(self, inner: StoppingPolicy, feature_map: FeatureMap, *, kind: str = "custom",
                 param: float = float("nan"), source: TraceSource | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.feature_map = feature_map
        self.kind = kind
        self.param = float(param)
        self.source = source
        self._derived: np.ndarray | None = None

    @property
    def window_size(self) -> int:
        return self.n_steps_ or 1  # the map may use the whole prefix

    def fit(self, rewards: Any, features: Any, derived: np.ndarray | None = None) -> Self:
        """Fit the inner policy on ``feature_map(features)``, or on ``derived`` when given.

        Args:
            rewards: (N, T) realised rewards.
            features: (N, T, F) trace FEATURES.
            derived: optional (N, T, k) derived features to fit on instead (e.g. computed
                out of fold); the map is still what the fitted policy applies.
        """
        self._derived = derived
        try:
            return super().fit(rewards, features)
        finally:
            self._derived = None

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        derived = self.feature_map(features) if self._derived is None else self._derived
        if derived.shape[:2] != rewards.shape:
            raise ValueError(f"derived features have shape {derived.shape}, expected "
                             f"({rewards.shape[0]}, {rewards.shape[1]}, k)")
        self.inner.fit(rewards, derived)

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        if window.shape[0] == 1:  # numpy reduces a single row in another order (1e-17 apart):
            return self._stop_window(np.concatenate([window, window]), t)[:1]  # decide as a pair
        return self.inner._stop_window(self._derived_window(window), t)

    def _derived_window(self, window: np.ndarray) -> np.ndarray:
        """The derived features of the last ``inner.window_size`` steps of ``window``.

        A map with a ``trailing(features, steps)`` method computes only those steps (the
        calibrated state does); any other map is applied to the whole prefix and sliced.
        """
        steps = self.inner.window_size
        trailing = getattr(self.feature_map, "trailing", None)
        derived = (trailing(window, steps) if trailing is not None
                   else self.feature_map(window)[:, -steps:])
        return check_features(derived, n_paths=window.shape[0], n_features=self.inner.n_features_,
                              name="the feature map's output")

    def __repr__(self) -> str:
        return f"ExitPolicy(kind={self.kind!r}, param={self.param:g}, inner={self.inner!r})"


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ExitPolicySpec:
    """How to build one registered exit policy.

    Attributes:
        feature_map: builds the map from a :class:`FitContext`.
        inner: builds the unfitted stopping policy for a parameter value.
        params: default parameter grid for a :class:`FitContext`.
        uses_rewards: True when fitting depends on the rewards (cross-fitted curves, lambda).
    """

    feature_map: Callable[[FitContext], FeatureMap]
    inner: Callable[[float], StoppingPolicy]
    params: Callable[[FitContext], np.ndarray]
    uses_rewards: bool = False


@dataclass(frozen=True)
class FitContext:
    """Calibration data prepared once for fitting many policies.

    Attributes:
        features: (N, T, F) float64 trace FEATURES. correct: (N, T) 0/1.
        costs: (T,) float64 exit costs. source: the network.
        folds: (N,) cross-fitting fold of each sample.
        calibrator: fitted on all of the calibration data.
        oof_state: (N, T, 4) calibrated state computed out of fold.
    """

    features: np.ndarray
    correct: np.ndarray
    costs: np.ndarray
    source: TraceSource
    folds: np.ndarray
    calibrator: ExitCalibrator
    oof_state: np.ndarray

    @staticmethod
    def from_traces(traces: Traces, folds: int = 10, seed: int = 0) -> FitContext:
        """Prepare calibration traces (checks them; fits the calibrator; cross-fits it)."""
        check_traces(traces, "calibration traces")
        features = np.asarray(traces.features, dtype=np.float64)
        correct = traces.correct()
        fold = fold_ids(len(correct), folds, seed)
        oof = state_features(features, cross_fit_logits(features, correct, fold))
        return FitContext(features, correct, np.asarray(traces.exit_costs, dtype=np.float64),
                          TraceSource.of_traces(traces), fold,
                          ExitCalibrator.fit(features, correct), oof)

    def rewards(self, lam: float) -> np.ndarray:
        """(N, T) correct - lambda * C_t."""
        return self.correct - lam * self.costs


def _quantile_grid(column: int, sign: float, size: int = 201) -> Callable[[FitContext], np.ndarray]:
    """Thresholds at ``size`` quantiles of the calibration values (exits 0..T-2) and at the
    midpoints between consecutive ones, so a gap in the data gets a threshold in its middle
    rather than on its edge; plus one above every possible value (full depth)."""
    def grid(ctx: FitContext) -> np.ndarray:
        values = sign * ctx.features[:, :-1, column]
        qs = np.unique(np.quantile(values, np.linspace(0.0, 1.0, size), method="inverted_cdf"))
        # 2.0 exceeds every possible value (max_prob <= 1, -entropy <= 0): full depth
        return np.r_[np.sort(np.r_[qs, (qs[1:] + qs[:-1]) / 2]), 2.0]
    return grid


def _lambda_grid(ctx: FitContext) -> np.ndarray:
    """Prices from -0.3 (a reward for depth) through 0 to 3 (stop at the first exit).

    Negative prices let the regression policies reach full-depth accuracy where estimation
    noise (or, for the myopic OSLA, a non-monotone gain) would otherwise stop them too early.
    """
    return np.r_[-np.geomspace(1e-3, 0.3, 8)[::-1], 0.0, np.geomspace(1e-3, 3.0, 48)]


def _patience_grid(ctx: FitContext) -> np.ndarray:
    return np.arange(1, ctx.source.num_exits, dtype=np.float64)  # T - 1: full depth


def _regression(cls: type[StoppingPolicy]) -> Callable[[float], StoppingPolicy]:
    return lambda lam: cls(basis="polynomial", degree=2, ridge=1e-3)


#: name -> spec. Add an entry to register a new exit policy.
EXIT_POLICIES: Registry[ExitPolicySpec] = Registry("exit policy", {
    "max_prob": ExitPolicySpec(lambda ctx: Column(MAX_PROB),
                               lambda th: ThresholdPolicy(0, threshold=th),
                               _quantile_grid(MAX_PROB, 1.0)),
    "entropy": ExitPolicySpec(lambda ctx: Column(ENTROPY, -1.0),
                              lambda th: ThresholdPolicy(0, threshold=th),
                              _quantile_grid(ENTROPY, -1.0)),
    "patience": ExitPolicySpec(lambda ctx: SegmentIds(),
                               lambda k: PatiencePolicy(0, patience=int(k)), _patience_grid),
    "lsm": ExitPolicySpec(lambda ctx: CalibratedState(ctx.calibrator),
                          _regression(LeastSquaresPolicy), _lambda_grid, uses_rewards=True),
    "osla": ExitPolicySpec(lambda ctx: CalibratedState(ctx.calibrator),
                           _regression(OneStepLookaheadPolicy), _lambda_grid, uses_rewards=True),
})


def list_exit_policies() -> list[str]:
    """Names accepted by :func:`fit_exit_policy` (plus "oracle" in the evaluation suite)."""
    return EXIT_POLICIES.names()


def check_traces(traces: Any, what: str) -> None:
    """ValueError unless ``traces`` is a non-empty Traces with the FEATURES columns."""
    if not isinstance(traces, Traces):
        raise ValueError(f"{what} must be optdepth.traces.Traces (load_traces(path)), "
                         f"got {type(traces).__name__}")
    if traces.labels.shape[0] == 0:
        raise ValueError(f"{what} are empty (N=0 samples): nothing to fit or evaluate")
    if tuple(traces.feature_names) != FEATURES or traces.features.shape[2] != len(FEATURES):
        raise ValueError(f"{what} have {traces.features.shape[2]} features "
                         f"{list(traces.feature_names)}; this optdepth expects {len(FEATURES)} "
                         f"{list(FEATURES)}. Re-run evaluation to rewrite the traces")
    if traces.features.shape[1] < 2:
        raise ValueError(f"{what} have {traces.features.shape[1]} exit(s); early exit needs >= 2")


def fit_exit_policy(name: str, calibration: Traces | FitContext, param: float, *,
                    folds: int = 10, seed: int = 0) -> ExitPolicy:
    """Fit a registered exit policy on calibration traces at one parameter value.

    Args:
        name: one of :func:`list_exit_policies`.
        calibration: calibration traces, or a :class:`FitContext` prepared from them.
        param: threshold (max_prob; minus the entropy bound for entropy), patience k, or the
            price of compute lambda (lsm, osla).
        folds: cross-fitting folds of the calibrator (lsm, osla).
        seed: seed of the fold assignment.

    Returns:
        The fitted :class:`ExitPolicy` (``source`` set from the traces).
    """
    spec = EXIT_POLICIES[name]
    ctx = (calibration if isinstance(calibration, FitContext)
           else FitContext.from_traces(calibration, folds, seed))
    policy = ExitPolicy(spec.inner(param), spec.feature_map(ctx), kind=name, param=param,
                        source=ctx.source)
    derived = ctx.oof_state if spec.uses_rewards else None
    return policy.fit(ctx.rewards(param if spec.uses_rewards else 0.0), ctx.features, derived)
