"""Bring your own model: exits on a Hugging Face causal LM or a timm/torchvision backbone.

:func:`wrap` returns a :class:`~optdepth.models.base.MultiExitModel` built around the user's
module (its weights are shared, not copied), so L_depth training, exit traces, every policy,
the early-exit engine and the reports work on it unchanged. The last exit is the model's own
head: a wrapped model at full depth computes exactly what the original computes.

* :mod:`optdepth.wrappers.language`: transformers causal LMs (GPT-2, Llama, Qwen2 families and any
  decoder whose layers are a ModuleList with the usual final norm and LM head). Per-token
  early exit, a KV cache on transformers' Cache API with CALM fills, self-speculative decoding.
* :mod:`optdepth.wrappers.vision`: timm and torchvision ResNets (stages or blocks), ViTs (blocks)
  and ConvNeXts (stages), with pooled linear exit heads.
"""

from __future__ import annotations

from torch import nn

from optdepth.errors import ConfigError
from optdepth.models.base import ExitSpec, MultiExitModel


def wrap(model: nn.Module, exits: ExitSpec | None = None, head: str = "shared", *,
         layers: str | None = None, train_backbone: bool = False,
         input_shape: tuple[int, int, int] | None = None) -> MultiExitModel:
    """Turn ``model`` into a multi-exit model that honours optdepth's contract.

    Args:
        model: a transformers causal LM (``...ForCausalLM``) or a timm/torchvision classifier.
        exits: where exits go, in the model's own layers or blocks: None (after every one),
            ``"stages"`` (vision: the end of each stage), an int k (every k-th) or 0-based
            indices; the last layer always has an exit, which is the model's own head.
        head: ``"shared"``: exits reuse the model's own head where its width allows (an LM's
            final norm and LM head, a ViT's norm and classifier); ``"adapter"`` (LMs) a small
            per-exit residual adapter before the shared head; ``"linear"`` (vision) a pooled
            linear classifier per intermediate exit. A CNN's intermediate stages differ in width
            from its classifier, so they always get pooled linear heads.
        layers: dotted path of the module list of layers or blocks (e.g. ``"model.layers"``),
            for a model whose list is not found under the usual names.
        train_backbone: False (the default): only the exit heads train, the user's weights are
            frozen (and a frozen backbone stays in eval mode); True: everything trains, under
            L_depth if the training config asks for it.
        input_shape: (C, H, W) of the images a vision model takes (default: timm's
            pretrained config, a torchvision ViT's image size, else (3, 224, 224)).

    Raises:
        ConfigError: a model of no supported kind, a layer list that cannot be found, exits
            out of range, an unknown head.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"wrap needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, MultiExitModel):
        raise ConfigError(f"{type(model).__name__} is already a multi-exit model; use it as is")
    if not isinstance(train_backbone, bool):
        raise ConfigError(f"train_backbone must be True or False, got {train_backbone!r}")
    from optdepth.wrappers import language
    if language.is_causal_lm(model):
        return language.wrap_causal_lm(model, exits, head, layers=layers,
                                       train_backbone=train_backbone)
    from optdepth.wrappers import vision
    return vision.wrap_vision(model, exits, head, layers=layers, train_backbone=train_backbone,
                              input_shape=input_shape)


__all__ = ["wrap"]
