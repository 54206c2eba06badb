"""Training: configs (one per task), task adapters and the one training loop."""

from optdepth.training.config import LMTrainConfig, RunConfig, TrainConfig
from optdepth.training.tasks import build_model
from optdepth.training.trainer import TrainResult, train, train_or_resume

__all__ = ["LMTrainConfig", "RunConfig", "TrainConfig", "TrainResult", "build_model", "train",
           "train_or_resume"]
