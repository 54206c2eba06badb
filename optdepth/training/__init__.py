"""Training: config and loop. Kept apart from the library modules it uses."""

from optdepth.checkpoints import load_model
from optdepth.training.config import TrainConfig
from optdepth.training.trainer import TrainResult, build_model, train, train_or_resume

__all__ = ["TrainConfig", "TrainResult", "build_model", "load_model", "train", "train_or_resume"]
