"""The demo: a baseline and an L_depth multi-exit image model on Fashion-MNIST, end to end.

``run_demo(out, model="resnet20")`` (or ``"vit"``, any registered image model) trains both nets
with one short schedule, evaluates them, fits every exit policy on the calibration split,
measures it on the test split (accuracy, mean compute, and the wall-clock speed-up of real
early exit), and writes ``out/report.md``, ``out/metrics.json`` and PNG plots; each net's run
directory lives in ``out/runs/{baseline,ldepth}`` (the pipeline of
:mod:`optdepth.experiments.pipeline`). Re-running on the same folder resumes what was there.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optdepth.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from optdepth.experiments.pipeline import net_metrics, policy_suite, train_and_evaluate, write_outputs
from optdepth.offline import matched_accuracy_comparison
from optdepth.offline.evaluate import RunEvaluation
from optdepth.offline.exit_policies import ExitPolicy
from optdepth.online import measure_wall_speedups
from optdepth.registry import Registry
from optdepth.reports.demo_report import write_report
from optdepth.reports.environment import environment
from optdepth.rundir import write_lock, write_marker
from optdepth.training.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSchedule:
    """How long the demo trains: ``epochs`` over the first ``train_subset`` images (at most; None:
    all).

    The short schedules train on plain images (augmentation slows convergence too much for 5
    epochs) with uniform exit weights; the full schedule trains longer, augments, and weights
    the exits linearly in depth. The measurements behind these choices are indexed in
    docs/results.md (ablate_ldepth*.json, full_resnet20).
    """

    name: str
    epochs: int
    train_subset: int | None
    augment: bool
    exit_weighting: str = "uniform"
    timing_repeats: int = 3  # timed passes per side when measuring wall-clock speed-ups


SCHEDULES: Registry[DemoSchedule] = Registry("schedule", {
    "quick": DemoSchedule("quick", epochs=2, train_subset=8_000, augment=False,
                          timing_repeats=1),
    "demo": DemoSchedule("demo", epochs=5, train_subset=None, augment=False),
    "full": DemoSchedule("full", epochs=30, train_subset=None, augment=True,
                         exit_weighting="linear"),
})
# L_depth of the second net for models without their own setting: the `relative` variant, β 0.1.
DEFAULT_REGULARIZER = "relative"
DEFAULT_BETA = 0.1


@dataclass(frozen=True)
class DemoModel:
    """Per-model demo settings.

    Attributes:
        overrides: TrainConfig fields that replace the defaults (optimizer, lr, ...).
        epochs: per schedule name, epochs that replace the schedule's (a slower model trains
            for fewer epochs so that the demo keeps its time budget).
        regularizer: L_depth variant of the second net (the baseline has β = 0).
        beta: L_depth weight of the second net when the caller gives none.
    """

    overrides: Mapping[str, Any] = field(default_factory=dict)
    epochs: Mapping[str, int] = field(default_factory=dict)
    regularizer: str = DEFAULT_REGULARIZER
    beta: float = DEFAULT_BETA


#: Demo settings per model name or family (the name up to "_": ``vit_small`` -> ``vit``);
#: other registered models train with the TrainConfig defaults (SGD, the ResNet recipe).
DEMO_MODELS: dict[str, DemoModel] = {
    # `distill`, β = 2 for the ResNets: over five paired seeds it closed the most of the gap
    # to the oracle and needed the least LSM compute at iso-accuracy of the variants tried
    # (`stopping` at β 1 and 4, `distill:2+stopping:1`), though within the seeds' interval
    # (benchmarks/results/compare_resnet20_demo/, rendered in docs/results.md).
    **{f"resnet{depth}": DemoModel(regularizer="distill", beta=2.0)
       for depth in (20, 32, 44, 56, 110)},
    # AdamW (decay on weights only), warm-up + cosine; the peak lr from
    # benchmarks/vit_lr_sweep.py, four epochs to keep the demo's time budget, and β = 0.5, the
    # only β measured on the ViT (benchmarks/results/vit_demo/).
    "vit": DemoModel({"optimizer": "adamw", "lr": 6e-3, "weight_decay": 0.05},
                     epochs={"demo": 4}, beta=0.5),
}


def demo_model(model: str) -> DemoModel:
    """The demo settings of ``model``: its own, its family's, or the defaults."""
    return DEMO_MODELS.get(model) or DEMO_MODELS.get(model.split("_")[0]) or DemoModel()


def demo_configs(schedule: DemoSchedule, beta: float | None, data_dir: str | None,
                 threads: int | None, model: str = "resnet20",
                 model_kwargs: Mapping[str, Any] | None = None) -> dict[str, TrainConfig]:
    """The two nets: identical but for L_depth (β = 0 for the baseline; the model's demo
    regulariser at ``beta``, None: the model's demo β, for the second net).

    ``model_kwargs`` go to :func:`optdepth.create_model` for both nets (``{"stem_stride": 1}``).
    """
    settings = demo_model(model)
    beta = settings.beta if beta is None else beta
    base = demo_base_config(schedule, data_dir, threads, model, model_kwargs)
    return {"baseline": base.replace(beta=0.0),
            "ldepth": base.replace(regularizer=settings.regularizer, beta=beta)}


def demo_base_config(schedule: DemoSchedule, data_dir: str | None, threads: int | None,
                     model: str = "resnet20",
                     model_kwargs: Mapping[str, Any] | None = None) -> TrainConfig:
    """The config every net of a demo (or a compare) shares before its L_depth is set: the
    schedule's epochs, subset, augmentation and exit weights, then the model's own overrides."""
    base = TrainConfig(model=model, model_kwargs=dict(model_kwargs or {}),
                       epochs=schedule.epochs, train_subset=schedule.train_subset,
                       augment=schedule.augment, exit_weighting=schedule.exit_weighting,
                       data_dir=data_dir, threads=threads)
    return base.replace(**demo_model(model).overrides)


def demo_plan(schedule: str, model: str, epochs: int | None = None) -> DemoSchedule:
    """The schedule named ``schedule`` with ``epochs`` (None: the model's own epochs for this
    schedule, if it has any, else the schedule's)."""
    plan = SCHEDULES[schedule]
    epochs = epochs if epochs is not None else demo_model(model).epochs.get(schedule)
    return plan if epochs is None else dataclasses.replace(plan, epochs=epochs)


def fit_plan_to_data(plan: DemoSchedule, n_train: int) -> DemoSchedule:
    """``plan`` with its subset cut to ``n_train`` images: a schedule's subset is "at most", so
    a smaller data folder trains on all of it."""
    if plan.train_subset is not None and plan.train_subset > n_train:
        return dataclasses.replace(plan, train_subset=n_train)
    return plan


def policy_metrics(evaluation: RunEvaluation, data: FashionMNIST, net: dict[str, Any],
                   repeats: int = 3) -> dict[str, Any]:
    """Fit every exit policy on the calibration traces, measure it on test, time real exits.

    Returns:
        ``policies`` (name -> curve and iso-accuracy record, with the wall speed-up of real
        early exit at batch 256), ``policy_comparison`` (ours vs the best rule and the oracle),
        ``timing`` (per-policy timing details) and the certificate fields at the LSM operating
        point (see :meth:`~optdepth.experiments.pipeline.PolicySuite.metrics`).
    """
    def timer(fitted: dict[str, ExitPolicy]) -> dict[str, dict[str, Any]]:
        return measure_wall_speedups(evaluation.model, fitted, data.test, batch_size=256,
                                     repeats=repeats, all_exits=False)

    return policy_suite(evaluation, timer).metrics(net, "wall_speedup")


def run_demo(out: str | Path, *, model: str = "resnet20", schedule: str = "demo",
             beta: float | None = None, epochs: int | None = None, data_dir: str | None = None,
             threads: int | None = None, model_kwargs: Mapping[str, Any] | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and report both demo nets; return the metrics written to metrics.json.

    Args:
        out: output folder (resumed if it holds the same runs).
        model: a registered image model (``"resnet20"``, ``"vit"``, ...); its demo settings
            come from :data:`DEMO_MODELS`.
        schedule: ``"quick"`` (smoke test, ~2 min), ``"demo"`` (~12 min on two CPU cores) or
            ``"full"`` (30 epochs with augmentation and linear exit weights, about an hour;
            figures for ResNet-20).
        beta: L_depth weight of the second net (None: the model's demo default).
        epochs: override the schedule's (and the model's) epochs.
        model_kwargs: architecture overrides for both nets, as for
            :func:`optdepth.create_model` (``{"stem_stride": 1, "width": 2}``).
        data_dir, threads, progress: as for training.
    """
    out = Path(out)
    start = time.perf_counter()
    plan = demo_plan(schedule, model, epochs)
    configs = demo_configs(plan, beta, data_dir, threads, model, model_kwargs)
    with write_lock(out, "demo"):
        data = load_fashion_mnist(data_dir)
        if (fitted := fit_plan_to_data(plan, len(data.train))) != plan:
            plan = fitted
            configs = demo_configs(plan, beta, data_dir, threads, model, model_kwargs)
        write_marker(out, "demo")
        return _train_and_report(out, model, plan, configs, data, progress, start)


def _train_and_report(out: Path, model: str, plan: DemoSchedule, configs: dict[str, TrainConfig],
                      data: FashionMNIST, progress: bool, start: float) -> dict[str, Any]:
    """Both nets: train (or resume), evaluate, fit and time the policies; plots and report."""
    nets = {}
    for name, config in configs.items():
        evaluation = train_and_evaluate(config, out / "runs" / name, data, progress)
        nets[name] = net_metrics(evaluation.summary)
        log.info("fitting exit policies and timing early exit for %s", name)
        nets[name].update(policy_metrics(evaluation, data, nets[name], plan.timing_repeats))
    metrics = {"model": model, "model_kwargs": configs["baseline"].model_kwargs, "nets": nets,
               "matched_accuracy": matched_accuracy_comparison(nets),
               "schedule": {**dataclasses.asdict(plan), "beta": configs["ldepth"].beta,
                            "regularizer": configs["ldepth"].regularizer},
               "environment": environment(),
               "wall_seconds": time.perf_counter() - start}
    write_outputs(out, metrics, lambda m, path: write_report(m, configs, path))
    return metrics
