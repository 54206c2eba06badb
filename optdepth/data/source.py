"""What training, evaluation and traces need from a dataset, and how a config names one.

A *split* yields ``(images (b, C, H, W), labels (b,))`` batches through ``batches(batch_size,
shuffle=, augment=, seed=, epoch=, rank=, world_size=)``; ``batch_size`` is global and each of
``world_size`` processes gets its share. A *dataset* holds ``train``, ``calibration`` and
``test`` splits plus ``classes`` and ``source``. Two implementations: the in-memory Fashion-MNIST
:class:`~optdepth.data.loader.Split` and the on-disk
:class:`~optdepth.data.imagefolder.ImageFolderSplit`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from optdepth.errors import ConfigError

DATASETS = ("fashion-mnist", "imagefolder")


class BatchSource(Protocol):
    """One split of a dataset (see the module docstring)."""

    def __len__(self) -> int: ...

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]: ...

    def num_batches(self, batch_size: int, world_size: int = 1) -> int: ...

    def subset(self, n: int) -> BatchSource: ...


class SplitDataset(Protocol):
    """train / calibration / test splits with their class names and where they came from."""

    train: BatchSource
    calibration: BatchSource
    test: BatchSource
    source: str
    classes: tuple[str, ...]


def load_dataset(name: str, data_dir: str | Path | None = None, *, image_size: int | None = None,
                 calibration_size: int | None = None, workers: int = 4,
                 skip_bad_images: bool = False) -> SplitDataset:
    """Load a dataset by name: ``"fashion-mnist"`` (in memory) or ``"imagefolder"`` (on disk).

    Args:
        name: one of :data:`DATASETS`.
        data_dir: the data's folder (required for imagefolder: it holds train/ and val/).
        image_size: crop side for imagefolder (default 224); Fashion-MNIST is always 28.
        calibration_size: images held out of train for calibration (dataset default if None).
        workers, skip_bad_images: imagefolder loading, see
            :func:`~optdepth.data.imagefolder.load_imagefolder`.
    """
    if name == "fashion-mnist":
        from optdepth.data.fashion_mnist import CALIBRATION_SIZE, load_fashion_mnist

        return load_fashion_mnist(data_dir, calibration_size or CALIBRATION_SIZE)
    if name == "imagefolder":
        if data_dir is None:
            raise ConfigError("--dataset imagefolder needs --data-dir D holding D/train and D/val")
        from optdepth.data.imagefolder import load_imagefolder

        return load_imagefolder(data_dir, image_size or 224, calibration_size, workers,
                                skip_bad_images)
    raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load_run_dataset(config: Mapping[str, Any]) -> SplitDataset:
    """The dataset a run was trained on, from its stored config (a ``TrainConfig`` dict)."""
    return load_dataset(config.get("dataset", "fashion-mnist"), config.get("data_dir"),
                        image_size=config.get("image_size"),
                        calibration_size=config.get("calibration_size"),
                        workers=config.get("workers", 4),
                        skip_bad_images=config.get("skip_bad_images", False))
