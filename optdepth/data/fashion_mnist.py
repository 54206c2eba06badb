"""Fashion-MNIST from the four standard IDX .gz files, split into train / calibration / test.

Lookup order for the files: an explicit ``data_dir``; ``/usr/share/datasets/fashion-mnist``
(Debian package ``dataset-fashion-mnist``); torchvision's standard download into
``$OPTDEPTH_CACHE`` (default ``~/.cache/optdepth``), the only place outside an output folder
that optdepth itself writes to. The calibration split (5,000 images) is held out of the 60,000 training
images with a fixed seed, independent of the training seed, so every run sees the same split.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optdepth.data.loader import Split
from optdepth.errors import DataError

log = logging.getLogger(__name__)

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.environ.get("OPTDEPTH_CACHE", Path.home() / ".cache" / "optdepth"))
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = 0.2860, 0.3530  # training-set pixel statistics (after scaling to [0, 1])
CALIBRATION_SIZE = 5_000
SPLIT_SEED = 20250620  # fixed: the calibration split never depends on the training seed


@dataclass(frozen=True)
class FashionMNIST:
    """train (55,000), calibration (5,000) and test (10,000) splits plus where they came from."""

    train: Split
    calibration: Split
    test: Split
    source: str
    classes: tuple[str, ...] = CLASSES


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (ubyte data) into a uint8 array of its stated shape."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {exc}. The file is missing or corrupt; "
                        "re-install or re-download the Fashion-MNIST files.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "it is corrupt or not a Fashion-MNIST file.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path} is truncated or corrupt: header says shape {shape}, "
                        f"but it holds {len(raw) - header} data bytes.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}")
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
            raise DataError(f"{folder}: {split} files hold images {images.shape} and labels"
                            f" {labels.shape}; expected (N, 28, 28) images and N labels")
        if len(labels) == 0:
            raise DataError(f"{folder}: the {split} files hold no images")
        if labels.max() > 9:
            raise DataError(f"{folder}: {split} labels go up to {labels.max()}, expected 0..9")
    return arrays


def _download() -> Path:
    """Fetch the files with torchvision into the cache; return the folder holding the .gz files."""
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    TVFashionMNIST(str(CACHE_DIR), train=True, download=True)
    TVFashionMNIST(str(CACHE_DIR), train=False, download=True)
    return CACHE_DIR / "FashionMNIST" / "raw"


def locate_and_read(data_dir: str | Path | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Find the IDX files (explicit dir, Debian package, torchvision download) and read them."""
    problems = []
    if data_dir is not None:
        # An explicit directory is the user's choice: its problems are reported, not skipped.
        return _read_folder(Path(data_dir)), str(data_dir)
    problems.append("--data-dir: not given")
    if SYSTEM_DIR.is_dir():
        return _read_folder(SYSTEM_DIR), str(SYSTEM_DIR)
    problems.append(f"{SYSTEM_DIR}: not present (apt-get install dataset-fashion-mnist)")
    try:
        folder = _download()
        return _read_folder(folder), f"torchvision download ({folder})"
    except (OSError, RuntimeError, DataError) as exc:
        problems.append(f"torchvision download into {CACHE_DIR}: failed ({exc})")
    raise DataError("Fashion-MNIST not found. Tried, in order:\n  " + "\n  ".join(problems)
                    + "\nPass --data-dir DIR holding the four IDX .gz files, install the Debian"
                    " package dataset-fashion-mnist, or allow the download.")


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
    return Split((x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64)))


def load_fashion_mnist(data_dir: str | Path | None = None,
                       calibration_size: int = CALIBRATION_SIZE) -> FashionMNIST:
    """Load Fashion-MNIST into memory as train (55k) / calibration (5k) / test (10k) splits.

    Args:
        data_dir: folder holding the four standard IDX .gz files; if None, the Debian package's
            folder, then torchvision's download, are tried.
        calibration_size: training images held out for calibration (5,000 by convention).

    Raises:
        DataError: no source worked, or a file is corrupt or of the wrong shape.
    """
    arrays, source = locate_and_read(data_dir)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(arrays["train_labels"]))
    if not 0 < calibration_size < len(order):
        raise DataError(f"calibration_size must be in (0, {len(order)}), got {calibration_size}")
    cal, train = order[:calibration_size], order[calibration_size:]
    images, labels = arrays["train_images"], arrays["train_labels"]
    log.info("Fashion-MNIST loaded from %s", source)
    return FashionMNIST(
        train=_to_split(images[train], labels[train]),
        calibration=_to_split(images[cal], labels[cal]),
        test=_to_split(arrays["test_images"], arrays["test_labels"]),
        source=source,
    )
