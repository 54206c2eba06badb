"""The decoding contract shared by every multi-exit causal LM: ours and wrapped transformers LMs.

A :class:`DecoderLM` is a :class:`~optdepth.models.base.MultiExitModel` over token ids (the
contract's tokens flattened: logits (T, B·S, V)) that can also decode incrementally with a
key/value cache, one layer at a time, so that :mod:`optdepth.online.generation` can run each
new token to its own exit (per-token early exit with CALM fills) or draft tokens from an early
exit and verify them in one full-depth pass (self-speculative decoding). Subclasses implement
the six decoding methods below; exit costs are counted here, once for all of them.

Shapes: ``n`` rows of the cache being decoded, ``q`` new tokens per row (1 when decoding, k
when verifying a draft, the prompt length in prefill), ``D`` the residual width, ``V`` the
vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from optdepth.errors import ConfigError, DataError
from optdepth.models.base import MultiExitModel


class DecodeCache(Protocol):
    """What the decoder needs of a cache: per-row written lengths and the model it belongs to."""

    lengths: Tensor  # (B,) int64 positions written per row; the next token goes there

    @property
    def batch_size(self) -> int: ...


#: fill(h (n, D), first_layer (n,), cache, rows (n,), positions (n,)): CALM fills of layers
#: first_layer..L-1 for n exited tokens (see :meth:`DecoderLM.kv_filler`).
KVFiller = Callable[[Tensor, Tensor, Any, Tensor, Tensor], None]


class DecoderLM(MultiExitModel):
    """A multi-exit causal LM that decodes with a KV cache; see the module docstring.

    Subclasses set ``context`` (the most positions a sequence may take), ``num_classes`` (the
    vocabulary size V), the MultiExitModel attributes, and implement the decoding methods.
    """

    context: int

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`DataError` unless ``x`` is (B, S) int64 token ids, 1 <= S <= context."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.dtype != torch.int64:
            got = (f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__)
            raise DataError(f"{type(self).__name__} expects token ids of shape (B, S) and dtype"
                            f" int64, got {got}")
        self.check_token_ids(x)

    # ------------------------------------------------------------ decoding methods
    def new_cache(self, batch_size: int) -> DecodeCache:
        """An empty cache for ``batch_size`` sequences (model dtype and device)."""
        raise NotImplementedError

    def embed_at(self, ids: Tensor, start: Tensor) -> Tensor:
        """Token ids (n, q) whose first token sits at position ``start`` (n,) -> states (n, q, D)."""
        raise NotImplementedError

    def decode_layer(self, layer: int, h: Tensor, cache: DecodeCache, rows: Tensor | None,
                     start: Tensor, bounds: tuple[int, int] | None = None) -> Tensor:
        """Layer ``layer`` on q new tokens per row, attending over the cache: (n, q, D) -> (n, q, D).

        Writes the layer's keys/values of the new tokens at positions start..start+q-1 of each
        row and attends causally over positions 0..that position of the row.

        Args:
            rows: (n,) cache rows, or None for every row in order.
            start: (n,) position of each row's first new token.
            bounds: (min, max) of ``start`` if known (saves two reads per layer).
        """
        raise NotImplementedError

    def exit_logits(self, h: Tensor, t: int) -> Tensor:
        """Logits (..., V) of exit ``t`` from states (..., D)."""
        raise NotImplementedError

    def fill_kv(self, layer: int, h: Tensor, cache: DecodeCache, rows: Tensor | None,
                positions: Tensor) -> None:
        """CALM fill: layer ``layer``'s keys/values from exited states ``h`` (n, D) copied up."""
        raise NotImplementedError

    def check_cache(self, cache: Any) -> None:
        """Raise :class:`DataError` unless ``cache`` was made by this model's :meth:`new_cache`."""
        if getattr(cache, "owner", None) is not self:
            raise DataError("this cache was made by another model (or is not a cache of ours):"
                            " decode with a cache from this model's new_cache()")

    def kv_filler(self) -> KVFiller:
        """A function doing the CALM fills of many exited tokens at once.

        The default fills layer by layer with :meth:`fill_kv`; a subclass may fuse them.
        """
        def fill(h: Tensor, first_layer: Tensor, cache: Any, rows: Tensor, positions: Tensor) -> None:
            for layer in range(int(first_layer.min()), self.num_blocks):
                chosen = first_layer <= layer
                self.fill_kv(layer, h[chosen], cache, rows[chosen], positions[chosen])
        return fill

    # ------------------------------------------------------------ built on them
    @torch.no_grad()
    def prefill(self, ids: Tensor, lengths: Tensor, cache: DecodeCache) -> Tensor:
        """Run right-padded prompts at full depth and write their keys/values into ``cache``.

        Causality makes right padding harmless: a real token never attends to the pads after
        it, and a row's pads are overwritten as that row decodes.

        Args:
            ids: (B, S) prompts, row b's real tokens in ``[:lengths[b]]``.
            lengths: (B,) prompt lengths >= 1.
            cache: an empty cache for B rows.

        Returns:
            (B, V) last-exit logits at each row's last prompt token.
        """
        self.check_input(ids)
        self.check_cache(cache)
        start = torch.zeros(ids.shape[0], dtype=torch.int64, device=ids.device)
        h = self.embed_at(ids, start)
        for layer in range(self.num_blocks):
            h = self.decode_layer(layer, h, cache, None, start, (0, 0))
        cache.lengths.copy_(lengths)
        last = h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]  # (B, D)
        return self.exit_logits(last, self.num_exits - 1)

    def segment_layers(self, t: int) -> range:
        """The layers run between exit t-1 and exit t."""
        first = 0 if t == 0 else self.exit_blocks[t - 1] + 1
        return range(first, self.exit_blocks[t] + 1)

    def layer_fractions(self) -> Tensor:
        """(T,) layers run to reach each exit, as a fraction of all layers."""
        return (torch.tensor(self.exit_blocks, dtype=torch.float32) + 1) / self.num_blocks

    def check_token_ids(self, ids: Tensor) -> None:
        """Raise :class:`DataError` for an empty sequence, one over the context, unknown ids."""
        check_token_ids(ids, self.context, self.num_classes)

    # ------------------------------------------------------------ compute accounting
    def exit_costs(self) -> Tensor:
        """Cumulative compute per generated token to reach and evaluate each exit (fraction).

        Counted with FlopCounterMode on one decoding step at position ``context // 2`` (the
        mean position of a full context), in eval mode. Exit t's cost is the embedding, the
        layers up to exit t, the exit heads 0..t (an early-exit run evaluates them all to
        decide) **and the CALM K/V fills of the later layers** that a token stopping there
        still needs; the denominator is a full-depth step with every exit head, so the last
        entry is 1.0.
        """
        return super().exit_costs()

    def _count_exit_flops(self) -> Tensor:
        was_training = self.training
        device = next(self.parameters()).device
        pos = self.context // 2
        try:
            self.eval()
            with torch.no_grad():
                cache = self.new_cache(1)
                if pos:
                    self.prefill(torch.zeros(1, pos, dtype=torch.int64, device=device),
                                 torch.tensor([pos], device=device), cache)
                at = torch.tensor([pos], device=device)
                rows = torch.zeros(1, dtype=torch.int64, device=device)
                layer_flops, fill_flops = [], []
                with FlopCounterMode(display=False) as counter:
                    h = self.embed_at(torch.zeros(1, 1, dtype=torch.int64, device=device), at)
                    stem = counter.get_total_flops()
                    for layer in range(self.num_blocks):
                        before = counter.get_total_flops()
                        h = self.decode_layer(layer, h, cache, rows, at)
                        if layer in self.exit_blocks:
                            self.exit_logits(h[:, 0], self.exit_blocks.index(layer))
                        layer_flops.append(counter.get_total_flops() - before)
                        before = counter.get_total_flops()
                        self.fill_kv(layer, h[:, 0], cache, rows, at)
                        fill_flops.append(counter.get_total_flops() - before)
        finally:
            self.train(was_training)
        reached = stem + torch.tensor(layer_flops, dtype=torch.float64).cumsum(0)
        fill = torch.tensor(fill_flops, dtype=torch.float64)
        fills_after = fill.flip(0).cumsum(0).flip(0) - fill  # fills of layers l+1..L-1
        per_layer = reached + fills_after
        exits = torch.tensor(self.exit_blocks)
        return (per_layer[exits] / reached[-1]).to(torch.float32)


def write_positions(keys: Tensor, values: Tensor, k: Tensor, v: Tensor, rows: Tensor | None,
                    start: Tensor, same: int | None = None) -> None:
    """Write new keys/values (n, H, q, D_h) into one layer's buffers (B, H, context, D_h).

    Row ``rows[i]`` (row i when None) gets them at positions start[i]..start[i]+q-1;
    ``same``: the start when every row shares it (plain slicing, faster).
    """
    q = k.shape[2]
    if rows is None and same is not None:
        keys[:, :, same:same + q], values[:, :, same:same + q] = k, v
        return
    if rows is None:
        rows = torch.arange(k.shape[0], device=k.device)
    positions = start[:, None] + torch.arange(q, device=k.device)  # (n, q)
    keys[rows[:, None], :, positions] = k.transpose(1, 2)
    values[rows[:, None], :, positions] = v.transpose(1, 2)


def check_token_ids(ids: Tensor, context: int, vocab_size: int) -> None:
    """Raise :class:`DataError` for an empty sequence, one over ``context`` or ids outside the vocabulary."""
    if ids.shape[-1] == 0:
        raise DataError("empty token sequence: give at least one token (a non-empty prompt)")
    if ids.shape[-1] > context:
        raise DataError(f"sequence of {ids.shape[-1]} tokens is longer than the model's context of "
                        f"{context}; shorten it (or use a model with a larger context)")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)][0].item()
        hint = " (encode text as UTF-8 bytes)" if vocab_size == 256 else ""
        raise DataError(f"unknown token id {bad}: this model knows ids 0..{vocab_size - 1} only{hint}")


def check_positive_ints(**values: Any) -> None:
    """Raise :class:`ConfigError` unless every value is a positive int (architecture arguments)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
