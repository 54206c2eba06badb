"""ImageNet-style data: ``D/train`` and ``D/val`` in torchvision's ImageFolder layout.

``D/train/<class>/*.JPEG`` and ``D/val/<class>/*.JPEG`` (the same class folders in both). The
calibration split (default 10% of train, at most 10,000 images) is held out of ``D/train``
with a fixed seed, independent of the training seed; ``D/val`` is the test split. Training
images get the standard ImageNet augmentation (RandomResizedCrop + horizontal flip), the
calibration and test images the standard evaluation transform (resize to 256/224 of the crop,
centre crop); both end with ToTensor and the ImageNet normalisation.

Images are decoded in DataLoader worker processes. An unreadable image stops the run with its
path, unless ``skip_bad_images`` is set: it is then left out of its batch, logged once and
counted in :attr:`ImageFolderSplit.skipped`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from optdepth.data.fashion_mnist import SPLIT_SEED
from optdepth.errors import DataError

log = logging.getLogger(__name__)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet RGB statistics
MAX_CALIBRATION = 10_000


def train_transform(image_size: int) -> Callable[[Any], Tensor]:
    """Standard ImageNet training augmentation at ``image_size`` (224 for ImageNet)."""
    return transforms.Compose([transforms.RandomResizedCrop(image_size),
                               transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def eval_transform(image_size: int) -> Callable[[Any], Tensor]:
    """Standard ImageNet evaluation transform: resize to 256/224 of the crop, centre crop."""
    return transforms.Compose([transforms.Resize(round(image_size * 256 / 224)),
                               transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


class _Images(Dataset):
    """(path, label) list -> (image (3, H, W) or None, label, error message or None)."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Tensor],
                 skip_bad: bool) -> None:
        self.samples, self.transform, self.skip_bad = samples, transform, skip_bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | None, int, str | None]:
        path, label = self.samples[i]
        try:
            image = self.transform(default_loader(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # what PIL raises for broken files, and for images too large to be real photos
            if not self.skip_bad:
                raise DataError(f"cannot read image {path}: {exc}. Replace or delete it, or pass"
                                " --skip-bad-images to leave unreadable images out.") from None
            return None, label, f"{path}: {exc}"
        return image, label, None


def _collate(items: list[tuple[Tensor | None, int, str | None]]
             ) -> tuple[Tensor | None, Tensor, list[str]]:
    good = [(x, y) for x, y, _ in items if x is not None]
    bad = [err for x, _, err in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None  # (B, 3, H, W)
    return images, torch.tensor([y for _, y in good], dtype=torch.int64), bad


def _worker_error(exc: DataError) -> DataError:
    """A DataError raised in a worker arrives wrapped with its traceback: keep the message."""
    text = str(exc)
    marker = "DataError: "
    return DataError(text[text.rfind(marker) + len(marker):].strip() if marker in text else text)


class ImageFolderSplit:
    """One split of an ImageFolder: a list of (path, class index) read in DataLoader workers.

    Args:
        samples: (path, class index) pairs.
        image_size: side of the square crop fed to the model.
        workers: DataLoader worker processes (0 reads in the main process).
        skip_bad_images: leave unreadable images out (logged, counted in ``skipped``).
    """

    def __init__(self, samples: list[tuple[str, int]], image_size: int, workers: int = 4,
                 skip_bad_images: bool = False) -> None:
        self.samples, self.image_size = samples, image_size
        self.workers, self.skip_bad_images = workers, skip_bad_images
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image after the transform."""
        return (3, self.image_size, self.image_size)

    @property
    def labels(self) -> Tensor:
        """(N,) int64 class indices."""
        return torch.tensor([y for _, y in self.samples], dtype=torch.int64)

    def subset(self, n: int) -> ImageFolderSplit:
        """The first ``n`` samples (train and calibration are shuffled once, with a fixed seed)."""
        return ImageFolderSplit(self.samples[:n], self.image_size, self.workers,
                                self.skip_bad_images)

    def num_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Steps per pass at global ``batch_size`` (the sampler pads to equal rank shares)."""
        return math.ceil(math.ceil(len(self) / world_size) / (batch_size // world_size))

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """(images (b, 3, S, S), labels (b,)) batches of this process.

        ``batch_size`` is global: each of ``world_size`` processes reads ``batch_size /
        world_size`` images per step, drawn by a :class:`DistributedSampler` reseeded by
        ``epoch`` (which pads the data to equal shares by repeating a few samples). With
        ``augment`` the training augmentation is used, else the evaluation transform; the
        augmentation's randomness is seeded by (seed, epoch, rank).
        """
        transform = (train_transform if augment else eval_transform)(self.image_size)
        data = _Images(self.samples, transform, self.skip_bad_images)
        sampler = None
        if shuffle or world_size > 1:
            sampler = DistributedSampler(data, num_replicas=world_size, rank=rank,
                                         shuffle=shuffle, seed=seed)
            sampler.set_epoch(epoch)
        loader = DataLoader(data, batch_size=batch_size // world_size, sampler=sampler,
                            num_workers=self.workers, collate_fn=_collate,
                            pin_memory=torch.cuda.is_available(),
                            generator=torch.Generator().manual_seed(
                                (seed * 100_003 + epoch) * 1_009 + rank))
        try:
            for images, labels, bad in loader:
                self._note_skipped(bad)
                if images is not None:
                    yield images, labels
        except DataError as exc:
            raise _worker_error(exc) from None

    def _note_skipped(self, errors: list[str]) -> None:
        for error in errors:
            path = error.split(": ", 1)[0]
            if path not in self.skipped:
                self.skipped.add(path)
                log.warning("skipped unreadable image %s (%d skipped so far)", error,
                            len(self.skipped))


@dataclass(frozen=True)
class ImageFolderData:
    """train / calibration (held out of D/train) / test (D/val) splits of an ImageFolder."""

    train: ImageFolderSplit
    calibration: ImageFolderSplit
    test: ImageFolderSplit
    source: str
    classes: tuple[str, ...]


def _scan(folder: Path) -> ImageFolder:
    if not folder.is_dir():
        raise DataError(f"{folder} does not exist: an ImageFolder dataset needs "
                        f"{folder.parent}/train and {folder.parent}/val, each with one "
                        "sub-folder of images per class")
    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        raise DataError(f"{folder} holds no usable images: {exc}") from None


def load_imagefolder(data_dir: str | Path, image_size: int = 224,
                     calibration_size: int | None = None, workers: int = 4,
                     skip_bad_images: bool = False) -> ImageFolderData:
    """Scan ``data_dir/train`` and ``data_dir/val`` and split a calibration set off train.

    Args:
        data_dir: folder holding ``train/`` and ``val/`` in the ImageFolder layout.
        image_size: side of the square crop (224 for ImageNet; small values for tests).
        calibration_size: training images held out for calibration; default 10% of train,
            at most 10,000.
        workers: DataLoader worker processes per split iteration.
        skip_bad_images: leave unreadable images out instead of stopping.

    Raises:
        DataError: a folder is missing or has no images, or val lacks a class of train (or
            has one train lacks), or ``calibration_size`` does not fit.
    """
    root = Path(data_dir)
    train, val = _scan(root / "train"), _scan(root / "val")
    if len(train.classes) < 2:
        raise DataError(f"{root}/train holds {len(train.classes)} class folder(s); a classifier"
                        " needs at least two")
    if train.classes != val.classes:
        missing = sorted(set(train.classes) - set(val.classes))
        extra = sorted(set(val.classes) - set(train.classes))
        raise DataError(f"{root}: train/ and val/ must hold the same class folders; val/ lacks "
                        f"{missing or 'none'}, and has {extra or 'none'} that train/ lacks")
    n = len(train.samples)
    size = min(MAX_CALIBRATION, max(1, n // 10)) if calibration_size is None else calibration_size
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < n:
        raise DataError(f"calibration_size must be an int in (0, {n}) for {root}/train "
                        f"({n} images), got {calibration_size!r}")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    samples = [train.samples[i] for i in order]
    def split(items: list[tuple[str, int]]) -> ImageFolderSplit:
        return ImageFolderSplit(items, image_size, workers, skip_bad_images)

    log.info("ImageFolder %s: %d classes, %d train, %d calibration, %d val images", root,
             len(train.classes), n - size, size, len(val.samples))
    return ImageFolderData(split(samples[size:]), split(samples[:size]), split(val.samples),
                           str(root), tuple(train.classes))
