"""optdepth: how deep does a network need to be, input by input?

The public surface is deliberately small. Torch-dependent names are imported lazily so that
``import optdepth.stopping`` (pure numpy/scipy) works on machines without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ExitOutputs": "optdepth.models",
    "MultiExitModel": "optdepth.models",
    "create_model": "optdepth.models",
    "list_models": "optdepth.models",
    "register_model": "optdepth.models",
    "multi_exit_cross_entropy": "optdepth.losses",
    "create_regularizer": "optdepth.losses",
    "list_regularizers": "optdepth.losses",
    "DepthRegularizer": "optdepth.losses",
    "TrainConfig": "optdepth.training",
    "train": "optdepth.training",
    "evaluate_run": "optdepth.offline",
    "load_model": "optdepth.checkpoints",
    "collect_traces": "optdepth.offline",
    "early_exit_predict": "optdepth.online",
    "evaluate_policies": "optdepth.offline",
    "fit_exit_policy": "optdepth.offline",
    "Traces": "optdepth.traces",
    "load_traces": "optdepth.traces",
    "load_fashion_mnist": "optdepth.data",
    "OptDepthError": "optdepth.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optdepth' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
