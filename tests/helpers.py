"""Synthetic Fashion-MNIST-shaped data for fast tests (real data only in the demo smoke test)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from optdepth.data.fashion_mnist import FILES, FashionMNIST
from optdepth.data.loader import Split


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


def train_on_noisy_data(model, data: FashionMNIST, optimizer, steps: int, batch: int = 64,
                        eval_batch: int = 100):
    """Train ``model`` for ``steps`` on synthetic images under heavy noise, then trace it.

    Brief noisy training leaves early exits weak and late ones good, so that exit policies
    spread samples over many exits. Returns (calibration, test) traces; the model ends in eval.
    """
    from optdepth.losses import multi_exit_cross_entropy
    from optdepth.offline import collect_traces

    g = torch.Generator().manual_seed(0)
    n = len(data.train.labels)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        x = data.train.images[idx] + 0.8 * torch.randn(batch, *data.train.images.shape[1:],
                                                       generator=g)
        loss = multi_exit_cross_entropy(model(x).logits, data.train.labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return (collect_traces(model, data.calibration, "calibration", batch_size=eval_batch),
            collect_traces(model, data.test, "test", batch_size=eval_batch))


def policy_grid(name: str, cal, patience: tuple[int, ...] = (1, 2, 3)) -> list[float]:
    """A few parameters of policy ``name`` that stop samples at different exits."""
    if name == "max_prob":
        return list(np.quantile(cal.features[:, :-1, 0], [0.3, 0.6, 0.9]))
    if name == "entropy":
        return list(-np.quantile(cal.features[:, :-1, 2], [0.1, 0.4, 0.7]))
    return list(patience) if name == "patience" else [0.0, 0.05, 0.3]


def assert_online_equals_offline(model, policy, data: FashionMNIST, test, label: str,
                                 batch_sizes=((64, True), (7, False)), features: str = "close"):
    """Real early exit gives exactly the offline exits and predictions; returns the exits used.

    Checks every (batch size, refill) pair, the online features against the trace file's
    (``features``: "close" to float32 rounding, "exact" bitwise, "skip" not at all), and a
    lone-sample run on the first 20 samples.
    """
    from optdepth.online import early_exit_predict, offline_exits

    offline = offline_exits(policy, test)
    for batch_size, refill in batch_sizes:
        online = early_exit_predict(model, policy, data.test, batch_size, refill=refill,
                                    record_features=features != "skip")
        where = f"{label} batch {batch_size} refill {refill}"
        np.testing.assert_array_equal(online.exit_index, offline.exit_index, err_msg=where)
        np.testing.assert_array_equal(online.predictions, offline.predictions, err_msg=where)
        if features != "skip":
            reached = np.arange(model.num_exits)[None, :] <= online.exit_index[:, None]
            assert np.isnan(online.features[~reached]).all()
            tol = {"close": (1e-6, 1e-7), "exact": (0.0, 0.0)}[features]
            np.testing.assert_allclose(online.features[reached], test.features[reached],
                                       rtol=tol[0], atol=tol[1], err_msg=where)
    alone = early_exit_predict(model, policy, data.test.subset(20), batch_size=1)
    np.testing.assert_array_equal(alone.exit_index, offline.exit_index[:20], err_msg=label)
    np.testing.assert_array_equal(alone.predictions, offline.predictions[:20], err_msg=label)
    return set(offline.exit_index.tolist())


def require_extra(module: str):
    """Import an optional extra's module, or skip the test where it is not installed.

    CI sets OPTDEPTH_REQUIRE_EXTRAS=1 (``.ci/run``): there a missing extra fails the test
    instead, so the tests of :mod:`optdepth.wrappers` never skip in CI.
    """
    import importlib
    import os

    import pytest

    if os.environ.get("OPTDEPTH_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
