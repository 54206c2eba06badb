"""Fashion-MNIST loading: IDX parsing, lookup order, splits, augmentation, clear errors."""

import gzip

import numpy as np
import pytest
import torch
from helpers import synthetic_arrays, write_fashion_folder, write_idx

from optdepth.data import fashion_mnist as fm
from optdepth.data import iterate_batches, load_fashion_mnist, random_crop_flip, read_idx
from optdepth.errors import DataError


def test_idx_roundtrip(tmp_path):
    images, labels = synthetic_arrays(7)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.gz"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz"), labels)


def test_splits_are_fixed_and_disjoint(fashion_folder):
    a = load_fashion_mnist(fashion_folder, calibration_size=500)
    b = load_fashion_mnist(fashion_folder, calibration_size=500)
    assert (len(a.train), len(a.calibration), len(a.test)) == (5100, 500, 400)
    torch.testing.assert_close(a.calibration.images, b.calibration.images)
    raw, _ = synthetic_arrays(5600, seed=1)
    # calibration + train together are a permutation of the training file
    both = torch.cat([a.train.images, a.calibration.images]).flatten(1)
    assert both.shape[0] == 5600
    assert torch.unique(both, dim=0).shape[0] == len(np.unique(raw.reshape(5600, -1), axis=0))


def test_default_split_sizes_follow_the_standard_convention(fashion_folder):
    data = load_fashion_mnist(fashion_folder)
    assert len(data.calibration) == 5000 and len(data.train) == 600


@pytest.mark.data
@pytest.mark.skipif(not fm.SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_splits():
    data = load_fashion_mnist()
    assert (len(data.train), len(data.calibration), len(data.test)) == (55_000, 5_000, 10_000)
    assert abs(float(data.train.images.mean())) < 0.01
    assert abs(float(data.train.images.std()) - 1) < 0.01
    assert sorted(torch.bincount(data.test.labels).tolist()) == [1000] * 10


def test_missing_everything_names_all_three_sources(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "absent")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "cache")

    def offline():
        raise RuntimeError("no network")

    monkeypatch.setattr(fm, "_download", offline)
    with pytest.raises(DataError) as err:
        load_fashion_mnist()
    message = str(err.value)
    assert "--data-dir" in message and "dataset-fashion-mnist" in message
    assert "torchvision download" in message and "no network" in message


def test_system_folder_is_used_before_download(monkeypatch, fashion_folder):
    monkeypatch.setattr(fm, "SYSTEM_DIR", fashion_folder)
    monkeypatch.setattr(fm, "_download", lambda: pytest.fail("download attempted"))
    assert load_fashion_mnist(calibration_size=100).source == str(fashion_folder)


def test_explicit_folder_missing_files(tmp_path):
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "magic"])
def test_corrupt_files_are_reported(tmp_path, damage):
    folder = write_fashion_folder(tmp_path / "d", n_train=5600, n_test=50)
    target = folder / fm.FILES["test_images"]
    if damage == "truncate":
        raw = gzip.open(target).read()
        with gzip.open(target, "wb") as f:
            f.write(raw[:-100])
        expected = "truncated or corrupt"
    elif damage == "garbage":
        target.write_bytes(b"not a gzip file at all")
        expected = "missing or corrupt"
    else:
        with gzip.open(target, "wb") as f:
            f.write(b"\x12\x34\x08\x03" + b"\x00" * 20)
        expected = "bad magic number"
    with pytest.raises(DataError, match=expected):
        load_fashion_mnist(folder)


def test_wrong_image_shape_in_files(tmp_path):
    folder = write_fashion_folder(tmp_path / "d")
    write_idx(folder / fm.FILES["test_images"], np.zeros((400, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"expected \(N, 28, 28\)"):
        load_fashion_mnist(folder)


def test_augmentation_is_a_crop_of_the_padded_image():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).view(2, 1, 28, 28)
    out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=float(x.min()))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)


def test_batches_are_reproducible_per_epoch(tiny):
    def first(epoch):
        return next(iterate_batches(tiny.train, 32, shuffle=True, augment=True, seed=3, epoch=epoch))

    torch.testing.assert_close(first(1)[0], first(1)[0])
    assert not torch.equal(first(1)[0], first(2)[0])
    sizes = [len(y) for _, y in iterate_batches(tiny.train, 100)]
    assert sizes == [100, 100, 56]
