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

import dataclasses
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optdepth.errors import TraceError
from optdepth.io import atomic_write

TRACE_FORMAT_VERSION = 1
FEATURES = ("max_prob", "margin", "entropy", "agreement", "relative_residual_norm", "cost")


def step_features(probs: np.ndarray, previous_prediction: np.ndarray | None,
                  relative_norm: np.ndarray, cost: float) -> np.ndarray:
    """Compute FEATURES of one exit for n samples: the one implementation used everywhere.

    The offline traces (:func:`exit_features`) and the online early-exit engine
    (``optdepth.online``) both call this function, so a policy sees the same numbers
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

    def mean_relative_norms(self) -> np.ndarray:
        """(blocks,) mean over samples of ||F_t(h_t)|| / ||S_t(h_t)||: what the decay fits read."""
        return (self.residual_norms / np.maximum(self.state_norms, 1e-12)).mean(axis=0)

    def take(self, rows: np.ndarray) -> Traces:
        """The traces of the samples ``rows`` (indices or a boolean mask), in that order."""
        return dataclasses.replace(self, **{name: getattr(self, name)[rows] for name in PER_SAMPLE})

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (see :func:`optdepth.io.atomic_write`)."""
        meta = {"format_version": TRACE_FORMAT_VERSION, "feature_names": list(FEATURES),
                **self.metadata}
        arrays = {name: getattr(self, name) for name in ARRAYS}
        atomic_write(path, lambda file: np.savez_compressed(
            file, **arrays, metadata=np.array(json.dumps(meta))))


#: The arrays with one row per sample (the others describe the network's exits).
PER_SAMPLE = ("probs", "labels", "features", "residual_norms", "state_norms")
#: The arrays of a trace file, in the order of the module docstring's table.
ARRAYS = ("probs", "labels", "features", "exit_costs", "residual_norms", "state_norms",
          "exit_blocks")


def load_traces(path: str | Path) -> Traces:
    """Read a trace file written by :meth:`Traces.save` (no torch needed).

    Raises:
        TraceError: missing, unreadable or truncated file, bad metadata, a newer format
            version, or arrays whose shapes do not agree (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise TraceError(f"cannot read trace file {path}: it is truncated, corrupt or not an .npz"
                         f" file ({type(exc).__name__}: {exc})") from exc
    missing = set(ARRAYS) - set(arrays) | ({"metadata"} - set(arrays))
    if missing:
        raise TraceError(f"{path} is not an optdepth trace file (missing {sorted(missing)})")
    try:
        meta = json.loads(str(arrays.pop("metadata")))
    except ValueError as exc:
        raise TraceError(f"{path}: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("format_version", 0), int):
        raise TraceError(f"{path}: its metadata must be a JSON object with an integer"
                         " format_version")
    if meta.get("format_version", 0) > TRACE_FORMAT_VERSION:
        raise TraceError(f"{path} has trace format {meta['format_version']}, newer than "
                         f"supported ({TRACE_FORMAT_VERSION}); upgrade optdepth")
    _check_shapes(path, {k: v for k, v in arrays.items() if k in ARRAYS})
    return Traces(metadata=meta, **{k: arrays[k] for k in ARRAYS})


def _check_shapes(path: Path, a: dict[str, np.ndarray]) -> None:
    """Raise TraceError unless the arrays' shapes and dtypes agree as the format says."""
    problems = []
    if a["probs"].ndim != 3 or not np.issubdtype(a["probs"].dtype, np.floating):
        problems.append(f"probs must be a float (N, T, C) array, got {a['probs'].dtype}"
                        f" {a['probs'].shape}")
    else:
        n, t, c = a["probs"].shape
        expected = {"labels": (n,), "features": (n, t, len(FEATURES)), "exit_costs": (t,),
                    "exit_blocks": (t,)}
        problems += [f"{k} has shape {a[k].shape}, expected {shape}"
                     for k, shape in expected.items() if a[k].shape != shape]
        norms = [a["residual_norms"].shape, a["state_norms"].shape]
        if any(len(s) != 2 or s[0] != n for s in norms) or norms[0] != norms[1]:
            problems.append(f"residual_norms {norms[0]} and state_norms {norms[1]} must both be"
                            f" ({n}, blocks)")
        elif a["exit_blocks"].shape == (t,) and t and not (
                np.issubdtype(a["exit_blocks"].dtype, np.integer)
                and 0 <= a["exit_blocks"].min() and a["exit_blocks"].max() < norms[0][1]):
            problems.append(f"exit_blocks must be block indices in [0, {norms[0][1]})")
        if a["labels"].shape == (n,) and n and not (
                np.issubdtype(a["labels"].dtype, np.integer)
                and 0 <= a["labels"].min() and a["labels"].max() < c):
            problems.append(f"labels must be integers in [0, {c})")
    if not problems:
        problems = _value_problems(a)
    if problems:
        raise TraceError(f"{path} holds inconsistent arrays: " + "; ".join(problems))


def _value_problems(a: dict[str, np.ndarray]) -> list[str]:
    """Values a trace file of ours never holds (checked once the shapes agree)."""
    problems = []
    probs = a["probs"]
    if not np.isfinite(probs).all() or probs.min(initial=0.0) < 0 \
            or probs.max(initial=0.0) > 1 + 1e-5:
        problems.append("probs must be probabilities in [0, 1] (no NaN or infinity)")
    costs, blocks = a["exit_costs"], a["exit_blocks"]
    if not (np.isfinite(costs).all() and (np.diff(costs) > 0).all()
            and (costs > 0).all() and (costs <= 1 + 1e-6).all()):
        problems.append("exit_costs must increase, in (0, 1]")
    if (np.diff(blocks) <= 0).any():
        problems.append("exit_blocks must increase")
    return problems
