"""L_depth: penalties that make what later blocks add small relative to what earlier ones did.

Every variant maps an :class:`ExitOutputs` to a scalar ``beta_eff * penalty``; ``beta_eff``
ramps linearly from 0 to ``beta`` over ``warmup_epochs`` so the exits first learn to predict.
A new variant subclasses :class:`DepthRegularizer` and implements :meth:`penalty`.

Two measure what later blocks add in state space (the residual norms ||F_t(h_t)|| / ||S_t(h_t)||:
``relative``, ``decay_hinge``); ``distill`` measures it in prediction space (how far the final
exit's prediction moves away from exit t's), which is what an early exit actually loses;
``stopping`` trains for the stopping rule itself (the expected stopping loss under a soft Snell
envelope), and ``sum`` trains several of them together.
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

    def attach(self, model: nn.Module) -> None:
        """Read what the penalty needs of the model it trains (its exit costs); default none."""

    def weight(self, epoch: float | None = None) -> float:
        """β after warm-up at fractional ``epoch`` (full β when ``epoch`` is None)."""
        if epoch is None or self.warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, max(0.0, epoch) / self.warmup_epochs)

    #: Whether :meth:`penalty` reads the labels (then ``forward`` must be given ``targets``).
    needs_targets = False

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None) -> Tensor:
        """Unweighted scalar penalty of one forward pass; ``targets`` (B,) class indices."""
        raise NotImplementedError

    def forward(self, outputs: ExitOutputs, epoch: float | None = None,
                targets: Tensor | None = None) -> Tensor:
        """Scalar β(epoch) · penalty; exactly zero (no graph) when β(epoch) is 0.

        Args:
            outputs: the multi-exit forward pass, logits (T, B, C).
            epoch: fractional epoch, for the warm-up of β.
            targets: (B,) class indices; required by a variant with ``needs_targets``.
        """
        w = self.weight(epoch)
        if w == 0.0:
            return outputs.logits.new_zeros(())
        if self.needs_targets and targets is None:
            raise ConfigError(f"the {type(self).__name__} L_depth reads the labels: call it as"
                              " regularizer(outputs, epoch=..., targets=labels)")
        return w * self.penalty(outputs, targets)


def depth_ramp(num_blocks: int, device: torch.device | None = None) -> Tensor:
    """(blocks,) weights w_t = t / blocks for t = 1..blocks: later blocks pay more."""
    return torch.arange(1, num_blocks + 1, device=device, dtype=torch.float32) / num_blocks


class RelativeNormPenalty(DepthRegularizer):
    """Σ_t w_t · E_b[(||F_t|| / ||S_t||)²] with w_t = t / blocks (normalised to sum to 1)."""

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
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

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
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

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
        logits = outputs.logits.float() / self.temperature  # (T, B, C)
        if logits.shape[0] < 2:
            return logits.new_zeros(())
        target = torch.log_softmax(logits[-1].detach(), dim=-1)  # (B, C)
        early = torch.log_softmax(logits[:-1], dim=-1)  # (T-1, B, C)
        kl = (target.exp() * (target - early)).sum(dim=-1)  # (T-1, B)
        return self.temperature ** 2 * kl.mean()


def soft_stopping_distribution(rewards: Tensor, temperature: float) -> Tensor:
    """Where a soft Snell envelope stops: (T, B) probabilities over exits, summing to 1 per sample.

    Backward induction along each sample's path with a smoothed max: V_T = r_T, and for t < T
    s_t = σ((r_t − V_{t+1}) / τ), V_t = s_t·r_t + (1 − s_t)·V_{t+1}; the rule stops at t with
    probability q_t = s_t·Π_{j<t}(1 − s_j) (q_T takes the rest). As τ → 0, s_t becomes
    1[r_t > max_{j>t} r_j] and q the one-hot of the path's (last) argmax: the hard envelope.

    Args:
        rewards: (T, B) reward of stopping at each exit.
        temperature: τ > 0, in the rewards' units.
    """
    value = rewards[-1]  # (B,)
    stops = [torch.ones_like(value)]  # s_T = 1: the last exit always stops
    for t in range(rewards.shape[0] - 2, -1, -1):
        stop = torch.sigmoid((rewards[t] - value) / temperature)
        value = stop * rewards[t] + (1 - stop) * value
        stops.append(stop)
    s = torch.stack(stops[::-1])  # (T, B)
    reached = torch.cumprod(torch.cat([torch.ones_like(s[:1]), 1 - s[:-1]]), dim=0)  # (T, B)
    return s * reached


class StoppingLossPenalty(DepthRegularizer):
    """The expected stopping loss E_b Σ_t q_t(x)·(ℓ_t(x) + λ·C_t): trains for the stopping rule.

    ℓ_t is exit t's cross-entropy on the label and C_t its cumulative compute (full depth = 1).
    q(x) is where a differentiable stopping rule stops (:func:`soft_stopping_distribution`),
    a rule that sees only what a deployed one sees: each exit's own estimate of its loss,
    −log max_c p_t(c), priced by λ·C_t. The gradient through ℓ weights each exit's loss by how
    likely the rule stops there (an exit learns hardest on the inputs that leave at it); the
    gradient through q lowers the confidence of exits where stopping would be wrong and, through
    λ·C_t, raises it where stopping early is right. The continuation value is read along the
    sample's own path (its later exits' confidences), not as the conditional expectation a fitted
    policy estimates: a surrogate, exact in the limit of confident exits.

    Args:
        price: λ ≥ 0 in nats per full forward pass.
        temperature: τ > 0 of the soft envelope, in nats.
        costs: (T,) cumulative exit costs ending at 1; default the model's measured FLOP costs
            (set by :meth:`attach`), else t / T.
    """

    needs_targets = True

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0, price: float = 0.2,
                 temperature: float = 0.1, costs: tuple[float, ...] | list[float] | None = None
                 ) -> None:
        super().__init__(beta, warmup_epochs)
        for name, value, low in (("price", price, 0.0), ("temperature", temperature, None)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or (value < 0 if low == 0.0 else value <= 0)):
                raise ConfigError(f"{name} must be a finite number {'>=' if low == 0.0 else '>'}"
                                  f" 0, got {value!r}")
        self.price, self.temperature = float(price), float(temperature)
        self.costs = None if costs is None else _check_costs(costs)

    def attach(self, model: nn.Module) -> None:
        if self.costs is None and hasattr(model, "exit_costs"):
            self.costs = tuple(float(c) for c in model.exit_costs())

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
        log_p = torch.log_softmax(outputs.logits.float(), dim=-1)  # (T, B, C)
        t = log_p.shape[0]
        loss = -log_p.gather(-1, targets.expand(t, -1).unsqueeze(-1)).squeeze(-1)  # (T, B)
        if self.costs is not None and len(self.costs) != t:
            raise ConfigError(f"the stopping L_depth has {len(self.costs)} exit costs but the model"
                              f" has {t} exits")
        costs = (torch.tensor(self.costs) if self.costs is not None
                 else torch.arange(1, t + 1) / t).to(loss).unsqueeze(1)  # (T, 1)
        priced = self.price * costs
        q = soft_stopping_distribution(log_p.amax(dim=-1) - priced, self.temperature)
        return (q * (loss + priced)).sum(dim=0).mean()


def _check_costs(costs: Any) -> tuple[float, ...]:
    """Cumulative exit costs: finite, positive, increasing, ending at 1."""
    values = tuple(float(c) for c in costs)
    if (not values or not all(math.isfinite(c) and c > 0 for c in values)
            or any(b <= a for a, b in zip(values, values[1:], strict=False))
            or abs(values[-1] - 1.0) > 1e-6):
        raise ConfigError(f"costs must increase strictly from > 0 to 1 (full depth), got {costs!r}")
    return values


class SumPenalty(DepthRegularizer):
    """Σ_i w_i · penalty_i: several L_depth variants trained together (``distill`` + ``stopping``).

    Each term is a registered variant built with its own keyword arguments at β = w_i and no
    warm-up of its own: the sum's β and warm-up scale them all (``beta = 1`` keeps the w_i).

    Args:
        terms: variant name -> weight w_i > 0, at least one, no ``sum`` inside a sum.
        term_kwargs: variant name -> its keyword arguments (e.g. ``{"stopping": {"price": 0.1}}``).
    """

    def __init__(self, beta: float = 0.0, warmup_epochs: float = 0.0,
                 terms: dict[str, float] | None = None,
                 term_kwargs: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(beta, warmup_epochs)
        term_kwargs = dict(term_kwargs or {})
        if not isinstance(terms, dict) or not terms or "sum" in terms:
            raise ConfigError(f"the sum L_depth needs terms {{variant: weight}} with at least one"
                              f" variant other than 'sum', got {terms!r}")
        if unknown := sorted(set(term_kwargs) - set(terms)):
            raise ConfigError(f"term_kwargs name variants that are not terms: {', '.join(unknown)}")
        self.parts = nn.ModuleDict({name: create_regularizer(name, beta=weight,
                                                             **term_kwargs.get(name, {}))
                                    for name, weight in terms.items()})

    @property
    def needs_targets(self) -> bool:  # type: ignore[override]
        return any(part.needs_targets for part in self.parts.values())

    def attach(self, model: nn.Module) -> None:
        for part in self.parts.values():
            part.attach(model)

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
        return sum(part.beta * part.penalty(outputs, targets) for part in self.parts.values())


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

    def penalty(self, outputs: ExitOutputs, targets: Tensor | None = None) -> Tensor:
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
    "stopping": StoppingLossPenalty,
    "sum": SumPenalty,
})


def list_regularizers() -> list[str]:
    """Names accepted by :func:`create_regularizer`."""
    return REGULARIZERS.names()


def create_regularizer(name: str, **kwargs: Any) -> DepthRegularizer:
    """Build an L_depth variant, e.g. ``create_regularizer("relative", beta=0.5)``."""
    return REGULARIZERS.create(name, **kwargs)
