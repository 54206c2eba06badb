"""Task adapters: what the one training loop needs to know about a kind of data.

The loop (:mod:`optdepth.training.trainer`) owns everything tasks share: the run folder, the
optimiser and schedule, DDP, the loss ``multi_exit_cross_entropy + β·L_depth``, checkpoints,
metrics and TensorBoard. A task adapter supplies the rest:

- :class:`ImageClassification` (:class:`~optdepth.training.config.TrainConfig`): images with
  class labels from a :class:`~optdepth.data.source.SplitDataset`; an epoch is one pass over
  the (sharded) training split.
- :class:`NextTokenPrediction` (:class:`~optdepth.training.config.LMTrainConfig`): windows of
  a :class:`~optdepth.data.text.TextCorpus` with next-token targets; an epoch is
  ``steps_per_epoch`` batches of windows at random offsets.

Each yields ``(inputs, targets)`` batches whose ``targets`` are flat class indices, one per
prediction (images: ``(B,)``; tokens: ``(B·S,)`` for windows ``(B, S)``), so the loss is one
expression for both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from optdepth.data.source import SplitDataset, load_run_dataset
from optdepth.data.text import TextCorpus, load_text_corpus, random_windows
from optdepth.errors import ConfigError
from optdepth.models.base import MultiExitModel
from optdepth.models.decoder import DecoderLM
from optdepth.models.registry import DATA_ARGUMENTS, create_model
from optdepth.offline.collect import collect_lm_traces, summarize_lm
from optdepth.offline.forward import forward_split
from optdepth.training.config import LMTrainConfig, RunConfig, TrainConfig
from optdepth.training.distributed import DistContext


class Task(Protocol):
    """What the training loop asks of a task (see the module docstring)."""

    steps_per_epoch: int  # optimiser steps per epoch on each process

    def build_model(self, load_weights: bool) -> MultiExitModel:
        """The config's model for this data (``load_weights=False``: no pretrained file)."""

    def memory_format(self, model: MultiExitModel, amp: bool) -> torch.memory_format:
        """The layout the model trains in and its inputs are moved to."""

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's ``(inputs, flat targets)`` batches of epoch ``epoch`` (0-based)."""

    def evaluate(self, model: MultiExitModel) -> dict[str, Any]:
        """Calibration metrics for the epoch record: ``cal_accuracy`` (last exit),
        ``cal_exit_accuracy`` and ``relative_residual_norm`` (lists), and the task's own."""

    def checkpoint_fields(self) -> dict[str, Any]:
        """Extra checkpoint fields the task needs when the run is reloaded."""


class ImageClassification:
    """Images with class labels: one epoch is one pass over the training split."""

    def __init__(self, config: TrainConfig, data: SplitDataset, ctx: DistContext) -> None:
        if config.train_subset is not None and config.train_subset > len(data.train):
            raise ConfigError(f"train_subset {config.train_subset:,} is larger than the training"
                              f" split ({len(data.train):,} images)")
        self.config, self.data, self.ctx = config, data, ctx
        self.train_split = data.train if config.train_subset is None else \
            data.train.subset(config.train_subset)
        self.steps_per_epoch = self.train_split.num_batches(config.batch_size, ctx.world_size)

    @staticmethod
    def load_data(config: TrainConfig) -> SplitDataset:
        return load_run_dataset(config.to_dict())

    @staticmethod
    def check_data(data: Any) -> None:
        if not all(hasattr(data, a) for a in ("train", "calibration", "classes")):
            raise TypeError(f"data must be a dataset with train, calibration and test splits"
                            f" and classes (optdepth.data.load_fashion_mnist()), got"
                            f" {type(data).__name__}")

    def build_model(self, load_weights: bool) -> MultiExitModel:
        return build_model(self.config, self.data, load_weights=load_weights)

    def memory_format(self, model: MultiExitModel, amp: bool) -> torch.memory_format:
        # channels-last pays off on tensor-core GPUs under autocast; convolutional nets that
        # say so train channels-last everywhere.
        channels_last = model.trains_channels_last or (amp and self.ctx.device.type == "cuda")
        return torch.channels_last if channels_last else torch.contiguous_format

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.train_split.batches(
            self.config.batch_size, shuffle=True, augment=self.config.augment,
            seed=self.config.seed, epoch=epoch, rank=self.ctx.rank,
            world_size=self.ctx.world_size))

    def evaluate(self, model: MultiExitModel) -> dict[str, Any]:
        cal = forward_split(model, self.data.calibration, self.config.eval_batch_size)
        accuracy = cal.exit_accuracy()
        return {"cal_accuracy": float(accuracy[-1]),
                "cal_exit_accuracy": [round(float(a), 5) for a in accuracy],
                "relative_residual_norm": [round(float(r), 5)
                                           for r in cal.relative_residual_norm()]}

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"classes": list(self.data.classes)}


class NextTokenPrediction:
    """Byte windows with next-token targets: an epoch is ``steps_per_epoch`` random batches.

    Each process draws ``batch_size / world_size`` windows per step from its own generator,
    seeded by the run's seed, the epoch and the rank, so that an epoch's batches are the same
    whenever it is (re)run.
    """

    def __init__(self, config: LMTrainConfig, corpus: TextCorpus, ctx: DistContext) -> None:
        self.config, self.corpus, self.ctx = config, corpus, ctx
        self.steps_per_epoch = config.steps_per_epoch
        self.context = 0  # set by build_model

    @staticmethod
    def load_data(config: LMTrainConfig) -> TextCorpus:
        return load_text_corpus(config.text)

    @staticmethod
    def check_data(data: Any) -> None:
        if not isinstance(data, TextCorpus):
            raise TypeError(f"data must be a TextCorpus (optdepth.data.text.load_text_corpus()),"
                            f" got {type(data).__name__}")

    def build_model(self, load_weights: bool) -> MultiExitModel:
        kwargs = dict(self.config.model_kwargs)
        if not load_weights:  # resuming: the checkpoint holds the weights
            kwargs.pop("weights_path", None)
        model = create_model(self.config.model, **kwargs)
        if not isinstance(model, DecoderLM):
            raise ConfigError(f"model {self.config.model!r} is not a causal language model;"
                              " use 'lm' or 'hf-gpt2' (or train image models with TrainConfig)")
        self.context = model.context
        return model

    def memory_format(self, model: MultiExitModel, amp: bool) -> torch.memory_format:
        return torch.contiguous_format  # token ids are 2-D: there are no channels

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        # 1_000_003 > the most epochs a config allows, so (epoch, rank) pairs never share a seed
        seed = self.config.seed * 100_003 + epoch + self.ctx.rank * 1_000_003
        generator = torch.Generator().manual_seed(seed)
        per_rank = self.config.batch_size // self.ctx.world_size
        for _ in range(self.steps_per_epoch):
            inputs, targets = random_windows(self.corpus.train, per_rank, self.context, generator)
            yield inputs, targets.reshape(-1)

    def evaluate(self, model: MultiExitModel) -> dict[str, Any]:
        cal = collect_lm_traces(model, self.corpus.calibration, "calibration",
                                self.config.eval_tokens)
        summary = summarize_lm(cal, model)
        return {"cal_accuracy": summary["exit_accuracy"][-1],
                "cal_exit_accuracy": [round(a, 5) for a in summary["exit_accuracy"]],
                "cal_perplexity": [round(p, 4) for p in summary["perplexity"]],
                "relative_residual_norm": [round(r, 5) for r in summary["relative_residual_norm"]]}

    def checkpoint_fields(self) -> dict[str, Any]:
        return {}


#: The task adapter of each config type.
TASKS: dict[type[RunConfig], Any] = {TrainConfig: ImageClassification,
                                     LMTrainConfig: NextTokenPrediction}


def task_type(config: RunConfig) -> Any:
    """The adapter class of ``config``'s task; TypeError for a config of no known task."""
    for config_type, task in TASKS.items():
        if isinstance(config, config_type):
            return task
    raise TypeError(f"config must be a TrainConfig (images) or an LMTrainConfig (causal LM),"
                    f" got {type(config).__name__}")


def build_model(config: TrainConfig, data: SplitDataset, *,
                load_weights: bool = True) -> MultiExitModel:
    """The config's image model, with input channels, image size and classes from the data.

    ``load_weights=False`` drops a ``weights_path`` model argument (on resume the checkpoint
    holds the weights, and the pretrained file need not exist any more).
    """
    channels, size, _ = data.train.image_shape
    kwargs = {**dict(zip(DATA_ARGUMENTS, (channels, size, len(data.classes)), strict=True)),
              **config.model_kwargs}
    if not load_weights:
        kwargs.pop("weights_path", None)
    return create_model(config.model, **kwargs)
