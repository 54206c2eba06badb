"""Checkpoints: plain dicts written atomically, read with ``weights_only=True`` and checked.

Layout (``FORMAT_VERSION`` 1)::

    {"format_version": 1, "arch": {"name": str, "kwargs": dict}, "config": dict,
     "state_dict": dict, "optimizer": dict, "scheduler": dict, "epoch": int (epochs done),
     "metric": float (calibration accuracy of the last exit), "history": [epoch records],
     "classes": [class names of the training data, in label order] (image runs)}

A checkpoint is a file a user may hand us, so every field is checked before use, and a model is
first built on the ``meta`` device (shapes only, no memory) and compared with the stored
weights: architecture arguments that do not fit the weights, or that would allocate far more
than the file holds, are one clear error instead of a size-mismatch traceback or an attempt to
allocate petabytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from optdepth.errors import CheckpointError, ConfigError, OptDepthError
from optdepth.io import atomic_write
from optdepth.models.base import MultiExitModel
from optdepth.models.registry import DATA_ARGUMENTS, create_model
from optdepth.rundir import RunLayout
from optdepth.tensor_files import read_torch_file, state_dict_mismatches

FORMAT_VERSION = 1
#: Where a run directory keeps its latest checkpoint.
#: Elements a rebuilt model may hold beyond the checkpoint's own tensors (buffers that are not
#: saved, such as positional tables): 2^28 float32 values are 1 GiB.
_EXTRA_ELEMENTS = 2**28
#: Fields a checkpoint needs to continue training, with their types.
_TRAINING_FIELDS = {"optimizer": dict, "scheduler": dict, "history": list}


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write ``checkpoint`` (see module docstring) atomically."""
    checkpoint = {"format_version": FORMAT_VERSION, **checkpoint}
    atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


def load_checkpoint(path: str | Path, expected_arch: str | None = None, *,
                    training: bool = False) -> dict[str, Any]:
    """Read a checkpoint safely and check its structure field by field.

    Args:
        path: the checkpoint file.
        expected_arch: the registered model name it must hold (None: any).
        training: also require the fields that resuming needs (optimizer, scheduler, history).

    Raises:
        CheckpointError: missing, unreadable, unsafe, malformed, newer format, or other
            architecture.
    """
    path = Path(path)
    ckpt = read_torch_file(path, "checkpoint")
    _check_structure(ckpt, path, training)
    arch = ckpt["arch"]["name"]
    if expected_arch is not None and arch != expected_arch:
        raise CheckpointError(f"{path} holds a {arch!r} model, not {expected_arch!r}; "
                              "point at a checkpoint of the same architecture")
    return ckpt


def _check_structure(ckpt: Any, path: Path, training: bool) -> None:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid optdepth checkpoint: {what}")

    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "arch" not in ckpt:
        raise bad("no format_version/arch fields")
    version = ckpt["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad(f"format_version is {version!r}, not a positive integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}, newer than this optdepth"
                              f" supports ({FORMAT_VERSION}); upgrade optdepth")
    arch = ckpt["arch"]
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) \
            or not isinstance(arch.get("kwargs"), dict) \
            or not all(isinstance(k, str) for k in arch["kwargs"]):
        raise bad("arch must be {'name': str, 'kwargs': {str: value}}")
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise bad("state_dict must be a non-empty mapping of names to tensors")
    if not isinstance(ckpt.get("config", {}), dict):
        raise bad("config must be a mapping")
    if training:
        for name, kind in _TRAINING_FIELDS.items():
            if not isinstance(ckpt.get(name), kind):
                raise bad(f"{name} must be a {kind.__name__} to resume training")
        epoch = ckpt.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch != len(ckpt["history"]) \
                or not all(isinstance(r, dict) for r in ckpt["history"]):
            raise bad(f"epoch ({epoch!r}) must be an integer equal to the number of history records")


def check_arch(ckpt: Mapping[str, Any], path: Path, name: str,
               kwargs: Mapping[str, Any]) -> None:
    """Raise unless the checkpoint's architecture is ``name`` built with ``kwargs``.

    ``kwargs`` are the architecture arguments of the run (its config's ``model_kwargs``, or a
    built model's ``arch_kwargs``). Arguments the trainer takes from the data
    (:data:`~optdepth.models.registry.DATA_ARGUMENTS`) are compared only where ``kwargs`` gives
    them; any other argument must agree, including one the checkpoint sets and the run leaves
    at its default. ``weights_path``, a training-time input, is ignored; values are compared as
    JSON, so tuples equal lists.
    """
    stored = {k: v for k, v in ckpt["arch"]["kwargs"].items() if k != "weights_path"}
    wanted = {k: v for k, v in kwargs.items() if k != "weights_path"}
    keys = set(wanted) | (set(stored) - set(DATA_ARGUMENTS))
    differing = sorted(k for k in keys if _as_json(stored.get(k)) != _as_json(wanted.get(k)))
    if ckpt["arch"]["name"] != name or differing:
        shown = ", ".join(f"{k}: checkpoint {stored.get(k, 'default')!r}, config"
                          f" {wanted.get(k, 'default')!r}" for k in differing)
        raise CheckpointError(
            f"{path} holds {ckpt['arch']['name']!r} {stored}, but the run's config asks for"
            f" {name!r}{' (' + shown + ')' if shown else ''}. The checkpoint belongs to another"
            " run: point at the run it came from, or restore this run's own checkpoint.")


def _as_json(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return repr(value)


def build_checked_model(ckpt: Mapping[str, Any], path: Path) -> MultiExitModel:
    """The checkpoint's architecture, built only after its shapes are checked against the weights.

    Raises:
        CheckpointError: the architecture cannot be built from the stored arguments, its
            parameters do not fit the stored weights, or it would allocate far more memory than
            the file holds.
    """
    name, kwargs = ckpt["arch"]["name"], dict(ckpt["arch"]["kwargs"])
    kwargs.pop("weights_path", None)  # the checkpoint holds the weights
    try:
        with torch.device("meta"):
            skeleton = create_model(name, **kwargs)
    except (ConfigError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot build {name!r} from the stored arguments"
                              f" {kwargs}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    check_weights_fit(skeleton, ckpt["state_dict"], path)
    return create_model(name, **kwargs)


def check_weights_fit(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                      path: Path) -> None:
    """Raise unless ``state_dict`` has exactly ``model``'s keys and shapes (model may be on meta)."""
    own = model.state_dict()
    problems = state_dict_mismatches(own, dict(state_dict))
    if problems:
        arch = getattr(model, "arch_name", type(model).__name__)
        raise CheckpointError(f"{path}: the stored weights do not fit {arch}"
                              f" {getattr(model, 'arch_kwargs', {})}:\n" + "\n".join(problems))
    stored = sum(t.numel() for t in state_dict.values())
    needed = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if needed > stored + _EXTRA_ELEMENTS:
        raise CheckpointError(f"{path}: its architecture arguments would allocate {needed:,}"
                              f" values, far more than the {stored:,} the file holds; the"
                              " checkpoint is corrupt or was edited")


#: Config fields that may change between a run and its resume (where and how fast it runs).
_OPERATIONAL = frozenset({"device", "threads", "data_dir", "workers", "eval_batch_size"})


def check_config(ckpt: Mapping[str, Any], path: Path, config: Any) -> None:
    """Raise unless the checkpoint was written under ``config`` (the run's config.json, a
    :class:`~optdepth.training.config.RunConfig`), up to the operational fields (device,
    threads, data_dir, workers, eval_batch_size).

    The stored settings are read as ``config``'s type reads them, so fields added since the
    checkpoint was written compare at their defaults. A hand-edited config.json would otherwise
    be recorded as the run's settings while the optimizer state restored from the checkpoint
    silently kept the old ones.
    """
    try:
        stored = type(config).from_dict(dict(ckpt.get("config") or {})).to_dict()
    except (OptDepthError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} holds settings this run cannot read: {exc}") from exc
    current = config.to_dict()
    differing = sorted(k for k in set(stored) - _OPERATIONAL
                       if _as_json(stored[k]) != _as_json(current[k]))
    if differing:
        raise CheckpointError(f"{path} was written with other settings than the run's config.json"
                              f" ({', '.join(differing)} differ). Restore config.json, or train"
                              " the new settings in a new folder.")


def restore_training_state(path: Path, model: MultiExitModel, optimizer: torch.optim.Optimizer,
                           scheduler: Any, config: Any) -> list[dict[str, Any]]:
    """Load a training checkpoint into ``model``, ``optimizer`` and ``scheduler`` in place.

    ``model`` is the run's model as ``config`` (the run's config.json) builds it: the checkpoint
    must have been written under that config and hold the same architecture (name and
    arguments) with weights of the same shapes.

    Returns:
        The per-epoch history records stored with it.

    Raises:
        CheckpointError: a malformed checkpoint, or one of another architecture or size.
    """
    ckpt = load_checkpoint(path, training=True)
    check_config(ckpt, path, config)
    check_arch(ckpt, path, config.model, model.arch_kwargs)
    check_weights_fit(model, ckpt["state_dict"], path)
    model.load_state_dict(ckpt["state_dict"])
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: its optimizer or scheduler state does not fit this run"
                              f" ({type(exc).__name__}: {exc})") from exc
    return list(ckpt["history"])


def load_model(path: str | Path, expected_arch: str | None = None,
               model_type: type[MultiExitModel] = MultiExitModel) -> MultiExitModel:
    """Rebuild a trained model from a checkpoint file or a run directory, in eval mode.

    For a run directory, the checkpoint must hold the model its ``config.json`` names, with
    the architecture arguments given there (``model_kwargs``). ``model_type`` is the kind of
    model the caller can use (:class:`~optdepth.models.decoder.DecoderLM` for decoding).

    Raises:
        CheckpointError: unreadable or malformed checkpoint, one that belongs to another run,
            weights that do not fit the architecture, or a model that is no ``model_type``.
    """
    model = load_model_and_checkpoint(path, expected_arch)[0]
    if not isinstance(model, model_type):
        raise CheckpointError(f"{path} holds a {model.arch_name!r} model, not a"
                              f" {model_type.__name__}; point at a run of such a model")
    return model


def load_model_and_checkpoint(path: str | Path, expected_arch: str | None = None
                              ) -> tuple[MultiExitModel, dict[str, Any]]:
    """:func:`load_model`, also returning the checked checkpoint dict (read once)."""
    path = Path(path)
    config = None
    if path.is_dir():
        layout = RunLayout(path)
        config = _read_run_config(layout.config)
        path = layout.checkpoint
    ckpt = load_checkpoint(path, expected_arch)
    if config is not None:
        check_arch(ckpt, path, config["model"], config["model_kwargs"])
    model = build_checked_model(ckpt, path)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _read_run_config(path: Path) -> dict[str, Any] | None:
    """A run's config.json as a dict with ``model`` and ``model_kwargs`` (None if absent)."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the run's config {path}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("model"), str) \
            or not isinstance(config.get("model_kwargs", {}), dict):
        raise CheckpointError(f"{path} is not an optdepth run config (no model name)")
    return {"model": config["model"], "model_kwargs": config.get("model_kwargs", {})}
