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

from typing import Any

import numpy as np

from optdepth.stopping import depth_certificate
from optdepth.traces import Traces


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
    t_bar = None
    if rho < 1 and lam > 0:
        t_bar = depth_certificate(K, rho, lipschitz, lam * step) + 1.0  # block index -> blocks
    return {"certificate_depth": t_bar, "mean_optimal_depth": mean_depth,
            "lipschitz": lipschitz, "lipschitz_quantile": quantile, "lambda": lam,
            "step_cost": lam * step}
