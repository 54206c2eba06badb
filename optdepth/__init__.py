"""optdepth: how deep does a network need to be, input by input?

The public surface is deliberately small. Torch-dependent names are imported lazily so that
``import optdepth.stopping`` (pure numpy/scipy) works on machines without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it: what a user needs, one way to do each thing. The rest
# lives in the subpackages named after their layer (models, losses, data, training, offline,
# online, stopping, experiments, reports).
_EXPORTS = {
    # models: build one, or subclass the contract for your own
    "create_model": "optdepth.models",
    "MultiExitModel": "optdepth.models",
    # the loss terms, for your own training loop
    "multi_exit_cross_entropy": "optdepth.losses",
    "create_regularizer": "optdepth.losses",
    # or ours: one trainer, one config per task
    "TrainConfig": "optdepth.training",
    "LMTrainConfig": "optdepth.training",
    "train": "optdepth.training",
    # a trained run: reload it, evaluate it (model, exit traces, summary)
    "load_model": "optdepth.checkpoints",
    "evaluate_run": "optdepth.offline",
    # exit policies on traces, then real early exit
    "evaluate_policies": "optdepth.offline",
    "fit_exit_policy": "optdepth.offline",
    "early_exit_predict": "optdepth.online",
    # bring your own model; decode (full depth, per-token early exit, self-speculative)
    "wrap": "optdepth.wrappers",
    "generate": "optdepth.online.generation",
    # evidence: training methods compared over paired seeds
    "compare": "optdepth.experiments.compare",
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
