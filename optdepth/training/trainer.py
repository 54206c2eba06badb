"""The training loop: multi-exit cross-entropy + β·L_depth, SGD with warm-up + cosine.

A run directory holds::

    config.json            the resolved TrainConfig
    metrics.jsonl          one JSON record per finished epoch
    tb/                    TensorBoard events
    checkpoints/last.pt    the latest checkpoint (see optdepth.training.checkpoint)
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

from optdepth.checkpoints import checkpoint_path, restore_training_state, save_checkpoint
from optdepth.data.source import SplitDataset, load_run_dataset
from optdepth.errors import CheckpointError, ConfigError, OptDepthError, TrainingError
from optdepth.io import write_json, write_text
from optdepth.losses.depth import DepthRegularizer, create_regularizer
from optdepth.losses.multi_exit import multi_exit_cross_entropy
from optdepth.models.base import MultiExitModel
from optdepth.models.registry import DATA_ARGUMENTS, create_model
from optdepth.offline.forward import forward_split
from optdepth.rundir import write_lock, write_marker
from optdepth.training import distributed
from optdepth.training.config import TrainConfig
from optdepth.training.distributed import DistContext

log = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the trained model, per-epoch records and the run folder."""

    model: MultiExitModel
    history: list[dict[str, Any]]
    run_dir: Path


def build_model(config: TrainConfig, data: SplitDataset, *,
                load_weights: bool = True) -> MultiExitModel:
    """The config's model, with input channels, image size and classes taken from the data.

    ``load_weights=False`` drops a ``weights_path`` model argument (on resume the checkpoint
    holds the weights, and the pretrained file need not exist any more).
    """
    channels, size, _ = data.train.image_shape
    kwargs = {**dict(zip(DATA_ARGUMENTS, (channels, size, len(data.classes)), strict=True)),
              **config.model_kwargs}
    if not load_weights:
        kwargs.pop("weights_path", None)
    return create_model(config.model, **kwargs)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier at step s: linear warm-up to 1, then half-cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_optimizer(model: MultiExitModel, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, weight decay on every parameter) or AdamW (beta1 = ``config.momentum``).

    AdamW decays only weight matrices and kernels: norms and biases are left alone, as is usual
    for Transformers, since decaying them shrinks scales and offsets rather than limiting capacity.
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    decay = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


class _Run:
    """State of one training run; :func:`train` drives it epoch by epoch."""

    def __init__(self, config: TrainConfig, run_dir: Path, data: SplitDataset,
                 ctx: DistContext, resume: bool = False) -> None:
        self.config, self.run_dir, self.data, self.ctx = config, run_dir, data, ctx
        if config.train_subset is not None and config.train_subset > len(data.train):
            raise ConfigError(f"train_subset {config.train_subset:,} is larger than the training"
                              f" split ({len(data.train):,} images)")
        self.train_split = data.train if config.train_subset is None else \
            data.train.subset(config.train_subset)
        torch.manual_seed(config.seed)
        self.model = build_model(config, data, load_weights=not resume).to(ctx.device)
        # bf16 autocast and channels-last pay off on tensor-core GPUs (autocast on CPU only if
        # asked); convolutional nets that say so train channels-last everywhere.
        self.amp = ctx.device.type == "cuda" if config.amp is None else config.amp
        channels_last = self.model.trains_channels_last or (self.amp and ctx.device.type == "cuda")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.net = distributed.wrap(self.model, ctx)  # DDP when several processes
        self.regularizer: DepthRegularizer = create_regularizer(
            config.regularizer, beta=config.beta, warmup_epochs=config.beta_warmup_epochs,
            **config.regularizer_kwargs)
        self.steps_per_epoch = self.train_split.num_batches(config.batch_size, ctx.world_size)
        self.optimizer = build_optimizer(self.model, config)
        warmup = round(config.lr_warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_with_warmup(config.epochs * self.steps_per_epoch, warmup))
        self.history: list[dict[str, Any]] = []

    @property
    def checkpoint_path(self) -> Path:
        return checkpoint_path(self.run_dir)

    def restore(self) -> None:
        self.history = restore_training_state(self.checkpoint_path, self.config.model, self.model,
                                              self.optimizer, self.scheduler,
                                              self.config.to_dict())

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, float]:
        self.net.train()
        sums = {"loss": 0.0, "ce": 0.0, "reg": 0.0}
        batches = self.train_split.batches(
            self.config.batch_size, shuffle=True, augment=self.config.augment,
            seed=self.config.seed, epoch=epoch, rank=self.ctx.rank,
            world_size=self.ctx.world_size)
        bar = tqdm(batches, total=self.steps_per_epoch, disable=not progress or not self.ctx.is_main,
                   leave=False, desc=f"epoch {epoch + 1}/{self.config.epochs}")
        steps = 0
        for i, (images, labels) in enumerate(bar):
            images = images.to(self.ctx.device, non_blocking=True,
                               memory_format=self.memory_format)
            labels = labels.to(self.ctx.device, non_blocking=True)
            with torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.net(images)
                ce = multi_exit_cross_entropy(out.logits, labels, self.config.exit_weighting,
                                              self.config.label_smoothing)
                reg = self.regularizer(out, epoch=epoch + i / self.steps_per_epoch)
            loss = ce + reg
            if not distributed.all_true(bool(torch.isfinite(loss)), self.ctx):
                raise TrainingError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; lower --lr or"
                    f" --beta. Earlier checkpoints in {self.run_dir} are intact.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            for key, value in (("loss", loss), ("ce", ce), ("reg", reg)):
                sums[key] += float(value.detach())
            steps += 1
            if i % 20 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / (i + 1):.3f}")
        means = {f"train_{k}": v / max(1, steps) for k, v in sums.items()}
        return distributed.average(means, self.ctx)

    def end_epoch(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 evaluates on calibration and writes the checkpoint; every rank gets the record."""
        if self.ctx.is_main:
            record = self._evaluate_and_save(epoch, record)
        record = distributed.broadcast(record, self.ctx)
        if not self.ctx.is_main:
            self.history.append(record)
        return record

    def _evaluate_and_save(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        cal = forward_split(self.model, self.data.calibration, self.config.eval_batch_size)
        accuracy = cal.exit_accuracy()
        record = {"epoch": epoch + 1, **record,
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "beta": self.regularizer.weight(epoch + 1),
                  "cal_accuracy": float(accuracy[-1]),
                  "cal_exit_accuracy": [round(float(a), 5) for a in accuracy],
                  "relative_residual_norm": [round(float(r), 5)
                                             for r in cal.relative_residual_norm()]}
        self.history.append(record)
        save_checkpoint(self.checkpoint_path, {
            "arch": {"name": self.config.model, "kwargs": self.model.arch_kwargs},
            "config": self.config.to_dict(), "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": epoch + 1, "metric": record["cal_accuracy"], "history": self.history,
            "classes": list(self.data.classes)})
        write_text(self.run_dir / "metrics.jsonl",
                   "".join(json.dumps(r) + "\n" for r in self.history))
        return record


def _prepare_run_dir(config: TrainConfig, run_dir: Path, resume: bool) -> tuple[TrainConfig, bool]:
    """Check what the (claimed, locked) folder holds; return the config to run and whether to
    resume from its checkpoint.

    A run that never finished an epoch (config.json but no checkpoint: killed, or diverged in
    its first epoch) holds nothing to keep: a new command takes it over with its settings, and
    ``--resume`` starts it again from epoch 1 with the stored ones.
    """
    config_path = run_dir / "config.json"
    stored = TrainConfig.from_file(config_path) if config_path.is_file() else None
    started = checkpoint_path(run_dir).is_file()
    if resume:
        if stored is None:
            raise CheckpointError(f"nothing to resume in {run_dir}: no config.json. Start a new"
                                  " run without --resume.")
        if not started:
            log.warning("%s never finished an epoch (no checkpoint): starting it again from"
                        " epoch 1 with its stored config", run_dir)
        return stored, started
    if started:
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it, or "
                          "choose another --out (earlier runs are never overwritten)")
    if stored is not None and stored != config:
        log.warning("%s holds a run that never finished an epoch: replacing it with the new"
                    " settings", run_dir)
    return config, False


def start_fresh(run_dir: Path, config: dict[str, Any]) -> None:
    """Mark the folder as a run and write its config.json, dropping what an unfinished earlier
    attempt logged."""
    write_marker(run_dir, "run")
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    write_json(run_dir / "config.json", config)


def _resolve_config(config: TrainConfig, run_dir: Path, resume: bool,
                    ctx: DistContext) -> tuple[TrainConfig, bool]:
    """Rank 0 checks the folder; every rank gets the config to run and whether to resume."""
    outcome: tuple[dict[str, Any], bool] | OptDepthError
    if ctx.is_main:
        try:
            resolved, resume = _prepare_run_dir(config, run_dir, resume)
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
    return TrainConfig.from_dict(outcome[0]), outcome[1]


@contextmanager
def run_dir_lock(run_dir: Path, ctx: DistContext) -> Iterator[None]:
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


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool = True, data: SplitDataset | None = None,
          callbacks: Sequence[EpochCallback] = ()) -> TrainResult:
    """Train a multi-exit model and write its run directory.

    Under ``torchrun`` (several processes) the model trains with DistributedDataParallel:
    ``config.batch_size`` is the global batch, split evenly across the processes; only rank 0
    evaluates, logs and writes checkpoints, metrics and TensorBoard events; ``callbacks`` run
    on every rank with the same record. A run may be resumed with another number of processes.
    The device is this call's ``config.device`` (on resume too). The folder is locked for the
    whole run (see :mod:`optdepth.rundir`): a second writer gets a clear "busy" error.

    Args:
        config: the run's settings (ignored on resume: the stored config.json is used).
        run_dir: output folder: new, empty, or a run of ours; it must not hold a finished
            epoch unless ``resume``.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: show tqdm progress bars.
        data: preloaded data (else loaded as the config says: dataset, data_dir, ...).
        callbacks: called with each epoch's record after it is saved.

    Returns:
        TrainResult with the model (unwrapped, on its training device) after the last epoch.
    """
    _check_train_arguments(config, run_dir, data, callbacks)
    run_dir = Path(run_dir)
    ctx = distributed.setup(config.device)
    try:
        with run_dir_lock(run_dir, ctx):
            config, resume = _resolve_config(config, run_dir, resume, ctx)
            distributed.check_batch_size(config.batch_size, ctx)
            if config.threads is not None:
                torch.set_num_threads(config.threads)
            # Data and model before config.json: a new run that cannot start (missing data, bad
            # model arguments) leaves no folder behind that would refuse the corrected command.
            data = data if data is not None else load_run_dataset(config.to_dict())
            run = _Run(config, run_dir, data, ctx, resume)
            if resume:
                run.restore()
                if ctx.is_main:
                    write_marker(run_dir, "run")  # runs written before markers existed
                log.info("resuming %s after epoch %d", run_dir, len(run.history))
            elif ctx.is_main:
                start_fresh(run_dir, config.to_dict())
            _run_epochs(run, progress, callbacks)
    finally:
        distributed.teardown(ctx)
    return TrainResult(run.model, run.history, run_dir)


def _check_train_arguments(config: Any, run_dir: Any, data: Any, callbacks: Any) -> None:
    """Clear errors for API misuse, before anything is loaded or written."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig (TrainConfig(**settings) or"
                        f" TrainConfig.from_file(path)), got {type(config).__name__}")
    if not isinstance(run_dir, str | Path) or not str(run_dir):
        raise TypeError(f"run_dir must be a non-empty path, got {run_dir!r}")
    if data is not None and not all(hasattr(data, a) for a in ("train", "calibration", "classes")):
        raise TypeError(f"data must be a dataset with train, calibration and test splits and"
                        f" classes (optdepth.load_fashion_mnist()), got {type(data).__name__}")
    if not all(callable(c) for c in callbacks):
        raise TypeError("callbacks must be callables taking an epoch record")


def open_event_log(run_dir: Path, history: Sequence[dict[str, Any]],
                   add_scalars: Callable[[Any, dict[str, Any]], None]) -> Any:
    """A TensorBoard writer on ``run_dir/tb`` that holds exactly ``history`` so far.

    The events are rewritten from the run's own history at every start, so a resumed run keeps
    one events file whose steps are those of its checkpoint (none from epochs it lost).
    """
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when training

    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    writer = SummaryWriter(str(run_dir / "tb"))
    for record in history:
        add_scalars(writer, record)
    return writer


def _run_epochs(run: _Run, progress: bool, callbacks: Sequence[EpochCallback]) -> None:
    writer = open_event_log(run.run_dir, run.history, _add_scalars) if run.ctx.is_main else None
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
    for key in ("train_loss", "train_ce", "train_reg", "lr", "beta", "cal_accuracy", "seconds"):
        writer.add_scalar(key, record[key], step)
    for t, acc in enumerate(record["cal_exit_accuracy"]):
        writer.add_scalar(f"cal_exit_accuracy/exit_{t}", acc, step)
    for b, r in enumerate(record["relative_residual_norm"]):
        writer.add_scalar(f"relative_residual_norm/block_{b}", r, step)


def train_or_resume(config: TrainConfig, run_dir: str | Path, *, data: SplitDataset | None = None,
                    progress: bool = True) -> TrainResult:
    """Train into ``run_dir``, or continue (or just reload) the run there if it has ``config``.

    Raises:
        ConfigError: ``run_dir`` holds a run with other settings (it is left untouched).
    """
    resume = checkpoint_path(run_dir).is_file()
    if resume and TrainConfig.from_file(Path(run_dir) / "config.json") != config:
        raise ConfigError(f"{run_dir} holds a run with other settings; use another output folder"
                          " (earlier results are left untouched)")
    return train(config, run_dir, resume=resume, data=data, progress=progress)
