"""``hf-gpt2``: a transformers GPT-2 with exits, as a registered model the trainer can build.

The model is transformers' own ``GPT2LMHeadModel`` (random initialisation from a GPT2Config,
or the user's weights), wrapped by :func:`optdepth.wrap` so that the trainer, checkpoints,
traces, policies, per-token early exit and self-speculative decoding all work on it. Its
default shape is optdepth's own ``lm_small`` (byte vocabulary, D=128, 6 layers, 4 heads,
context 128), so the LM demo's corpus trains it as it is.
"""

from __future__ import annotations

from optdepth.errors import ConfigError
from optdepth.models.base import ExitSpec
from optdepth.models.decoder import DecoderLM, check_positive_ints
from optdepth.models.registry import MODELS


def hf_gpt2(dim: int = 128, layers: int = 6, heads: int = 4, context: int = 128,
            vocab_size: int = 256, exits: ExitSpec | None = None, head: str = "shared",
            weights_path: str | None = None, train_backbone: bool | None = None) -> DecoderLM:
    """A transformers GPT-2 of this shape with exits (an exit after every layer by default).

    Args:
        dim, layers, heads, context, vocab_size: the GPT2Config (n_embd, n_layer, n_head,
            n_positions, vocab_size; 256 reads text as bytes).
        exits, head: as for :func:`optdepth.wrap`.
        weights_path: the user's GPT-2 weights (a safetensors or state-dict file of this
            shape); None: random initialisation, to train from scratch.
        train_backbone: None: train everything from scratch, or only the exits on the user's
            weights (give ``head="adapter"`` then: the shared head has nothing to train).
    """
    from optdepth.wrappers import wrap
    from optdepth.wrappers.language import gpt2_config, transformers_module

    check_positive_ints(dim=dim, layers=layers, heads=heads, context=context, vocab_size=vocab_size)
    if dim % heads:
        raise ConfigError(f"heads ({heads}) must divide dim ({dim})")
    lm = transformers_module().GPT2LMHeadModel(gpt2_config(dim, layers, heads, context, vocab_size))
    if weights_path is not None:
        from optdepth.wrappers.weights import load_weights
        load_weights(lm, weights_path)
    backbone = weights_path is None if train_backbone is None else train_backbone
    return wrap(lm, exits, head, train_backbone=backbone)


MODELS["hf-gpt2"] = hf_gpt2
