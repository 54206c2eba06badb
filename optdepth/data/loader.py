"""In-memory splits of any tensor data, and their batches, augmented on whole batches.

:class:`Split` holds images and labels as tensors; it is the batch source of the Fashion-MNIST
loader, of tests and of any user data that fits in memory, and what the online early-exit
engine and the timing functions take.

On two CPU cores a DataLoader with per-image PIL transforms starves the model; here a batch is
cropped and flipped with a few vectorised tensor ops. Every epoch's order and augmentation come
from a generator seeded with (seed, epoch), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


def random_crop_flip(x: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """Random crop after zero padding (in normalised units: the background value) and h-flip.

    Args:
        x: (B, C, H, W) images.
        pad: pixels of padding on each side; crops are offset by 0..2*pad.
        generator: source of randomness.

    Returns:
        (B, C, H, W) augmented images.
    """
    b, _, h, w = x.shape
    background = x.amin()  # normalised value of a black pixel for this data
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), value=float(background))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out).contiguous()


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool = False,
                    augment: bool = False, seed: int = 0, epoch: int = 0,
                    pad: int = 2, rank: int = 0,
                    world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images (B, C, H, W), labels (B,)) batches; the last batch may be smaller.

    With ``world_size`` > 1 every process draws the same global batches of ``batch_size``
    (same order, same augmentation) and yields only its contiguous share
    ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / world_size``: the processes together
    see exactly the batches of a single-process run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size > 1:
        yield from _shard(iterate_batches(split, batch_size, shuffle=shuffle, augment=augment,
                                          seed=seed, epoch=epoch, pad=pad), rank, world_size)
        return
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        images = split.images[idx]
        if augment:
            images = random_crop_flip(images, pad, generator)
        yield images, split.labels[idx]


def num_batches(n: int, batch_size: int) -> int:
    """Batches per pass over ``n`` samples."""
    return -(-n // batch_size)


def _shard(batches: Iterator[tuple[Tensor, Tensor]], rank: int,
           world_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's equal contiguous share of each global batch (a ragged last batch is split
    into near-equal shares; a rank whose share is empty gets none of it)."""
    for images, labels in batches:
        share = images.tensor_split(world_size)[rank], labels.tensor_split(world_size)[rank]
        if len(share[1]):
            yield share


@dataclass(frozen=True)
class Split:
    """One split held in memory: images (N, 1, 28, 28) float32 normalised, labels (N,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int) -> Split:
        """The first ``n`` samples (the splits are already shuffled once, with a fixed seed)."""
        return Split(self.images[:n], self.labels[:n])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def batches(self, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                seed: int = 0, epoch: int = 0, rank: int = 0,
                world_size: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches; see :func:`optdepth.data.loader.iterate_batches`.

        ``batch_size`` is global: with ``world_size`` processes each yields its share of it.
        """
        return iterate_batches(self, batch_size, shuffle=shuffle, augment=augment, seed=seed,
                               epoch=epoch, rank=rank, world_size=world_size)

    def num_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Batches (optimiser steps) per pass at global ``batch_size``, for any ``world_size``."""
        return num_batches(len(self), batch_size)
