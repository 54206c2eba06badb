"""Risk control: the most efficient member of a policy family whose risk is certified.

A family of stopping policies indexed by one scalar (a confidence threshold, a patience, the
price of compute λ of LSM or OSLA) is handed over as ``losses``, an ``(n, K)`` array: the loss
in [0, 1] of each of ``n`` calibration samples under each of ``K`` candidates, ordered from the
most conservative (most compute) to the most efficient. The calibration samples must not have
been used to build the candidates (fit the policies on other data). Two guarantees:

- **Learn-then-Test** (``method="ltt"``; Angelopoulos, Bates et al. 2021): each candidate's null
  hypothesis "risk > ε" gets a Hoeffding–Bentkus p-value (Bates et al. 2021, Prop. 3.5 and
  Thm. A.1)::

      p_k = min( exp(-n · h(min(R̂_k, ε), ε)),  e · P[Binomial(n, ε) <= ceil(n · R̂_k)] ),
      h(a, b) = a·log(a/b) + (1-a)·log((1-a)/(1-b)),

  and fixed-sequence testing walks the candidates in order, rejecting while ``p_k <= δ``. The last
  rejected candidate is chosen: with probability at least ``1 - δ`` over the calibration draw,
  its risk on new data is at most ε (the family-wise error of fixed-sequence testing is at most δ,
  with no assumption on how the risks vary along the family).
- **Conformal risk control** (``method="crc"``; Angelopoulos et al. 2022): the expected risk on
  a new sample is at most ε. The losses are first made monotone along the family
  (``L̃_k = max_{j<=k} L_j`` per sample, an upper bound on ``L_k``, as CRC requires), and the
  chosen candidate is the last one whose bound ``(n·R̂_k + 1) / (n + 1)`` is at most ε.

Risks the offline layer hands over (:mod:`optdepth.offline.policy_evaluation`): the accuracy
lost against the full-depth prediction (loss 1 when the full model is right and the early exit
wrong) and disagreement with the full model (CALM's consistency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from optdepth.errors import ConfigError

METHODS = ("ltt", "crc")


@dataclass(frozen=True)
class RiskControlResult:
    """What :func:`risk_control` chose and why.

    Attributes:
        method: ``"ltt"`` or ``"crc"``.
        epsilon, delta: the risk level and (LTT) the allowed probability of exceeding it.
        n: calibration samples.
        index: the chosen candidate (the most efficient certified one), None when no candidate
            can be certified at this level.
        risks: (K,) empirical risk of each candidate on the calibration samples (for CRC, of
            the monotone losses).
        p_values: (K,) LTT's Hoeffding–Bentkus p-values (None for CRC).
        bounds: (K,) CRC's bounds ``(n·R̂ + 1) / (n + 1)`` (None for LTT).
    """

    method: str
    epsilon: float
    delta: float | None
    n: int
    index: int | None
    risks: np.ndarray
    p_values: np.ndarray | None = None
    bounds: np.ndarray | None = None

    @property
    def certified(self) -> bool:
        return self.index is not None

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the choice (the chosen candidate's risk and p-value or bound)."""
        k = self.index
        return {"method": self.method, "epsilon": self.epsilon, "delta": self.delta,
                "n_calibration": self.n, "index": k,
                "calibration_risk": None if k is None else float(self.risks[k]),
                "p_value": None if k is None or self.p_values is None
                else float(self.p_values[k]),
                "bound": None if k is None or self.bounds is None else float(self.bounds[k])}


def hoeffding_bentkus_p_value(risk: ArrayLike, n: int, epsilon: float) -> np.ndarray:
    """Hoeffding–Bentkus p-values of the null "true risk > ε" given empirical risks ``risk``
    (mean of ``n`` losses in [0, 1]); same shape as ``risk``."""
    risk = np.asarray(risk, dtype=float)
    a = np.minimum(risk, epsilon)
    h = special.xlogy(a, a / epsilon) + special.xlogy(1 - a, (1 - a) / (1 - epsilon))
    hoeffding = np.exp(-n * h)
    # ceil with a tolerance: n·R̂ is an integer for 0/1 losses, up to float rounding
    k = np.ceil(n * risk - 1e-9)
    bentkus = math.e * special.bdtr(k, n, epsilon)  # P[Binomial(n, ε) <= k]
    return np.minimum(np.minimum(hoeffding, bentkus), 1.0)


def samples_needed(epsilon: float, delta: float, method: str) -> int:
    """The fewest calibration samples that can certify a candidate at all (one with zero
    empirical risk): LTT needs ``(1 - ε)^n <= δ``, CRC needs ``1 / (n + 1) <= ε``."""
    if method == "ltt":
        return math.ceil(math.log(delta) / math.log1p(-epsilon) - 1e-9)
    return max(1, math.ceil(1 / epsilon - 1 - 1e-9))


def risk_control(losses: ArrayLike, epsilon: float, delta: float = 0.1, method: str = "ltt",
                 costs: ArrayLike | None = None) -> RiskControlResult:
    """Choose the most efficient candidate whose risk is controlled at ``epsilon``.

    Args:
        losses: (n_calibration, n_candidates) per-sample losses in [0, 1], candidates ordered
            from the most conservative to the most efficient.
        epsilon: the risk level, in (0, 1) (0.01: one point of accuracy).
        delta: LTT: the allowed probability that the chosen candidate's risk exceeds
            ``epsilon``, in (0, 1). Ignored by CRC, which bounds the expected risk.
        method: ``"ltt"`` (P(risk <= ε) >= 1 - δ) or ``"crc"`` (E[risk] <= ε).
        costs: optional (n_candidates,) mean compute of the candidates (measured on the data
            that built them); checked to be non-increasing, i.e. correctly ordered.

    Returns:
        :class:`RiskControlResult`; ``index`` None when no candidate can be certified.

    Raises:
        ConfigError: ε or δ outside (0, 1), an unknown method, losses that are not a finite
            2-D array in [0, 1], candidates out of order, or too few calibration samples to
            certify any candidate (the message says how many are needed).
    """
    losses = _check_losses(losses)
    epsilon, delta = check_level("epsilon", epsilon), check_level("delta", delta)
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if costs is not None:
        _check_order(costs, losses.shape[1])
    n = losses.shape[0]
    needed = samples_needed(epsilon, delta, method)
    if n < needed:
        level = f"ε = {epsilon:g}, δ = {delta:g}" if method == "ltt" else f"ε = {epsilon:g}"
        raise ConfigError(f"{n} calibration samples cannot certify any candidate at {level}"
                          f" with {method.upper()}: at least {needed} are needed, even with no"
                          " observed loss")
    if method == "crc":
        monotone = np.maximum.accumulate(losses, axis=1)
        risks = monotone.mean(axis=0)
        bounds = (n * risks + 1.0) / (n + 1.0)
        ok = np.flatnonzero(bounds <= epsilon)  # bounds are non-decreasing along the family
        index = int(ok[-1]) if ok.size else None
        return RiskControlResult("crc", epsilon, None, n, index, risks, bounds=bounds)
    risks = losses.mean(axis=0)
    p_values = hoeffding_bentkus_p_value(risks, n, epsilon)
    failed = np.flatnonzero(p_values > delta)  # fixed-sequence testing stops at the first
    last = (len(p_values) if failed.size == 0 else int(failed[0])) - 1
    return RiskControlResult("ltt", epsilon, delta, n, last if last >= 0 else None, risks,
                             p_values=p_values)


def _check_losses(losses: ArrayLike) -> np.ndarray:
    try:
        array = np.asarray(losses, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"losses must be a numeric (n_calibration, n_candidates) array: {exc}"
                          ) from exc
    if array.ndim != 2 or 0 in array.shape:
        raise ConfigError(f"losses must be a non-empty (n_calibration, n_candidates) array,"
                          f" got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ConfigError(f"losses hold {int((~np.isfinite(array)).sum())} NaN or infinite"
                          " values")
    if array.min() < 0 or array.max() > 1:
        raise ConfigError(f"losses must lie in [0, 1], got values in [{array.min():g},"
                          f" {array.max():g}]")
    return array


def check_level(name: str, value: Any) -> float:
    """``value`` as a float, if it is a number in (0, 1) (a risk level, a probability)."""
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _check_order(costs: ArrayLike, k: int) -> None:
    costs = np.asarray(costs, dtype=float)
    if costs.shape != (k,) or not np.isfinite(costs).all():
        raise ConfigError(f"costs must be {k} finite numbers, one per candidate, got shape"
                          f" {costs.shape}")
    rising = np.flatnonzero(np.diff(costs) > 1e-12)
    if rising.size:
        i = int(rising[0])
        raise ConfigError(f"candidates must be ordered from the most conservative to the most"
                          f" efficient: candidate {i + 1} costs {costs[i + 1]:.4g}, more than"
                          f" candidate {i} ({costs[i]:.4g})")


__all__ = ["METHODS", "RiskControlResult", "check_level", "hoeffding_bentkus_p_value",
           "risk_control", "samples_needed"]
