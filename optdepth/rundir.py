"""Output folders: one writer at a time, never a folder that is not ours.

Every command that writes a folder (``train``, ``evaluate``, the demos) holds that folder's
write lock while it writes: an advisory ``flock`` on ``FOLDER/.optdepth.lock``, taken without
waiting, so a second writer stops at once with :class:`~optdepth.errors.RunBusyError` instead of
interleaving its files with the first one's. The operating system drops the lock when its
process dies, so a killed run never leaves a stale lock behind. Taking the lock also deletes the
temporary files of writes that a kill interrupted (see :mod:`optdepth.io`).

A folder is ours when it is missing, empty, or holds the marker ``.optdepth`` that optdepth writes
into every folder it creates (``{"kind": "run" | "demo" | "lm-demo" | "compare"}``); a run
written before markers existed is recognised by its ``checkpoints/last.pt``. Anything else is refused with the
names of what is there: a ``config.json`` or ``metrics.jsonl`` of another tool looks like ours
but is not, and is never overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from optdepth.errors import RunBusyError, RunDirError
from optdepth.io import remove_stale_temporaries, write_json

log = logging.getLogger(__name__)

LOCK_NAME = ".optdepth.lock"
MARKER = ".optdepth"
KINDS = ("run", "demo", "lm-demo", "compare")


@dataclass(frozen=True)
class RunLayout:
    """Where a run directory keeps each of its files: the one place their names are spelled.

    ::

        config.json                       the resolved config (TrainConfig or LMTrainConfig)
        metrics.jsonl                     one JSON record per finished epoch
        tb/                               TensorBoard events
        checkpoints/last.pt               the latest checkpoint (optdepth.checkpoints)
        evaluation/summary.json           per-exit metrics of the test split
        evaluation/traces_{split}.npz     exit traces of a split (optdepth.traces)
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def summary(self) -> Path:
        return self.evaluation / "summary.json"

    def traces(self, split: str) -> Path:
        """The exit traces of ``split`` ("calibration" or "test")."""
        return self.evaluation / f"traces_{split}.npz"

    def is_trained(self) -> bool:
        """Whether the run has finished an epoch (it has a checkpoint)."""
        return self.checkpoint.is_file()

# Locks this process holds: folder -> [file descriptor, depth]. A demo holds its folder's lock
# and then trains and evaluates runs inside it, and evaluate may run inside a held train lock,
# so a lock this process already holds is taken again without touching the file.
_HELD: dict[Path, list[int]] = {}


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False when another process holds it."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return "another optdepth process"
    return f"process {pid}" if pid.isdigit() else "another optdepth process"


@contextmanager
def write_lock(folder: str | Path, kind: str) -> Iterator[None]:
    """Claim ``folder`` (see :func:`claim_folder`), then hold its write lock for the block.

    Nothing is created in a folder that is not ours: the claim comes first. Then the folder is
    created, locked, and cleared of the temporaries of interrupted writes.

    Args:
        folder: the output folder.
        kind: what the folder holds, one of :data:`KINDS`.

    Raises:
        RunDirError: the folder is not ours.
        RunBusyError: another process holds the lock (it is writing this folder now).
    """
    folder = Path(folder)
    claim_folder(folder, kind)
    try:
        key = folder.resolve()
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise RunDirError(f"cannot use {folder} as an output folder: {_reason(exc)}") from exc
    if key in _HELD:
        os.close(fd)
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    lock_path = folder / LOCK_NAME
    if not _try_lock(fd):
        os.close(fd)
        raise RunBusyError(f"{folder} is busy: {_holder(lock_path)} is writing it now. Wait for it"
                           " to finish, or use another output folder.")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]
    try:
        _remove_leftovers(folder)
        yield
    finally:
        del _HELD[key]
        os.close(fd)  # closing the descriptor releases the lock
        if created:
            _remove_if_unused(folder)


def _remove_if_unused(folder: Path) -> None:
    """Remove a folder this command created but wrote nothing into (it failed before writing),
    so that it does not stand in the way of the corrected command."""
    if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:  # something appeared meanwhile: leave it
            pass


def _remove_leftovers(folder: Path) -> None:
    """Delete temporaries of killed writes in ``folder`` and its direct subfolders, but not in
    subfolders that are runs of their own (they have their own lock and writers)."""
    places = [folder] + [sub for sub in folder.iterdir()
                         if sub.is_dir() and not (sub / LOCK_NAME).exists()]
    for place in places:
        for path in remove_stale_temporaries(place):
            log.info("removed %s, left behind by an interrupted write", path)


def claim_folder(folder: str | Path, kind: str) -> None:
    """Check that ``folder`` is ours to write: missing, empty, or an optdepth folder of ``kind``.

    Raises:
        RunDirError: ``folder`` is a file, cannot be read, holds files that are not ours, or is an
            optdepth folder of another kind.
    """
    folder = Path(folder)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        if folder.exists() and not folder.is_dir():
            raise RunDirError(f"{folder} is a file, not a folder; choose another output folder")
        if (folder / MARKER).is_file():
            found = _marker_kind(folder)
            if found != kind:
                raise RunDirError(f"{folder} is an optdepth {found} folder, not a {kind} folder;"
                                  " choose another output folder")
            return
        if kind == "run" and RunLayout(folder).is_trained():  # written before markers existed
            return
        entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) \
            if folder.is_dir() else []
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise RunDirError(f"cannot use {folder} as an output folder: {_reason(exc)}") from exc
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise RunDirError(f"{folder} is not empty and is not an optdepth output folder (no"
                          f" {MARKER} marker): it holds {shown}. Nothing was written; choose a new"
                          " or empty folder.")


def _marker_kind(folder: Path) -> str:
    try:
        kind = json.loads((folder / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise RunDirError(f"{folder / MARKER} is unreadable; if the folder is an optdepth output"
                          " folder, restore the marker, else choose another folder") from exc
    if kind not in KINDS:
        raise RunDirError(f"{folder / MARKER} names an unknown kind {kind!r}")
    return kind


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def write_marker(folder: Path, kind: str) -> None:
    """Mark ``folder`` as an optdepth output folder of ``kind`` (once; an existing marker stays)."""
    if not (folder / MARKER).is_file():
        write_json(folder / MARKER, {"kind": kind, "written_by": "optdepth"})
