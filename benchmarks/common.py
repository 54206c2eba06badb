"""What every benchmark script shares: thread settings and the JSON it writes.

Each script sets torch's threads with :func:`set_threads` and writes its result with
:func:`write_result`, which adds the environment (:func:`optdepth.reports.environment`) and
the command line, so that every figure in benchmarks/results/ says what produced it and where.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from optdepth.io import write_json
from optdepth.reports.environment import environment


def set_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (None: torch's default); return the count in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def write_result(path: str | Path, result: dict[str, Any],
                 argv: list[str] | None = None) -> None:
    """Write ``result`` with ``environment`` and ``command`` added, atomically; say where."""
    script = Path(sys.argv[0]).name
    command = " ".join(["python", f"benchmarks/{script}",
                        *(argv if argv is not None else sys.argv[1:])])
    write_json(path, {**result, "environment": environment(), "command": command})
    print(f"wrote {path}")
