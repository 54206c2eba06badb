"""Shared fixtures for the optdepth.stopping tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

Transform = Callable[[np.ndarray], np.ndarray]


def _binary_onehot(n_vars: int) -> Transform:
    weights = 2 ** np.arange(n_vars)

    def transform(state: np.ndarray) -> np.ndarray:  # (n, D) of 0/1 -> (n, 2**D)
        codes = np.rint(state).astype(np.int64) @ weights
        return np.eye(2**n_vars)[codes]

    return transform


def _onehot_levels(n_levels: int) -> Transform:
    def transform(state: np.ndarray) -> np.ndarray:  # (n, 1) of ints -> (n, n_levels)
        return np.eye(n_levels)[np.rint(state[:, 0]).astype(np.int64)]

    return transform


@pytest.fixture(scope="session")
def binary_onehot() -> Callable[[int], Transform]:
    """Factory of a fixed one-hot basis over states of 0/1 values.

    With it a per-step regression returns the empirical mean of the target for every distinct
    state, so LSM computes the exact Snell envelope of the empirical distribution.
    """
    return _binary_onehot


@pytest.fixture(scope="session")
def onehot_levels() -> Callable[[int], Transform]:
    """Factory of a one-hot basis of one integer-valued regressor in [0, n_levels)."""
    return _onehot_levels
