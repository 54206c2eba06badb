"""Accuracy-versus-compute curves of exit policies and their iso-accuracy operating points.

Protocol (numpy only):

* every policy is fitted or calibrated on the **calibration** split only;
* its curve is traced over its parameter grid (thresholds at quantiles, patience 1..T-1, the
  price of compute lambda on a log grid) on calibration and on test;
* the **iso-accuracy** point is the parameter with the least mean compute whose *calibration*
  accuracy is at least the final exit's calibration accuracy minus ``tolerance`` (0.5 points);
  its figures are then read on the **test** split;
* policies whose fit depends on the rewards (lsm, osla) are measured on calibration *out of
  fold* (K-fold cross-fitting: fitted on K-1 folds, measured on the held-out fold), so the
  choice of lambda is not flattered by in-sample optimism; the policy used on test is refitted
  on the whole calibration split at the chosen lambda;
* ``oracle`` (earliest correct exit, the last exit if none is correct) sees the labels: it is a
  bound, measured on test directly;
* with ``guarantee=(epsilon, delta)``, each policy also gets a **guaranteed** operating point,
  whose accuracy loss against the full model is certified on calibration samples its fit never
  saw (:mod:`optdepth.offline.guarantees`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from optdepth.offline.exit_policies import (
    EXIT_POLICIES,
    ExitPolicy,
    FitContext,
    TraceSource,
    check_traces,
    fit_exit_policy,
)
from optdepth.offline.guarantees import Guarantee, GuaranteedPoint, guaranteed_point
from optdepth.offline.prices import check_prices
from optdepth.traces import Traces

log = logging.getLogger(__name__)

#: Every policy the suite evaluates, in report order.
NETWORK_POLICIES = ("max_prob", "entropy", "patience", "osla", "lsm", "oracle")
#: Accuracy (fraction) a policy may lose against the final exit at the iso-accuracy point.
ISO_TOLERANCE = 0.005


def iso_accuracy_index(accuracy: np.ndarray, compute: np.ndarray, reference: float,
                       tolerance: float = ISO_TOLERANCE) -> int:
    """Index of the cheapest point whose accuracy is >= ``reference - tolerance``.

    Ties in compute go to the higher accuracy, then to the lower index.

    Args:
        accuracy: (K,) accuracy of each point (fraction).
        compute: (K,) mean compute of each point.
        reference: accuracy to stay close to (the final exit's).
        tolerance: allowed loss (fraction; 0.005 = 0.5 points).

    Raises:
        ValueError: no point is accurate enough.
    """
    accuracy, compute = np.asarray(accuracy, float), np.asarray(compute, float)
    if accuracy.shape != compute.shape or accuracy.ndim != 1 or accuracy.size == 0:
        raise ValueError(f"accuracy and compute must be equal non-empty 1-D arrays, got "
                         f"{accuracy.shape} and {compute.shape}")
    feasible = np.flatnonzero(accuracy >= reference - tolerance - 1e-12)
    if feasible.size == 0:
        raise ValueError(f"no operating point reaches accuracy {reference - tolerance:.4f} "
                         f"(best {accuracy.max():.4f}); widen the parameter grid")
    order = np.lexsort((feasible, -accuracy[feasible], compute[feasible]))
    return int(feasible[order[0]])


@dataclass(frozen=True)
class PolicyEvaluation:
    """One policy's curves and iso-accuracy point.

    Attributes:
        name: policy name.
        params: (K,) parameter grid (NaN for the oracle).
        calibration_curve: (K, 2) [mean compute, accuracy] on calibration (out of fold for
            policies fitted on rewards; the oracle's is on calibration labels).
        test_curve: (K, 2) [mean compute, accuracy] on test.
        iso_index: the iso-accuracy point's index into the grid.
        policy: the policy at that point, fitted on all calibration data (None: oracle).
        cross_fitted: whether the calibration curve is out of fold.
        reached: False when no point of the grid reached the accuracy target on calibration;
            the iso-accuracy point is then the most accurate one (a weak network or policy).
        guaranteed: the guaranteed operating point, when a guarantee was asked for
            (:mod:`optdepth.offline.guarantees`).
    """

    name: str
    params: np.ndarray
    calibration_curve: np.ndarray
    test_curve: np.ndarray
    iso_index: int
    policy: ExitPolicy | None
    cross_fitted: bool
    reached: bool = True
    guaranteed: GuaranteedPoint | None = None

    @property
    def iso_param(self) -> float:
        return float(self.params[self.iso_index])

    @property
    def iso_test(self) -> tuple[float, float]:
        """(mean compute, accuracy) on test at the iso-accuracy point."""
        compute, accuracy = self.test_curve[self.iso_index]
        return float(compute), float(accuracy)

    def metrics(self, wall_speedup: float | None = None) -> dict[str, Any]:
        """The demo's per-policy record: test curve (sorted by compute) and iso-accuracy figures.

        Args:
            wall_speedup: measured full-depth time / early-exit time (None if not measured).
        """
        order = np.lexsort((self.test_curve[:, 1], self.test_curve[:, 0]))
        compute, accuracy = self.iso_test
        record = {"curve": [[float(c), float(a)] for c, a in self.test_curve[order]],
                  "iso_accuracy": {"accuracy": accuracy, "mean_compute": compute,
                                   "wall_speedup": None if wall_speedup is None
                                   else float(wall_speedup), "reached": self.reached}}
        if self.guaranteed is not None:
            record["guaranteed"] = self.guaranteed.metrics()
        return record


def _point(correct: np.ndarray, costs: np.ndarray, times: np.ndarray) -> tuple[float, float]:
    return float(costs[times].mean()), float(correct[np.arange(len(times)), times].mean())


def oracle_exits(correct: np.ndarray) -> np.ndarray:
    """(N, T) correctness -> (N,) earliest correct exit, or the last exit if none is."""
    correct = np.asarray(correct, dtype=bool)
    return np.where(correct.any(axis=1), correct.argmax(axis=1), correct.shape[1] - 1)


def _cross_fitted_times(ctx: FitContext, name: str, param: float) -> np.ndarray:
    """(N,) calibration stop times, each fold decided by a policy not fitted on it."""
    spec = EXIT_POLICIES[name]
    times = np.empty(len(ctx.correct), dtype=np.int64)
    rewards = ctx.rewards(param)
    for k in np.unique(ctx.folds):
        held = ctx.folds == k
        inner = spec.inner(param).fit(rewards[~held], ctx.oof_state[~held])
        times[held] = inner.stop_times(ctx.oof_state[held])
    return times


def _evaluate_oracle(calibration: Traces, test: Traces,
                     prices: np.ndarray | None = None) -> PolicyEvaluation:
    points = []
    for traces in (calibration, test):
        correct = traces.correct()
        costs = np.asarray(traces.exit_costs, float) if prices is None else prices
        points.append([_point(correct, costs, oracle_exits(correct))])
    return PolicyEvaluation("oracle", np.array([np.nan]), np.array(points[0]),
                            np.array(points[1]), 0, None, cross_fitted=False)


def evaluate_policy(name: str, ctx: FitContext, test: Traces, *,
                    params: np.ndarray | None = None,
                    tolerance: float = ISO_TOLERANCE) -> PolicyEvaluation:
    """Trace one registered policy's curves and pick its iso-accuracy point.

    Args:
        name: a name from :data:`~optdepth.offline.exit_policies.EXIT_POLICIES`.
        ctx: the calibration data (:meth:`FitContext.from_traces`).
        test: test traces of the same network.
        params: parameter grid (default: the policy's own).
        tolerance: allowed accuracy loss at the iso-accuracy point.
    """
    spec = EXIT_POLICIES[name]
    ctx.source.check_matches(TraceSource.of_traces(test), "the calibration traces",
                             "the test traces")
    grid = spec.params(ctx) if params is None else np.asarray(params, dtype=float)
    test_features, test_correct = np.asarray(test.features, float), test.correct()
    cal_points, test_points, policies = [], [], []
    for param in grid:
        policy = fit_exit_policy(name, ctx, float(param))
        cal_times = (_cross_fitted_times(ctx, name, float(param)) if spec.uses_rewards
                     else policy.stop_times(ctx.features))
        cal_points.append(_point(ctx.correct, ctx.costs, cal_times))
        test_points.append(_point(test_correct, ctx.costs, policy.stop_times(test_features)))
        policies.append(policy)
    cal_curve, test_curve = np.array(cal_points), np.array(test_points)
    reference, reached = float(ctx.correct[:, -1].mean()), True
    try:
        index = iso_accuracy_index(cal_curve[:, 1], cal_curve[:, 0], reference, tolerance)
    except ValueError:
        # Not an input error: this policy cannot match the final exit on this network. Report
        # its most accurate point (cheapest among equals) and say so, instead of failing.
        reached = False
        index = iso_accuracy_index(cal_curve[:, 1], cal_curve[:, 0], cal_curve[:, 1].max(), 0.0)
        log.warning("%s: no point within %.1f points of the final exit on calibration; "
                    "reporting its most accurate point", name, 100 * tolerance)
    log.info("%s: iso-accuracy at param %.4g, test compute %.4f accuracy %.4f", name,
             grid[index], *test_curve[index])
    return PolicyEvaluation(name, grid, cal_curve, test_curve, index, policies[index],
                            cross_fitted=spec.uses_rewards, reached=reached)


def evaluate_policies(calibration: Traces, test: Traces,
                      names: tuple[str, ...] = NETWORK_POLICIES, *,
                      tolerance: float = ISO_TOLERANCE, folds: int = 10,
                      seed: int = 0, guarantee: Guarantee | tuple[float, float] | None = None,
                      prices: ArrayLike | None = None) -> dict[str, PolicyEvaluation]:
    """Fit every policy on calibration traces and evaluate it on test traces.

    Args:
        calibration: calibration-split traces (fitting, operating-point choice).
        test: test-split traces of the same network (reported figures).
        names: policies to run (see :data:`NETWORK_POLICIES`).
        tolerance: allowed accuracy loss at the iso-accuracy point (0.005 = 0.5 points).
        folds: cross-fitting folds. seed: seed of the fold assignment.
        guarantee: also find each policy's guaranteed operating point: ``(epsilon, delta)``
            (accuracy lost against the full model at most epsilon with probability 1 - delta,
            by Learn-then-Test) or a :class:`~optdepth.offline.guarantees.Guarantee`.
        prices: (T,) the price of reaching each exit, in the units the policies' rewards and
            operating points minimise (default: the traces' FLOP shares); measured latency comes
            from :meth:`~optdepth.offline.prices.LatencyProfile.prices`. The curves' "compute"
            is then in those units.

    Returns:
        name -> :class:`PolicyEvaluation`, in the order of ``names``.

    Raises:
        ValueError: unknown name, empty traces, test traces of another model, a bad
            guarantee, or a calibration split too small to certify anything (ConfigError).
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) \
            or not -1 <= tolerance <= 1:  # a negative loss asks for more than the final exit
        raise ValueError(f"tolerance must be an accuracy loss in [-1, 1], got {tolerance!r}")
    check_traces(calibration, "calibration traces")
    check_traces(test, "test traces")
    TraceSource.of_traces(calibration).check_matches(
        TraceSource.of_traces(test), "the calibration traces", "the test traces")
    for name in names:
        if name != "oracle":
            EXIT_POLICIES[name]  # an unknown name fails here, before any fitting
    wanted = None if guarantee is None else Guarantee.of(guarantee)
    price = None if prices is None else check_prices(prices, len(calibration.exit_costs))
    ctx = _priced(FitContext.from_traces(calibration, folds, seed), price)
    evaluations = {name: (_evaluate_oracle(calibration, test, price) if name == "oracle"
                          else evaluate_policy(name, ctx, test, tolerance=tolerance))
                   for name in names}
    if wanted is not None:
        fit, certify = wanted.split(calibration)
        fit_ctx = _priced(FitContext.from_traces(fit, folds, seed), price)
        for name in names:
            if name != "oracle":
                point = guaranteed_point(name, fit, fit_ctx, certify, test, wanted)
                evaluations[name] = dataclasses.replace(evaluations[name], guaranteed=point)
    return evaluations


def _priced(ctx: FitContext, prices: np.ndarray | None) -> FitContext:
    """``ctx`` with its exits priced at ``prices`` (None: as traced); features stay as traced."""
    return ctx if prices is None else dataclasses.replace(ctx, costs=prices)


def gap_summary(evaluations: dict[str, PolicyEvaluation],
                ours: tuple[str, ...] = ("lsm", "osla"),
                rules: tuple[str, ...] = ("max_prob", "entropy", "patience")) -> dict[str, Any]:
    """How our best policy compares with the best rule and the oracle at iso-accuracy (test).

    Returns:
        dict with the best rule and ours (name, mean compute), the relative compute saving
        ``1 - ours / rule`` and the fraction of the rule-to-oracle gap closed (None where a
        policy is missing).
    """
    def best(group: tuple[str, ...]) -> tuple[str | None, float | None]:
        present = [(evaluations[n].iso_test[0], n) for n in group if n in evaluations]
        return (min(present)[1], min(present)[0]) if present else (None, None)

    rule_name, rule = best(rules)
    our_name, our = best(ours)
    oracle = evaluations["oracle"].iso_test[0] if "oracle" in evaluations else None
    saving = None if rule is None or our is None else 1.0 - our / rule
    closed = (None if None in (rule, our, oracle) or rule == oracle
              else (rule - our) / (rule - oracle))
    return {"best_rule": rule_name, "best_rule_compute": rule, "best_ours": our_name,
            "best_ours_compute": our, "oracle_compute": oracle,
            "compute_saving_vs_rule": saving, "oracle_gap_closed": closed}


def compute_at_accuracy(curve: ArrayLike, level: float) -> float | None:
    """The least mean compute of a test curve's points whose accuracy is >= ``level``.

    Args:
        curve: (K, 2) [mean compute, accuracy] points (as :meth:`PolicyEvaluation.metrics`
            writes them).
        level: the accuracy to reach (fraction).

    Returns:
        The compute, or None where no point reaches ``level``.
    """
    curve = np.asarray(curve, dtype=float).reshape(-1, 2)
    reached = curve[curve[:, 1] >= level]
    return float(reached[:, 0].min()) if len(reached) else None


def matched_accuracy_comparison(nets: dict[str, dict[str, Any]], first: str = "baseline",
                                second: str = "ldepth",
                                tolerance: float = ISO_TOLERANCE) -> dict[str, Any]:
    """Both nets' compute at one absolute test accuracy, policy by policy.

    The iso-accuracy point holds each net to its *own* final exit, so a net whose final exit is
    lower also gets a lower bar. This reads both nets' test curves at one accuracy, the lower
    final exit minus ``tolerance``, which both final exits reach. It is read on the test split, so it
    compares the nets; it is not an operating point (those are chosen on calibration).

    Args:
        nets: name -> demo net record (``exit_accuracy`` and ``policies`` -> ``curve``, as
            written by :meth:`PolicyEvaluation.metrics`).
        first, second: the two nets; ``ratio`` is second / first.

    Returns:
        ``accuracy`` (fraction) and ``policies``: name -> {first: compute, second: compute,
        "ratio"}; a compute is None where the curve never reaches the accuracy.
    """
    level = min(nets[n]["exit_accuracy"][-1] for n in (first, second)) - tolerance
    policies = {}
    for name in nets[first]["policies"]:
        computes = {net: compute_at_accuracy(nets[net]["policies"][name]["curve"], level)
                    for net in (first, second)}
        ratio = (None if None in computes.values()
                 else computes[second] / computes[first])
        policies[name] = {**computes, "ratio": ratio}
    return {"accuracy": float(level), "policies": policies}


__all__ = ["EXIT_POLICIES", "ISO_TOLERANCE", "NETWORK_POLICIES", "PolicyEvaluation",
           "compute_at_accuracy", "evaluate_policies", "evaluate_policy", "gap_summary",
           "iso_accuracy_index", "matched_accuracy_comparison", "oracle_exits"]
