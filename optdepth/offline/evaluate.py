"""Evaluate a trained run: per-exit accuracy, residual-norm decay and exit traces.

``evaluate_run(RUN)`` evaluates an image run on its dataset or a causal-LM run on its text and
writes ``RUN/evaluation/`` (names in :class:`optdepth.rundir.RunLayout`)::

    summary.json                per-exit test accuracy (next-token accuracy and perplexity for an
                                LM), exit compute, relative residual norm per block, the fitted
                                decay ||F_t||/||S_t|| ≈ K·ρ^t
    traces_calibration.npz      exit traces of the calibration split (format: optdepth.traces)
    traces_test.npz             exit traces of the test split
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optdepth.checkpoints import load_model_and_checkpoint
from optdepth.data.source import SplitDataset, load_run_dataset
from optdepth.data.text import TextCorpus, load_text_corpus
from optdepth.errors import CheckpointError, ConfigError
from optdepth.io import write_json
from optdepth.models.base import MultiExitModel
from optdepth.offline.collect import collect_lm_traces, collect_traces, summarize, summarize_lm
from optdepth.rundir import RunLayout, write_lock
from optdepth.traces import Traces

log = logging.getLogger(__name__)
SPLITS = ("calibration", "test")


@dataclass(frozen=True)
class RunEvaluation:
    """What :func:`evaluate_run` computed: the run's model (eval mode, on the evaluation
    device), the exit traces of the calibration and test splits, and the test summary (as
    written to ``evaluation/summary.json``)."""

    model: MultiExitModel
    traces: dict[str, Traces]
    summary: dict[str, Any]


def evaluate_run(run_dir: str | Path, data: SplitDataset | TextCorpus | None = None,
                 batch_size: int = 1000, progress: bool = True, device: str | None = None,
                 data_dir: str | None = None, max_tokens: int | None = None) -> RunEvaluation:
    """Evaluate ``run_dir``'s last checkpoint on the test split; write ``run_dir/evaluation``.

    The checkpoint must hold the architecture the run's config.json names; the folder is
    locked while its evaluation is written (a concurrent writer gets a "busy" error).

    Args:
        run_dir: a run directory written by :func:`optdepth.training.train`.
        data: the dataset (image runs) or text corpus (LM runs); else loaded as the run's
            stored config says.
        batch_size: images per forward pass (image runs).
        progress: show progress bars.
        device: where to run the model (default: cuda if available, else cpu).
        data_dir: the data's folder, if it moved since training (image runs; replaces the
            config's).
        max_tokens: tokens traced per split (LM runs; None: the config's ``eval_tokens``).

    Raises:
        ConfigError: bad batch size, data of the wrong kind, or a folder that is not a run.
        CheckpointError: missing, malformed or mismatched checkpoint.
        DataError: the data cannot be read, or its classes are not the run's.
        RunBusyError: another process is writing the run.
    """
    from optdepth.training.config import LMTrainConfig, load_run_config  # training imports us
    from optdepth.training.distributed import choose_device

    layout = RunLayout(run_dir)
    _check_data(data, None)
    if isinstance(data_dir, Path):
        data_dir = str(data_dir)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if not layout.is_trained():
        raise CheckpointError(f"{layout.root} holds no trained run (no {layout.checkpoint});"
                              " train one with `optdepth train --out RUN` first")
    with write_lock(layout.root, "run"):
        config = load_run_config(layout.config)
        _check_data(data, isinstance(config, LMTrainConfig))
        model, ckpt = load_model_and_checkpoint(layout.root)
        model.to(choose_device(device))
        if isinstance(config, LMTrainConfig):
            traces, summary = _trace_lm(model, config, data, data_dir, max_tokens)
        else:
            config = config if data_dir is None else config.replace(data_dir=data_dir)
            data = data if data is not None else load_run_dataset(config.to_dict())
            _check_classes(ckpt, model, data, layout.checkpoint)
            traces = {name: collect_traces(model, getattr(data, name), name, batch_size, progress)
                      for name in SPLITS}
            summary = summarize(traces["test"])
        return _write_evaluation(layout, model, traces, summary)


def _trace_lm(model: MultiExitModel, config: Any, corpus: TextCorpus | None, data_dir: str | None,
              max_tokens: int | None) -> tuple[dict[str, Traces], dict[str, Any]]:
    """Per-token traces of both splits of an LM run's text, and the test summary."""
    if data_dir is not None:
        raise ConfigError("--data-dir applies to image runs; an LM run reads the text its config"
                          " names")
    corpus = corpus if corpus is not None else load_text_corpus(config.text)
    tokens = config.eval_tokens if max_tokens is None else max_tokens
    traces = {name: collect_lm_traces(model, getattr(corpus, name), name, tokens)
              for name in SPLITS}
    return traces, summarize_lm(traces["test"], model)


def _check_data(data: Any, lm_run: bool | None) -> None:
    """API misuse is a ValueError before anything is read: ``data`` must be a dataset or a text
    corpus, and (once the run is known, ``lm_run`` not None) the kind the run trained on."""
    if data is None:
        return
    is_corpus = isinstance(data, TextCorpus)
    is_dataset = not is_corpus and all(hasattr(data, a) for a in ("calibration", "test", "classes"))
    if lm_run is None and (is_corpus or is_dataset):
        return
    if lm_run and not is_corpus:
        raise ValueError(f"data must be a TextCorpus (optdepth.data.text.load_text_corpus())"
                         f" for an LM run, got {type(data).__name__}")
    if not lm_run and not is_dataset:
        raise ValueError(f"data must be a dataset with calibration and test splits and classes"
                         f" (optdepth.data.load_fashion_mnist()), got {type(data).__name__}")


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


def _write_evaluation(layout: RunLayout, model: MultiExitModel, traces: dict[str, Traces],
                      summary: dict[str, Any]) -> RunEvaluation:
    for name, tr in traces.items():
        tr.save(layout.traces(name))
    summary = {"arch": model.arch_name, **summary,
               "calibration_exit_accuracy": [float(a) for a in
                                             traces["calibration"].exit_accuracy()]}
    write_json(layout.summary, summary)
    log.info("evaluated %s: final-exit test accuracy %.4f", layout.root,
             summary["exit_accuracy"][-1])
    return RunEvaluation(model, traces, summary)
