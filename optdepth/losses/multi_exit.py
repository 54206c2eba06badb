"""Multi-exit cross-entropy: a weighted sum of the per-exit cross-entropies.

The weights average 1 (they sum to T), as in SDN and MSDNet: every exit's loss then has the
scale of a single-exit loss. Weights that sum to 1 would divide each exit's gradient by T, so
the learning rate of a single-exit recipe would be T times too small for every exit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from optdepth.errors import ConfigError

EXIT_WEIGHTINGS = ("uniform", "linear")


def exit_weights(num_exits: int, scheme: str = "uniform") -> Tensor:
    """Per-exit loss weights (T,), averaging 1 (summing to T).

    Args:
        num_exits: T.
        scheme: ``"uniform"`` (1 each) or ``"linear"`` (w_t ∝ t + 1, growing with depth).
    """
    if scheme == "uniform":
        w = torch.ones(num_exits)
    elif scheme == "linear":
        w = torch.arange(1, num_exits + 1, dtype=torch.float32)
    else:
        raise ConfigError(f"unknown exit weighting {scheme!r}; choose one of {EXIT_WEIGHTINGS}")
    return w * (num_exits / w.sum())


def multi_exit_cross_entropy(logits: Tensor, targets: Tensor, scheme: str = "uniform",
                             label_smoothing: float = 0.0) -> Tensor:
    """Weighted sum over exits of the batch-mean cross-entropy (weights average 1).

    Args:
        logits: (T, B, C) exit logits.
        targets: (B,) class indices.
        scheme: exit weighting, see :func:`exit_weights`.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.

    Returns:
        Scalar loss.
    """
    t, b, c = logits.shape
    per_exit = F.cross_entropy(logits.reshape(t * b, c), targets.repeat(t), reduction="none",
                               label_smoothing=label_smoothing).view(t, b).mean(dim=1)  # (T,)
    return (exit_weights(t, scheme).to(per_exit) * per_exit).sum()
