"""What every benchmark script shares: thread settings and the JSON it writes.

Each script sets torch's threads with :func:`set_threads`, checks its run directories with
:func:`require_evaluated` and writes its result with :func:`write_result`, which adds the
environment (:func:`optdepth.reports.environment`) and the command line, so that every figure in
benchmarks/results/ says what produced it and where.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from optdepth.io import write_json
from optdepth.reports.environment import environment
from optdepth.rundir import RunLayout


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


def require_evaluated(parser: argparse.ArgumentParser, runs: Iterable[Path],
                      checkpoint: bool = True) -> None:
    """Stop with a usage error unless every run has both trace files (and its checkpoint)."""
    for run in runs:
        layout = RunLayout(run)
        parts = [layout.checkpoint] * checkpoint + [layout.traces(s) for s in ("calibration", "test")]
        for part in parts:
            if not part.is_file():
                parser.error(f"{part} is missing; train and run `optdepth evaluate {run}`")
