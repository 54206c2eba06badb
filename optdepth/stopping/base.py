"""The stopping-policy contract, the prophet (oracle) bound and policy evaluation.

Shapes used throughout:
    rewards   (N, T)     realised reward of stopping at step t on path n.
    features  (N, T, F)  what is observable at step t; a policy at step t uses steps <= t only.
    stop times (N,)      int, the first step at which each path stops, in [0, T - 1].
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar, NamedTuple, Self

import numpy as np

from ._validation import (
    NotFittedError,
    check_features,
    check_rewards,
    check_step,
    check_stop_times,
)

__all__ = ["PolicyValue", "StoppingPolicy", "oracle_stop_times", "policy_value"]

logger = logging.getLogger(__name__)


class PolicyValue(NamedTuple):
    """Mean realised reward of a policy and its Monte Carlo standard error."""

    mean: float
    standard_error: float


def policy_value(rewards: Any, stop_times: Any) -> PolicyValue:
    """Mean realised reward of stopping each path at its stop time.

    Args:
        rewards: (N, T) realised rewards.
        stop_times: (N,) int stop times in [0, T - 1].

    Returns:
        ``(mean, standard_error)``; the standard error is std(ddof=1)/sqrt(N) (NaN for N = 1).
    """
    rewards = check_rewards(rewards)
    n_paths, n_steps = rewards.shape
    times = check_stop_times(stop_times, n_paths, n_steps)
    realised = rewards[np.arange(n_paths), times]
    mean = float(realised.mean())
    if n_paths < 2:
        return PolicyValue(mean, float("nan"))
    return PolicyValue(mean, float(realised.std(ddof=1) / np.sqrt(n_paths)))


def oracle_stop_times(rewards: Any) -> np.ndarray:
    """The prophet policy: the first argmax of each path's realised rewards.

    Not implementable (it sees the future), but an upper bound on every policy's value.

    Args:
        rewards: (N, T) realised rewards.

    Returns:
        (N,) int64 stop times.
    """
    rewards = check_rewards(rewards)
    return np.argmax(rewards, axis=1).astype(np.int64)


class StoppingPolicy(abc.ABC):
    """Base class of every stopping policy.

    A subclass implements two hooks:

    * ``_fit(rewards, features)`` chooses the policy that maximises the mean realised reward;
    * ``_stop_window(window, t)`` returns the stop decision at step t from the trailing
      ``window_size`` steps of features, ``window`` of shape (n, w, F) with
      ``w = min(window_size, t + 1)`` (the last entry along axis 1 is step t).

    The base class validates input and derives :meth:`stop_at` (the online decision at one
    step) and :meth:`stop_times` (the first stop of each path, evaluated only on paths that
    are still running) from ``_stop_window``, so the two always agree.

    Attributes:
        n_steps_: T seen by :meth:`fit` (None before fitting).
        n_features_: F seen by :meth:`fit` (None before fitting).
    """

    #: Registry name of the policy.
    name: ClassVar[str] = "base"
    #: True for policies with one model per step: they only apply to exactly ``n_steps_`` steps
    #: and always stop at step ``n_steps_ - 1``.
    fixed_horizon: ClassVar[bool] = False

    def __init__(self) -> None:
        self.n_steps_: int | None = None
        self.n_features_: int | None = None

    # ----------------------------------------------------------------- hooks
    @abc.abstractmethod
    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        """Fits on validated rewards (N, T) and features (N, T, F)."""

    @abc.abstractmethod
    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        """Returns bool (n,) decisions at step t from a (n, w, F) trailing window."""

    @property
    def window_size(self) -> int:
        """How many trailing steps (up to and including t) a decision at step t needs."""
        return 1

    def _check_ready(self, n_features: int) -> None:
        """Raises if the policy cannot decide yet; subclasses may relax or extend this."""
        if self.n_steps_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(rewards, features) first")
        if n_features != self.n_features_:
            raise ValueError(
                f"features have F={n_features} features but {type(self).__name__} was fitted "
                f"with F={self.n_features_}; pass the same feature columns as in fit"
            )

    # ---------------------------------------------------------------- public
    def fit(self, rewards: Any, features: Any) -> Self:
        """Chooses the policy that maximises the mean realised reward.

        Args:
            rewards: (N, T) realised rewards, N >= 1, T >= 2.
            features: (N, T, F) observable features ((N, T) is read as F = 1).

        Returns:
            self, fitted.
        """
        rewards = check_rewards(rewards)
        features = check_features(features, *rewards.shape)
        self._fit(rewards, features)
        self.n_steps_, self.n_features_ = rewards.shape[1], features.shape[2]
        logger.debug("fitted %s on N=%d, T=%d, F=%d", self, *features.shape)
        return self

    def stop_at(self, features_prefix: Any, t: int) -> np.ndarray:
        """Whether the policy stops at step t, given what is observable up to t.

        Args:
            features_prefix: (N, t + 1, F) features of steps 0..t (N may be 0).
            t: The current step.

        Returns:
            bool (N,). Fixed-horizon policies always stop at t = ``n_steps_ - 1``.
        """
        limit = self.n_steps_ if self.fixed_horizon else None
        t = check_step(t, limit)
        prefix = check_features(features_prefix, n_steps=t + 1, name="features_prefix", allow_empty=True)
        self._check_ready(prefix.shape[2])
        if self.fixed_horizon and t == limit - 1:
            return np.ones(prefix.shape[0], dtype=bool)
        window = prefix[:, max(0, t + 1 - self.window_size) :]
        return np.asarray(self._stop_window(window, t), dtype=bool)

    def stop_times(self, features: Any) -> np.ndarray:
        """First step at which each path stops; every path stops at step T - 1 at the latest.

        Args:
            features: (N, T, F) features (N may be 0). Fixed-horizon policies need
                T == ``n_steps_``.

        Returns:
            int64 (N,) stop times in [0, T - 1].
        """
        n_steps = self.n_steps_ if self.fixed_horizon else None
        features = check_features(features, n_steps=n_steps, allow_empty=True)
        self._check_ready(features.shape[2])
        n_paths, n_total, _ = features.shape
        times = np.full(n_paths, n_total - 1, dtype=np.int64)
        active = np.arange(n_paths)
        for t in range(n_total - 1):
            if active.size == 0:
                break
            window = features[active, max(0, t + 1 - self.window_size) : t + 1]
            stop = np.asarray(self._stop_window(window, t), dtype=bool)
            times[active[stop]] = t
            active = active[~stop]
        return times

    def value(self, rewards: Any, features: Any) -> PolicyValue:
        """Mean realised reward (and its standard error) of this policy on (rewards, features)."""
        rewards = check_rewards(rewards)
        features = check_features(features, *rewards.shape)
        return policy_value(rewards, self.stop_times(features))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
