"""L_depth: penalties that make what later blocks add small relative to what earlier ones did.

Every variant maps an :class:`ExitOutputs` to a scalar ``beta_eff * penalty``; ``beta_eff``
ramps linearly from 0 to ``beta`` over ``warmup_epochs`` so the exits first learn to predict.
A new variant subclasses :class:`DepthRegularizer` and implements :meth:`penalty`.

Two measure what later blocks add in state space (the residual norms ||F_t(h_t)|| / ||S_t(h_t)||:
``relative``, ``decay_hinge``); ``distill`` measures it in prediction space (how far the final
exit's prediction moves away from exit t's), which is what an early exit actually loses.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from optdepth.errors import ConfigError
from optdepth.models.base import ExitOutputs
from optdepth.models.neural_ode import depth_grid
from optdepth.registry import Registry


class DepthRegularizer(nn.Module):
    """Base class. Subclasses implement ``penalty(outputs: ExitOutputs) -> scalar``.

    Args:
        beta: weight β ≥ 0 of the penalty in the training loss.
        warmup_epochs: epochs over which β ramps linearly from 0 (0 = no warm-up).
    """

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0) -> None:
        super().__init__()
        for name, value in (("beta", beta), ("warmup_epochs", warmup_epochs)):
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        self.beta = float(beta)
        self.warmup_epochs = float(warmup_epochs)

    def weight(self, epoch: float | None = None) -> float:
        """β after warm-up at fractional ``epoch`` (full β when ``epoch`` is None)."""
        if epoch is None or self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, max(0.0, epoch) / self.warmup_epochs)

    def penalty(self, outputs: ExitOutputs) -> Tensor:
        """Unweighted scalar penalty of one forward pass."""
        raise NotImplementedError

    def forward(self, outputs: ExitOutputs, epoch: float | None = None) -> Tensor:
        """Scalar β(epoch) · penalty; exactly zero (no graph) when β(epoch) is 0."""
        w = self.weight(epoch)
        if w == 0.0:
            return outputs.logits.new_zeros(())
        return w * self.penalty(outputs)


def depth_ramp(num_blocks: int, device: torch.device | None = None) -> Tensor:
    """(blocks,) weights w_t = t / blocks for t = 1..blocks: later blocks pay more."""
    return torch.arange(1, num_blocks + 1, device=device, dtype=torch.float32) / num_blocks


class RelativeNormPenalty(DepthRegularizer):
    """Σ_t w_t · E_b[(||F_t|| / ||S_t||)²] with w_t = t / blocks (normalised to sum to 1)."""

    def penalty(self, outputs: ExitOutputs) -> Tensor:
        relative_norms = outputs.relative_residual_norms  # (blocks, B)
        w = depth_ramp(relative_norms.shape[0], relative_norms.device)
        return (w / w.sum() * relative_norms.pow(2).mean(dim=1)).sum()


class DecayHingePenalty(DepthRegularizer):
    """Σ_t E_b[relu(r_{t+1} − ρ·r_t)²] on relative norms r: asks for decay at rate ≤ ρ.

    Args:
        rho: target per-block decay rate in (0, 1].
    """

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0, rho: float = 0.8) -> None:
        super().__init__(beta, warmup_epochs)
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 < rho <= 1.0:
            raise ConfigError(f"rho must be a number in (0, 1], got {rho!r}")
        self.rho = float(rho)

    def penalty(self, outputs: ExitOutputs) -> Tensor:
        relative_norms = outputs.relative_residual_norms  # (blocks, B)
        excess = relative_norms[1:] - self.rho * relative_norms[:-1]  # (blocks-1, B)
        return torch.relu(excess).pow(2).mean(dim=1).sum()


class DistillPenalty(DepthRegularizer):
    """τ² · mean_{t<T} E_b[KL(p_T^τ || p_t^τ)]: how much the blocks after exit t move the prediction.

    p_t^τ = softmax(z_t / τ). The final exit's distribution is a fixed target (no gradient flows
    into it), so the penalty only pulls the early exits, and the layers under them, toward what
    the full network predicts; a sample whose early prediction already agrees with the final one
    can stop there at no loss. This is self-distillation (Zhang et al. 2019, "Be Your Own
    Teacher") read as a depth penalty; τ² keeps gradient sizes independent of τ (Hinton et al.).

    Args:
        temperature: softening τ > 0 of both distributions.
    """

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0,
                 temperature: float = 3.0) -> None:
        super().__init__(beta, warmup_epochs)
        if not isinstance(temperature, int | float) or not 0.0 < temperature < math.inf:
            raise ConfigError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def penalty(self, outputs: ExitOutputs) -> Tensor:
        logits = outputs.logits.float() / self.temperature  # (T, B, C)
        if logits.shape[0] < 2:
            return logits.new_zeros(())
        target = torch.log_softmax(logits[-1].detach(), dim=-1)  # (B, C)
        early = torch.log_softmax(logits[:-1], dim=-1)  # (T-1, B, C)
        kl = (target.exp() * (target - early)).sum(dim=-1)  # (T-1, B)
        return self.temperature ** 2 * kl.mean()


class KineticPenalty(DepthRegularizer):
    """Continuous L_depth for neural ODEs: ∫_0^1 w(s)·E_b||f(h(s), s)||² ds (kinetic energy).

    The kinetic-energy regulariser of Finlay et al. (2020, "How to train your neural ODE") with a
    depth weight w(s). It reads the per-segment displacements ``residual_norms`` = ||Δh_t|| =
    ||h(s_t) − h(s_{t−1})|| of a model such as ``optdepth.models.neural_ode`` and estimates each
    segment's ∫||f||² ds by ||Δh_t||² / Δs_t: exact when f is constant over the segment, a lower
    bound otherwise (Cauchy–Schwarz), so it penalises the net movement of the state per unit depth
    with no extra function evaluations; w is taken at the segment midpoint. The absolute scale
    grows with the state's size (channels × pixels), so β must be small: on the 32×7×7 state of
    ``node``, β = 2e-3 froze the dynamics (every exit as accurate as the first) and β = 2e-4
    still cost 1.5 points of accuracy in a 2-epoch run (benchmarks/neural_ode.py).

    Args:
        beta, warmup_epochs: see :class:`DepthRegularizer`.
        weight: ``"uniform"`` (w = 1, Finlay's kinetic energy) or ``"linear"`` (w(s) = 2s, mean 1:
            later depths pay more, like the ramp of the discrete L_depth).
        grid: exit depths (s_1, ..., s_T) ending at 1.0 (the model's ``grid[1:]``); default
            equal segments, s_t = t / T.
    """

    WEIGHTS = ("uniform", "linear")

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0, weight: str = "linear",
                 grid: tuple[float, ...] | list[float] | None = None) -> None:
        super().__init__(beta, warmup_epochs)
        if weight not in self.WEIGHTS:
            raise ConfigError(f"weight must be one of {', '.join(self.WEIGHTS)}, got {weight!r}")
        self.weighting = weight
        self.grid = None if grid is None else depth_grid(None, grid)

    def penalty(self, outputs: ExitOutputs) -> Tensor:
        """Σ_t w(s̄_t) E_b||Δh_t||² / Δs_t from the displacements ||Δh_t|| (segments, B)."""
        residual_norms = outputs.residual_norms  # (segments, B)
        n = residual_norms.shape[0]
        if self.grid is not None and len(self.grid) != n:
            raise ConfigError(f"the kinetic penalty's grid has {len(self.grid)} depths but the model "
                              f"reported {n} segments; pass the model's grid[1:] or no grid")
        ends = torch.tensor(self.grid if self.grid is not None else [(t + 1) / n for t in range(n)],
                            dtype=torch.float32, device=residual_norms.device)
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        ds, mid = ends - starts, 0.5 * (ends + starts)  # (segments,)
        w = torch.ones_like(mid) if self.weighting == "uniform" else 2.0 * mid
        return (w / ds * residual_norms.pow(2).mean(dim=1)).sum()


#: L_depth variant name -> class. Add an entry to register a new variant.
REGULARIZERS: Registry[type[DepthRegularizer]] = Registry("regularizer", {
    "relative": RelativeNormPenalty,
    "decay_hinge": DecayHingePenalty,
    "kinetic": KineticPenalty,
    "distill": DistillPenalty,
})


def list_regularizers() -> list[str]:
    """Names accepted by :func:`create_regularizer`."""
    return REGULARIZERS.names()


def create_regularizer(name: str, **kwargs: Any) -> DepthRegularizer:
    """Build an L_depth variant, e.g. ``create_regularizer("relative", beta=0.5)``."""
    return REGULARIZERS.create(name, **kwargs)
