"""Atomic file writes: readers never see a half-written checkpoint, report or trace.

Every write goes to a temporary file with a unique name in the target's folder
(``.NAME.<random>.tmp``), is flushed and fsynced, and is then renamed onto the target; the
folder is fsynced too, so that after a crash the target holds either the old or the new
content. A write killed half-way leaves only its temporary file, which
:func:`remove_stale_temporaries` deletes the next time the run is opened for writing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from optdepth.errors import RunDirError

TEMPORARY_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a fresh binary temporary file, then rename it onto ``path``.

    Args:
        path: the target; its folder is created if needed.
        write: writes the whole content to the open binary file it is given.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=TEMPORARY_SUFFIX)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, or the target is a folder
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _cannot_write(path: Path, exc: OSError) -> RunDirError:
    return RunDirError(f"cannot write {path}: {exc.strerror or exc}. Earlier files are intact.")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left in ``folder``.

    Only names of the form ``.NAME.<random>.tmp`` directly in ``folder`` are touched. Call it
    only while holding the folder's write lock: a live writer's temporary file looks the same.

    Returns:
        The files removed.
    """
    removed = []
    for candidate in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""
    write_text(path, json.dumps(data, indent=2) + "\n")
