"""Multi-exit models: one contract (:class:`MultiExitModel`), a registry and the model families."""

# Importing a family registers its factories with create_model.
from optdepth.models import (  # noqa: F401
    causal_lm,
    hf_gpt2,
    neural_ode,
    resnet_cifar,
    resnet_imagenet,
    vit,
)
from optdepth.models.base import ExitOutputs, MultiExitModel, StepOutput
from optdepth.models.registry import create_model, list_models, register_model

__all__ = ["ExitOutputs", "MultiExitModel", "StepOutput", "create_model", "list_models",
           "register_model"]
