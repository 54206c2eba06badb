"""optdepth.stopping is pure numpy/scipy: it imports, and works, with torch unavailable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optdepth.stopping as stopping

PACKAGE_DIR = Path(stopping.__file__).resolve().parent

# Blocks torch, then loads optdepth.stopping under a stub parent package, so that the check
# covers this subpackage alone whatever optdepth/__init__.py does.
SCRIPT = f"""
import importlib, sys, types
sys.modules["torch"] = None  # any "import torch" now raises ImportError
parent = types.ModuleType("optdepth")
parent.__path__ = [{str(PACKAGE_DIR.parent)!r}]
sys.modules["optdepth"] = parent
stopping = importlib.import_module("optdepth.stopping")
import numpy as np
rewards = np.random.default_rng(0).normal(size=(50, 4))
policy = stopping.create_policy("least_squares").fit(rewards, rewards[:, :, None])
print(policy.stop_times(rewards[:, :, None]).shape, "torch" in sys.modules and sys.modules["torch"])
"""


def test_imports_and_runs_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(50,) None"


def test_no_module_mentions_torch():
    for path in PACKAGE_DIR.glob("*.py"):
        assert "import torch" not in path.read_text(), path.name


def test_public_api_is_exported():
    expected = {
        "StoppingPolicy",
        "LeastSquaresPolicy",
        "OneStepLookaheadPolicy",
        "ThresholdPolicy",
        "PatiencePolicy",
        "POLICIES",
        "create_policy",
        "list_policies",
        "oracle_stop_times",
        "policy_value",
        "backward_induction",
        "frontier",
        "operating_point",
        "fit_diminishing_returns",
        "depth_certificate",
        "stagewise_depth_certificate",
        "simulate_residual_stopping",
    }
    assert expected <= set(stopping.__all__)
    assert all(hasattr(stopping, name) for name in stopping.__all__)
