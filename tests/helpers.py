"""Synthetic Fashion-MNIST-shaped data for fast tests (real data only in the demo smoke test)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from optdepth.data.fashion_mnist import FILES, FashionMNIST, Split


def synthetic_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 images whose class k shows a bright bar at row 2k + 4, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    rows = 2 * labels.astype(int) + 4
    images[np.arange(n), rows, 4:24] = 230
    return images, labels


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzip-compressed IDX file (magic 0x00000803 / 0x00000801)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_folder(folder: Path, n_train: int = 5600, n_test: int = 400) -> Path:
    """A folder holding the four IDX files with synthetic content."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_arrays(n, seed)
        write_idx(folder / FILES[f"{split}_images"], images)
        write_idx(folder / FILES[f"{split}_labels"], labels)
    return folder


def tiny_data(n_train: int = 256, n_cal: int = 128, n_test: int = 128) -> FashionMNIST:
    """In-memory synthetic splits, normalised like the real loader."""

    def split(n: int, seed: int) -> Split:
        images, labels = synthetic_arrays(n, seed)
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return Split((x - 0.2860) / 0.3530, torch.from_numpy(labels.astype(np.int64)))

    return FashionMNIST(split(n_train, 1), split(n_cal, 2), split(n_test, 3), "synthetic")


def write_imagefolder(root: Path, classes: tuple[str, ...] = ("ant", "bee", "cat"),
                      n_train: int = 12, n_val: int = 4, size: int = 36) -> Path:
    """root/train and root/val with ``n_*`` RGB PNGs per class; class k's images are tinted
    towards colour channel k (learnable at a glance), plus noise. Returns ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 90, (size, size, 3))
                pixels[..., k % 3] += 150
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root
