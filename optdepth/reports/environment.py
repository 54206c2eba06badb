"""What a measurement ran on, recorded next to every result (metrics.json, benchmark JSON)."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

#: Environment variables that set thread pools: a timing means little without them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def environment() -> dict[str, Any]:
    """torch version and threads, the CPU (and its kernel family), the GPU if any, the load.

    ``machine`` is the processor name (or the architecture where the OS gives none);
    ``cpu_capability`` is the kernel family torch dispatches to (``AVX512``, ``AVX2``, ...),
    which decides float results as much as the CPU does.
    """
    return {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "thread_env": {v: os.environ[v] for v in THREAD_VARS if v in os.environ},
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
