"""A multi-exit neural-ODE classifier: continuous depth, read out on a grid of depths.

A small convolutional stem maps the image to h(0); the state then follows dh/ds = f(h, s) for
depth s in [0, 1] (Chen et al., 2018), integrated with torchdiffeq. Exit t reads the state at
s_t, on a depth grid 0 = s_0 < s_1 < ... < s_T = 1, through one *shared* readout g: the
continuous-depth picture has one function g(h(s)) usable at every depth, and sharing it makes
the exits differ only in how far the dynamics have run (a per-exit head per grid point would tie
the model to its training grid). ``shared_head=False`` gives per-exit heads for comparison.

The model honours the :class:`~optdepth.models.base.MultiExitModel` contract with one
"block" per exit: ``step(state, t)`` integrates from s_t to s_{t+1} (0-based t) and reads exit t.

* ``residual_norms`` is the per-sample ||h(s_{t+1}) - h(s_t)||, the continuous analogue of
  ||F_t(h_t)|| (the displacement over the segment), and ``state_norms`` is ||h(s_t)||, so
  traces, policies, the early-exit engine and L_depth work unchanged.
* The kinetic-energy regulariser (``optdepth.losses.depth.KineticPenalty``) estimates the
  segment's integral of ||f||^2 as ||Δh||^2 / Δs (exact when f is constant on the segment; a
  lower bound otherwise, by Cauchy–Schwarz).

Solvers: fixed-step ones (``"midpoint"`` by default: second order, two evaluations per step;
``"rk4"``, ``"euler"``, ...) take ``steps_per_exit`` equal steps per segment, so the compute per
exit is fixed, FlopCounterMode's ``exit_costs`` are exact, and a sample's result does not depend
on its batch (GroupNorm, not BatchNorm, keeps every operation per sample), which real early exit
relies on. Adaptive ones
(``"dopri5"``, ...) choose their steps for the whole batch from ``rtol``/``atol``: the number of
function evaluations then varies with the input (``nfe_per_segment`` records it, for the batch;
per sample when run one sample at a time), ``exit_costs`` counted on a zero image are only
indicative, and early-exit results can depend on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchdiffeq import odeint

from optdepth.errors import ConfigError
from optdepth.models.base import MultiExitModel, StepOutput, per_sample_norm
from optdepth.models.registry import register_model

#: torchdiffeq solvers with a fixed step (the others adapt their step to rtol/atol).
FIXED_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
ADAPTIVE_SOLVERS = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, dividing ``channels``."""
    return math.gcd(8, channels)


class ConcatConv(nn.Module):
    """3x3 convolution of [h, s] (the depth s as an extra constant channel): time-conditioned."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        depth = h.new_ones(h.shape[0], 1, *h.shape[2:]) * s  # (B, 1, H, W)
        return self.conv(torch.cat([h, depth], dim=1))


class ODEFunc(nn.Module):
    """f(h, s) = GN(conv([ReLU(GN(conv([ReLU(GN(h)), s]))), s])); counts its evaluations."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        g = _groups(channels)
        self.norm1, self.norm2, self.norm3 = (nn.GroupNorm(g, channels) for _ in range(3))
        self.conv1, self.conv2 = ConcatConv(channels), ConcatConv(channels)
        self.nfe = 0  # function evaluations since the last reset (why: NFE is the ODE's compute)

    def forward(self, s: Tensor, h: Tensor) -> Tensor:
        self.nfe += 1
        out = self.conv1(s, F.relu(self.norm1(h)))
        out = self.conv2(s, F.relu(self.norm2(out)))
        return self.norm3(out)  # (B, C, H, W)


class Readout(nn.Module):
    """g: GN-ReLU-global-average-pool-linear, (B, C, H, W) -> (B, classes)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(h)), 1).flatten(1))


def depth_grid(exits: int | None, grid: Sequence[float] | None) -> tuple[float, ...]:
    """Exit depths (s_1, ..., s_T) with s_T = 1: ``exits`` equal segments, or ``grid`` as given.

    Raises:
        ConfigError: both or neither given, a non-positive count, or a grid that is not strictly
            increasing in (0, 1] ending at 1.
    """
    if (exits is None) == (grid is None):
        raise ConfigError("give exactly one of exits (an int T) or grid (exit depths ending at 1.0)")
    if grid is None:
        if not isinstance(exits, int) or isinstance(exits, bool) or exits < 1:
            raise ConfigError(f"exits must be a positive int, got {exits!r}")
        return tuple((t + 1) / exits for t in range(exits))
    try:
        points = tuple(float(s) for s in grid)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"grid must be a sequence of numbers, got {grid!r}") from exc
    ok = (len(points) >= 1 and all(math.isfinite(s) for s in points) and points[0] > 0
          and all(b > a for a, b in zip(points, points[1:], strict=False)) and points[-1] == 1.0)
    if not ok:
        raise ConfigError(f"grid must be strictly increasing depths in (0, 1] ending at 1.0, got {grid!r}")
    return points


class NeuralODEClassifier(MultiExitModel):
    """Multi-exit neural ODE: stem, dh/ds = f(h, s) on [0, 1], readout g at each exit depth.

    Args:
        width: channels of the ODE state.
        in_channels: image channels (1 for Fashion-MNIST).
        num_classes: classes.
        image_size: input height = width in pixels.
        exits: number T of equally spaced exits (s_t = t / T); or pass ``grid``.
        grid: exit depths (s_1, ..., s_T), strictly increasing, ending at 1.0.
        downsample: stride-2 convolutions in the stem (2: 28 -> 7 pixels; 1: 28 -> 14).
        solver: a torchdiffeq method, see :data:`FIXED_SOLVERS` and :data:`ADAPTIVE_SOLVERS`.
        steps_per_exit: equal solver steps per segment (fixed-step solvers).
        rtol, atol: tolerances of an adaptive solver.
        shared_head: one readout for every exit (default) or one per exit.
    """

    def __init__(self, width: int = 32, in_channels: int = 1, num_classes: int = 10,
                 image_size: int = 28, exits: int | None = 8, grid: Sequence[float] | None = None,
                 downsample: int = 2, solver: str = "midpoint", steps_per_exit: int = 1,
                 rtol: float = 1e-3, atol: float = 1e-4, shared_head: bool = True) -> None:
        super().__init__()
        _check_args(width=width, in_channels=in_channels, num_classes=num_classes,
                    image_size=image_size, steps_per_exit=steps_per_exit)
        if downsample not in (1, 2):
            raise ConfigError(f"downsample must be 1 or 2 (stride-2 stem convolutions), got {downsample!r}")
        if solver not in FIXED_SOLVERS + ADAPTIVE_SOLVERS:
            raise ConfigError(f"unknown solver {solver!r}; choose one of "
                              f"{', '.join(FIXED_SOLVERS + ADAPTIVE_SOLVERS)}")
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if not isinstance(tol, int | float) or not math.isfinite(tol) or tol <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {tol!r}")
        self.grid = (0.0,) + depth_grid(None if grid is not None else exits, grid)
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.num_exits = self.num_blocks = len(self.grid) - 1
        self.exit_blocks = tuple(range(self.num_exits))
        self.solver, self.steps_per_exit = solver, steps_per_exit
        self.rtol, self.atol = float(rtol), float(atol)
        # strided from the first layer: a full-resolution stem would cost as much as the ODE
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)]
        if downsample == 2:
            layers += [nn.GroupNorm(_groups(width), width), nn.ReLU(),
                       nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False)]
        self.stem_layers = nn.Sequential(*layers)
        self.func = ODEFunc(width)
        self.heads = nn.ModuleList(Readout(width, num_classes)
                                   for _ in range(1 if shared_head else self.num_exits))
        self.nfe_per_segment: list[int] = []  # function evaluations of each segment of the last pass

    @property
    def adaptive(self) -> bool:
        """True when the solver chooses its own steps (compute varies with the input)."""
        return self.solver in ADAPTIVE_SOLVERS

    def stem(self, x: Tensor) -> Tensor:
        self.nfe_per_segment = []
        return self.stem_layers(x)  # (B, width, H / 2^downsample, W / 2^downsample)

    def readout(self, h: Tensor, t: int) -> Tensor:
        """Logits (B, classes) of exit ``t`` from the state h(s_{t+1})."""
        return self.heads[t if len(self.heads) > 1 else 0](h)

    def integrate(self, h: Tensor, t: int) -> Tensor:
        """h(s_{t+1}) from h(s_t): solve the ODE over segment t; appends its NFE."""
        s0, s1 = self.grid[t], self.grid[t + 1]
        # a fixed-step solver steps exactly between the times it is given (no rounding of a
        # step size into an extra sliver step); an adaptive one only needs the ends
        points = 2 if self.adaptive else self.steps_per_exit + 1
        span = torch.linspace(s0, s1, points, dtype=h.dtype, device=h.device)
        self.func.nfe = 0
        out = odeint(self.func, h, span, method=self.solver, rtol=self.rtol, atol=self.atol)[-1]
        self.nfe_per_segment.append(self.func.nfe)
        return out  # (B, width, h, w)

    def step(self, state: Tensor, t: int) -> StepOutput:
        new = self.integrate(state, t)
        norms = per_sample_norm(new - state)[None], per_sample_norm(state)[None]  # (1, B) each
        return StepOutput(new, self.readout(new, t), *norms)

    def forward_final(self, x: Tensor) -> Tensor:
        """(B, classes) last-exit logits: the stem, every segment and the last readout only."""
        self.check_input(x)
        state = self.stem(x)
        for t in range(self.num_exits):
            state = self.integrate(state, t)
        return self.readout(state, self.num_exits - 1)


def _check_args(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


@register_model
def node(**kwargs) -> NeuralODEClassifier:
    """Multi-exit neural ODE: 8 equally spaced exits, one midpoint step per segment, 7x7 state."""
    return NeuralODEClassifier(**kwargs)


@register_model
def node_dopri5(**kwargs) -> NeuralODEClassifier:
    """Multi-exit neural ODE with the adaptive Dormand–Prince solver (rtol 1e-3, atol 1e-4)."""
    return NeuralODEClassifier(**{"solver": "dopri5", **kwargs})
