"""The demo: a baseline and an L_depth multi-exit ResNet-20 on Fashion-MNIST, end to end.

``run_demo(out)`` trains both nets with one short schedule, evaluates them, and writes
``out/report.md``, ``out/metrics.json`` and PNG plots; each net's run directory lives in
``out/runs/{baseline,ldepth}``. Re-running on the same folder resumes what was there.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optdepth.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from optdepth.errors import ConfigError
from optdepth.evaluation.evaluate import evaluate_run
from optdepth.io import write_json
from optdepth.reports.demo_report import write_report
from optdepth.reports.plots import plot_exit_accuracy, plot_residual_decay
from optdepth.training.config import TrainConfig
from optdepth.training.trainer import train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSchedule:
    """How long the demo trains: ``epochs`` over the first ``train_subset`` images (None: all)."""

    epochs: int
    train_subset: int | None


FULL = DemoSchedule(epochs=5, train_subset=None)
QUICK = DemoSchedule(epochs=2, train_subset=8_000)
DEFAULT_BETA = 1.0


def demo_configs(schedule: DemoSchedule, beta: float, data_dir: str | None,
                 threads: int | None) -> dict[str, TrainConfig]:
    """The two nets: identical but for β (0 for the baseline)."""
    base = TrainConfig(epochs=schedule.epochs, train_subset=schedule.train_subset,
                       data_dir=data_dir, threads=threads)
    return {"baseline": base.replace(beta=0.0), "ldepth": base.replace(beta=beta)}


def _train_or_resume(config: TrainConfig, run_dir: Path, data: FashionMNIST,
                     progress: bool) -> None:
    stored = run_dir / "config.json"
    if not stored.exists():
        train(config, run_dir, data=data, progress=progress)
        return
    if TrainConfig.from_file(stored) != config:
        raise ConfigError(f"{run_dir} holds a run with other settings; use another --out "
                          "(earlier results are left untouched)")
    train(config, run_dir, resume=(run_dir / "checkpoints" / "last.pt").exists(),
          data=data, progress=progress)


def _net_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    fit = summary["decay_fit"]
    return {"exit_accuracy": summary["exit_accuracy"], "exit_compute": summary["exit_compute"],
            "relative_residual_norm": summary["relative_residual_norm"],
            "rho": fit["rho"], "K": fit["K"], "decay_fit_r2": fit["r2"]}


def run_demo(out: str | Path, *, quick: bool = False, beta: float = DEFAULT_BETA,
             epochs: int | None = None, data_dir: str | None = None,
             threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, evaluate and report both demo nets; return the metrics written to metrics.json."""
    out = Path(out)
    start = time.perf_counter()
    schedule = QUICK if quick else FULL
    if epochs is not None:
        schedule = DemoSchedule(epochs, schedule.train_subset)
    configs = demo_configs(schedule, beta, data_dir, threads)
    data = load_fashion_mnist(data_dir)
    nets = {}
    for name, config in configs.items():
        log.info("training %s (beta = %g, %d epochs)", name, config.beta, config.epochs)
        run_dir = out / "runs" / name
        _train_or_resume(config, run_dir, data, progress)
        nets[name] = _net_metrics(evaluate_run(run_dir, data=data, progress=progress))
    metrics = {"nets": nets, "schedule": {"epochs": schedule.epochs,
                                          "train_subset": schedule.train_subset, "beta": beta},
               "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                               "machine": platform.processor() or platform.machine()},
               "wall_seconds": time.perf_counter() - start}
    plot_exit_accuracy(nets, out / "exit_accuracy.png")
    plot_residual_decay(nets, out / "residual_decay.png")
    write_json(out / "metrics.json", metrics)
    write_report(metrics, configs, out / "report.md")
    return metrics
