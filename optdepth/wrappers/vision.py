"""Exits on timm and torchvision backbones: ResNets, Vision Transformers and ConvNeXts.

:func:`wrap_vision` cuts the user's classifier into a stem and a sequence of residual units
(a ResNet's blocks, a ViT's blocks, a ConvNeXt's blocks with each stage's downsampling layer
in front of its first block), and puts exits after chosen units. The user's modules run as they
are and the last exit is the model's own head, so ``forward_final`` is the user's own forward
and full depth computes exactly, and as fast as, the original.

Residual norms, per unit with input h: S(h) is the state the unit's update is added to and
F = unit(h) - S(h) what the unit adds.

* ResNet: S(h) = the block's shortcut, h or ``downsample(h)`` (captured from the block's own
  call: nothing runs twice). The block applies its ReLU after the addition, so F is the
  block's net change of the state, not the pre-activation residual branch.
* ViT: S(h) = h; each block adds attention and MLP updates to the token stream.
* ConvNeXt: S(h) = h after the stage's downsampling (for a stage's first block), since a
  ConvNeXt block is h + γ·MLP(conv(h)) on that state.

Exit heads: the last is the model's own; an intermediate exit is a LayerNorm and a linear
classifier on the pooled state (global average pool of a feature map; a ViT's class token, or
its token mean where the model pools so). With ``head="shared"`` a ViT's intermediate exits use
the model's own final norm and head instead (all its blocks have the classifier's width); a
CNN's stages are narrower than its classifier, so they keep linear heads.

Example::

    import timm, optdepth
    net = timm.create_model("resnet50", pretrained=False, num_classes=10)
    model = optdepth.wrap(net, exits="stages")     # 4 exits; only the 3 new heads train
    out = model(images)                            # ExitOutputs: logits (4, B, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from optdepth.errors import ConfigError
from optdepth.models.base import ExitSpec, MultiExitModel, StepOutput, exit_positions, per_sample_norm

HEADS = ("shared", "linear")


@dataclass(frozen=True)
class _Unit:
    """One residual unit: an optional module in front (a stage's downsampling) and the block."""

    block: nn.Module
    stage: int
    pre: nn.Module | None = None
    shortcut: nn.Module | None = None  # a ResNet block's downsample, whose output is S(h)


@dataclass(frozen=True)
class _Family:
    """How one kind of backbone is cut: its stem, its units, its pooling and its own head."""

    name: str
    stem: Callable[[Tensor], Tensor]
    units: list[_Unit]
    pool: Callable[[Tensor], Tensor]  # state -> (B, C) pooled features for a linear exit
    head: Callable[[Tensor], Tensor]  # last state -> the model's own logits
    tokens: bool  # a ViT: every state has the classifier's width


def _resnet(model: nn.Module) -> _Family:
    act = getattr(model, "act1", None) or model.relu
    units = [_Unit(block, s, shortcut=getattr(block, "downsample", None))
             for s, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4))
             for block in layer]

    def stem(x: Tensor) -> Tensor:
        return model.maxpool(act(model.bn1(model.conv1(x))))

    def head(h: Tensor) -> Tensor:
        if hasattr(model, "forward_head"):  # timm
            return model.forward_head(h)
        return model.fc(torch.flatten(model.avgpool(h), 1))

    return _Family("resnet", stem, units, lambda h: h.mean((2, 3)), head, tokens=False)


def _timm_vit(model: nn.Module) -> _Family:
    def stem(x: Tensor) -> Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    def pool(h: Tensor) -> Tensor:
        if model.global_pool == "token":
            return h[:, 0]
        return h[:, model.num_prefix_tokens:].mean(1)

    return _Family("vit", stem, [_Unit(b, 0) for b in model.blocks], pool,
                   lambda h: model.forward_head(model.norm(h)), tokens=True)


def _torchvision_vit(model: nn.Module) -> _Family:
    encoder = model.encoder

    def stem(x: Tensor) -> Tensor:
        h = model._process_input(x)
        h = torch.cat([model.class_token.expand(h.shape[0], -1, -1), h], dim=1)
        return encoder.dropout(h + encoder.pos_embedding)

    return _Family("vit", stem, [_Unit(b, 0) for b in encoder.layers], lambda h: h[:, 0],
                   lambda h: model.heads(encoder.ln(h)[:, 0]), tokens=True)


def _timm_convnext(model: nn.Module) -> _Family:
    units = [_Unit(block, s, pre=stage.downsample if i == 0 else None)
             for s, stage in enumerate(model.stages) for i, block in enumerate(stage.blocks)]
    return _Family("convnext", model.stem, units, lambda h: h.mean((2, 3)),
                   lambda h: model.forward_head(model.norm_pre(h)), tokens=False)


def _torchvision_convnext(model: nn.Module) -> _Family:
    units, pre, stage = [], None, -1
    for module in list(model.features)[1:]:
        if isinstance(module, nn.Sequential) and all(type(m).__name__ == "CNBlock" for m in module):
            stage += 1
            units += [_Unit(block, stage, pre=pre if i == 0 else None) for i, block in enumerate(module)]
            pre = None
        else:  # the downsampling layer in front of the next stage
            pre = module
    return _Family("convnext", model.features[0], units, lambda h: h.mean((2, 3)),
                   lambda h: model.classifier(model.avgpool(h)), tokens=False)


def _family(model: nn.Module) -> _Family:
    """The adapter of ``model``'s kind (by its structure, timm or torchvision)."""
    kind = type(model).__name__
    if all(hasattr(model, n) for n in ("conv1", "bn1", "maxpool", "layer1", "layer4")):
        return _resnet(model)
    if kind == "VisionTransformer" and hasattr(model, "patch_embed") and hasattr(model, "blocks"):
        return _timm_vit(model)
    if kind == "VisionTransformer" and hasattr(getattr(model, "encoder", None), "layers"):
        return _torchvision_vit(model)
    if kind == "ConvNeXt" and hasattr(model, "stages"):
        return _timm_convnext(model)
    if kind == "ConvNeXt" and hasattr(model, "features"):
        return _torchvision_convnext(model)
    raise ConfigError(
        f"cannot find the blocks of {kind}: optdepth.wrap knows timm and torchvision ResNets"
        " (conv1, bn1, maxpool, layer1..layer4), ViTs (timm: patch_embed, blocks; torchvision:"
        " encoder.layers) and ConvNeXts (timm: stem, stages; torchvision: features), and"
        " transformers causal LMs (layers= points at their layer list). For another network,"
        " subclass optdepth.MultiExitModel (stem and step) around it.")


def _input_shape(model: nn.Module, given: Sequence[int] | None) -> tuple[int, int, int]:
    if given is not None:
        if len(given) != 3 or not all(isinstance(v, int) and v > 0 for v in given):
            raise ConfigError(f"input_shape must be (channels, height, width), got {given!r}")
        return tuple(given)
    embed = getattr(model, "patch_embed", None)
    if getattr(embed, "img_size", None) is not None:  # a timm ViT knows the size it was built for
        return (embed.proj.in_channels, *embed.img_size)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if "input_size" in cfg:
        return tuple(cfg["input_size"])
    size = getattr(model, "image_size", 224)
    return (3, size, size)


class WrappedVisionModel(MultiExitModel):
    """A timm/torchvision classifier with exits after chosen units; see the module docstring.

    Attributes:
        backbone: the user's model (its parameters are this model's, under ``backbone.``).
        heads: one head per intermediate exit (None entries where the model's own head is shared).
    """

    def __init__(self, model: nn.Module, exits: ExitSpec | None, head: str,
                 train_backbone: bool, input_shape: Sequence[int] | None) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)} for a vision model, got {head!r}")
        family = _family(model)
        object.__setattr__(self, "_family", family)  # its modules are the backbone's
        self.backbone = model
        self.input_shape = _input_shape(model, input_shape)
        self.num_blocks = len(family.units)
        self.stage_starts = tuple(i for i, u in enumerate(family.units)
                                  if i == 0 or u.stage != family.units[i - 1].stage)
        self.exit_blocks = self._exit_blocks(exits)
        self.num_exits = len(self.exit_blocks)
        self.trains_channels_last = not family.tokens
        self._captured: dict[int, Tensor] = {}
        for unit in family.units:  # a ResNet block's shortcut output, kept only while stepping
            if unit.shortcut is not None:
                unit.shortcut.register_forward_hook(self._capture)
        widths, self.num_classes = self._probe()
        shared = head == "shared" and family.tokens
        self.heads = nn.ModuleList(
            nn.Identity() if shared else nn.Sequential(nn.LayerNorm(widths[t]),
                                                       nn.Linear(widths[t], self.num_classes))
            for t in range(self.num_exits - 1))
        self._shared = shared
        self.train_backbone = train_backbone
        if not train_backbone:
            model.requires_grad_(False)
        self.train(model.training)

    def _exit_blocks(self, exits: ExitSpec | None) -> tuple[int, ...]:
        units = self._family.units
        if exits == "stages":
            ends = [i for i, u in enumerate(units) if i + 1 == len(units) or units[i + 1].stage != u.stage]
            if len(ends) < 2:
                raise ConfigError(f"{type(self.backbone).__name__} has one stage: give exits as"
                                  f" every k-th block or block indices in [0, {len(units) - 1}]")
            return tuple(ends)
        return exit_positions(len(units), None, "all" if exits is None else exits)

    def _capture(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if self._stepping:
            self._captured[id(module)] = output

    _stepping = False

    @torch.no_grad()
    def _probe(self) -> tuple[list[int], int]:
        """Pooled width at each exit and the class count, from one random image (eval mode).

        The cut model must compute the model's own logits on it: a model whose ``forward``
        does more than stem, blocks and head (a subclass, say) is refused here rather than
        giving other logits later.
        """
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            p = next(self.backbone.parameters())
            x = torch.randn(1, *self.input_shape, generator=torch.Generator().manual_seed(0))
            x = x.to(p.device, p.dtype)
            h, widths = self._family.stem(x), []
            for t, unit in enumerate(self._family.units):
                h = self._run(unit, h)[0]
                if t in self.exit_blocks:
                    widths.append(self._family.pool(h).shape[-1])
            logits = self._family.head(h)
            if not torch.allclose(logits, self.backbone(x), rtol=1e-4, atol=1e-5):
                raise ConfigError(f"{type(self.backbone).__name__} computes more than its stem,"
                                  f" blocks and head (does it override forward?): its"
                                  f" {self._family.name} layout does not reproduce its logits")
        except RuntimeError as exc:  # a shape the model cannot take
            raise ConfigError(f"{type(self.backbone).__name__} cannot run on images of shape"
                              f" {self.input_shape}: give input_shape=(C, H, W) of your data"
                              f" ({exc})") from exc
        finally:
            self.backbone.train(was_training)
        return widths, logits.shape[-1]

    def train(self, mode: bool = True) -> WrappedVisionModel:
        """Set the mode; a frozen backbone stays in eval mode (its BatchNorm statistics kept)."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    def _run(self, unit: _Unit, h: Tensor) -> tuple[Tensor, Tensor]:
        """One unit: (new state, S(h))."""
        if unit.pre is not None:
            h = unit.pre(h)
        self._stepping = unit.shortcut is not None
        try:
            new = unit.block(h)
        finally:
            self._stepping = False
        return new, self._captured.pop(id(unit.shortcut), h) if unit.shortcut is not None else h

    # ------------------------------------------------------------ the multi-exit contract
    def stem(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images -> the state the first unit starts from."""
        return self._family.stem(x)

    def step(self, state: Tensor, t: int) -> StepOutput:
        """The units up to exit t, then exit t's head."""
        first = 0 if t == 0 else self.exit_blocks[t - 1] + 1
        res, base = [], []
        for unit in self._family.units[first:self.exit_blocks[t] + 1]:
            new, shortcut = self._run(unit, state)
            res.append(per_sample_norm(new - shortcut))
            base.append(per_sample_norm(shortcut))
            state = new
        return StepOutput(state, self.exit_logits(state, t), torch.stack(res), torch.stack(base))

    def exit_logits(self, h: Tensor, t: int) -> Tensor:
        """(B, classes) logits of exit t from the state after its unit."""
        if t == self.num_exits - 1 or self._shared:
            return self._family.head(h)
        return self.heads[t](self._family.pool(h))

    def forward_final(self, x: Tensor) -> Tensor:
        """(B, classes) logits of the user's model itself, run as it is."""
        self.check_input(x)
        return self.backbone(x)


def wrap_vision(model: nn.Module, exits: ExitSpec | None = None, head: str = "shared", *,
                layers: str | None = None, train_backbone: bool = False,
                input_shape: Sequence[int] | None = None) -> WrappedVisionModel:
    """A :class:`WrappedVisionModel` around a timm or torchvision classifier (see :func:`optdepth.wrap`)."""
    if layers is not None:
        raise ConfigError("layers= applies to transformers LMs; a vision model's blocks are found"
                          " by its kind (timm or torchvision ResNet, ViT, ConvNeXt)")
    return WrappedVisionModel(model, exits, head, train_backbone, input_shape)
