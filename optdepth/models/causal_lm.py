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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from optdepth.errors import ConfigError
from optdepth.models.base import StepOutput, per_sample_norm
from optdepth.models.decoder import DecoderLM, KVFiller, check_positive_ints, write_positions
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
        owner: the model that made the cache (decoding checks it).
    """

    keys: Tensor
    values: Tensor
    lengths: Tensor
    owner: DecoderLM = field(repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


class CausalLM(DecoderLM):
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
        check_positive_ints(dim=dim, layers=layers, heads=heads, context=context,
                            mlp_ratio=mlp_ratio)
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
                       torch.zeros(batch_size, dtype=torch.int64, device=p.device), self)

    def embed_at(self, ids: Tensor, start: Tensor) -> Tensor:
        """(n, q) token ids from positions ``start`` (n,) on -> (n, q, D) input states."""
        positions = start[:, None] + torch.arange(ids.shape[1], device=ids.device)
        return self.embed(ids) + self.pos(positions)

    def decode_layer(self, layer: int, h: Tensor, cache: KVCache, rows: Tensor | None,
                     start: Tensor, bounds: tuple[int, int] | None = None) -> Tensor:
        """Layer ``layer`` on (n, q, D) new tokens; see :meth:`DecoderLM.decode_layer`."""
        block = self.blocks[layer]
        low, high = bounds or (int(start.min()), int(start.max()))
        q = h.shape[1]
        a = block.ln1(h)  # (n, q, D)
        k, v = block.attn.keys_values(a)  # (n, H, q, D/H)
        self._write_kv(layer, k, v, cache, rows, start, high if low == high else None)
        if rows is None and high == 0:  # prefill: the new tokens are the whole sequence
            return block.finish(h, block.attn.attend(a, k, v, causal=q > 1))
        span = high + q
        keys, values = cache.keys[layer], cache.values[layer]  # (B, H, context, D/H)
        if rows is None:
            keys, values = keys[:, :, :span], values[:, :, :span]
        else:
            keys, values = keys[rows, :, :span], values[rows, :, :span]  # (n, H, span, D/H)
        mask = None
        if low < high or q > 1:  # unequal rows or several new tokens: hide each query's future
            query_at = start[:, None] + torch.arange(q, device=h.device)  # (n, q)
            mask = (torch.arange(span, device=h.device) <= query_at[..., None])[:, None]
        return block.finish(h, block.attn.attend(a, keys, values, mask))

    def _write_kv(self, layer: int, k: Tensor, v: Tensor, cache: KVCache, rows: Tensor | None,
                  start: Tensor, same: int | None = None) -> None:
        """Write keys/values (n, H, q, D/H) of ``layer`` (see :func:`write_positions`)."""
        write_positions(cache.keys[layer], cache.values[layer], k, v, rows, start, same)

    def fill_kv(self, layer: int, h: Tensor, cache: KVCache, rows: Tensor | None,
                positions: Tensor) -> None:
        """CALM fill: keys/values of ``layer`` from exited states ``h`` (n, D) copied up.

        Only the layer's first LayerNorm and K/V projection run (no attention, no MLP).
        """
        k, v = self.blocks[layer].attn.keys_values(self.blocks[layer].ln1(h)[:, None])
        self._write_kv(layer, k, v, cache, rows, positions)

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

    def kv_filler(self) -> KVFiller:
        """CALM fills of many exited tokens in one matmul (same result as :meth:`fill_kv`).

        The folded weights (:meth:`folded_kv`) are taken once, when the filler is made: make a
        new filler after changing the weights.
        """
        weight, bias = self.folded_kv()
        n_layers, d = self.num_blocks, self.dim
        attn = self.blocks[0].attn

        def fill(h: Tensor, first_layer: Tensor, cache: KVCache, rows: Tensor,
                 positions: Tensor) -> None:
            start = int(first_layer.min())
            z = F.layer_norm(h, (d,), eps=self.blocks[0].ln1.eps)  # (n, D), shared by every layer
            kv = torch.addmm(bias[2 * d * start:], z, weight[:, 2 * d * start:])
            kv = kv.view(len(h), n_layers - start, 2, attn.heads, attn.head_dim)
            token, layer = (torch.arange(start, n_layers) >= first_layer[:, None]).nonzero(as_tuple=True)
            cache.keys[layer + start, rows[token], :, positions[token]] = kv[token, layer, 0]
            cache.values[layer + start, rows[token], :, positions[token]] = kv[token, layer, 1]
        return fill


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
