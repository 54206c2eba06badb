"""Evaluate a trained run: per-exit accuracy, residual-norm decay and exit traces.

``evaluate_run(RUN)`` writes ``RUN/evaluation/``::

    summary.json                per-exit test accuracy, exit compute, relative residual norm per
                                block, the fitted decay ||F_t||/||S_t|| ≈ K·ρ^t
    traces_calibration.npz      exit traces of the calibration split (format: optdepth.traces)
    traces_test.npz             exit traces of the test split
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from optdepth.checkpoints import checkpoint_path, load_model_and_checkpoint
from optdepth.data.source import BatchSource, SplitDataset, load_run_dataset
from optdepth.errors import CheckpointError, ConfigError
from optdepth.io import write_json
from optdepth.models.base import MultiExitModel
from optdepth.offline.forward import forward_split
from optdepth.rundir import write_lock
from optdepth.stopping import fit_diminishing_returns
from optdepth.traces import Traces, exit_features

log = logging.getLogger(__name__)


def collect_traces(model: MultiExitModel, split: BatchSource, split_name: str = "test",
                   batch_size: int = 1000, progress: bool = False) -> Traces:
    """Run every exit on ``split`` and return its :class:`~optdepth.traces.Traces`.

    Raises:
        ValueError: ``split`` is not a batch source (e.g. a bare tensor: wrap it as
            ``optdepth.data.Split(images, labels)``), is empty, or ``batch_size`` < 1.
    """
    if not hasattr(split, "batches") or not hasattr(split, "__len__"):
        raise ValueError(f"split must be a batch source such as optdepth.data.Split(images,"
                         f" labels), got {type(split).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(split) == 0:
        raise ValueError(f"the {split_name} split is empty: nothing to trace")
    out = forward_split(model, split, batch_size, progress, desc=f"traces ({split_name})")
    costs = model.exit_costs().numpy()
    blocks = np.asarray(model.exit_blocks, dtype=np.int64)
    relative = out.residual_norms / np.maximum(out.state_norms, 1e-12)
    features = exit_features(out.probs, relative, blocks, costs)
    meta = {"arch": getattr(model, "arch_name", type(model).__name__),
            "arch_kwargs": getattr(model, "arch_kwargs", {}), "split": split_name}
    return Traces(probs=out.probs, labels=out.labels, features=features, exit_costs=costs,
                  residual_norms=out.residual_norms, state_norms=out.state_norms,
                  exit_blocks=blocks, metadata=meta)


def summarize(traces: Traces) -> dict[str, Any]:
    """Per-exit accuracy, compute and residual-norm decay (with the K, ρ fit) of test traces."""
    relative = (traces.residual_norms / np.maximum(traces.state_norms, 1e-12)).mean(axis=0)
    fit = fit_diminishing_returns(relative)
    return {
        "exit_accuracy": [float(a) for a in traces.exit_accuracy()],
        "exit_compute": [float(c) for c in traces.exit_costs],
        "exit_blocks": [int(b) for b in traces.exit_blocks],
        "relative_residual_norm": [float(r) for r in relative],
        "decay_fit": {"K": float(fit.K), "rho": float(fit.rho), "r2": float(fit.r_squared)},
    }


def evaluate_run(run_dir: str | Path, data: SplitDataset | None = None, batch_size: int = 1000,
                 progress: bool = True, device: str | None = None,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir``'s last checkpoint on the test split; write ``run_dir/evaluation``.

    The checkpoint must hold the architecture the run's config.json names; the folder is
    locked while its evaluation is written (a concurrent writer gets a "busy" error).

    Args:
        run_dir: a run directory written by :func:`optdepth.training.train`.
        data: the dataset (else loaded as the run's stored config says: dataset, data_dir,
            image size, calibration size, workers, skip_bad_images).
        batch_size: samples per forward pass.
        progress: show progress bars.
        device: where to run the model (default: cuda if available, else cpu).
        data_dir: the data's folder, if it moved since training (replaces the config's).

    Returns:
        The summary dict also written to ``evaluation/summary.json``.

    Raises:
        ConfigError: bad batch size, or a folder that is not an image-classification run.
        CheckpointError: missing, malformed or mismatched checkpoint.
        RunBusyError: another process is writing the run.
    """
    from optdepth.training.config import TrainConfig  # training imports the offline layer
    from optdepth.training.distributed import choose_device

    run_dir = Path(run_dir)
    if data is not None and not all(hasattr(data, a) for a in ("calibration", "test", "classes")):
        raise ValueError(f"data must be a dataset with calibration and test splits and classes"
                         f" (optdepth.load_fashion_mnist()), got {type(data).__name__}")
    if isinstance(data_dir, Path):
        data_dir = str(data_dir)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if not checkpoint_path(run_dir).is_file():
        raise CheckpointError(f"{run_dir} holds no trained run (no {checkpoint_path(run_dir)});"
                              " train one with `optdepth train --out RUN` first")
    with write_lock(run_dir, "run"):
        config = TrainConfig.from_file(run_dir / "config.json")
        if data_dir is not None:
            config = config.replace(data_dir=data_dir)
        model, ckpt = load_model_and_checkpoint(run_dir)
        if data is None:
            data = load_run_dataset(config.to_dict())
        _check_classes(ckpt, model, data, checkpoint_path(run_dir))
        model.to(choose_device(device))
        return _write_evaluation(model, data, run_dir, batch_size, progress)


def _check_classes(ckpt: dict[str, Any], model: MultiExitModel, data: SplitDataset,
                   path: Path) -> None:
    """The data's classes must be the ones the model was trained on, in the same order: a
    renamed or added class folder would silently shift every label."""
    if model.num_classes != len(data.classes):
        raise CheckpointError(f"{path} predicts {model.num_classes} classes, the run's data has"
                              f" {len(data.classes)}")
    trained = ckpt.get("classes")
    if isinstance(trained, list) and list(data.classes) != trained:
        changed = [f"{a!r} -> {b!r}" for a, b in zip(trained, data.classes, strict=True) if a != b]
        raise CheckpointError(f"the data's classes are not the ones {path} was trained on"
                              f" ({', '.join(changed[:3])}); point --data-dir at the training"
                              " data's layout")


def _write_evaluation(model: MultiExitModel, data: SplitDataset, run_dir: Path, batch_size: int,
                      progress: bool) -> dict[str, Any]:
    out = run_dir / "evaluation"
    traces = {name: collect_traces(model, getattr(data, name), name, batch_size, progress)
              for name in ("calibration", "test")}
    for name, tr in traces.items():
        tr.save(out / f"traces_{name}.npz")
    summary = {"arch": model.arch_name, **summarize(traces["test"]),
               "calibration_exit_accuracy": [float(a) for a in
                                             traces["calibration"].exit_accuracy()]}
    write_json(out / "summary.json", summary)
    log.info("evaluated %s: final-exit test accuracy %.4f", run_dir, summary["exit_accuracy"][-1])
    return summary
