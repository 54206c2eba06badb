"""Full multi-exit forward passes over a split, gathered into numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from optdepth.data.fashion_mnist import Split
from optdepth.data.loader import iterate_batches, num_batches
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
def forward_split(model: MultiExitModel, split: Split, batch_size: int = 1000,
                  progress: bool = False, desc: str = "evaluate") -> SplitOutputs:
    """Run every exit on every sample of ``split`` in eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    probs, res, base = [], [], []
    batches = iterate_batches(split, batch_size)
    try:
        for images, _ in tqdm(batches, total=num_batches(len(split), batch_size), desc=desc,
                              disable=not progress, leave=False):
            out = model(images)
            probs.append(out.logits.softmax(-1).permute(1, 0, 2))  # (B, T, C)
            res.append(out.residual_norms.T)
            base.append(out.state_norms.T)
    finally:
        model.train(was_training)
    return SplitOutputs(torch.cat(probs).numpy(), torch.cat(res).numpy(),
                        torch.cat(base).numpy(), split.labels.numpy())
