"""Guaranteed operating points: the cheapest exit policy whose risk against the full model is
certified, by Learn-then-Test or conformal risk control (:mod:`optdepth.stopping.risk_control`).

Protocol (numpy only). The calibration split is cut in two at random: the **fit** part builds
the candidates (each policy's parameter grid and its fits, as for the iso-accuracy point), the
**certify** part, which the candidates never saw, supplies the per-sample losses the guarantee
is computed from. The candidates tested are those on the fit part's compute–risk Pareto front,
most compute first (so risk rises along them, as fixed-sequence testing needs), an order that is
independent of the certify samples too. The guarantee then holds for a
new sample from the same distribution: "accuracy lost against the full-depth prediction is at
most ε, with probability 1 - δ over the calibration draw" (LTT), or "in expectation" (CRC). Its
figures are then read on the test split.

Risks (per-sample losses in {0, 1}):

- ``accuracy_gap``: 1 when the full-depth prediction is right and the early exit's is wrong. Its
  mean bounds the accuracy lost against the full model (it ignores the samples an early exit
  gets right and the final exit wrong, which only help).
- ``disagreement``: 1 when the early exit predicts another class than the full model (CALM's
  consistency); needs no labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from optdepth.errors import ConfigError
from optdepth.offline.exit_policies import EXIT_POLICIES, ExitPolicy, FitContext, fit_exit_policy
from optdepth.stopping.risk_control import (
    METHODS,
    RiskControlResult,
    check_level,
    risk_control,
    samples_needed,
)
from optdepth.traces import Traces

RISKS = ("accuracy_gap", "disagreement")


@dataclass(frozen=True)
class Guarantee:
    """What to certify: the risk ``risk`` at most ``epsilon`` (LTT: with probability at least
    ``1 - delta``; CRC: in expectation), certified on ``certify_fraction`` of the calibration
    split drawn with ``seed``."""

    epsilon: float
    delta: float = 0.1
    method: str = "ltt"
    risk: str = "accuracy_gap"
    certify_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epsilon", "delta", "certify_fraction"):
            check_level(f"guarantee {name}", getattr(self, name))
        if self.method not in METHODS:
            raise ConfigError(f"guarantee method must be one of {', '.join(METHODS)}, got"
                              f" {self.method!r}")
        if self.risk not in RISKS:
            raise ConfigError(f"guarantee risk must be one of {', '.join(RISKS)}, got"
                              f" {self.risk!r}")

    @classmethod
    def of(cls, value: Guarantee | tuple[float, float]) -> Guarantee:
        """A Guarantee from itself or from ``(epsilon, delta)``."""
        if isinstance(value, Guarantee):
            return value
        if isinstance(value, tuple | list) and len(value) == 2:
            return cls(*value)
        raise ConfigError(f"guarantee must be (epsilon, delta) or a Guarantee, got {value!r}")

    def certify_size(self, n_calibration: int) -> int:
        """How many of ``n_calibration`` samples :meth:`split` sets aside to certify on."""
        return int(round(self.certify_fraction * n_calibration))

    def certifiable(self, n_calibration: int) -> bool:
        """Whether a calibration split of this size can certify any candidate at all."""
        return self.certify_size(n_calibration) >= samples_needed(self.epsilon, self.delta,
                                                                  self.method)

    def split(self, calibration: Traces) -> tuple[Traces, Traces]:
        """(fit, certify) parts of the calibration traces, drawn at random with ``seed``."""
        n = len(calibration.labels)
        order = np.random.default_rng(self.seed).permutation(n)
        n_certify = self.certify_size(n)
        fit, certify = np.sort(order[n_certify:]), np.sort(order[:n_certify])
        return calibration.take(fit), calibration.take(certify)


def pareto_chain(compute: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """Indices of the candidates no other beats in both compute and risk (on the fit part),
    most compute first: along the chain compute falls and risk rises, the order fixed-sequence
    testing needs (a candidate that costs more and risks more than another is never tested)."""
    kept, best = [], np.inf
    for k in np.lexsort((risk, compute)):  # cheapest first; among equals, least risk
        if risk[k] < best - 1e-12:
            kept.append(int(k))
            best = risk[k]
    return np.array(kept[::-1], dtype=np.int64)


def risk_losses(traces: Traces, times: np.ndarray, risk: str) -> np.ndarray:
    """(N,) per-sample loss in {0, 1} of stopping at ``times`` (N,) instead of the last exit."""
    predictions = traces.probs.argmax(-1)  # (N, T)
    rows = np.arange(len(times))
    early, full = predictions[rows, times], predictions[:, -1]
    if risk == "disagreement":
        return (early != full).astype(float)
    labels = traces.labels
    return ((full == labels) & (early != labels)).astype(float)


@dataclass(frozen=True)
class GuaranteedPoint:
    """One policy's guaranteed operating point.

    Attributes:
        guarantee: what was certified.
        param: the chosen parameter (None when nothing could be certified).
        policy: the chosen policy, fitted on the fit part (None when nothing was certified).
        control: the risk-control result over the candidates (ordered by fit-part compute).
        n_fit: calibration samples that built the candidates.
        test_compute, test_accuracy, test_risk: the chosen policy on the test split (None
            when nothing was certified).
    """

    guarantee: Guarantee
    param: float | None
    policy: ExitPolicy | None
    control: RiskControlResult
    n_fit: int
    test_compute: float | None
    test_accuracy: float | None
    test_risk: float | None

    def metrics(self) -> dict[str, Any]:
        return {**self.control.summary(), "risk": self.guarantee.risk, "param": self.param,
                "certified": self.control.certified, "n_fit": self.n_fit,
                "mean_compute": self.test_compute, "accuracy": self.test_accuracy,
                "test_risk": self.test_risk}


@dataclass(frozen=True)
class CandidateFamily:
    """One policy's candidates, built on the fit part of the calibration split.

    Attributes:
        params: (K,) the policy's parameter grid. policies: the K fitted policies.
        fit_compute, fit_risk: (K,) their mean compute and risk on the fit part.
        order: the indices tested, in testing order (:func:`pareto_chain`).
    """

    params: np.ndarray
    policies: list[ExitPolicy]
    fit_compute: np.ndarray
    fit_risk: np.ndarray
    order: np.ndarray

    def stop_times(self, traces: Traces) -> np.ndarray:
        """(N, len(order)) exit of each sample under each tested candidate, in testing order."""
        features = np.asarray(traces.features, float)
        return np.stack([self.policies[k].stop_times(features) for k in self.order], axis=1)

    def losses(self, traces: Traces, risk: str) -> np.ndarray:
        """(N, len(order)) per-sample losses of the tested candidates, in testing order."""
        times = self.stop_times(traces)
        return np.stack([risk_losses(traces, times[:, j], risk) for j in range(times.shape[1])],
                        axis=1)


def candidate_family(name: str, fit_traces: Traces, fit: FitContext, risk: str) -> CandidateFamily:
    """Fit policy ``name`` at every parameter of its grid on the fit part; order the
    Pareto-efficient ones for testing."""
    params = EXIT_POLICIES[name].params(fit)
    policies = [fit_exit_policy(name, fit, float(p)) for p in params]
    fit_times = [c.stop_times(fit.features) for c in policies]
    fit_compute = np.array([fit.costs[t].mean() for t in fit_times])
    fit_risk = np.array([risk_losses(fit_traces, t, risk).mean() for t in fit_times])
    return CandidateFamily(params, policies, fit_compute, fit_risk,
                           pareto_chain(fit_compute, fit_risk))


def guaranteed_point(name: str, fit_traces: Traces, fit: FitContext, certify: Traces,
                     test: Traces, guarantee: Guarantee) -> GuaranteedPoint:
    """Certify the cheapest member of policy ``name``'s family (see the module docstring).

    Args:
        name: a registered exit policy.
        fit_traces, fit: the fit part of the calibration split, and its
            :meth:`FitContext.from_traces`.
        certify: the certify part, traces the candidates never saw.
        test: the test traces (figures only).
        guarantee: what to certify.

    Raises:
        ConfigError: too few certify samples for any candidate to be certifiable.
    """
    family = candidate_family(name, fit_traces, fit, guarantee.risk)
    control = risk_control(family.losses(certify, guarantee.risk), guarantee.epsilon,
                           guarantee.delta, guarantee.method,
                           costs=family.fit_compute[family.order])
    if control.index is None:
        return GuaranteedPoint(guarantee, None, None, control, len(fit.correct), None, None,
                               None)
    chosen = int(family.order[control.index])
    times = family.policies[chosen].stop_times(np.asarray(test.features, float))
    correct = test.correct()[np.arange(len(times)), times]
    return GuaranteedPoint(guarantee, float(family.params[chosen]), family.policies[chosen],
                           control, len(fit.correct),
                           float(np.asarray(test.exit_costs, float)[times].mean()),
                           float(correct.mean()),
                           float(risk_losses(test, times, guarantee.risk).mean()))


__all__ = ["RISKS", "CandidateFamily", "Guarantee", "GuaranteedPoint", "candidate_family",
           "guaranteed_point", "pareto_chain", "risk_losses"]
