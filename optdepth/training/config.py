"""Training configuration: frozen dataclasses (one base, one per task), loadable from JSON/TOML
and overridable by flags."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from optdepth.data.source import DATASETS
from optdepth.errors import ConfigError
from optdepth.losses.depth import create_regularizer, list_regularizers
from optdepth.losses.multi_exit import EXIT_WEIGHTINGS
from optdepth.models.registry import DATA_ARGUMENTS, list_models
from optdepth.training.distributed import DEVICE_PATTERN

#: Optimizers the trainer builds: SGD with Nesterov momentum, or AdamW.
OPTIMIZERS = ("sgd", "adamw")
MAX_EPOCHS = 100_000
MAX_THREADS = MAX_WORKERS = 1024
MAX_RATE = 1e6  # learning rates, weight decays and L_depth weights beyond this are typos
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds agree on 0 .. 2^32 - 1


def check_field_types(config: Any) -> None:
    """Raise ConfigError unless every field of the dataclass ``config`` has its annotated type.

    Strict, as TOML, JSON and Python callers all need: a bool is not an int (``True`` is no
    thread count), a string is not a bool (``augment = "no"``), an int is accepted for a float,
    a list for a tuple of items.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if not _has_type(value, hint):
            raise ConfigError(f"{f.name} must be {_describe(hint)}, got {value!r}"
                              f" ({type(value).__name__})")


def _has_type(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, arg) for arg in args)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_has_type(v, args[0]) for v in value)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(arg) for arg in args)
    if hint is type(None):
        return "null"
    if origin is dict:
        return "a table of settings"
    if origin is tuple:
        return f"a list of {_describe(args[0])}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


@dataclass(frozen=True)
class RunConfig:
    """What every training task's config has (the run directory keeps it as config.json).

    Subclasses are one per task (:class:`TrainConfig` for images with class labels,
    :class:`LMTrainConfig` for token windows with next-token targets); they change defaults,
    add their task's fields and say how many steps the learning rate warms up for. The one
    trainer (:func:`optdepth.training.train`) takes any of them.

    ``optimizer`` is ``"sgd"`` (Nesterov momentum ``momentum``, weight decay on every
    parameter) or ``"adamw"`` (betas ``(momentum, adam_beta2)``, no decay on norms and biases).
    ``grad_clip`` caps the global gradient norm (None: no clipping). ``device`` None is cuda if
    available; ``amp`` None turns bf16 autocast on for cuda and off on cpu.
    """

    model: str = "resnet20"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str | None = None  # "cuda" | "cpu" | "cuda:1" ...; None: cuda if available
    amp: bool | None = None  # bf16 autocast; None: on for cuda, off on cpu
    epochs: int = 24
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 5e-4
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    exit_weighting: str = "uniform"
    regularizer: str = "relative"
    beta: float = 0.0
    beta_warmup_epochs: float = 1.0
    regularizer_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        check_field_types(self)
        self._check_names()
        self._check_numbers()

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of linear learning-rate warm-up (the task's config says how many)."""
        raise NotImplementedError

    def _check_names(self) -> None:
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; available: {', '.join(list_models())}")
        for name, known in (("regularizer", list_regularizers()),
                            ("exit_weighting", EXIT_WEIGHTINGS), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in known:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of"
                                  f" {', '.join(known)}")
        if self.device is not None and not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_model_and_regularizer_kwargs(self)

    def _check_numbers(self) -> None:
        check_common_numbers(self)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _finite(self.lr) or not 0 < self.lr <= MAX_RATE:
            raise ConfigError(f"lr must be a finite number in (0, {MAX_RATE:g}], got {self.lr!r}")
        for name in ("beta", "weight_decay", "beta_warmup_epochs"):
            check_rate(name, getattr(self, name))
        if self.grad_clip is not None and (not _finite(self.grad_clip) or self.grad_clip <= 0):
            raise ConfigError(f"grad_clip must be a positive number or null, got {self.grad_clip!r}")
        for name in ("momentum", "adam_beta2", "label_smoothing"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (and validated); unknown keys are an error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Read a .json or .toml file whose keys are fields of this config."""
        return cls.from_dict(read_settings(path), source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> Self:
        """A config from ``data`` (missing keys take their defaults); errors name ``source``
        (the file it came from) if given."""
        try:
            return cls().replace(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source is not None else str(exc)) from exc


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """A run on images with class labels.

    Defaults train a multi-exit ResNet-20 on Fashion-MNIST well on two CPU cores: SGD with
    Nesterov momentum, a linear warm-up then cosine decay of the learning rate (per step).
    ``optimizer="adamw"`` (for Transformers) uses ``momentum`` as AdamW's beta1.
    """

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_subset: int | None = None  # use only the first n training images (smoke tests)
    image_size: int | None = None  # imagefolder crop side (None: 224)
    calibration_size: int | None = None  # held out of train (None: the dataset's default)
    workers: int = 4  # imagefolder DataLoader workers per process
    skip_bad_images: bool = False  # imagefolder: leave unreadable images out, logged
    lr_warmup_epochs: float = 0.5
    augment: bool = True
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):  # Python callers may pass a Path
            object.__setattr__(self, "data_dir", str(self.data_dir))
        super().__post_init__()

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return round(self.lr_warmup_epochs * steps_per_epoch)

    def _check_names(self) -> None:
        super()._check_names()
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        if self.dataset == "imagefolder" and self.data_dir is None:
            raise ConfigError("dataset imagefolder needs data_dir (--data-dir D, with D/train and"
                              " D/val in the ImageFolder layout)")
        if self.dataset != "imagefolder" and self.image_size is not None:
            raise ConfigError(f"image_size applies to the imagefolder dataset only ({self.dataset}"
                              " images have a fixed size)")

    def _check_numbers(self) -> None:
        super()._check_numbers()
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive integer, got"
                              f" {self.eval_batch_size!r}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"workers must be an integer in [0, {MAX_WORKERS}], got"
                              f" {self.workers!r}")
        for name in ("train_subset", "image_size", "calibration_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        check_rate("lr_warmup_epochs", self.lr_warmup_epochs)


@dataclass(frozen=True)
class LMTrainConfig(RunConfig):
    """A causal LM run on token windows with next-token targets.

    An "epoch" is ``steps_per_epoch`` optimiser steps, each on ``batch_size`` windows of the
    model's context drawn at random offsets of the train split. ``text`` None trains on the
    Python standard library's sources; else a list of files or folders. ``eval_tokens`` caps
    the calibration tokens evaluated after each epoch.
    """

    model: str = "lm"
    epochs: int = 4
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 3e-3
    adam_beta2: float = 0.95
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    text: tuple[str, ...] | None = None
    steps_per_epoch: int = 150
    lr_warmup_steps: int = 50
    eval_tokens: int = 8192

    def __post_init__(self) -> None:
        if isinstance(self.text, list | tuple):  # paths may come as Path objects from Python
            object.__setattr__(self, "text", tuple(str(t) if isinstance(t, Path) else t
                                                   for t in self.text))
        super().__post_init__()

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return max(1, self.lr_warmup_steps)

    def _check_numbers(self) -> None:
        super()._check_numbers()
        for name in ("steps_per_epoch", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.lr_warmup_steps <= MAX_RATE:
            raise ConfigError(f"lr_warmup_steps must be an integer in [0, {MAX_RATE:g}], got"
                              f" {self.lr_warmup_steps!r}")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["text"] = None if self.text is None else list(self.text)
        return out


def load_run_config(path: str | Path) -> RunConfig:
    """A run's config.json as the config of its task: an LM run's (it has ``steps_per_epoch``,
    which only :class:`LMTrainConfig` writes) or an image run's.

    Raises:
        ConfigError: unreadable file, or settings that are not a valid config.
    """
    settings = read_settings(path)
    config_type = LMTrainConfig if "steps_per_epoch" in settings else TrainConfig
    return config_type.from_dict(settings, source=path)


def read_settings(path: str | Path) -> dict[str, Any]:
    """The table of settings in a .toml or .json file.

    Raises:
        ConfigError: unreadable file, bad syntax, or not a table of settings.
    """
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and TOMLDecodeError included
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object of settings")
    return data


def check_model_and_regularizer_kwargs(config: Any) -> None:
    """``model_kwargs`` leave the data's arguments to the data; ``regularizer_kwargs`` build."""
    from_data = sorted(set(config.model_kwargs) & set(DATA_ARGUMENTS))
    if from_data:
        raise ConfigError(f"model_kwargs must not set {', '.join(from_data)}: the trainer takes"
                          " them from the data")
    reserved = sorted(set(config.regularizer_kwargs) & {"beta", "warmup_epochs"})
    if reserved:
        raise ConfigError(f"regularizer_kwargs must not set {', '.join(reserved)}: use the"
                          " config's beta and beta_warmup_epochs")
    create_regularizer(config.regularizer, beta=config.beta,
                       warmup_epochs=config.beta_warmup_epochs, **config.regularizer_kwargs)


def check_common_numbers(config: Any) -> None:
    """Ranges of the fields every training config has: epochs, seed, threads."""
    if not 1 <= config.epochs <= MAX_EPOCHS:
        raise ConfigError(f"epochs must be a positive integer <= {MAX_EPOCHS:,}, got {config.epochs!r}")
    if not 0 <= config.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2^32 - 1], got {config.seed!r}")
    if config.threads is not None and not 1 <= config.threads <= MAX_THREADS:
        raise ConfigError(f"threads must be an integer in [1, {MAX_THREADS}] or null, got"
                          f" {config.threads!r}")


def check_rate(name: str, value: Any) -> None:
    """A weight, decay or warm-up length: finite and in [0, MAX_RATE]."""
    if not _finite(value) or not 0 <= value <= MAX_RATE:
        raise ConfigError(f"{name} must be a finite number in [0, {MAX_RATE:g}], got {value!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
