"""The experiment pipeline: nets trained, traced, their exit policies fitted, timed and reported.

An experiment folder holds one run directory per net (``out/runs/NAME``, the layout of
:class:`optdepth.rundir.RunLayout`) and the experiment's outputs::

    metrics.json         everything measured (schema in optdepth.experiments.image_demo)
    report.md            the human-readable report
    exit_accuracy.png, residual_decay.png, policy_curves.png, exit_histograms.png

Each net goes through :func:`train_and_evaluate` (train or resume, then evaluate once: the model
and its traces stay in memory) and :func:`policy_suite` (fit every exit policy on calibration,
measure it on test, find its guaranteed operating point at :data:`GUARANTEE`, time the fitted
policies with the experiment's own timer, certify the LSM operating point). The image demo and
the LM demo are configurations of this pipeline: they differ in their data, their timer and
their report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optdepth.io import write_json
from optdepth.offline import evaluate_policies, gap_summary, oracle_exits
from optdepth.offline.certificate import network_certificate
from optdepth.offline.evaluate import RunEvaluation, evaluate_run
from optdepth.offline.exit_policies import ExitPolicy
from optdepth.offline.guarantees import Guarantee
from optdepth.offline.policy_evaluation import PolicyEvaluation
from optdepth.reports.plots import (
    plot_exit_accuracy,
    plot_exit_histograms,
    plot_policy_curves,
    plot_residual_decay,
)
from optdepth.traces import Traces
from optdepth.training import RunConfig, train_or_resume

log = logging.getLogger(__name__)
#: Times the fitted policies: name -> ExitPolicy in, name -> timing record (with the
#: experiment's speed-up key) out.
Timer = Callable[[dict[str, ExitPolicy]], dict[str, dict[str, Any]]]
#: The guarantee each policy's guaranteed operating point carries: at most one point of accuracy
#: lost against the full model, with probability 0.9 (Learn-then-Test).
GUARANTEE = Guarantee(epsilon=0.01, delta=0.1)


def train_and_evaluate(config: RunConfig, run_dir: Path, data: Any, progress: bool,
                       **evaluate_kwargs: Any) -> RunEvaluation:
    """Train (or resume, or just reload) the run, then evaluate it: model, traces, summary."""
    log.info("training %s (beta = %g, %d epochs)", run_dir.name, config.beta, config.epochs)
    train_or_resume(config, run_dir, data=data, progress=progress)
    return evaluate_run(run_dir, data=data, progress=progress, **evaluate_kwargs)


def net_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A net's entry of metrics.json: its test summary, with the decay fit as K, rho, r2."""
    fit = summary["decay_fit"]
    kept = {k: v for k, v in summary.items() if k not in ("arch", "decay_fit")}
    return {**kept, "rho": fit["rho"], "K": fit["K"], "decay_fit_r2": fit["r2"]}


@dataclass(frozen=True)
class PolicySuite:
    """Every exit policy of one net, fitted on calibration and measured on test.

    Attributes:
        test: the test traces the policies were measured on.
        evaluations: name -> curve and iso-accuracy point (the oracle included).
        fitted: name -> the fitted policy at its iso-accuracy operating point (no oracle).
        exits: name -> (N,) exit index of each test sample (the oracle included).
        timing: name -> the timer's record, for the fitted policies.
    """

    test: Traces
    evaluations: dict[str, PolicyEvaluation]
    fitted: dict[str, ExitPolicy]
    exits: dict[str, np.ndarray]
    timing: dict[str, dict[str, Any]]

    def metrics(self, net: Mapping[str, Any], speedup_key: str) -> dict[str, Any]:
        """The net's policy entries of metrics.json: ``policies`` (with the timed speed-up and
        the exit histogram), ``policy_comparison``, ``timing`` and the certificate fields of
        :func:`~optdepth.offline.certificate.network_certificate` at the LSM operating point
        (``net``: the net's decay fit K, rho)."""
        policies = {}
        for name, evaluation in self.evaluations.items():
            timed = self.timing.get(name)
            record = evaluation.metrics(timed[speedup_key] if timed is not None else None)
            record["exit_histogram"] = np.bincount(
                self.exits[name], minlength=len(self.test.exit_costs)).tolist()
            policies[name] = record
        certificate = network_certificate(self.test, net["K"], net["rho"],
                                          self.evaluations["lsm"].iso_param, self.exits["lsm"])
        return {"policies": policies, "policy_comparison": gap_summary(self.evaluations),
                "timing": self.timing, **certificate}


def policy_suite(evaluation: RunEvaluation, timer: Timer) -> PolicySuite:
    """Fit every exit policy on the calibration traces, measure on test, time the fitted ones."""
    calibration, test = evaluation.traces["calibration"], evaluation.traces["test"]
    evaluations = evaluate_policies(calibration, test, guarantee=_guarantee_for(calibration))
    fitted = {n: e.policy for n, e in evaluations.items() if e.policy is not None}
    timing = timer(fitted)
    exits = {n: p.stop_times(test.features) for n, p in fitted.items()}
    exits["oracle"] = oracle_exits(test.correct())
    return PolicySuite(test, evaluations, fitted, exits, timing)


def _guarantee_for(calibration: Traces) -> Guarantee | None:
    """:data:`GUARANTEE`, or None (with a warning) when the calibration split is too small to
    certify anything: a small data folder still gets its demo, without guaranteed points."""
    n = len(calibration.labels)
    if GUARANTEE.certifiable(n):
        return GUARANTEE
    log.warning("no guaranteed operating points: %d calibration samples leave %d to certify on,"
                " too few for ε = %g, δ = %g", n, GUARANTEE.certify_size(n), GUARANTEE.epsilon,
                GUARANTEE.delta)
    return None


def write_outputs(out: Path, metrics: dict[str, Any],
                  write_report: Callable[[dict[str, Any], Path], None]) -> None:
    """The four plots of the nets, metrics.json and report.md, each written atomically."""
    nets = metrics["nets"]
    plot_exit_accuracy(nets, out / "exit_accuracy.png")
    plot_residual_decay(nets, out / "residual_decay.png")
    plot_policy_curves(nets, out / "policy_curves.png")
    plot_exit_histograms(nets, out / "exit_histograms.png")
    write_json(out / "metrics.json", metrics)
    write_report(metrics, out / "report.md")
