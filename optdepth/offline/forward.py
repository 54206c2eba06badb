"""Full multi-exit forward passes over a split, gathered into numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from optdepth.data.source import BatchSource
from optdepth.errors import DataError
from optdepth.models.base import MultiExitModel


@dataclass(frozen=True)
class SplitOutputs:
    """All exits on all samples of a split.

    Attributes:
        probs: (N, T, C) float32 softmax probabilities per exit.
        residual_norms: (N, blocks) float32 ||F_t(h_t)||.
        state_norms: (N, blocks) float32 ||S_t(h_t)||.
        labels: (N,) int64.
    """

    probs: np.ndarray
    residual_norms: np.ndarray
    state_norms: np.ndarray
    labels: np.ndarray

    def exit_accuracy(self) -> np.ndarray:
        """(T,) fraction of samples each exit classifies correctly."""
        return (self.probs.argmax(-1) == self.labels[:, None]).mean(axis=0)

    def relative_residual_norm(self) -> np.ndarray:
        """(blocks,) mean over samples of ||F_t(h_t)|| / ||S_t(h_t)||."""
        return (self.residual_norms / np.maximum(self.state_norms, 1e-12)).mean(axis=0)


@torch.no_grad()
def forward_split(model: MultiExitModel, split: BatchSource, batch_size: int = 1000,
                  progress: bool = False, desc: str = "evaluate") -> SplitOutputs:
    """Run every exit on every sample of ``split`` in eval mode (restores the previous mode).

    Batches go to the device of the model's parameters; results come back as numpy arrays.
    ``split`` is any :class:`~optdepth.data.source.BatchSource` (an in-memory Fashion-MNIST
    split, an ImageFolder split).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, res, base, labels = [], [], [], []
    seen = 0
    try:
        for images, y in tqdm(split.batches(batch_size), total=split.num_batches(batch_size),
                              desc=desc, disable=not progress, leave=False):
            model.check_finite(images, offset=seen)
            seen += len(images)
            out = model(images.to(device, non_blocking=True))
            probs.append(out.logits.float().softmax(-1).permute(1, 0, 2).cpu())  # (B, T, C)
            res.append(out.residual_norms.T.cpu())
            base.append(out.state_norms.T.cpu())
            labels.append(y)
    finally:
        model.train(was_training)
    if not probs:
        raise DataError("the split yielded no images (all of them unreadable or left out?)")
    return SplitOutputs(torch.cat(probs).numpy(), torch.cat(res).numpy(),
                        torch.cat(base).numpy(), torch.cat(labels).numpy())
