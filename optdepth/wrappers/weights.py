"""A user's weights into a user's model: safetensors or a state-dict file, checked before copying.

Nothing is downloaded and nothing is unpickled: ``.safetensors`` files are read with
safetensors, anything else with ``torch.load(weights_only=True)``
(:func:`optdepth.tensor_files.read_torch_file`). Every key and shape is compared with the
model's own state dict first, so a file of another architecture changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from optdepth.errors import CheckpointError
from optdepth.tensor_files import read_torch_file, state_dict_mismatches


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file or a torch state-dict file, on the CPU.

    Raises:
        CheckpointError: missing, corrupt, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read weights file {path}: it is not a valid"
                                  f" safetensors file ({exc})") from exc
    state = read_torch_file(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint that nests its weights
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                              for k, v in state.items()):
        raise CheckpointError(f"weights file {path} is not a state dict (a mapping of parameter"
                              " names to tensors); save model.state_dict()")
    return state


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Copy the weights in ``path`` into ``module``, all or nothing.

    Keys and shapes must equal the module's state dict (tied parameters may be given once).

    Raises:
        CheckpointError: an unreadable file, or one of another architecture (missing,
            unexpected and mis-shaped keys are listed); the module is then unchanged.
    """
    given = read_weights(path)
    own = module.state_dict()
    tied = _tied_keys(module)
    given = {**{k: given[t] for k, t in tied.items() if k not in given and t in given}, **given}
    lines = state_dict_mismatches(own, given)
    if lines:
        raise CheckpointError(f"weights file {path} does not fit {type(module).__name__} (another"
                              " architecture or size?):\n" + "\n".join(lines))
    with torch.no_grad():
        module.load_state_dict(given)


def _tied_keys(module: nn.Module) -> dict[str, str]:
    """Key -> another key holding the very same tensor (e.g. an LM head tied to its embedding)."""
    first: dict[int, str] = {}
    tied = {}
    for key, value in module.state_dict(keep_vars=True).items():
        if value.data_ptr() in first:
            tied[key] = first[value.data_ptr()]
            tied[first[value.data_ptr()]] = key
        else:
            first[value.data_ptr()] = key
    return tied
