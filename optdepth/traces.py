"""Exit traces: per sample and exit, what a stopping policy may observe. numpy only (no torch).

A trace file (``.npz``, format version 1) holds:

=====================  ===========  =========================================================
key                    shape        meaning
=====================  ===========  =========================================================
probs                  (N, T, C)    float32 class probabilities of each exit
labels                 (N,)         int64 true class
features               (N, T, F)    float32 features observable at exit t (see FEATURES)
exit_costs             (T,)         float32 cumulative compute fraction to reach exit t (last 1)
residual_norms         (N, blocks)  float32 ||F_t(h_t)|| per residual block
state_norms            (N, blocks)  float32 ||S_t(h_t)|| (state the residual is added to)
exit_blocks            (T,)         int64 0-based block index each exit follows
metadata               ()           JSON string: format_version, arch, split, feature_names
=====================  ===========  =========================================================

FEATURES, in order: ``max_prob`` (largest class probability), ``margin`` (largest minus second
largest), ``entropy`` (nats), ``agreement`` (1 if the prediction equals the previous exit's, 0 at
the first exit), ``relative_residual_norm`` (||F||/||S|| of the block just before the exit),
``cost`` (cumulative compute fraction C_t).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRACE_FORMAT_VERSION = 1
FEATURES = ("max_prob", "margin", "entropy", "agreement", "relative_residual_norm", "cost")


def step_features(probs: np.ndarray, previous_prediction: np.ndarray | None,
                  relative_norm: np.ndarray, cost: float) -> np.ndarray:
    """Compute FEATURES of one exit for n samples: the one implementation used everywhere.

    The offline traces (:func:`exit_features`) and the online early-exit engine
    (``optdepth.inference``) both call this function, so a policy sees the same numbers
    whether it runs on a trace file or inside a forward pass. Every operation is row-wise, so a
    sample's features do not depend on which other samples share its batch.

    Args:
        probs: (n, C) class probabilities of this exit.
        previous_prediction: (n,) predicted class of the previous exit, or None at the first
            exit (agreement is then 0).
        relative_norm: (n,) ||F|| / ||S|| of the block just before this exit.
        cost: cumulative compute fraction C_t of this exit.

    Returns:
        (n, len(FEATURES)) float32.
    """
    top2 = np.sort(probs, axis=-1)[:, -2:]  # (n, 2)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)
    if previous_prediction is None:
        agreement = np.zeros_like(entropy)
    else:
        agreement = (probs.argmax(-1) == previous_prediction).astype(entropy.dtype)
    columns = (top2[:, 1], top2[:, 1] - top2[:, 0], entropy, agreement, relative_norm,
               np.full(entropy.shape, cost))
    return np.stack(columns, axis=-1).astype(np.float32)


def exit_features(probs: np.ndarray, relative_norms: np.ndarray, exit_blocks: np.ndarray,
                  exit_costs: np.ndarray) -> np.ndarray:
    """Compute FEATURES for every sample and exit (:func:`step_features` exit by exit).

    Args:
        probs: (N, T, C) probabilities.
        relative_norms: (N, blocks) ||F_t|| / ||S_t||.
        exit_blocks: (T,) block index each exit follows.
        exit_costs: (T,) cumulative compute fractions.

    Returns:
        (N, T, len(FEATURES)) float32.
    """
    n, n_exits = probs.shape[:2]
    out = np.empty((n, n_exits, len(FEATURES)), dtype=np.float32)
    previous = None
    for t in range(n_exits):
        step = np.ascontiguousarray(probs[:, t])
        out[:, t] = step_features(step, previous, relative_norms[:, exit_blocks[t]], exit_costs[t])
        previous = step.argmax(-1)
    return out


@dataclass(frozen=True)
class Traces:
    """In-memory exit traces of one split; see the module docstring for shapes."""

    probs: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    exit_costs: np.ndarray
    residual_norms: np.ndarray
    state_norms: np.ndarray
    exit_blocks: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("feature_names", FEATURES))

    def correct(self) -> np.ndarray:
        """(N, T) float 1.0 where exit t predicts the label."""
        return (self.probs.argmax(-1) == self.labels[:, None]).astype(np.float64)

    def exit_accuracy(self) -> np.ndarray:
        """(T,) accuracy per exit."""
        return self.correct().mean(axis=0)

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        meta = {"format_version": TRACE_FORMAT_VERSION, "feature_names": list(FEATURES),
                **self.metadata}
        np.savez_compressed(tmp, probs=self.probs, labels=self.labels, features=self.features,
                            exit_costs=self.exit_costs, residual_norms=self.residual_norms,
                            state_norms=self.state_norms, exit_blocks=self.exit_blocks,
                            metadata=np.array(json.dumps(meta)))
        tmp.replace(path)


def load_traces(path: str | Path) -> Traces:
    """Read a trace file written by :meth:`Traces.save` (no torch needed).

    Raises:
        ValueError: not a trace file, or a newer format version.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read trace file {path}: {exc}") from exc
    missing = {"probs", "labels", "features", "exit_costs", "metadata"} - set(arrays)
    if missing:
        raise ValueError(f"{path} is not an optdepth trace file (missing {sorted(missing)})")
    meta = json.loads(str(arrays.pop("metadata")))
    if meta.get("format_version", 0) > TRACE_FORMAT_VERSION:
        raise ValueError(f"{path} has trace format {meta['format_version']}, newer than "
                         f"supported ({TRACE_FORMAT_VERSION}); upgrade optdepth")
    return Traces(metadata=meta, **arrays)
