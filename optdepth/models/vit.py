"""Multi-exit Vision Transformers: pre-norm blocks on the residual stream, an exit after chosen blocks.

A pre-norm Transformer block is the residual process of the optimal-stopping view written on
tokens: x_{l+1} = x_l + F_l(x_l) with F_l(x) = A_l(x) + M_l(x + A_l(x)), A the attention branch
LN-MHSA and M the MLP branch LN-MLP. The block returns the update F_l explicitly, so
``residual_norms`` are per-sample ||F_l(x_l)|| over all tokens and ``state_norms`` ||x_l||,
exactly as the ResNets report ||F_t(h_t)|| and ||h_t||.

Pooling: every exit mean-pools the tokens (no class token). A class token at an early exit has
attended only a layer or two and carries little, while the mean of all tokens is informative at
every depth, the same global-average pooling the ResNet exits use; plain ViTs trained from
scratch on small data do as well or better with it (Beyer et al., 2022, "Better plain ViT
baselines"). The state is the token tensor (B, N, D), batch first, as the engine needs.

Attention is written as plain matmuls rather than ``F.scaled_dot_product_attention``: torch's
FlopCounterMode counts no FLOPs for the CPU SDPA kernel (measured: 0), which would make the
exit costs wrong, and batched matmuls treat each sample alone, which keeps online early exit
bitwise equal to the offline traces (tests/test_vit.py checks it for every policy). As with the
ResNets' convolutions, only a batch of one differs (a one-row Linear takes another kernel, 1e-8
off); the engine already runs a lone sample as a pair.

Positions: a fixed 2-D sine-cosine embedding (as in "Better plain ViT baselines"), not a learned
one: on the synthetic test task (tests/helpers.py) a 4-block, dim-32 ViT reached 66% in three
short epochs with a learned embedding (initialised at std 0.02) and 100% with the fixed one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from optdepth.errors import ConfigError
from optdepth.models.base import BlockStackModel, ExitSpec, StepOutput, exit_positions, per_sample_norm
from optdepth.models.registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention: (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, d/H)
        weights = (q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // self.heads))).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm Transformer block that returns the new stream and its update."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, D) -> new stream x + F(x) (B, N, D) and the update F(x) (B, N, D)."""
        a = self.attn(self.norm1(x))
        update = a + self.mlp(self.norm2(x + a))
        return x + update, update


class ExitHead(nn.Module):
    """Mean over tokens, LayerNorm, Linear: (B, N, D) -> (B, classes)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x.mean(dim=1)))


class VisionTransformer(BlockStackModel):
    """Multi-exit ViT: patch embedding + learned position embedding, ``depth`` pre-norm blocks.

    Args:
        depth: Transformer blocks.
        dim: token width D.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: MLP hidden width over D.
        patch_size: side of the square patches (must divide ``image_size``).
        in_channels: image channels (1 for Fashion-MNIST).
        num_classes: classes.
        image_size: input height = width in pixels.
        exits: exit placement, see :func:`~optdepth.models.base.exit_positions` (no stages).
    """

    def __init__(self, depth: int = 6, dim: int = 64, heads: int = 4, mlp_ratio: float = 2.0,
                 patch_size: int = 4, in_channels: int = 1, num_classes: int = 10,
                 image_size: int = 28, exits: ExitSpec = "all") -> None:
        super().__init__()
        _check_sizes(depth=depth, dim=dim, heads=heads, patch_size=patch_size,
                     in_channels=in_channels, num_classes=num_classes, image_size=image_size)
        if dim % heads or dim % 4:
            raise ConfigError(f"dim must be a multiple of 4 and of heads, got dim {dim} and heads {heads}")
        if image_size % patch_size:
            raise ConfigError(f"patch_size must divide image_size, got {patch_size} and {image_size}")
        if not isinstance(mlp_ratio, int | float) or isinstance(mlp_ratio, bool) or mlp_ratio <= 0 \
                or int(dim * mlp_ratio) < 1:
            raise ConfigError(f"mlp_ratio must be a number > 0, got {mlp_ratio!r}")
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.num_blocks = depth
        self.exit_blocks = exit_positions(depth, None, exits)
        self.num_exits = len(self.exit_blocks)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_2d(image_size // patch_size, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.heads = nn.ModuleList(ExitHead(dim, num_classes) for _ in self.exit_blocks)
        starts = (0,) + tuple(b + 1 for b in self.exit_blocks[:-1])
        self._segments = tuple(zip(starts, (b + 1 for b in self.exit_blocks), strict=True))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def stem(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D), N = (H/p)(W/p)
        # Contiguous, so every later state is too: the engine's index_select returns contiguous
        # copies, and a strided token mean sums in another order (measured: 3e-8 in the logits).
        return (tokens + self.pos_embed).contiguous()

    def step(self, state: Tensor, t: int) -> StepOutput:
        start, stop = self._segments[t]
        res, base = [], []
        for block in self.blocks[start:stop]:
            base.append(per_sample_norm(state))
            state, update = block(state)
            res.append(per_sample_norm(update))
        logits = self.heads[t](state)  # (B, classes)
        return StepOutput(state, logits, torch.stack(res), torch.stack(base))  # norms (k, B)


def sincos_2d(side: int, dim: int, temperature: float = 10_000.0) -> Tensor:
    """(1, side * side, dim) fixed 2-D sine-cosine position embedding, row-major patch order.

    A quarter of the channels each: sin and cos of the column, then of the row, at geometric
    frequencies (as in "Better plain ViT baselines"). ``dim`` must be a multiple of 4.
    """
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4) / max(1, dim // 4 - 1))
    x = cols.flatten()[:, None] * omega[None, :]  # (N, dim/4)
    y = rows.flatten()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None].float()


def _check_sizes(**sizes: object) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")


#: Named sizes: (depth, dim, heads, mlp_ratio, patch_size). On 28x28 images patch 7 gives 16
#: tokens and patch 4 gives 49. The default ``vit`` uses 7 so that the demo (two nets) fits in
#: 15 minutes on two CPU cores: a training step took 1.15x a ResNet-20 step against 2.2x with
#: patch 4 (batch 256, one thread, interleaved medians).
SIZES = {"vit": (6, 64, 4, 2.0, 7), "vit_tiny": (4, 48, 3, 2.0, 7), "vit_small": (8, 96, 4, 2.0, 4)}


def _factory(name: str):
    depth, dim, heads, mlp_ratio, patch = SIZES[name]

    def build(**kwargs) -> VisionTransformer:
        sizes = {"depth": depth, "dim": dim, "heads": heads, "mlp_ratio": mlp_ratio,
                 "patch_size": patch, **kwargs}
        return VisionTransformer(**sizes)

    build.__name__ = name
    build.__doc__ = (f"Multi-exit ViT: {depth} blocks, dim {dim}, {heads} heads, MLP x{mlp_ratio:g},"
                     f" patch {patch}.")
    return register_model(build)


vit, vit_tiny, vit_small = (_factory(n) for n in SIZES)
