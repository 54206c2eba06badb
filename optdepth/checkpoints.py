"""Checkpoints: plain dicts written atomically and read with ``weights_only=True``.

Layout (``FORMAT_VERSION`` 1)::

    {"format_version": 1, "arch": {"name": str, "kwargs": dict}, "config": dict,
     "state_dict": dict, "optimizer": dict, "scheduler": dict, "epoch": int (epochs done),
     "metric": float (calibration accuracy of the last exit), "history": [epoch records]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from optdepth.errors import CheckpointError
from optdepth.io import atomic_write
from optdepth.models.base import MultiExitModel
from optdepth.models.registry import create_model

FORMAT_VERSION = 1


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (see module docstring) atomically."""
    checkpoint = {"format_version": FORMAT_VERSION, **checkpoint}
    atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path: str | Path, expected_arch: str | None = None) -> dict[str, Any]:
    """Read a checkpoint safely and check its format and architecture.

    Raises:
        CheckpointError: missing, unreadable/corrupt, newer format, or other architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt, truncated or not a"
                              f" safe optdepth checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not an optdepth checkpoint (no format_version/arch)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['format_version']}, newer than this"
                              f" optdepth supports ({FORMAT_VERSION}); upgrade optdepth")
    arch = ckpt["arch"]["name"]
    if expected_arch is not None and arch != expected_arch:
        raise CheckpointError(f"{path} holds a {arch!r} model, not {expected_arch!r}; "
                              "point at a checkpoint of the same architecture")
    return ckpt


def restore_training_state(path: Path, arch: str, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: Any) -> list[dict[str, Any]]:
    """Load a training checkpoint into ``model``, ``optimizer`` and ``scheduler`` in place.

    Returns:
        The per-epoch history records stored with it.
    """
    ckpt = load_checkpoint(path, expected_arch=arch)
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    return list(ckpt["history"])


def load_model(path: str | Path, expected_arch: str | None = None) -> MultiExitModel:
    """Rebuild a trained model from a checkpoint file or a run directory, in eval mode.

    Raises:
        CheckpointError: unreadable checkpoint or weights that do not fit the architecture.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path, expected_arch)
    model = create_model(ckpt["arch"]["name"], **ckpt["arch"]["kwargs"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['arch']['name']} "
                              f"{ckpt['arch']['kwargs']}: {str(exc).splitlines()[0]}") from exc
    return model.eval()
