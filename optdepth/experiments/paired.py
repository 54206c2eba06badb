"""Paired statistics over seeds: a median, a bootstrap interval and a signed-rank test.

One value per seed, each already paired (variant / reference at the same seed, or variant -
reference). numpy and scipy only.

* **median**: ``np.median`` of the per-seed values.
* **ci95**: a percentile bootstrap of the median: :data:`BOOTSTRAP_RESAMPLES` resamples of the
  seeds with replacement, from a generator seeded with :data:`BOOTSTRAP_SEED` (the interval is
  the same on every run and machine). Implemented here rather than with
  ``scipy.stats.bootstrap``, whose BCa default is undefined for the few, often tied, medians of
  a handful of seeds. With n seeds it lies within the values' range, and below about 10 seeds it
  covers less than 95%: read it as the spread of the seeds, not as an exact interval.
* **p_value**: the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of the
  differences from the null (ratios are tested as log-ratios against 0, differences against 0).
  Its exact p-value cannot go below 2 / 2^n (``p_floor``): 0.0625 for 5 seeds, so fewer than 6
  seeds can never reach p < 0.05. Where every difference is 0 the p-value is 1 (no evidence of
  a difference); with fewer than 2 values there is no interval and no test (None).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: What each kind of paired value is tested against: ratios on the log scale against 1, so that
#: 0.8 and 1.25 are equally far from "no change"; differences against 0.
KINDS = ("ratio", "diff")


def bootstrap_median_interval(values: ArrayLike, level: float = 0.95,
                              resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` ((n,), n >= 2)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))  # (B, n) seed indices
    medians = np.median(values[picks], axis=1)  # (B,)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def signed_rank_p(differences: ArrayLike) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``differences`` ((n,), n >= 2) against 0.

    Exact where scipy can be (no zeros, no ties), else its normal approximation; 1.0 when all
    differences are 0.
    """
    differences = np.asarray(differences, dtype=float)
    if not np.any(differences):
        return 1.0
    return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def paired_stat(values: ArrayLike, seeds: list[int], kind: str) -> dict[str, Any]:
    """The STAT record of compare.json for one paired quantity.

    Args:
        values: (n,) one paired value per seed (a ratio > 0, or a difference).
        seeds: the n seeds the values belong to, in the same order.
        kind: "ratio" (tested as log-ratio against 0) or "diff" (against 0).

    Returns:
        ``median``, ``ci95`` [lo, hi], ``values``, ``seeds``, ``p_value`` and ``p_floor`` (the
        least p-value n seeds can give); ``ci95`` and the p-values are None below 2 seeds.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    values = np.asarray(values, dtype=float)
    if len(values) != len(seeds):
        raise ValueError(f"{len(values)} values for {len(seeds)} seeds")
    record: dict[str, Any] = {"median": float(np.median(values)) if len(values) else None,
                              "ci95": None, "values": values.tolist(), "seeds": list(seeds),
                              "p_value": None, "p_floor": None}
    if len(values) >= 2:
        differences = np.log(values) if kind == "ratio" else values
        record.update(ci95=list(bootstrap_median_interval(values)),
                      p_value=signed_rank_p(differences), p_floor=2.0 / 2 ** len(values))
    return record
