"""Byte-level text corpora for the causal LM, split by file, and their batching.

Default corpus, present on every machine with Python: the standard library's own ``.py``
sources (under ``sysconfig.get_paths()["stdlib"]``, without ``site-packages`` and the test
suites), in sorted path order. Or any files and folders the user names (folders are read
recursively; hidden files are skipped).

Splits are by file: the sorted file list is shuffled with a fixed seed and cut into train,
calibration and test by share of files, so no file contributes to two splits. With fewer than
three files the concatenated bytes are cut into contiguous ranges instead. Each split is the
concatenation of its files' bytes (a file's last byte is followed by the next file's first).
"""

from __future__ import annotations

import logging
import os
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from optdepth.errors import DataError

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = (0.9, 0.05, 0.05)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


@dataclass(frozen=True)
class TextSplit:
    """One split: ``data`` (N,) uint8 bytes of the concatenated ``files``."""

    data: Tensor
    files: tuple[str, ...]

    def __len__(self) -> int:
        return self.data.numel()


@dataclass(frozen=True)
class TextCorpus:
    """Train, calibration and test splits of one corpus; ``source`` says where it came from."""

    train: TextSplit
    calibration: TextSplit
    test: TextSplit
    source: str


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without site-packages and test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # prune: never walk site-packages
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(f for f in files if f.is_file())


def text_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named by ``paths`` (folders read recursively, hidden entries skipped), sorted.

    Raises:
        DataError: a path does not exist, or no file was found.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        else:
            raise DataError(f"text path {path} does not exist; name text files or folders")
    if not found:
        raise DataError(f"no files found under {', '.join(map(str, paths))}")
    return sorted(set(found))


def _read(files: Sequence[Path]) -> Tensor:
    chunks = [np.frombuffer(f.read_bytes(), dtype=np.uint8) for f in files]
    return torch.from_numpy(np.concatenate(chunks) if chunks else np.zeros(0, np.uint8))


def split_files(files: Sequence[Path], fractions: Sequence[float] = SPLIT_FRACTIONS,
                seed: int = 0) -> tuple[list[Path], list[Path], list[Path]]:
    """Shuffle ``files`` with ``seed`` and cut them into train / calibration / test lists.

    Calibration and test get at least one file each.
    """
    order = np.random.default_rng(seed).permutation(len(files))
    n_cal = max(1, round(fractions[1] * len(files)))
    n_test = max(1, round(fractions[2] * len(files)))
    shuffled = [files[i] for i in order]
    return (sorted(shuffled[n_cal + n_test:]), sorted(shuffled[:n_cal]),
            sorted(shuffled[n_cal:n_cal + n_test]))


def load_text_corpus(paths: Sequence[str | Path] | None = None, *,
                     fractions: Sequence[float] = SPLIT_FRACTIONS, seed: int = 0) -> TextCorpus:
    """Read a byte-level corpus and split it (see the module docstring).

    Args:
        paths: text files or folders; None for the Python standard library's sources.
        fractions: shares of train, calibration and test (of files; of bytes below 3 files).
        seed: seed of the file shuffle.

    Raises:
        DataError: missing paths, no files, or a split left empty.
    """
    if len(fractions) != 3 or min(fractions) <= 0 or not np.isclose(sum(fractions), 1.0):
        raise DataError(f"fractions must be three positive shares summing to 1, got {fractions}")
    files = stdlib_files() if paths is None else text_files(paths)
    source = "python-stdlib" if paths is None else ", ".join(map(str, paths))
    if len(files) >= 3:
        parts = split_files(files, fractions, seed)
        splits = [TextSplit(_read(p), tuple(map(str, p))) for p in parts]
    else:
        data = _read(files)
        cuts = np.cumsum([0, *(round(f * len(data)) for f in fractions[:2])])
        names = tuple(map(str, files))
        splits = [TextSplit(data[cuts[0]:cuts[1]], names), TextSplit(data[cuts[1]:cuts[2]], names),
                  TextSplit(data[cuts[2]:], names)]
    for name, split in zip(("train", "calibration", "test"), splits, strict=True):
        if len(split) < 2:
            raise DataError(f"the {name} split of {source} holds {len(split)} bytes; give more text")
    log.info("corpus %s: %d files, %s bytes (train / calibration / test)", source, len(files),
             " / ".join(f"{len(s):,}" for s in splits))
    return TextCorpus(*splits, source=source)


def random_windows(split: TextSplit, batch_size: int, length: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A training batch of windows at random offsets.

    Returns:
        inputs (B, S) and targets (B, S) int64, targets shifted one byte to the right;
        S = min(length, len(split) - 1).
    """
    length = min(length, len(split) - 1)
    starts = torch.randint(0, len(split) - length, (batch_size,), generator=generator)
    index = starts[:, None] + torch.arange(length + 1)  # (B, S + 1)
    windows = split.data[index].long()
    return windows[:, :-1], windows[:, 1:]


def eval_windows(split: TextSplit, length: int, max_tokens: int | None = None) -> tuple[Tensor, Tensor]:
    """Deterministic, contiguous, non-overlapping windows from the start of the split.

    Args:
        split: the split.
        length: window length S (the model's context).
        max_tokens: stop after this many predicted tokens (None: the whole split).

    Returns:
        inputs (W, S) and targets (W, S) int64, W >= 1.
    """
    length = min(length, len(split) - 1)
    n = (len(split) - 1) // length
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // length))
    flat = split.data[: n * length + 1].long()
    return flat[:-1].view(n, length), flat[1:].view(n, length)


def spread_prompts(split: TextSplit, count: int, length: int) -> list[list[int]]:
    """``count`` prompts of ``length`` bytes at evenly spread offsets of ``split`` (first at 0)."""
    length = min(length, len(split) - 1)
    starts = np.linspace(0, len(split) - length - 1, count).astype(int)
    return [split.data[s:s + length].tolist() for s in starts]


__all__ = ["TextCorpus", "TextSplit", "eval_windows", "load_text_corpus", "random_windows",
           "split_files", "spread_prompts", "stdlib_files", "text_files"]
