"""Simple rules: a threshold on one feature, and patience (unchanged predictions).

Both are fitted *exactly*: the in-sample mean reward as a function of the threshold is
piecewise constant, changing only at the record values of each path's running maximum, so one
sort of those records (O(N T log(N T))) evaluates every distinct threshold.
"""

from __future__ import annotations

import logging

import numpy as np

from ._validation import NotFittedError, check_feature_index, check_int, check_real
from .base import StoppingPolicy

__all__ = ["PatiencePolicy", "ThresholdPolicy", "best_threshold", "unchanged_counts"]

logger = logging.getLogger(__name__)


def best_threshold(signal: np.ndarray, rewards: np.ndarray) -> tuple[float, float]:
    """Exact best threshold for the rule "stop at the first t with signal[n, t] >= theta".

    Paths that never cross stop at T - 1. Ties between thresholds with the same mean reward
    are broken towards the largest threshold (the latest, most conservative stopping).

    Args:
        signal: (N, T) float, the feature compared with the threshold.
        rewards: (N, T) float realised rewards.

    Returns:
        (theta, mean_reward); theta = inf means "never stop before T - 1".
    """
    n_paths, n_steps = signal.shape
    running = np.maximum.accumulate(signal, axis=1)
    is_record = np.ones_like(running, dtype=bool)
    is_record[:, 1:] = running[:, 1:] > running[:, :-1]
    rows, cols = np.nonzero(is_record)  # row-major: sorted by path, then by step
    values = signal[rows, cols]
    # Lowering theta past a record value moves the stop from the path's next record (or T-1)
    # to this record.
    following = np.full(rows.shape, n_steps - 1)
    same_path = rows[1:] == rows[:-1]
    following[:-1][same_path] = cols[1:][same_path]
    delta = rewards[rows, cols] - rewards[rows, following]
    order = np.argsort(-values, kind="stable")
    sorted_values = values[order]
    base = float(rewards[:, -1].sum())
    totals = base + np.cumsum(delta[order])
    group_end = np.flatnonzero(np.r_[sorted_values[1:] != sorted_values[:-1], True])
    all_totals = np.r_[base, totals[group_end]]
    thetas = np.r_[np.inf, sorted_values[group_end]]
    best = int(np.argmax(all_totals))
    return float(thetas[best]), float(all_totals[best] / n_paths)


class ThresholdPolicy(StoppingPolicy):
    """Stops at the first t with ``features[:, t, feature] >= threshold``.

    Args:
        feature: Index into the feature axis F.
        threshold: Fixed threshold, or None to let :meth:`fit` choose the one maximising the
            mean realised reward (exactly, over all distinct thresholds). A given threshold
            lets the policy be used without fitting.

    Attributes:
        threshold_: The threshold in use (inf: never stop before the last step).
    """

    name = "threshold"

    def __init__(self, feature: int = 0, threshold: float | None = None) -> None:
        super().__init__()
        self.feature = check_int(feature, "feature", minimum=0)
        self.threshold = None if threshold is None else check_real(threshold, "threshold")
        self.threshold_: float | None = self.threshold

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        check_feature_index(self.feature, features.shape[2])
        if self.threshold is not None:
            self.threshold_ = self.threshold
            return
        self.threshold_, value = best_threshold(features[:, :, self.feature], rewards)
        logger.debug("threshold %.6g gives in-sample value %.6g", self.threshold_, value)

    def _check_ready(self, n_features: int) -> None:
        if self.threshold_ is None:
            raise NotFittedError(
                "ThresholdPolicy has no threshold; pass threshold=... or call fit(rewards, features) first"
            )
        check_feature_index(self.feature, n_features)

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        return window[:, -1, self.feature] >= self.threshold_

    def __repr__(self) -> str:
        return f"ThresholdPolicy(feature={self.feature}, threshold={self.threshold_})"


def unchanged_counts(predictions: np.ndarray) -> np.ndarray:
    """For each step, how many consecutive previous steps had the same prediction.

    Args:
        predictions: (N, T) prediction ids.

    Returns:
        (N, T) int64: 0 where the prediction changed (and at t = 0), k after k repeats.
    """
    n_paths, n_steps = predictions.shape
    same = np.zeros((n_paths, n_steps), dtype=bool)
    same[:, 1:] = predictions[:, 1:] == predictions[:, :-1]
    index = np.broadcast_to(np.arange(n_steps), (n_paths, n_steps))
    last_change = np.maximum.accumulate(np.where(same, 0, index), axis=1)
    return (index - last_change).astype(np.int64)


class PatiencePolicy(StoppingPolicy):
    """Stops once the prediction has stayed unchanged for ``patience`` consecutive steps.

    At step t it stops if the prediction ids at t, t-1, ..., t-k are all equal (k =
    ``patience``); k = 0 stops at once. Prediction ids are compared for exact equality.

    Args:
        feature: Index into F of the per-step prediction id.
        patience: Fixed k, or None to let :meth:`fit` choose the best k (exactly).

    Attributes:
        patience_: The k in use; ``n_steps_`` or more means "never stop before the last step".
    """

    name = "patience"

    def __init__(self, feature: int = 0, patience: int | None = None) -> None:
        super().__init__()
        self.feature = check_int(feature, "feature", minimum=0)
        self.patience = None if patience is None else check_int(patience, "patience", minimum=0)
        self.patience_: int | None = self.patience

    def _fit(self, rewards: np.ndarray, features: np.ndarray) -> None:
        check_feature_index(self.feature, features.shape[2])
        if self.patience is not None:
            self.patience_ = self.patience
            return
        counts = unchanged_counts(features[:, :, self.feature]).astype(np.float64)
        theta, value = best_threshold(counts, rewards)
        self.patience_ = rewards.shape[1] if np.isinf(theta) else int(theta)
        logger.debug("patience %d gives in-sample value %.6g", self.patience_, value)

    @property
    def window_size(self) -> int:
        return (self.patience_ or 0) + 1

    def _check_ready(self, n_features: int) -> None:
        if self.patience_ is None:
            raise NotFittedError(
                "PatiencePolicy has no patience; pass patience=... or call fit(rewards, features) first"
            )
        check_feature_index(self.feature, n_features)

    def _stop_window(self, window: np.ndarray, t: int) -> np.ndarray:
        k = self.patience_ or 0
        if window.shape[1] < k + 1:
            return np.zeros(window.shape[0], dtype=bool)
        ids = window[:, -(k + 1) :, self.feature]
        return np.all(ids == ids[:, -1:], axis=1)

    def __repr__(self) -> str:
        return f"PatiencePolicy(feature={self.feature}, patience={self.patience_})"
