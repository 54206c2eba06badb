"""Multi-exit models: one contract (:class:`MultiExitModel`), a registry and the model families."""

from optdepth.models import resnet_cifar  # noqa: F401  (registers the CIFAR ResNets)
from optdepth.models.base import ExitOutputs, MultiExitModel, StepOutput
from optdepth.models.registry import create_model, list_models, register_model

__all__ = ["ExitOutputs", "MultiExitModel", "StepOutput", "create_model", "list_models",
           "register_model"]
