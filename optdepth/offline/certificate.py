"""The finite-depth certificate of docs/mathematics.md evaluated on a trained network's exit traces.

With relative residual norms r_t = ||F_t|| / ||S_t|| ≤ K·ρ^t (fitted over blocks t = 0, 1, ...)
and an exit utility u whose change over block t is at most L·r_t, one more block gains at most
L·K·ρ^t while it costs λ·ΔC, so continuing past t̄ = log(L·K / (λ·ΔC)) / log(1/ρ) never pays.

Here u is the probability of the true class; L is estimated as a high quantile (default 0.99)
of |u_{t+1} − u_t| / r over test samples and exits, so the bound holds for that share of the
observed steps rather than for every input (a maximum is dominated by a handful of outliers).
Depths are reported in blocks run (1 = the first residual block).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optdepth.stopping import depth_certificate, fit_diminishing_returns, stagewise_depth_certificate
from optdepth.traces import Traces


def stage_decay_fits(relative: np.ndarray, starts: list[int]) -> list[dict[str, Any]]:
    """The K·ρ^(t − t_s) fit of each stage's mean relative residual norms (``relative`` (blocks,)).

    A stage's first block is the fit's depth 0. A one-block stage has no decay to fit: its K is
    its norm and its ρ None.
    """
    ends = [*starts[1:], len(relative)]
    fits = []
    for start, end in zip(starts, ends, strict=True):
        stage = relative[start:end]
        if len(stage) < 2:
            fits.append({"first_block": int(start), "K": float(stage[0]), "rho": None, "r2": None})
            continue
        fit = fit_diminishing_returns(stage)
        fits.append({"first_block": int(start), "K": float(fit.K), "rho": float(fit.rho),
                     "r2": float(fit.r_squared)})
    return fits


def utility_lipschitz(traces: Traces, quantile: float = 0.99) -> float:
    """Quantile of |Δ p_true| / relative residual norm over consecutive exits (N·(T−1) steps)."""
    p_true = traces.probs[np.arange(len(traces.labels)), :, traces.labels]  # (N, T)
    relative = traces.residual_norms / np.maximum(traces.state_norms, 1e-12)  # (N, blocks)
    steps = relative[:, traces.exit_blocks[1:]]  # norm of the block that ends each later exit
    ratio = np.abs(np.diff(p_true, axis=1)) / np.maximum(steps, 1e-12)
    return float(np.quantile(ratio, quantile))


def network_certificate(traces: Traces, K: float, rho: float, lam: float,
                        stop_exits: np.ndarray, quantile: float = 0.99) -> dict[str, Any]:
    """Certificate depth next to the measured mean stopping depth of a policy.

    Args:
        traces: test-split traces.
        K, rho: the fitted decay of the relative residual norms (ρ < 1 for a finite bound).
        lam: price of compute λ (> 0; at λ ≤ 0 no depth is ever too costly).
        stop_exits: (N,) exit index at which the policy stopped each test sample.
        quantile: quantile used for the Lipschitz estimate.

    Returns:
        dict with ``certificate_depth`` (blocks; None when ρ ≥ 1 or λ ≤ 0),
        ``mean_optimal_depth`` (mean blocks run by the policy), ``lipschitz``, ``lambda``,
        ``step_cost`` (λ·ΔC with ΔC the mean compute of one exit's segment).
    """
    lipschitz = utility_lipschitz(traces, quantile)
    step = float(np.mean(np.diff(np.concatenate([[0.0], traces.exit_costs]))))
    mean_depth = float(np.mean(traces.exit_blocks[stop_exits] + 1))
    t_bar = stage_t_bar = None
    if lam > 0:  # block index -> blocks run
        if rho < 1:
            t_bar = depth_certificate(K, rho, lipschitz, lam * step) + 1.0
        stage_t_bar = _stage_certificate(traces, lipschitz, lam * step)
    return {"certificate_depth": t_bar, "stage_certificate_depth": stage_t_bar,
            "mean_optimal_depth": mean_depth,
            "lipschitz": lipschitz, "lipschitz_quantile": quantile, "lambda": lam,
            "step_cost": lam * step}


def _stage_certificate(traces: Traces, lipschitz: float, step_cost: float) -> float | None:
    """:func:`~optdepth.stopping.stagewise_depth_certificate` in blocks run, from the traces'
    per-stage decay fits (None when it is infinite). A one-block stage, with no fitted decay,
    counts as not decaying."""
    fits = stage_decay_fits(traces.mean_relative_norms(), traces.metadata.get("stage_starts", [0]))
    t_bar = stagewise_depth_certificate(
        [f["first_block"] for f in fits], [f["K"] for f in fits],
        [1.0 if f["rho"] is None else f["rho"] for f in fits], lipschitz, step_cost)
    return None if math.isinf(t_bar) else t_bar + 1.0
