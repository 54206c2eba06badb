"""Training configuration: a frozen dataclass, loadable from JSON/TOML and overridable by flags."""

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
from typing import Any

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
class TrainConfig:
    """Everything that determines a training run (the run directory keeps it as config.json).

    Defaults train a multi-exit ResNet-20 on Fashion-MNIST well on two CPU cores: SGD with
    Nesterov momentum, a linear warm-up then cosine decay of the learning rate (per step).
    ``optimizer="adamw"`` (for Transformers) uses ``momentum`` as AdamW's beta1 and exempts
    norms and biases from weight decay.
    """

    model: str = "resnet20"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    train_subset: int | None = None  # use only the first n training images (smoke tests)
    image_size: int | None = None  # imagefolder crop side (None: 224)
    calibration_size: int | None = None  # held out of train (None: the dataset's default)
    workers: int = 4  # imagefolder DataLoader workers per process
    skip_bad_images: bool = False  # imagefolder: leave unreadable images out, logged
    device: str | None = None  # "cuda" | "cpu" | "cuda:1" ...; None: cuda if available
    amp: bool | None = None  # bf16 autocast + channels-last; None: on for cuda, off on cpu
    epochs: int = 24
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.2
    lr_warmup_epochs: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    exit_weighting: str = "uniform"
    regularizer: str = "relative"
    beta: float = 0.0
    beta_warmup_epochs: float = 1.0
    regularizer_kwargs: dict[str, Any] = field(default_factory=dict)
    augment: bool = True
    seed: int = 0
    threads: int | None = None
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, Path):  # Python callers may pass a Path
            object.__setattr__(self, "data_dir", str(self.data_dir))
        check_field_types(self)
        self._check_names()
        self._check_numbers()

    def _check_names(self) -> None:
        if self.model not in list_models():
            raise ConfigError(f"unknown model {self.model!r}; available: {', '.join(list_models())}")
        if self.regularizer not in list_regularizers():
            raise ConfigError(f"unknown regularizer {self.regularizer!r}; available: "
                              f"{', '.join(list_regularizers())}")
        if self.exit_weighting not in EXIT_WEIGHTINGS:
            raise ConfigError(f"unknown exit_weighting {self.exit_weighting!r}; "
                              f"choose one of {', '.join(EXIT_WEIGHTINGS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        if self.dataset == "imagefolder" and self.data_dir is None:
            raise ConfigError("dataset imagefolder needs data_dir (--data-dir D, with D/train and"
                              " D/val in the ImageFolder layout)")
        if self.dataset != "imagefolder" and self.image_size is not None:
            raise ConfigError(f"image_size applies to the imagefolder dataset only ({self.dataset}"
                              " images have a fixed size)")
        if self.device is not None and not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_model_and_regularizer_kwargs(self)

    def _check_numbers(self) -> None:
        check_common_numbers(self)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")
        for name in ("train_subset", "image_size", "calibration_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if self.workers > MAX_WORKERS:
            raise ConfigError(f"workers must be at most {MAX_WORKERS}, got {self.workers!r}")
        if not _finite(self.lr) or not 0 < self.lr <= MAX_RATE:
            raise ConfigError(f"lr must be a finite number in (0, {MAX_RATE:g}], got {self.lr!r};"
                              " try 0.1-0.2")
        non_negative = {"beta": self.beta, "weight_decay": self.weight_decay,
                        "lr_warmup_epochs": self.lr_warmup_epochs,
                        "beta_warmup_epochs": self.beta_warmup_epochs}
        for name, value in non_negative.items():
            if not _finite(value) or not 0 <= value <= MAX_RATE:
                raise ConfigError(f"{name} must be a finite number in [0, {MAX_RATE:g}], got"
                                  f" {value!r}")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not _finite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and validated); unknown keys are an error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Read a .json or .toml file whose keys are TrainConfig fields."""
        return cls.from_dict(read_settings(path), source=path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
        """A config from ``data``; errors name ``source`` (the file it came from) if given."""
        try:
            return cls().replace(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}" if source is not None else str(exc)) from exc


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


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
