"""Model registry: ``create_model(name, **overrides)`` builds any registered multi-exit model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from optdepth.errors import ConfigError
from optdepth.models.base import MultiExitModel

_MODELS: dict[str, Callable[..., MultiExitModel]] = {}
#: Architecture arguments the trainer takes from the data (not listed in a run's config).
DATA_ARGUMENTS = ("in_channels", "image_size", "num_classes")


def register_model(fn: Callable[..., MultiExitModel]) -> Callable[..., MultiExitModel]:
    """Decorator: register a factory under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **overrides: Any) -> MultiExitModel:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet20"``.
        **overrides: constructor arguments that replace the defaults (for the CIFAR ResNets:
            ``width``, ``in_channels``, ``num_classes``, ``image_size``, ``exits``).

    Returns:
        The model, with ``arch_name`` and ``arch_kwargs`` set so checkpoints can rebuild it.
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    try:
        model = _MODELS[name](**overrides)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as either
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc):
            raise
        raise ConfigError(f"model {name!r} with {overrides} does not fit in memory; choose"
                          " smaller architecture arguments") from exc
    model.arch_name = name
    model.arch_kwargs = dict(overrides)
    return model
