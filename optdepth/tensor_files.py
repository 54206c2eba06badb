"""Reading tensor files a user hands us (checkpoints, pretrained weights) without trusting them.

Files are read with ``torch.load(..., weights_only=True)``: only tensors and plain containers
are rebuilt, never arbitrary Python objects. A refusal is reported as what it is (the file
holds objects we do not load) without torch's advice to retry unsafely.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optdepth.errors import CheckpointError


def read_torch_file(path: str | Path, what: str) -> Any:
    """Load ``path`` safely onto the CPU.

    Args:
        path: the file.
        what: what it should be, for messages ("checkpoint", "weights file").

    Raises:
        CheckpointError: missing, unreadable, truncated, corrupt, or holding Python objects
            other than tensors and plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError,
            zipfile.BadZipFile, KeyError, AttributeError, TypeError, IndexError) as exc:
        # what torch raises for unsafe or damaged files; its message advises weights_only=False,
        # which we never do, so only the line naming the problem is passed on
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        blocked = [line for line in lines if "GLOBAL" in line]
        if blocked:
            raise CheckpointError(f"refusing to load {what} {path}: it holds Python objects other"
                                  f" than tensors and plain containers ({blocked[0]}). optdepth"
                                  " never unpickles such objects; save the state dict (tensors"
                                  " only) instead.") from exc
        detail = next((line for line in lines if "weights_only" not in line
                       and "Weights only load failed" not in line), type(exc).__name__)
        raise CheckpointError(f"cannot read {what} {path}: it is corrupt, truncated or not a"
                              f" torch file ({type(exc).__name__}: {detail})") from exc


def state_dict_mismatches(own: dict[str, Tensor], given: dict[str, Tensor],
                          show: int = 8) -> list[str]:
    """Lines naming missing, unexpected and mis-shaped keys (at most ``show`` of each kind).

    Args:
        own: the model's state dict (tensors may be on the meta device: only shapes are read).
        given: the state dict from a file.
    """
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    shapes = [f"{k}: file {tuple(given[k].shape)}, model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(given)) if given[k].shape != own[k].shape]
    lines = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if keys:
            more = f" ... and {len(keys) - show} more" if len(keys) > show else ""
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:show])}{more}")
    return lines
