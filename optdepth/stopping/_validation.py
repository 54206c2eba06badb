"""Argument checks shared by every module of :mod:`optdepth.stopping`.

Each check raises :class:`ValueError` with a message that names the argument, says what is
wrong with it and how to fix it. Nothing here uses ``assert``. The checks return the argument
converted to the form the library works with (``float64`` arrays, Python ints and floats).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "NotFittedError",
    "as_float_array",
    "check_choice",
    "check_feature_index",
    "check_features",
    "check_int",
    "check_real",
    "check_rewards",
    "check_step",
    "check_stop_times",
    "check_transition",
]

#: Tolerance on row sums of a transition matrix.
STOCHASTIC_ATOL = 1e-8


class NotFittedError(ValueError):
    """Raised when a policy that needs :meth:`fit` is used before it was fitted."""


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def as_float_array(value: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Converts ``value`` to a finite float64 array, checking its number of dimensions.

    Args:
        value: Array-like input.
        name: Argument name used in error messages.
        ndim: Allowed number(s) of dimensions, or None for any.

    Returns:
        The input as a float64 ndarray (a copy only when a conversion was needed).
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a numeric array (got {type(value).__name__}); pass a numpy array of real numbers"
        ) from exc
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if array.ndim not in allowed:
            wanted = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {wanted}, got shape {_shape_text(array.shape)}; reshape it")
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(
            f"{name} contains NaN or inf (first at index {tuple(int(i) for i in bad)}); "
            f"remove or impute non-finite values before calling"
        )
    return array


def check_rewards(rewards: Any, name: str = "rewards") -> np.ndarray:
    """Checks a reward matrix: float (N, T), N >= 1, T >= 2, all finite."""
    array = as_float_array(rewards, name, ndim=2)
    n_paths, n_steps = array.shape
    if n_paths == 0:
        raise ValueError(f"{name} has N=0 paths; pass at least one path (row)")
    if n_steps < 2:
        raise ValueError(
            f"{name} has T={n_steps} step(s); optimal stopping needs T >= 2 steps (with one step "
            f"there is no decision to make)"
        )
    return array


def check_features(
    features: Any,
    n_paths: int | None = None,
    n_steps: int | None = None,
    n_features: int | None = None,
    *,
    name: str = "features",
    allow_empty: bool = False,
) -> np.ndarray:
    """Checks a feature array of shape (N, T, F); a 2-D (N, T) array is read as F = 1.

    Args:
        features: Array-like input.
        n_paths: Required N, or None.
        n_steps: Required T, or None.
        n_features: Required F, or None.
        name: Argument name used in error messages.
        allow_empty: Whether N = 0 is accepted.

    Returns:
        Float64 array of shape (N, T, F).
    """
    array = as_float_array(features, name, ndim=(2, 3))
    if array.ndim == 2:
        array = array[:, :, None]
    n, t, f = array.shape
    if n == 0 and not allow_empty:
        raise ValueError(f"{name} has N=0 paths; pass at least one path")
    if t == 0 or f == 0:
        raise ValueError(
            f"{name} has shape {_shape_text(array.shape)}; it needs at least one step and one "
            f"feature (shape (N, T, F) with T, F >= 1)"
        )
    expected = (n_paths, n_steps, n_features)
    for axis, (got, want, label) in enumerate(zip(array.shape, expected, "NTF", strict=True)):
        if want is not None and got != want:
            raise ValueError(
                f"{name} has {label}={got} along axis {axis} but {want} is required "
                f"(shape {_shape_text(array.shape)}); features must be (N, T, F) and match the "
                f"rewards (N, T) and the fitted number of steps/features"
            )
    return array


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """Checks that ``value`` is an integer (not a bool) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Checks that ``value`` is a finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    """Checks that ``value`` is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(repr(c) for c in choices)}")
    return value


def check_feature_index(index: Any, n_features: int, name: str = "feature") -> int:
    """Checks an index into the feature axis F (non-negative, < F)."""
    index = check_int(index, name, minimum=0)
    if index >= n_features:
        raise ValueError(
            f"{name}={index} is out of range for features with F={n_features} features; use an "
            f"index in [0, {n_features - 1}]"
        )
    return index


def check_step(t: Any, n_steps: int | None, name: str = "t") -> int:
    """Checks a step index t in [0, n_steps - 1] (no upper bound when n_steps is None)."""
    maximum = None if n_steps is None else n_steps - 1
    return check_int(t, name, minimum=0, maximum=maximum)


def check_stop_times(stop_times: Any, n_paths: int, n_steps: int) -> np.ndarray:
    """Checks integer stop times of shape (N,) with values in [0, T - 1]."""
    array = np.asarray(stop_times)
    if array.shape != (n_paths,):
        raise ValueError(
            f"stop_times must have shape ({n_paths},) to match rewards with N={n_paths} paths, "
            f"got {_shape_text(array.shape)}"
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        rounded = np.asarray(array, dtype=np.float64)
        if not np.all(np.isfinite(rounded)) or np.any(rounded != np.round(rounded)):
            raise ValueError("stop_times must hold integer step indices; pass an int array")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > n_steps - 1):
        raise ValueError(
            f"stop_times must lie in [0, {n_steps - 1}] for rewards with T={n_steps} steps, "
            f"got values in [{array.min()}, {array.max()}]"
        )
    return array


def check_transition(transition: Any, name: str = "transition") -> np.ndarray:
    """Checks a row-stochastic matrix (S, S) or a stack of them (H, S, S)."""
    array = as_float_array(transition, name, ndim=(2, 3))
    if array.shape[-1] != array.shape[-2] or array.shape[-1] == 0:
        raise ValueError(
            f"{name} must be square (S, S) or (H, S, S) with S >= 1, got shape {_shape_text(array.shape)}"
        )
    if np.any(array < 0):
        bad = tuple(int(i) for i in np.argwhere(array < 0)[0])
        raise ValueError(
            f"{name} has a negative probability {array[bad]:.3g} at index {bad}; transition "
            f"probabilities must be >= 0"
        )
    sums = array.sum(axis=-1)
    off = np.abs(sums - 1.0) > STOCHASTIC_ATOL
    if np.any(off):
        bad = tuple(int(i) for i in np.argwhere(off)[0])
        raise ValueError(
            f"{name} must be row-stochastic (each row sums to 1); row {bad} sums to "
            f"{sums[bad]:.12g}. Normalise it with P / P.sum(axis=-1, keepdims=True)"
        )
    return array
