"""A small GPT-style multi-exit causal language model over bytes, with a KV cache.

Pre-norm decoder blocks compute the residual stream h_{l+1} = h_l + Attn_l(LN(h_l)) + MLP_l(LN(·)),
the same sequential process as the ResNets: F_l = h_{l+1} - h_l is the block's residual update,
S_l = h_l the state it is added to. An exit follows every layer.

Choices (and why):

* **Byte-level vocabulary, 256 tokens, no special tokens.** Any ``str`` encodes (UTF-8), so
  "unknown characters" cannot occur in text; user-supplied token ids outside [0, 256) are the
  unknown tokens and are rejected with a :class:`~optdepth.errors.DataError`.
* **Learned absolute positions** over a fixed context: the simplest scheme that lets a cached
  key keep its position; a prompt plus the tokens to generate must fit in the context.
* **One shared head, tied to the token embedding, with a LayerNorm per exit.** Exit t reads
  the residual stream with the same unembedding as the last exit (as CALM and LayerSkip do), so
  a state means the same thing at every depth, which is what copying an exited token's state
  up to deeper layers (below) assumes; the per-exit norms give each depth its own scale. It
  adds no parameters but the norms.

The multi-exit contract (:class:`~optdepth.models.base.MultiExitModel`) holds with the tokens
of a batch flattened: ``model(ids (B, S))`` returns ExitOutputs with logits (T, B·S, 256) and
residual/state norms (blocks, B·S), row ``b·S + s`` predicting token ``s + 1`` of sequence b. So
multi-exit cross-entropy and L_depth apply unchanged.

Incremental decoding (:class:`KVCache`, :meth:`CausalLM.prefill`, :meth:`CausalLM.decode_layer`)
lets each new token run its own number of layers. A token that exits after layer t never runs
layers > t, yet later tokens attend to its keys and values there: as in CALM (Schuster et al.,
2022) its exited state h_{t+1} is copied up and only layer l's LayerNorm and K/V projection run
on it (:meth:`CausalLM.fill_kv`), no attention and no MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from optdepth.errors import ConfigError, DataError
from optdepth.models.base import MultiExitModel, StepOutput, per_sample_norm
from optdepth.models.registry import register_model

VOCAB_SIZE = 256


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate Q and K/V maps (K/V alone fill skipped layers)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, S, D) -> (B, H, S, D/H)."""
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def keys_values(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """Normed input (B, S, D) -> keys and values, each (B, H, S, D/H)."""
        k, v = self.kv(a).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def attend(self, a: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
               causal: bool = False) -> Tensor:
        """Queries from ``a`` (B, S, D) over keys/values (B, H, S_k, D/H) -> (B, S, D).

        Args:
            causal: causal attention over equal-length queries and keys (no cache).
            mask: else an optional bool mask broadcastable to (B, H, S, S_k), True where a key
                may be attended to (None: every key).
        """
        q = self.split_heads(self.q(a))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        b, _, s, _ = y.shape
        return self.proj(y.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    """Pre-norm decoder block: h + Attn(LN(h)), then + MLP(LN(·)) (GELU, 4x width)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def finish(self, h: Tensor, attn_out: Tensor) -> Tensor:
        """Add the attention output, then the MLP update: the new state (B, S, D)."""
        h = h + attn_out
        return h + self.mlp(self.ln2(h))

    def forward(self, h: Tensor) -> Tensor:
        """(B, S, D) -> (B, S, D), causal over the whole sequence (no cache)."""
        a = self.ln1(h)
        k, v = self.attn.keys_values(a)
        return self.finish(h, self.attn.attend(a, k, v, causal=True))


@dataclass
class KVCache:
    """Keys and values of every layer for a batch of sequences being decoded.

    Attributes:
        keys, values: (L, B, H, context, D/H) buffers; position p of row b is valid once
            written (by prefill, a decoded layer or a CALM fill).
        lengths: (B,) int64 number of positions written per row (the next token goes there).
    """

    keys: Tensor
    values: Tensor
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


class CausalLM(MultiExitModel):
    """Multi-exit byte-level decoder; see the module docstring.

    Args:
        dim: width D of the residual stream.
        layers: decoder blocks L (one exit after each).
        heads: attention heads (must divide ``dim``).
        context: maximum sequence length (learned positions).
        mlp_ratio: MLP hidden width / D.
    """

    def __init__(self, dim: int = 128, layers: int = 6, heads: int = 4, context: int = 128,
                 mlp_ratio: int = 4) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("layers", layers), ("heads", heads),
                            ("context", context), ("mlp_ratio", mlp_ratio)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if dim % heads:
            raise ConfigError(f"heads ({heads}) must divide dim ({dim})")
        if layers < 2:
            raise ConfigError(f"a multi-exit LM needs layers >= 2, got {layers}")
        self.dim, self.context = dim, context
        self.input_shape = (context,)
        self.num_classes = VOCAB_SIZE
        self.num_blocks = self.num_exits = layers
        self.exit_blocks = tuple(range(layers))
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(layers))
        self.exit_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self._init_weights(layers)

    def _init_weights(self, layers: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for block in self.blocks:  # GPT-2: residual projections scaled by 1/sqrt(2L)
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * layers))

    # ------------------------------------------------------------ the multi-exit contract
    def check_input(self, x: Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is (B, S) int64 byte ids, 1 <= S <= context."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.dtype != torch.int64:
            got = (f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__)
            raise DataError(f"CausalLM expects token ids of shape (B, S) and dtype int64, got {got}")
        check_token_ids(x, self.context)

    def stem(self, x: Tensor) -> Tensor:
        """(B, S) ids -> (B, S, D) token plus position embeddings."""
        return self.embed(x) + self.pos(torch.arange(x.shape[1], device=x.device))

    def exit_logits(self, h: Tensor, t: int) -> Tensor:
        """Logits (..., 256) of exit ``t`` from states (..., D): per-exit norm, shared head."""
        return F.linear(self.exit_norms[t](h), self.embed.weight)

    def step(self, state: Tensor, t: int) -> StepOutput:
        """Layer t on (B, S, D) states; logits (B·S, 256) and norms (1, B·S), tokens flattened."""
        new = self.blocks[t](state)
        flat_new, flat_old = new.flatten(0, 1), state.flatten(0, 1)  # (B·S, D)
        return StepOutput(new, self.exit_logits(flat_new, t),
                          per_sample_norm(flat_new - flat_old)[None], per_sample_norm(flat_old)[None])

    def forward_final(self, x: Tensor) -> Tensor:
        """(B·S, 256) last-exit logits from every layer and the last exit only."""
        self.check_input(x)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.exit_logits(h.flatten(0, 1), self.num_exits - 1)

    # ------------------------------------------------------------ incremental decoding
    def new_cache(self, batch_size: int) -> KVCache:
        """An empty :class:`KVCache` for ``batch_size`` sequences (model dtype and device)."""
        attn = self.blocks[0].attn
        p = self.embed.weight
        shape = (self.num_blocks, batch_size, attn.heads, self.context, attn.head_dim)
        return KVCache(p.new_zeros(shape), p.new_zeros(shape),
                       torch.zeros(batch_size, dtype=torch.int64, device=p.device))

    def prefill(self, ids: Tensor, lengths: Tensor, cache: KVCache) -> Tensor:
        """Run right-padded prompts at full depth and write their keys/values into ``cache``.

        Causality makes right padding harmless: a real token never attends to the pads after
        it, and a row's pads are overwritten as that row decodes.

        Args:
            ids: (B, S) prompts, row b's real tokens in ``[:lengths[b]]``.
            lengths: (B,) prompt lengths >= 1.
            cache: an empty cache for B rows.

        Returns:
            (B, 256) last-exit logits at each row's last prompt token.
        """
        self.check_input(ids)
        h = self.stem(ids)  # (B, S, D)
        s = ids.shape[1]
        for layer, block in enumerate(self.blocks):
            a = block.ln1(h)
            k, v = block.attn.keys_values(a)
            cache.keys[layer, :, :, :s], cache.values[layer, :, :, :s] = k, v
            h = block.finish(h, block.attn.attend(a, k, v, causal=True))
        cache.lengths.copy_(lengths)
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, D)
        return self.exit_logits(last, self.num_exits - 1)

    def embed_at(self, ids: Tensor, positions: Tensor) -> Tensor:
        """(n,) token ids at (n,) positions -> (n, D) input states."""
        return self.embed(ids) + self.pos(positions)

    def decode_layer(self, layer: int, h: Tensor, cache: KVCache, rows: Tensor | None,
                     positions: Tensor, bounds: tuple[int, int] | None = None) -> Tensor:
        """Layer ``layer`` for one new token in each of the cache ``rows``.

        Writes the token's key/value at ``positions`` and attends over positions
        0..position of its row.

        Args:
            h: (n, D) states of the new tokens.
            rows: (n,) cache rows, or None for every row in order (no gather: faster).
            positions: (n,) position of each new token.
            bounds: (min, max) of ``positions`` if known (saves two reads per layer).

        Returns:
            (n, D) states after the layer.
        """
        block = self.blocks[layer]
        low, high = bounds or (int(positions.min()), int(positions.max()))
        a = block.ln1(h)[:, None]  # (n, 1, D)
        self._write_kv(layer, a, cache, rows, positions, high if low == high else None)
        keys, values = cache.keys[layer], cache.values[layer]  # (B, H, context, D/H)
        if rows is None:
            keys, values = keys[:, :, :high + 1], values[:, :, :high + 1]
        else:
            keys, values = keys[rows, :, :high + 1], values[rows, :, :high + 1]  # (n, H, span, D/H)
        mask = None
        if low < high:  # rows of unequal length: hide each row's future
            mask = (torch.arange(high + 1, device=h.device) <= positions[:, None])[:, None, None]
        return block.finish(h[:, None], block.attn.attend(a, keys, values, mask))[:, 0]

    def _write_kv(self, layer: int, a: Tensor, cache: KVCache, rows: Tensor | None,
                  positions: Tensor, same: int | None = None) -> None:
        """Write the layer's keys/values of normed inputs ``a`` (n, 1, D) at ``positions``.

        ``same``: the position when every row writes the same one (plain slicing, faster).
        """
        k, v = self.blocks[layer].attn.keys_values(a)  # (n, H, 1, D/H)
        if rows is None and same is not None:
            cache.keys[layer, :, :, same], cache.values[layer, :, :, same] = k[:, :, 0], v[:, :, 0]
            return
        if rows is None:
            rows = torch.arange(a.shape[0], device=a.device)
        cache.keys[layer, rows, :, positions] = k[:, :, 0]
        cache.values[layer, rows, :, positions] = v[:, :, 0]

    def fill_kv(self, layer: int, h: Tensor, cache: KVCache, rows: Tensor | None,
                positions: Tensor) -> None:
        """CALM fill: keys/values of ``layer`` from exited states ``h`` (n, D) copied up.

        Only the layer's first LayerNorm and K/V projection run (no attention, no MLP).
        """
        self._write_kv(layer, self.blocks[layer].ln1(h)[:, None], cache, rows, positions)

    def folded_kv(self) -> tuple[Tensor, Tensor]:
        """Every layer's LN1 affine and K/V projection folded into one map, for batched fills.

        LN1_l(h) = z·g_l + b_l with z the normalised h, so [K_l, V_l] = z·(diag(g_l)·W_lᵀ) +
        (W_l·b_l + c_l): one matmul on z gives the keys and values of all layers at once.

        Returns:
            weight (D, L·2D) and bias (L·2D,), layer-major; recompute after changing weights.
        """
        weights, biases = [], []
        for block in self.blocks:
            w, c = block.attn.kv.weight, block.attn.kv.bias  # (2D, D), (2D,)
            weights.append(w * block.ln1.weight)
            biases.append(w @ block.ln1.bias + c)
        return torch.cat(weights).T.contiguous(), torch.cat(biases)

    def fill_kv_from(self, h: Tensor, first_layer: Tensor, cache: KVCache, rows: Tensor,
                     positions: Tensor, folded: tuple[Tensor, Tensor]) -> None:
        """CALM fills of many exited tokens at once: the same result as :meth:`fill_kv` per layer.

        Args:
            h: (n, D) exited states. first_layer: (n,) first layer each token skipped (its exit
                index + 1); layers first_layer..L-1 are filled.
            rows, positions: (n,) cache rows and positions of the tokens.
            folded: :meth:`folded_kv` of this model.
        """
        start, n_layers, d = int(first_layer.min()), self.num_blocks, self.dim
        attn = self.blocks[0].attn
        z = F.layer_norm(h, (d,), eps=self.blocks[0].ln1.eps)  # (n, D), shared by every layer
        weight, bias = folded
        kv = torch.addmm(bias[2 * d * start:], z, weight[:, 2 * d * start:])
        kv = kv.view(len(h), n_layers - start, 2, attn.heads, attn.head_dim)
        token, layer = (torch.arange(start, n_layers) >= first_layer[:, None]).nonzero(as_tuple=True)
        cache.keys[layer + start, rows[token], :, positions[token]] = kv[token, layer, 0]
        cache.values[layer + start, rows[token], :, positions[token]] = kv[token, layer, 1]

    # ------------------------------------------------------------ compute accounting
    def exit_costs(self) -> Tensor:
        """Cumulative compute per generated token to reach and evaluate each exit (fraction).

        Counted with FlopCounterMode on one decoding step at position ``context // 2`` (the
        mean position of a full context), in eval mode. Exit t's cost is the embedding, layers
        0..t, the exit heads 0..t (an early-exit run evaluates them all to decide) **and the
        CALM K/V fills of layers t+1..L-1** that the skipped layers still need; the
        denominator is a full-depth step with every exit head, so the last entry is 1.0.
        """
        return super().exit_costs()

    def layer_fractions(self) -> Tensor:
        """(T,) layers run to reach each exit, as a fraction of all layers: (t + 1) / L."""
        return torch.arange(1, self.num_exits + 1, dtype=torch.float32) / self.num_exits

    def _count_exit_flops(self) -> Tensor:
        was_training = self.training
        device = self.embed.weight.device
        pos = self.context // 2
        try:
            self.eval()
            with torch.no_grad():
                cache = self.new_cache(1)
                if pos:
                    self.prefill(torch.zeros(1, pos, dtype=torch.int64, device=device),
                                 torch.tensor([pos], device=device), cache)
                ids, at = torch.zeros(1, dtype=torch.int64, device=device), torch.tensor([pos])
                rows = torch.zeros(1, dtype=torch.int64, device=device)
                per_layer, fill = [], []
                with FlopCounterMode(display=False) as counter:
                    h = self.embed_at(ids, at)
                    stem = counter.get_total_flops()
                    for layer in range(self.num_blocks):
                        before = counter.get_total_flops()
                        h = self.decode_layer(layer, h, cache, rows, at)
                        self.exit_logits(h, layer)
                        per_layer.append(counter.get_total_flops() - before)
                        before = counter.get_total_flops()
                        self.fill_kv(layer, h, cache, rows, at)
                        fill.append(counter.get_total_flops() - before)
        finally:
            self.train(was_training)
        layer_t = torch.tensor(per_layer, dtype=torch.float64)
        fill_t = torch.tensor(fill, dtype=torch.float64)
        reached = stem + layer_t.cumsum(0)
        fills_after = fill_t.flip(0).cumsum(0).flip(0) - fill_t  # fills of layers t+1..L-1
        return ((reached + fills_after) / reached[-1]).to(torch.float32)


def check_token_ids(ids: Tensor, context: int) -> None:
    """Raise :class:`DataError` for an empty sequence, one over ``context`` or ids outside [0, 256)."""
    if ids.shape[-1] == 0:
        raise DataError("empty token sequence: give at least one token (a non-empty prompt)")
    if ids.shape[-1] > context:
        raise DataError(f"sequence of {ids.shape[-1]} tokens is longer than the model's context of "
                        f"{context}; shorten it (or train a model with a larger context)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= VOCAB_SIZE):
        bad = ids[(ids < 0) | (ids >= VOCAB_SIZE)][0].item()
        raise DataError(f"unknown token id {bad}: this byte-level model knows ids 0..{VOCAB_SIZE - 1}"
                        " only (encode text as UTF-8 bytes)")


@register_model
def lm(**kwargs) -> CausalLM:
    """The default multi-exit causal LM (an alias of ``lm_small``)."""
    return CausalLM(**kwargs)


@register_model
def lm_small(**kwargs) -> CausalLM:
    """Multi-exit byte-level causal LM: D=128, 6 layers, 4 heads, context 128 (~1.2M parameters)."""
    return CausalLM(**kwargs)


@register_model
def lm_tiny(**kwargs) -> CausalLM:
    """A tiny multi-exit causal LM for tests: D=32, 3 layers, 2 heads, context 32."""
    return CausalLM(**{"dim": 32, "layers": 3, "heads": 2, "context": 32, **kwargs})
