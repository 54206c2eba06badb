"""Model registry: ``create_model(name, **overrides)`` builds any registered multi-exit model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optdepth.errors import ConfigError
from optdepth.models.base import MultiExitModel
from optdepth.registry import Registry

#: Model name -> factory; add one with :func:`register_model`.
MODELS: Registry[Callable[..., MultiExitModel]] = Registry("model")
#: Architecture arguments the trainer takes from the data (not listed in a run's config).
DATA_ARGUMENTS = ("in_channels", "image_size", "num_classes")


def register_model(fn: Callable[..., MultiExitModel]) -> Callable[..., MultiExitModel]:
    """Decorator: register a factory under its function name."""
    return MODELS.register(fn)


def is_language_model(name: str) -> bool:
    """Whether a registered name is a causal LM (trained on text): ``lm*`` and ``hf-*`` names."""
    return isinstance(name, str) and (name.startswith("lm") or name.startswith("hf-"))


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return MODELS.names()


def create_model(name: str, **overrides: Any) -> MultiExitModel:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet20"``.
        **overrides: constructor arguments that replace the defaults (for the CIFAR ResNets:
            ``width``, ``in_channels``, ``num_classes``, ``image_size``, ``exits``).

    Returns:
        The model, with ``arch_name`` and ``arch_kwargs`` set so checkpoints can rebuild it.
    """
    try:
        model = MODELS.create(name, **overrides)
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as either
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ConfigError(f"model {name!r} with {overrides} does not fit in memory; choose"
                          " smaller architecture arguments") from exc
    model.arch_name = name
    model.arch_kwargs = dict(overrides)
    return model
