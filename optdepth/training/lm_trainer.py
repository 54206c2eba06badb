"""Training and evaluation of the multi-exit causal LM: multi-exit CE + β·L_depth, AdamW.

The loop mirrors :mod:`optdepth.training.trainer` for token windows: every step draws
``batch_size`` windows of ``context`` bytes at random offsets of the train split, the loss is
the multi-exit cross-entropy over all (batch, position) tokens plus β·L_depth on the per-token
relative residual norms, and the learning rate follows a linear warm-up then a cosine decay.
An "epoch" is ``steps_per_epoch`` steps: after each, the calibration split is evaluated and the
run directory is updated::

    config.json            the resolved LMTrainConfig
    metrics.jsonl          one JSON record per finished epoch
    tb/                    TensorBoard events
    checkpoints/last.pt    the latest checkpoint (atomic; resumable, weights_only loadable)

Evaluation after each epoch uses :mod:`optdepth.offline.lm` (per-token exit traces).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from optdepth.checkpoints import checkpoint_path, load_model, restore_training_state, save_checkpoint
from optdepth.data.text import TextCorpus, load_text_corpus, random_windows
from optdepth.errors import CheckpointError, ConfigError, TrainingError
from optdepth.io import write_text
from optdepth.losses.depth import create_regularizer, list_regularizers
from optdepth.losses.multi_exit import EXIT_WEIGHTINGS, multi_exit_cross_entropy
from optdepth.models.causal_lm import CausalLM
from optdepth.models.registry import create_model
from optdepth.offline.lm import collect_lm_traces, summarize_lm
from optdepth.rundir import write_lock, write_marker
from optdepth.training.config import (
    MAX_RATE,
    check_common_numbers,
    check_field_types,
    check_model_and_regularizer_kwargs,
    read_settings,
)
from optdepth.training.trainer import cosine_with_warmup, open_event_log, start_fresh

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMTrainConfig:
    """Everything that determines an LM training run (stored as config.json).

    ``text`` None trains on the Python standard library's sources; else a list of files or
    folders. ``eval_tokens`` caps the calibration tokens evaluated after each epoch.
    """

    model: str = "lm"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    text: tuple[str, ...] | None = None
    epochs: int = 4
    steps_per_epoch: int = 150
    batch_size: int = 16
    lr: float = 3e-3
    lr_warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    exit_weighting: str = "uniform"
    regularizer: str = "relative"
    beta: float = 0.0
    beta_warmup_epochs: float = 1.0
    regularizer_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    eval_tokens: int = 8192

    def __post_init__(self) -> None:
        if isinstance(self.text, list | tuple):  # paths may come as Path objects from Python
            object.__setattr__(self, "text", tuple(str(t) if isinstance(t, Path) else t
                                                   for t in self.text))
        check_field_types(self)
        check_common_numbers(self)
        check_model_and_regularizer_kwargs(self)
        if self.regularizer not in list_regularizers():
            raise ConfigError(f"unknown regularizer {self.regularizer!r}; available: "
                              f"{', '.join(list_regularizers())}")
        if self.exit_weighting not in EXIT_WEIGHTINGS:
            raise ConfigError(f"unknown exit_weighting {self.exit_weighting!r}; choose one of "
                              f"{EXIT_WEIGHTINGS}")
        for name in ("steps_per_epoch", "batch_size", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "grad_clip", "beta", "beta_warmup_epochs",
                     "lr_warmup_steps"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= MAX_RATE:
                raise ConfigError(f"{name} must be a finite number in [0, {MAX_RATE:g}], got"
                                  f" {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["text"] = None if self.text is None else list(self.text)
        return out

    @staticmethod
    def from_file(path: str | Path) -> LMTrainConfig:
        """Read a config.json written by :meth:`to_dict`."""
        raw = read_settings(path)
        unknown = set(raw) - {f.name for f in dataclasses.fields(LMTrainConfig)}
        if unknown:
            raise ConfigError(f"{path} is not an LM run config: unknown keys"
                              f" {', '.join(sorted(unknown))}")
        try:
            return LMTrainConfig(**raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def replace(self, **changes: Any) -> LMTrainConfig:
        return dataclasses.replace(self, **changes)


def build_lm(config: LMTrainConfig) -> CausalLM:
    """The config's model; ConfigError unless it is a causal LM."""
    model = create_model(config.model, **config.model_kwargs)
    if not isinstance(model, CausalLM):
        raise ConfigError(f"model {config.model!r} is not a causal language model; use 'lm'")
    return model


def load_lm(path: str | Path) -> CausalLM:
    """A trained :class:`CausalLM` from a checkpoint or run directory, in eval mode.

    Raises:
        CheckpointError: unreadable checkpoint, or one of another kind of model.
    """
    path = Path(path)
    model = load_model(path)
    if not isinstance(model, CausalLM):
        raise CheckpointError(f"{path} holds a {model.arch_name!r} model, not a causal language "
                              "model; "
"point at a checkpoint written by the LM trainer (model 'lm')")
    return model



# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class LMTrainResult:
    """The trained model, per-epoch records and the run folder."""

    model: CausalLM
    history: list[dict[str, Any]]
    run_dir: Path


class _LMRun:
    """State of one LM training run; :func:`train_lm` drives it epoch by epoch."""

    def __init__(self, config: LMTrainConfig, run_dir: Path, corpus: TextCorpus) -> None:
        self.config, self.run_dir, self.corpus = config, run_dir, corpus
        torch.manual_seed(config.seed)
        self.model = build_lm(config)
        self.regularizer = create_regularizer(config.regularizer, beta=config.beta,
                                              warmup_epochs=config.beta_warmup_epochs,
                                              **config.regularizer_kwargs)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]  # no decay on norms, biases
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay},
             {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
        total = config.epochs * config.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(total, max(1, config.lr_warmup_steps)))
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir)

    def restore(self) -> None:
        self.history = restore_training_state(self.checkpoint_path, self.config.model, self.model,
                                              self.optimizer, self.scheduler,
                                              self.config.to_dict())

    def loss(self, epoch: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Total loss, multi-exit CE and β·L_depth on one batch of random windows."""
        inputs, targets = random_windows(self.corpus.train, self.config.batch_size,
                                         self.model.context, generator)
        out = self.model(inputs)  # logits (T, B·S, 256)
        ce = multi_exit_cross_entropy(out.logits, targets.reshape(-1), self.config.exit_weighting)
        reg = self.regularizer(out, epoch=epoch)
        return ce + reg, ce, reg

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        self.model.train()
        steps = self.config.steps_per_epoch
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0}
        bar = tqdm(range(steps), disable=not progress, leave=False,
                   desc=f"epoch {epoch + 1}/{self.config.epochs}")
        for i in bar:
            loss, ce, reg = self.loss(epoch + i / steps, generator)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                                    f"lower --lr or --beta. Earlier checkpoints in {self.run_dir} "
                                    "are intact.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            for key, value in (("loss", loss), ("ce", ce), ("reg", reg)):
                sums[key] += float(value.detach())
            if i % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        return {f"train_{k}": v / steps for k, v in sums.items()}

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        cal = collect_lm_traces(self.model, self.corpus.calibration, "calibration",
                                self.config.eval_tokens)
        summary = summarize_lm(cal, self.model)
        record = {"epoch": epoch + 1, **record, "lr": self.optimizer.param_groups[0]["lr"],
                  "beta": self.regularizer.weight(epoch + 1),
                  "cal_accuracy": summary["exit_accuracy"][-1],
                  "cal_exit_accuracy": [round(a, 5) for a in summary["exit_accuracy"]],
                  "cal_perplexity": [round(p, 4) for p in summary["perplexity"]],
                  "relative_residual_norm": [round(r, 5) for r in summary["relative_residual_norm"]]}
        self.history.append(record)
        save_checkpoint(self.checkpoint_path, {
            "arch": {"name": self.config.model, "kwargs": self.model.arch_kwargs},
            "config": self.config.to_dict(), "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": epoch + 1, "metric": record["cal_accuracy"], "history": self.history})
        write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        return record


def _prepare_run_dir(config: LMTrainConfig, run_dir: Path) -> bool:
    """Check the (claimed, locked) folder; return whether there is a checkpoint to resume.

    A run that never finished an epoch (config.json, no checkpoint) is taken over by ``config``.

    Raises:
        ConfigError: the folder holds a finished epoch of a run with other settings.
    """
    config_path = run_dir / "config.json"
    has_checkpoint = checkpoint_path(run_dir).is_file()
    if has_checkpoint and LMTrainConfig.from_file(config_path) != config:
        raise ConfigError(f"{run_dir} holds a run with other settings; use another output "
                          "folder (earlier results are left untouched)")
    if not has_checkpoint:
        start_fresh(run_dir, config.to_dict())
    return has_checkpoint


def train_lm(config: LMTrainConfig, run_dir: str | Path, *, corpus: TextCorpus | None = None,
             progress: bool = True) -> LMTrainResult:
    """Train a multi-exit LM into ``run_dir``, resuming the run there if it has ``config``.

    Args:
        config: the run's settings.
        run_dir: output folder; a run with the same config there is continued (or, if
            finished, just reloaded), one with another config is refused. The folder is
            locked while training (see :mod:`optdepth.rundir`).
        corpus: preloaded corpus (else read from ``config.text``).
        progress: show tqdm progress bars.

    Raises:
        ConfigError: ``run_dir`` holds a run with other settings (left untouched).
        TrainingError: the loss became NaN or infinite.
    """
    run_dir = Path(run_dir)
    with write_lock(run_dir, "run"):
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        corpus = corpus or load_text_corpus(config.text)
        resume = _prepare_run_dir(config, run_dir)
        run = _LMRun(config, run_dir, corpus)
        if resume:
            run.restore()
            write_marker(run_dir, "run")  # runs written before markers existed
            log.info("resuming %s after epoch %d", run_dir, len(run.history))
        writer = open_event_log(run_dir, run.history, _add_scalars)
        try:
            for epoch in range(len(run.history), config.epochs):
                start = time.perf_counter()
                stats = run.train_epoch(epoch, progress)
                record = run.end_epoch(epoch, {**stats, "seconds": time.perf_counter() - start})
                _add_scalars(writer, record)
                log.info("epoch %d: loss %.4f, cal next-token acc %.4f, ppl %.3f (%.0f s)",
                         record["epoch"], record["train_loss"], record["cal_accuracy"],
                         record["cal_perplexity"][-1], record["seconds"])
        finally:
            writer.close()
    return LMTrainResult(run.model.eval(), run.history, run_dir)


def _add_scalars(writer: Any, record: dict[str, Any]) -> None:
    step = record["epoch"]
    for key in ("train_loss", "train_ce", "train_reg", "lr", "beta", "cal_accuracy", "seconds"):
        writer.add_scalar(key, record[key], step)
    for t, (acc, ppl) in enumerate(zip(record["cal_exit_accuracy"], record["cal_perplexity"],
                                       strict=True)):
        writer.add_scalar(f"cal_exit_accuracy/exit_{t}", acc, step)
        writer.add_scalar(f"cal_perplexity/exit_{t}", ppl, step)
