"""The contract every multi-exit model honours.

A multi-exit model is a stem followed by T segments; segment t runs one or more residual blocks
and ends at exit t, where a head turns the state into class logits. Models only compute: they
never decide when to stop. Policies decide; the inference engine applies them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from optdepth.errors import ConfigError, DataError

#: Exit placement: "all", "stages", every k-th block (int) or 0-based block indices.
ExitSpec = str | int | Sequence[int]


@dataclass(frozen=True)
class ExitOutputs:
    """What a multi-exit forward pass returns.

    Attributes:
        logits: (T, B, C) class logits, one row per exit that was computed.
        residual_norms: (blocks, B) per-sample ||F_t(h_t)|| of each residual block computed.
        state_norms: (blocks, B) per-sample ||S_t(h_t)||, the state the residual is added to
            (S_t is the identity, or the 1x1 projection shortcut of a downsampling block).
    """

    logits: Tensor
    residual_norms: Tensor
    state_norms: Tensor

    @property
    def relative_residual_norms(self) -> Tensor:
        """(blocks, B) ||F_t(h_t)|| / ||S_t(h_t)||, guarded against a zero state."""
        return self.residual_norms / self.state_norms.clamp_min(1e-12)


@dataclass(frozen=True)
class StepOutput:
    """One segment of the forward pass: the new state, the exit's logits and block norms.

    Attributes:
        state: the network state after the segment (any shape, batch first).
        logits: (B, C) logits of the exit that ends the segment.
        residual_norms: (k, B) ||F|| of the k blocks in the segment.
        state_norms: (k, B) ||S(h)|| of the k blocks in the segment.
    """

    state: Tensor
    logits: Tensor
    residual_norms: Tensor
    state_norms: Tensor


class MultiExitModel(nn.Module):
    """Base class: subclasses implement :meth:`stem`, :meth:`step` and set the attributes.

    Subclasses must set ``input_shape`` (C, H, W), ``num_classes``, ``num_exits``,
    ``num_blocks`` and ``exit_blocks`` (0-based index of the block each exit follows).
    ``trains_channels_last`` marks convolution-dominated models that the trainer runs in
    channels-last memory format on every device. ``stage_starts`` are the blocks that begin a
    stage (a change of resolution or width, whose shortcut is a projection): the residual norms
    decay within a stage and jump at its start, so the decay is fitted stage by stage.
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    num_exits: int
    num_blocks: int
    exit_blocks: tuple[int, ...]
    trains_channels_last: bool = False
    stage_starts: tuple[int, ...] = (0,)

    def __init__(self) -> None:
        super().__init__()
        self._exit_costs: Tensor | None = None

    def stem(self, x: Tensor) -> Tensor:
        """Map the input (B, C, H, W) to the state the first segment starts from."""
        raise NotImplementedError

    def step(self, state: Tensor, t: int) -> StepOutput:
        """Run segment ``t`` (blocks up to exit t) and evaluate exit ``t``."""
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is a float batch of ``input_shape`` images."""
        if isinstance(x, Tensor) and tuple(x.shape[1:]) == self.input_shape \
                and not x.is_floating_point():
            raise DataError(f"{type(self).__name__} expects float images, got {x.dtype}; convert"
                            " them (x.float(), normalised as in training)")
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DataError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.input_shape))}),"
                f" got {got}. Build the model with matching in_channels/image_size"
                " (create_model(name, in_channels=..., image_size=...)) or resize the data."
            )

    @staticmethod
    def check_finite(x: Tensor, offset: int = 0) -> None:
        """Raise :class:`DataError` if the input batch holds NaN or infinite values.

        Evaluation and early exit call this (training does not: on a GPU it would stall every
        step), so that bad inputs are named as such rather than surfacing as NaN features.
        ``offset`` is the index of the batch's first sample in its split, for the message.
        """
        if not x.numel() or bool(torch.isfinite(x.sum())):
            # one reduction, no (N, ...) bool tensor: any NaN or inf makes the sum non-finite;
            # a finite sum means every value is finite (the rows are found only when it is not)
            return
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()[:5].tolist()
            raise DataError(f"the input holds NaN or infinite values (samples"
                            f" {', '.join(str(offset + i) for i in bad)}"
                            f"{' ...' if int((~finite).sum()) > 5 else ''}); clean or drop them")

    def forward(self, x: Tensor) -> ExitOutputs:
        """Full forward through every exit: logits (T, B, C)."""
        return self.forward_until(x, self.num_exits - 1)

    def forward_until(self, x: Tensor, exit_index: int) -> ExitOutputs:
        """Forward up to and including exit ``exit_index``; nothing beyond it is computed.

        Returns:
            ExitOutputs with logits (exit_index + 1, B, C) and the norms of the blocks run.
        """
        if isinstance(exit_index, bool) or not isinstance(exit_index, int) \
                or not 0 <= exit_index < self.num_exits:
            raise ValueError(f"exit_index must be in [0, {self.num_exits - 1}], got {exit_index}")
        self.check_input(x)
        state = self.stem(x)
        logits, res, base = [], [], []
        for t in range(exit_index + 1):
            out = self.step(state, t)
            state = out.state
            logits.append(out.logits)
            res.append(out.residual_norms)
            base.append(out.state_norms)
        return ExitOutputs(torch.stack(logits), torch.cat(res), torch.cat(base))

    def forward_final(self, x: Tensor) -> Tensor:
        """(B, C) logits of the last exit on the cheapest full-depth path.

        This is what a plain single-exit deployment of the network runs, the honest baseline for
        early-exit speed-ups. The default computes every exit; subclasses skip the heads.
        """
        return self.forward(x).logits[-1]

    def exit_costs(self) -> Tensor:
        """Cumulative compute to reach and evaluate each exit, as a fraction of the full forward.

        Counted with torch's FlopCounterMode on one input in eval mode. Exit t's cost includes the
        stem, every block up to it and the heads of exits 0..t (an early-exit run evaluates them
        all to decide), so the last entry is exactly 1.0.

        Returns:
            float32 tensor (T,), non-decreasing, last entry 1.0.
        """
        if self._exit_costs is None:
            with countable_attention():
                self._exit_costs = self._count_exit_flops()
        return self._exit_costs.clone()

    def _count_exit_flops(self) -> Tensor:
        was_training = self.training
        device = next(self.parameters()).device
        x = torch.zeros(1, *self.input_shape, device=device)
        cumulative = []
        try:
            self.eval()
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                state = self.stem(x)
                for t in range(self.num_exits):
                    state = self.step(state, t).state
                    cumulative.append(counter.get_total_flops())
        finally:
            self.train(was_training)
        flops = torch.tensor(cumulative, dtype=torch.float64)
        return (flops / flops[-1]).to(torch.float32)


class BlockStackModel(MultiExitModel):
    """A multi-exit model whose ``blocks`` run in sequence and whose ``heads[-1]`` is the last exit.

    Each block maps a state to a tuple whose first entry is the next state; ``heads`` holds one
    head per exit. This gives every such model the same head-free full-depth path.
    """

    blocks: nn.ModuleList
    heads: nn.ModuleList

    def forward_final(self, x: Tensor) -> Tensor:
        """(B, classes) last-exit logits from the stem, every block and the last head only."""
        self.check_input(x)
        state = self.stem(x)
        for block in self.blocks:
            state = block(state)[0]
        return self.heads[-1](state)


@contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode under ``torch.inference_mode``; its mode is restored after.

    BatchNorm then uses its running statistics, so every sample's output is its own whatever
    batch it shares, which is what the early-exit engine and the timings rely on.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextmanager
def countable_attention() -> Iterator[None]:
    """Run attention as plain matmuls while FLOPs are counted.

    FlopCounterMode counts nothing inside the fused CPU attention kernels
    (``F.scaled_dot_product_attention``'s flash path, ``nn.MultiheadAttention``'s fast path),
    which would understate every attention layer; the math backend computes the same attention
    in counted ops. The fast-path switch is global: it is restored afterwards.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def per_sample_norm(x: Tensor) -> Tensor:
    """(B, ...) -> (B,) Euclidean norm of each sample, computed in float32.

    Reduces over the non-batch dimensions in place: ``flatten(1)`` would copy a channels-last
    activation (twice per block in the ResNets), which costs as much as a BatchNorm pass.
    """
    if x.dim() == 1:  # one scalar per sample; an empty dim tuple would reduce over the batch
        return x.float().abs()
    return torch.linalg.vector_norm(x.float(), dim=tuple(range(1, x.dim())))


def exit_positions(num_blocks: int, blocks_per_stage: int | None, exits: ExitSpec) -> tuple[int, ...]:
    """0-based block indices followed by an exit; the last block always has one.

    Args:
        num_blocks: total residual blocks.
        blocks_per_stage: blocks in each stage (None for a model without stages).
        exits: ``"all"`` (every block), ``"stages"`` (end of each stage), an int k (every k-th
            block) or a sequence of 0-based block indices (the last block is added if missing).
    """
    if exits == "all":
        return tuple(range(num_blocks))
    if exits == "stages" and blocks_per_stage is not None:
        return tuple(range(blocks_per_stage - 1, num_blocks, blocks_per_stage))
    if isinstance(exits, int) and not isinstance(exits, bool) and 1 <= exits < num_blocks:
        chosen = set(range(exits - 1, num_blocks, exits)) | {num_blocks - 1}
        return tuple(sorted(chosen))
    if isinstance(exits, Sequence) and not isinstance(exits, str) and _block_indices(exits, num_blocks):
        return tuple(sorted(set(exits) | {num_blocks - 1}))
    stages = "'stages', " if blocks_per_stage is not None else ""
    raise ConfigError(f"exits must be 'all', {stages}an int k in [1, {num_blocks - 1}] (every k-th"
                      f" block; early exit needs two exits) or a list of distinct block indices"
                      f" in [0, {num_blocks - 1}], got {exits!r}")


def _block_indices(exits: Sequence[object], num_blocks: int) -> bool:
    """Whether ``exits`` is a non-empty list of distinct ints in [0, num_blocks)."""
    ints = all(isinstance(b, int) and not isinstance(b, bool) for b in exits)
    return ints and len(exits) > 0 and len(set(exits)) == len(exits) and \
        all(0 <= b < num_blocks for b in exits)
