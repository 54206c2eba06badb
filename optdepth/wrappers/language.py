"""Exits on a transformers causal LM: :func:`wrap_causal_lm` and the cache it decodes with.

The wrapped model runs the user's own modules (the token and position embeddings, each decoder
layer, the final norm and the LM head); nothing is copied or re-implemented, so the last exit
is the original model: its logits are the model's logits. Exit t reads the residual stream
after its layer through the model's own final norm and LM head (``head="shared"``, as in
LayerSkip and CALM) or through a small per-exit residual adapter first (``head="adapter"``,
which is what trains when the backbone is frozen: the shared head has nothing of its own).

Supported: the GPT-2 family (``transformer.h``, learned positions), the Llama family and its
relatives (``model.layers``, rotary positions: Llama, Qwen2, Mistral, ...), and any decoder
whose layers are a ModuleList with the usual final norm and LM head (``layers=`` points at it).

Decoding uses :class:`RaggedCache`, a transformers :class:`~transformers.Cache` whose rows may
hold different lengths: the decoder layers call its ``update`` as they would any cache, and it
writes each row's new keys/values at that row's own positions. A token that exits early gets
the keys and values of its skipped layers CALM-style, from its exited state copied up: only
the layer's input norm and K/V projection run (GPT-2 and Llama-style attention), or, for a
layer of unknown structure, the whole layer (correct, and counted in the exit costs).

Shapes as in :mod:`optdepth.models.decoder`: n rows, q new tokens, D the hidden size.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from optdepth.errors import ConfigError
from optdepth.models.base import ExitSpec, StepOutput, exit_positions, per_sample_norm
from optdepth.models.decoder import DecoderLM, write_positions

#: Where the supported families keep their parts, tried in order (dotted attribute paths).
LAYER_PATHS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers",
               "transformer.layers")
NORM_NAMES = ("ln_f", "norm", "final_layer_norm", "final_layernorm")
POSITION_NAMES = ("wpe", "embed_positions")
HEADS = ("shared", "adapter")


def transformers_module() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError as exc:
        raise ConfigError("wrapping a transformers model needs transformers:"
                          " pip install 'optdepth[hf]'") from exc


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` looks like a transformers LM with an output head (``...ForCausalLM``)."""
    heads = getattr(model, "get_output_embeddings", None)
    return hasattr(model, "config") and callable(heads) and heads() is not None


def _find(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


@dataclass(frozen=True)
class _Parts:
    """The user's modules the wrapper runs (held outside the module tree: no double registration)."""

    embed: nn.Module
    positions: nn.Module | None  # learned absolute positions (GPT-2); None with rotary or none
    rotary: nn.Module | None  # the rotary embedding module (Llama family)
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    #: (layer, h) -> keys, values, the attention module; None: an unknown layer structure
    kv: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, nn.Module]] | None


def _layer_list(model: nn.Module, layers: str | None) -> tuple[nn.ModuleList, nn.Module]:
    """The decoder layers and the module holding them (where the final norm lives too)."""
    paths = (layers,) if layers is not None else LAYER_PATHS
    for path in paths:
        found = _find(model, path)
        if isinstance(found, nn.ModuleList) and len(found) >= 2:
            parent = _find(model, path.rsplit(".", 1)[0]) if "." in path else model
            return found, parent
    if layers is not None:
        raise ConfigError(f"{type(model).__name__} has no ModuleList of >= 2 layers at {layers!r}")
    raise ConfigError(f"cannot find the decoder layers of {type(model).__name__}: looked for a"
                      f" ModuleList at {', '.join(LAYER_PATHS)}; point at it with"
                      " optdepth.wrap(model, layers='dotted.path.to.layers')")


def _gpt2_kv(layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, nn.Module]:
    """GPT-2: the key and value parts of the fused c_attn on LN1(h), (n, D) each; the attention."""
    _, k, v = layer.attn.c_attn(layer.ln_1(h)).split(layer.attn.split_size, dim=-1)
    return k, v, layer.attn


def _llama_kv(layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, nn.Module]:
    """Llama family: k_proj and v_proj of the normed h, (n, H_kv·D_h) each (rotary applied
    later); the attention."""
    a, attn = layer.input_layernorm(h), layer.self_attn
    return attn.k_proj(a), attn.v_proj(a), attn


def _parts(model: nn.Module, layers: str | None) -> _Parts:
    layer_list, parent = _layer_list(model, layers)
    norm = next((getattr(parent, n) for n in NORM_NAMES if isinstance(getattr(parent, n, None),
                                                                      nn.Module)), None)
    if norm is None:
        raise ConfigError(f"cannot find the final norm of {type(model).__name__} next to its"
                          f" layers (looked for {', '.join(NORM_NAMES)})")
    first = layer_list[0]
    if hasattr(first, "ln_1") and hasattr(getattr(first, "attn", None), "c_attn"):
        kv = _gpt2_kv
    elif hasattr(first, "input_layernorm") and hasattr(getattr(first, "self_attn", None), "k_proj"):
        kv = _llama_kv
    else:
        kv = None
    positions = next((getattr(parent, n) for n in POSITION_NAMES
                      if isinstance(getattr(parent, n, None), nn.Embedding)), None)
    return _Parts(model.get_input_embeddings(), positions, getattr(parent, "rotary_emb", None),
                  layer_list, norm, model.get_output_embeddings(), kv)


class _Adapter(nn.Module):
    """A per-exit residual adapter h + W_up·GELU(W_down·LN(h)), zero at initialisation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down, self.up = nn.Linear(dim, max(8, dim // 4)), nn.Linear(max(8, dim // 4), dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(nn.functional.gelu(self.down(self.norm(h))))


@dataclass
class _Where:
    """Where the next layer call writes and what it attends to (set before each call)."""

    rows: Tensor | None = None  # (n,) cache rows, None: every row
    start: Tensor | None = None  # (n,) first new position per row
    same: int | None = None  # the start when all rows share it
    span: int = 0  # positions 0..span-1 are returned for attention
    prefix: bool = False  # the new tokens are the whole sequence (prefill or training)


def _cache_layer_class() -> type:
    cache_utils = importlib.import_module("transformers.cache_utils")

    class RaggedLayer(cache_utils.CacheLayerMixin):
        """One layer's keys and values, (B, H_kv, context, D_h), written at per-row positions."""

        def __init__(self, batch_size: int, context: int, where: _Where) -> None:
            super().__init__()
            self.batch_size, self.context, self.where = batch_size, context, where

        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            shape = (self.batch_size, key_states.shape[1], self.context)
            self.keys = key_states.new_zeros(*shape, key_states.shape[-1])
            self.values = value_states.new_zeros(*shape, value_states.shape[-1])
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True

        def write(self, k: Tensor, v: Tensor, rows: Tensor | None, start: Tensor,
                  same: int | None = None) -> None:
            """Keys/values (n, H_kv, q, D_h) at positions start..start+q-1 of ``rows``."""
            if not self.is_initialized:
                self.lazy_initialization(k, v)
            write_positions(self.keys, self.values, k, v, rows, start, same)

        def update(self, key_states: Tensor, value_states: Tensor, *args: Any,
                   **kwargs: Any) -> tuple[Tensor, Tensor]:
            w = self.where
            self.write(key_states, value_states, w.rows, w.start, w.same)
            if w.prefix:
                return key_states, value_states
            if w.rows is None:
                return self.keys[:, :, :w.span], self.values[:, :, :w.span]
            return self.keys[w.rows, :, :w.span], self.values[w.rows, :, :w.span]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.context, 0

        def get_seq_length(self) -> int:
            return self.where.span

        def get_max_length(self) -> int:
            return self.context

    return RaggedLayer


def new_ragged_cache(owner: DecoderLM, num_layers: int, batch_size: int, context: int,
                     device: torch.device) -> Any:
    """A :class:`RaggedCache` for ``batch_size`` rows of up to ``context`` positions."""
    cache_utils = importlib.import_module("transformers.cache_utils")

    class RaggedCache(cache_utils.Cache):
        """A transformers Cache whose rows decode at their own positions (see module docstring).

        Attributes:
            lengths: (B,) int64 positions written per row (the next token goes there).
            owner: the wrapped model that made it.
        """

        def __init__(self) -> None:
            self.where = _Where()
            layer = _cache_layer_class()
            super().__init__(layers=[layer(batch_size, context, self.where)
                                     for _ in range(num_layers)])
            self.lengths = torch.zeros(batch_size, dtype=torch.int64, device=device)
            self.owner = owner

        @property
        def batch_size(self) -> int:
            return batch_size

    return RaggedCache()


class WrappedCausalLM(DecoderLM):
    """A transformers causal LM with exits after chosen layers; see the module docstring.

    Attributes:
        lm: the user's model (its parameters are this model's, under ``lm.``).
        adapters: per-exit adapters (``head="adapter"``; None for the shared head).
    """

    def __init__(self, lm: nn.Module, exits: ExitSpec | None, head: str, layers: str | None,
                 train_backbone: bool) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)} for a language model,"
                              f" got {head!r}")
        parts = _parts(lm, layers)
        object.__setattr__(self, "_parts", parts)  # not submodules: lm holds them
        self.lm = lm
        self.num_blocks = len(parts.layers)
        self.exit_blocks = exit_positions(self.num_blocks, None, "all" if exits is None else exits)
        self.num_exits = len(self.exit_blocks)
        self.num_classes = parts.head.weight.shape[0]
        config = lm.config
        self.context = int(getattr(config, "n_positions", None)
                           or config.max_position_embeddings)
        window = getattr(config, "sliding_window", None)
        if window and getattr(config, "use_sliding_window", True) and window < self.context:
            raise ConfigError(f"{type(lm).__name__} attends within a sliding window of {window}"
                              f" tokens, shorter than its context of {self.context}; optdepth's"
                              " cache attends to the whole context, so it would decode otherwise")
        self.input_shape = (self.context,)
        self.dim = parts.embed.weight.shape[1]
        self.adapters = (nn.ModuleList(_Adapter(self.dim) for _ in range(self.num_exits - 1))
                         if head == "adapter" else None)
        self.train_backbone = train_backbone
        if not train_backbone:
            lm.requires_grad_(False)
        self._rope: tuple[Tensor, int, Any] | None = None  # (start, q, cos/sin) of the last call
        self.train(lm.training)

    def train(self, mode: bool = True) -> WrappedCausalLM:
        """Set the mode; a frozen backbone stays in eval mode (no dropout, as when it was fitted)."""
        super().train(mode)
        if not self.train_backbone:
            self.lm.eval()
        return self

    # ------------------------------------------------------------ the multi-exit contract
    def stem(self, x: Tensor) -> Tensor:
        """(B, S) ids -> (B, S, D) input states (token plus learned positions, where the model has them)."""
        return self.embed_at(x, torch.zeros(x.shape[0], dtype=torch.int64, device=x.device))

    def step(self, state: Tensor, t: int) -> StepOutput:
        """Exit t's layers on (B, S, D) states, causal over the whole sequence (no cache)."""
        start = torch.zeros(state.shape[0], dtype=torch.int64, device=state.device)
        res, base = [], []
        for layer in self.segment_layers(t):
            new = self._call_layer(layer, state, None, start, prefix=True)
            flat_new, flat_old = new.flatten(0, 1), state.flatten(0, 1)
            res.append(per_sample_norm(flat_new - flat_old))
            base.append(per_sample_norm(flat_old))
            state = new
        return StepOutput(state, self.exit_logits(state.flatten(0, 1), t), torch.stack(res),
                          torch.stack(base))

    def exit_logits(self, h: Tensor, t: int) -> Tensor:
        """Logits (..., V) of exit t: (adapter, then) the model's own final norm and LM head."""
        if self.adapters is not None and t < self.num_exits - 1:
            h = self.adapters[t](h)
        return self._parts.head(self._parts.norm(h))

    def forward_final(self, x: Tensor) -> Tensor:
        """(B·S, V) logits of the user's model itself, run as it is."""
        self.check_input(x)
        return self.lm(input_ids=x, use_cache=False).logits.flatten(0, 1)

    # ------------------------------------------------------------ decoding
    def new_cache(self, batch_size: int) -> Any:
        """An empty :class:`RaggedCache` for ``batch_size`` rows."""
        return new_ragged_cache(self, self.num_blocks, batch_size, self.context,
                                self._parts.embed.weight.device)

    def embed_at(self, ids: Tensor, start: Tensor) -> Tensor:
        """(n, q) ids from positions ``start`` (n,) on -> (n, q, D) input states."""
        h = self._parts.embed(ids)
        if self._parts.positions is not None:
            h = h + self._parts.positions(start[:, None] + torch.arange(ids.shape[1],
                                                                        device=ids.device))
        return h

    def decode_layer(self, layer: int, h: Tensor, cache: Any, rows: Tensor | None,
                     start: Tensor, bounds: tuple[int, int] | None = None) -> Tensor:
        """Layer ``layer`` on (n, q, D) new tokens; see :meth:`DecoderLM.decode_layer`."""
        low, high = bounds or (int(start.min()), int(start.max()))
        w, q = cache.where, h.shape[1]
        w.rows, w.start, w.same = rows, start, high if low == high else None
        w.span, w.prefix = high + q, rows is None and high == 0
        return self._call_layer(layer, h, cache, start, w.prefix, unequal=low < high)

    def fill_kv(self, layer: int, h: Tensor, cache: Any, rows: Tensor | None,
                positions: Tensor) -> None:
        """CALM fill of ``layer`` from exited states ``h`` (n, D): norm and K/V projection only."""
        block = self._parts.layers[layer]
        if self._parts.kv is None:  # unknown structure: the whole layer, its output discarded
            self.decode_layer(layer, h[:, None], cache, rows, positions)
            return
        k, v, attn = self._parts.kv(block, h)  # (n, H_kv·D_h)
        head_dim = attn.head_dim
        k = k.view(len(h), 1, -1, head_dim).transpose(1, 2)  # (n, H_kv, 1, D_h)
        v = v.view(len(h), 1, -1, head_dim).transpose(1, 2)
        if getattr(attn, "k_norm", None) is not None:  # Qwen3-style per-head key norm
            k = attn.k_norm(k)
        if self._parts.rotary is not None:
            cos, sin = self._parts.rotary(h[:, None], positions[:, None])
            rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            k, _ = rotate(k, k, cos, sin)
        cache.layers[layer].write(k, v, rows, positions)

    # ------------------------------------------------------------ running one user layer
    def _call_layer(self, layer: int, h: Tensor, cache: Any, start: Tensor, prefix: bool,
                    unequal: bool = False) -> Tensor:
        """The user's layer on (n, q, D), with positions from ``start`` and the right mask."""
        q = h.shape[1]
        positions = start[:, None] + torch.arange(q, device=h.device)  # (n, q)
        kwargs: dict[str, Any] = {"position_ids": positions}
        if cache is not None:
            kwargs.update(past_key_values=cache, use_cache=True)
        if self._parts.rotary is not None:
            kwargs["position_embeddings"] = self._rotary(h, start, positions)
        mask = self._mask(positions, q, int(start.max()) + q, prefix, unequal, h.dtype)
        out = self._parts.layers[layer](h, attention_mask=mask, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def _rotary(self, h: Tensor, start: Tensor, positions: Tensor) -> Any:
        """cos/sin for ``positions``, reused across the layers of one decoding step."""
        if self._rope is not None and self._rope[0] is start and self._rope[1] == positions.shape[1]:
            return self._rope[2]
        rope = self._parts.rotary(h, positions)
        self._rope = (start, positions.shape[1], rope)
        return rope

    def _mask(self, positions: Tensor, q: int, span: int, prefix: bool, unequal: bool,
              dtype: torch.dtype) -> Tensor | None:
        """None where no mask is needed, else an additive (n, 1, q, span) causal mask.

        SDPA attention builds the causal mask itself when the new tokens are the whole
        sequence; one new token per row at a shared position sees every key it is given.
        """
        sdpa = getattr(self.lm.config, "_attn_implementation", None) == "sdpa"
        if (prefix and sdpa) or (q == 1 and not unequal):
            return None
        if prefix:
            positions = positions[:1]
        visible = torch.arange(span, device=positions.device) <= positions[..., None]  # (n, q, span)
        mask = torch.zeros(visible.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~visible, torch.finfo(dtype).min)[:, None]


def wrap_causal_lm(model: nn.Module, exits: ExitSpec | None = None, head: str = "shared", *,
                   layers: str | None = None, train_backbone: bool = False) -> WrappedCausalLM:
    """A :class:`WrappedCausalLM` around a transformers causal LM (see :func:`optdepth.wrap`)."""
    transformers_module()
    return WrappedCausalLM(model, exits, head, layers, train_backbone)


def gpt2_config(dim: int, layers: int, heads: int, context: int, vocab_size: int) -> Any:
    """A transformers GPT2Config of this shape, without dropout (as optdepth's own LM)."""
    return transformers_module().GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=dim,
                                      n_layer=layers, n_head=heads, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                      eos_token_id=None, attn_implementation="sdpa")
