"""The one training loop: multi-exit cross-entropy + β·L_depth, warm-up + cosine learning rate.

Every task (images with class labels, token windows with next-token targets) trains here; a
task adapter (:mod:`optdepth.training.tasks`) supplies its data, model and calibration metrics.
A run directory holds (see :class:`optdepth.rundir.RunLayout`)::

    config.json            the resolved config (TrainConfig or LMTrainConfig)
    metrics.jsonl          one JSON record per finished epoch
    tb/                    TensorBoard events
    checkpoints/last.pt    the latest checkpoint (see optdepth.checkpoints)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from optdepth.checkpoints import restore_training_state, save_checkpoint
from optdepth.errors import CheckpointError, ConfigError, OptDepthError, TrainingError
from optdepth.io import write_json, write_text
from optdepth.losses.depth import DepthRegularizer, create_regularizer
from optdepth.losses.multi_exit import multi_exit_cross_entropy
from optdepth.models.base import MultiExitModel
from optdepth.rundir import RunLayout, write_lock, write_marker
from optdepth.training import distributed
from optdepth.training.config import RunConfig
from optdepth.training.distributed import DistContext
from optdepth.training.tasks import Task, task_type

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]
#: TensorBoard tag suffix of each per-exit or per-block list in an epoch record.
_SERIES = {"cal_exit_accuracy": "exit", "cal_perplexity": "exit",
           "relative_residual_norm": "block"}
_SCALARS = ("train_loss", "train_ce", "train_reg", "lr", "beta", "cal_accuracy", "seconds")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the trained model (eval mode), per-epoch records, the folder."""

    model: MultiExitModel
    history: list[dict[str, Any]]
    run_dir: Path


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier at step s: linear warm-up to 1, then half-cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: MultiExitModel, config: RunConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, weight decay on every parameter) or AdamW (betas ``(momentum,
    adam_beta2)``).

    AdamW decays only weight matrices and kernels: norms and biases are left alone, as is usual
    for Transformers, since decaying them shrinks scales and offsets rather than limiting capacity.
    Frozen parameters (a wrapped model's backbone) are left out.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has nothing to train: its backbone is frozen and its exits"
                          " share the backbone's head; give head='adapter' (or train the backbone)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                               nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    decay = [p for p in trainable if p.ndim > 1]
    plain = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, config.adam_beta2))


class _Run:
    """State of one training run; :func:`train` drives it epoch by epoch."""

    def __init__(self, config: RunConfig, layout: RunLayout, task: Task, ctx: DistContext,
                 resume: bool = False) -> None:
        self.config, self.layout, self.task, self.ctx = config, layout, task, ctx
        torch.manual_seed(config.seed)
        self.model = task.build_model(load_weights=not resume).to(ctx.device)
        # bf16 autocast pays off on tensor-core GPUs (on CPU only if asked)
        self.amp = ctx.device.type == "cuda" if config.amp is None else config.amp
        self.memory_format = task.memory_format(self.model, self.amp)
        self.model.to(memory_format=self.memory_format)
        self.net = distributed.wrap(self.model, ctx)  # DDP when several processes
        self.regularizer: DepthRegularizer = create_regularizer(
            config.regularizer, beta=config.beta, warmup_epochs=config.beta_warmup_epochs,
            **config.regularizer_kwargs)
        self.regularizer.attach(self.model)
        self.optimizer = build_optimizer(self.model, config)
        steps = task.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(config.epochs * steps, config.warmup_steps(steps)))
        self.history: list[dict[str, Any]] = []

    def restore(self) -> None:
        self.history = restore_training_state(self.layout.checkpoint, self.model, self.optimizer,
                                              self.scheduler, self.config)

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        self.net.train()
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0}
        steps = self.task.steps_per_epoch
        bar = tqdm(self.task.batches(epoch), total=steps, leave=False,
                   disable=not progress or not self.ctx.is_main,
                   desc=f"epoch {epoch + 1}/{self.config.epochs}")
        done = 0
        for i, (inputs, targets) in enumerate(bar):
            loss, ce, reg = self._loss(inputs, targets, epoch + i / steps)
            if not distributed.all_true(bool(torch.isfinite(loss)), self.ctx):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; lower --lr or"
                    f" --beta. Earlier checkpoints in {self.layout.root} are intact.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            for key, value in (("loss", loss), ("ce", ce), ("reg", reg)):
                sums[key] += float(value.detach())
            done += 1
            if i % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        means = {f"train_{k}": v / max(1, done) for k, v in sums.items()}
        return distributed.average(means, self.ctx)

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor,
              epoch: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Total loss, multi-exit CE and β·L_depth of one batch at fractional ``epoch``."""
        inputs = inputs.to(self.ctx.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.ctx.device, non_blocking=True)
        with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(inputs)
            ce = multi_exit_cross_entropy(out.logits, targets, self.config.exit_weighting,
                                          self.config.label_smoothing)
            reg = self.regularizer(out, epoch=epoch, targets=targets)
        return ce + reg, ce, reg

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 evaluates on calibration and writes the checkpoint; every rank gets the record."""
        if self.ctx.is_main:
            record = self._evaluate_and_save(epoch, record)
        record = distributed.broadcast(record, self.ctx)
        if not self.ctx.is_main:
            self.history.append(record)
        return record

    def _evaluate_and_save(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        record = {"epoch": epoch + 1, **record, "lr": self.optimizer.param_groups[0]["lr"],
                  "beta": self.regularizer.weight(epoch + 1), **self.task.evaluate(self.model)}
        self.history.append(record)
        save_checkpoint(self.layout.checkpoint, {
            "arch": {"name": self.config.model, "kwargs": self.model.arch_kwargs},
            "config": self.config.to_dict(), "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": epoch + 1, "metric": record["cal_accuracy"], "history": self.history,
            **self.task.checkpoint_fields()})
        write_text(self.layout.metrics, "".join(json.dumps(r) + "\n" for r in self.history))
        return record


def _prepare_run_dir(config: RunConfig, layout: RunLayout, resume: bool) -> tuple[RunConfig, bool]:
    """Check what the (claimed, locked) folder holds; return the config to run and whether to
    resume from its checkpoint.

    A run that never finished an epoch (config.json but no checkpoint: killed, or diverged in
    its first epoch) holds nothing to keep: a new command takes it over with its settings, and
    ``--resume`` starts it again from epoch 1 with the stored ones.
    """
    stored = type(config).from_file(layout.config) if layout.config.is_file() else None
    started = layout.is_trained()
    if resume:
        if stored is None:
            raise CheckpointError(f"nothing to resume in {layout.root}: no config.json. Start a"
                                  " new run without --resume.")
        if not started:
            log.warning("%s never finished an epoch (no checkpoint): starting it again from"
                        " epoch 1 with its stored config", layout.root)
        return stored, started
    if started:
        raise ConfigError(f"{layout.root} already holds a run; pass --resume to continue it, or"
                          " choose another --out (earlier runs are never overwritten)")
    if stored is not None and stored != config:
        log.warning("%s holds a run that never finished an epoch: replacing it with the new"
                    " settings", layout.root)
    return config, False


def _start_fresh(layout: RunLayout, config: RunConfig) -> None:
    """Mark the folder as a run and write its config.json, dropping what an unfinished earlier
    attempt logged."""
    write_marker(layout.root, "run")
    layout.metrics.unlink(missing_ok=True)
    shutil.rmtree(layout.tensorboard, ignore_errors=True)
    write_json(layout.config, config.to_dict())


def _resolve_config(config: RunConfig, layout: RunLayout, resume: bool,
                    ctx: DistContext) -> tuple[RunConfig, bool]:
    """Rank 0 checks the folder; every rank gets the config to run and whether to resume."""
    outcome: tuple[dict[str, Any], bool] | OptDepthError
    if ctx.is_main:
        try:
            resolved, resume = _prepare_run_dir(config, layout, resume)
            outcome = (resolved.to_dict(), resume)
        except OptDepthError as exc:
            if not ctx.distributed:
                raise
            outcome = exc
    else:
        outcome = ({}, False)
    outcome = distributed.broadcast(outcome, ctx)
    if isinstance(outcome, OptDepthError):
        raise outcome
    return type(config).from_dict(outcome[0]), outcome[1]


@contextmanager
def _run_dir_lock(run_dir: Path, ctx: DistContext) -> Iterator[None]:
    """Rank 0 claims and locks the run folder for the whole run; every rank learns if it failed."""
    with ExitStack() as stack:
        error: OptDepthError | None = None
        if ctx.is_main:
            try:
                stack.enter_context(write_lock(run_dir, "run"))
            except OptDepthError as exc:
                error = exc
        error = distributed.broadcast(error, ctx)
        if error is not None:
            raise error
        yield


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, data: Any = None,
          callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
    """Train a multi-exit model and write its run directory.

    The task follows from the config's type: a :class:`~optdepth.training.config.TrainConfig`
    trains an image classifier, an :class:`~optdepth.training.config.LMTrainConfig` a causal
    LM (:mod:`optdepth.training.tasks`). Under ``torchrun`` (several processes) the model
    trains with DistributedDataParallel: ``config.batch_size`` is the global batch, split
    evenly across the processes; only rank 0 evaluates, logs and writes checkpoints, metrics
    and TensorBoard events; ``callbacks`` run on every rank with the same record. A run may be
    resumed with another number of processes. The device is this call's ``config.device`` (on
    resume too). The folder is locked for the whole run (see :mod:`optdepth.rundir`): a second
    writer gets a clear "busy" error.

    Args:
        config: the run's settings (ignored on resume: the stored config.json is used).
        run_dir: output folder: new, empty, or a run of ours; it must not hold a finished
            epoch unless ``resume``.
        resume: continue from the run's checkpoint.
        progress: show tqdm progress bars.
        data: preloaded data, a SplitDataset for images or a TextCorpus for a causal LM (else
            loaded as the config says).
        callbacks: called with each epoch's record after it is saved.

    Returns:
        TrainResult with the model (unwrapped, on its training device, in eval mode) after the
        last epoch.
    """
    task_class = task_type(config)
    _check_train_arguments(run_dir, data, callbacks, task_class)
    layout = RunLayout(run_dir)
    ctx = distributed.setup(config.device)
    try:
        with _run_dir_lock(layout.root, ctx):
            config, resume = _resolve_config(config, layout, resume, ctx)
            distributed.check_batch_size(config.batch_size, ctx)
            if config.threads is not None:
                torch.set_num_threads(config.threads)
            # Data and model before config.json: a new run that cannot start (missing data, bad
            # model arguments) leaves no folder behind that would refuse the corrected command.
            data = data if data is not None else task_class.load_data(config)
            run = _Run(config, layout, task_class(config, data, ctx), ctx, resume)
            if resume:
                run.restore()
                if ctx.is_main:
                    write_marker(layout.root, "run")  # runs written before markers existed
                log.info("resuming %s after epoch %d", layout.root, len(run.history))
            elif ctx.is_main:
                _start_fresh(layout, config)
            _run_epochs(run, progress, callbacks)
    finally:
        distributed.teardown(ctx)
    return TrainResult(run.model.eval(), run.history, layout.root)


def _check_train_arguments(run_dir: Any, data: Any, callbacks: Any, task_class: Any) -> None:
    """Clear errors for API misuse, before anything is loaded or written."""
    if not isinstance(run_dir, str | Path) or not str(run_dir):
        raise TypeError(f"run_dir must be a non-empty path, got {run_dir!r}")
    if data is not None:
        task_class.check_data(data)
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be callables taking an epoch record")


def _open_event_log(layout: RunLayout, history: Sequence[dict[str, Any]]) -> Any:
    """A TensorBoard writer on the run's ``tb/`` that holds exactly ``history`` so far.

    The events are rewritten from the run's own history at every start, so a resumed run keeps
    one events file whose steps are those of its checkpoint (none from epochs it lost).
    """
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when training

    shutil.rmtree(layout.tensorboard, ignore_errors=True)
    writer = SummaryWriter(str(layout.tensorboard))
    for record in history:
        _add_scalars(writer, record)
    return writer


def _run_epochs(run: _Run, progress: bool, callbacks: Sequence[EpochCallback]) -> None:
    writer = _open_event_log(run.layout, run.history) if run.ctx.is_main else None
    try:
        for epoch in range(len(run.history), run.config.epochs):
            start = time.perf_counter()
            stats = run.train_epoch(epoch, progress)
            record = run.end_epoch(epoch, {**stats, "seconds": time.perf_counter() - start})
            if writer is not None:
                _add_scalars(writer, record)
                log.info("epoch %d: loss %.4f, cal acc %.4f (%.0f s)", record["epoch"],
                         record["train_loss"], record["cal_accuracy"], record["seconds"])
            for callback in callbacks:  # on every rank, so that a callback can stop them all
                callback(record)
    finally:
        if writer is not None:
            writer.close()


def _add_scalars(writer: Any, record: dict[str, Any]) -> None:
    step = record["epoch"]
    for key in _SCALARS:
        writer.add_scalar(key, record[key], step)
    for key, unit in _SERIES.items():
        for i, value in enumerate(record.get(key, ())):
            writer.add_scalar(f"{key}/{unit}_{i}", value, step)


def train_or_resume(config: RunConfig, run_dir: str | Path, *, data: Any = None,
                    progress: bool = True) -> TrainResult:
    """Train into ``run_dir``, or continue (or just reload) the run there if it has ``config``.

    Raises:
        ConfigError: ``run_dir`` holds a run with other settings (it is left untouched).
    """
    task_type(config)
    layout = RunLayout(run_dir)
    resume = layout.is_trained()
    if resume and type(config).from_file(layout.config) != config:
        raise ConfigError(f"{run_dir} holds a run with other settings; use another output folder"
                          " (earlier results are left untouched)")
    return train(config, run_dir, resume=resume, data=data, progress=progress)
