"""What reaching an exit costs: the FLOP shares the traces carry, or latency measured on a device.

The stopping problem prices exit t at C_t, the cumulative cost of reaching and evaluating it as a
fraction of the full-depth pass. The traces carry FLOP shares (``exit_costs``). On hardware where
early blocks cost more time per FLOP than late ones (CPUs, on the wide first stage), a policy
that is optimal in FLOPs is not optimal in seconds; a :class:`LatencyProfile` holds the time
shares measured on one device at one batch size
(:func:`optdepth.online.timing.measure_latency_profile`), and
:meth:`LatencyProfile.prices` hands them to :func:`~optdepth.offline.evaluate_policies`
(``prices=...``), which then fits the policies' rewards ``correct - λ·C_t`` and picks operating
points in seconds instead of FLOPs. The policies' features (the ``cost`` column included) stay
as traced, so the fitted policies run in the early-exit engine unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from optdepth.errors import ConfigError
from optdepth.traces import Traces


@dataclass(frozen=True)
class LatencyProfile:
    """Measured time to reach each exit of one model, on one device, at one batch size.

    Attributes:
        arch: the model's architecture name. flop_costs: (T,) its FLOP shares per exit (they
            identify the model's exits; traces of another model have others).
        batch_size: the batch the times were measured at. device, threads: where.
        time_shares: (T,) time to reach and evaluate each exit, as a share of the full-depth
            (final-head) pass.
    """

    arch: str | None
    flop_costs: tuple[float, ...]
    batch_size: int
    device: str
    threads: int
    time_shares: tuple[float, ...]

    def prices(self, traces: Traces, batch_size: int) -> np.ndarray:
        """(T,) the time shares, as prices for ``traces`` of the same model run at ``batch_size``.

        Raises:
            ConfigError: the profile was measured for another model or another batch size.
        """
        arch = traces.metadata.get("arch")
        costs = np.asarray(traces.exit_costs, dtype=float)
        if (self.arch and arch and self.arch != arch) or costs.shape != (len(self.flop_costs),) \
                or not np.allclose(costs, self.flop_costs, rtol=0.0, atol=1e-6):
            raise ConfigError(f"the latency profile was measured for {self.arch!r} with exit"
                              f" costs {np.round(self.flop_costs, 4).tolist()}, not for these"
                              f" traces ({arch!r}, {np.round(costs, 4).tolist()}); measure it on"
                              " the traced model")
        if batch_size != self.batch_size:
            raise ConfigError(f"the latency profile was measured at batch size {self.batch_size},"
                              f" not {batch_size}: time per sample depends on the batch; measure"
                              " it at the batch size you will run")
        return check_prices(self.time_shares, len(costs))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_prices(prices: ArrayLike, n_exits: int) -> np.ndarray:
    """(T,) float64 prices: finite, positive and non-decreasing (reaching a later exit passes
    every earlier one)."""
    try:
        array = np.asarray(prices, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"prices must be {n_exits} numbers, one per exit: {exc}") from exc
    if array.shape != (n_exits,) or not np.isfinite(array).all() or (array <= 0).any():
        raise ConfigError(f"prices must be {n_exits} finite positive numbers, one per exit, got"
                          f" {np.round(array, 4).tolist()}")
    if (np.diff(array) < -1e-9).any():
        raise ConfigError(f"prices must not decrease with depth (reaching exit t passes every"
                          f" earlier one), got {np.round(array, 4).tolist()}")
    return array


__all__ = ["LatencyProfile", "check_prices"]
