"""ImageNet ResNets (18/34/50/101/152) from torchvision's own modules, with exits after blocks.

The backbone is torchvision's :class:`~torchvision.models.resnet.ResNet` (its stem, its
``layer1..layer4`` of ``BasicBlock`` / ``Bottleneck`` and its ``fc``), held under the same
attribute names, so a torchvision state dict loads into it unchanged (``weights_path``). The
intermediate exits (``exit_heads``) are global-average-pool + linear, like torchvision's head;
the last exit *is* torchvision's ``fc``.

torchvision blocks are post-activation: h_{t+1} = relu(S_t(h_t) + F_t(h_t)), with F_t the
conv-BN branch and S_t the identity or the ``downsample`` projection. The norms reported per
block are ||F_t(h_t)|| and ||S_t(h_t)|| of that sum, before the ReLU; they are computed from the
block's own submodules (the branch and the shortcut are needed separately), and the new state
is exactly what ``block(h)`` returns (checked by the tests).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from optdepth.errors import CheckpointError, ConfigError
from optdepth.models.base import ExitSpec, MultiExitModel, StepOutput, exit_positions, per_sample_norm
from optdepth.models.registry import register_model
from optdepth.tensor_files import read_torch_file, state_dict_mismatches

log = logging.getLogger(__name__)

#: depth -> (block class, blocks per stage), torchvision's layouts.
LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
BACKBONE = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def residual_branch(block: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Run a torchvision block from its submodules: (new state, F(h), S(h)).

    Args:
        block: a torchvision ``BasicBlock`` or ``Bottleneck``.
        h: (B, C, H, W) input state.

    Returns:
        ``relu(S(h) + F(h))`` (what ``block(h)`` returns), the residual F(h) and the
        shortcut S(h), each (B, C', H', W').
    """
    out = block.relu(block.bn1(block.conv1(h)))
    out = block.bn2(block.conv2(out))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(block.relu(out)))
    elif not isinstance(block, BasicBlock):
        raise TypeError(f"expected a torchvision BasicBlock or Bottleneck, got {type(block).__name__}")
    shortcut = h if block.downsample is None else block.downsample(h)
    return block.relu(out + shortcut), out, shortcut


class ImageNetResNet(MultiExitModel):
    """Multi-exit torchvision ResNet.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: classes (the width of ``fc`` and of every exit head).
        in_channels: image channels; only 3 fits torchvision's pretrained weights.
        image_size: input height = width in pixels (224 for ImageNet; smaller for tests).
        exits: exit placement: ``"all"`` (every block), ``"stages"`` (end of each of the four
            stages), an int k (every k-th block) or a list of block indices.
        weights_path: a torchvision state dict file (``torch.save(model.state_dict(), f)``)
            loaded into the backbone and ``fc``; read with ``weights_only=True``, nothing is
            downloaded. It is not kept in ``arch_kwargs``: once trained, the weights live in
            the checkpoint.
        freeze_backbone: train only the exit heads (``exit_heads`` and ``fc``). The backbone's
            BatchNorm layers then stay in eval mode: in train mode they would normalise with
            the statistics of each batch and overwrite the running statistics the frozen
            weights were fitted with, so the "frozen" features would drift anyway.
    """

    def __init__(self, depth: int = 50, num_classes: int = 1000, in_channels: int = 3,
                 image_size: int = 224, exits: ExitSpec = "all", weights_path: str | None = None,
                 freeze_backbone: bool = False) -> None:
        super().__init__()
        if depth not in LAYOUTS:
            raise ConfigError(f"depth must be one of {sorted(LAYOUTS)}, got {depth!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        block, layers = LAYOUTS[depth]
        net = ResNet(block, list(layers), num_classes=num_classes)  # torchvision's init
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        for name in (*BACKBONE, "relu", "maxpool", "fc"):
            setattr(self, name, getattr(net, name))
        self.blocks = [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
                       for b in layer]  # plain list: the modules are registered by their layer
        self.input_shape = (in_channels, image_size, image_size)
        self.num_classes = num_classes
        self.num_blocks = len(self.blocks)
        stage_ends = [sum(layers[:i + 1]) - 1 for i in range(4)]
        self.stage_starts = (0, *(end + 1 for end in stage_ends[:-1]))
        self.exit_blocks = exit_positions(self.num_blocks, None,
                                          stage_ends if exits == "stages" else exits)
        self.num_exits = len(self.exit_blocks)
        channels = [_out_channels(b) for b in self.blocks]
        self.exit_heads = nn.ModuleList(nn.Linear(channels[b], num_classes)
                                        for b in self.exit_blocks[:-1])
        starts = (0,) + tuple(b + 1 for b in self.exit_blocks[:-1])
        self._segments = tuple(zip(starts, (b + 1 for b in self.exit_blocks), strict=True))
        if not isinstance(freeze_backbone, bool):
            raise ConfigError(f"freeze_backbone must be true or false, got {freeze_backbone!r}")
        self.freeze_backbone = freeze_backbone
        if weights_path is not None:
            load_torchvision_weights(self, weights_path)
        if self.freeze_backbone:
            for name in BACKBONE:
                getattr(self, name).requires_grad_(False)

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (``weights_path`` dropped)."""
        return self._arch_kwargs

    @arch_kwargs.setter
    def arch_kwargs(self, value: dict[str, Any]) -> None:
        self._arch_kwargs = {k: v for k, v in value.items() if k != "weights_path"}

    def train(self, mode: bool = True) -> ImageNetResNet:
        """Set the train/eval mode; a frozen backbone's BatchNorm stays in eval (see class doc)."""
        super().train(mode)
        if self.freeze_backbone:
            for name in BACKBONE:
                getattr(self, name).eval()
        return self

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)

    def _head(self, t: int, state: Tensor) -> Tensor:
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(state, 1), 1)  # (B, C)
        return self.fc(pooled) if t == self.num_exits - 1 else self.exit_heads[t](pooled)

    def step(self, state: Tensor, t: int) -> StepOutput:
        start, stop = self._segments[t]
        res, base = [], []
        for block in self.blocks[start:stop]:
            state, residual, shortcut = residual_branch(block, state)
            res.append(per_sample_norm(residual))
            base.append(per_sample_norm(shortcut))
        logits = self._head(t, state)  # (B, classes)
        return StepOutput(state, logits, torch.stack(res), torch.stack(base))  # norms (k, B)

    def forward_final(self, x: Tensor) -> Tensor:
        """(B, classes) torchvision's own forward: stem, every block, ``fc`` only."""
        self.check_input(x)
        state = self.stem(x)
        for block in self.blocks:
            state = block(state)
        return self._head(self.num_exits - 1, state)


def _out_channels(block: nn.Module) -> int:
    last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    return int(last_bn.num_features)


def load_torchvision_weights(model: ImageNetResNet, path: str | Path) -> None:
    """Load a torchvision ResNet state dict file into ``model``'s backbone and ``fc``.

    Accepts a plain state dict, or a dict holding one under ``"state_dict"`` or ``"model"``.
    When only ``fc`` differs in shape (pretrained on 1,000 classes, fine-tuned on fewer), the
    backbone is loaded and ``fc`` keeps its fresh initialisation, with a warning.

    Raises:
        CheckpointError: the file is unreadable or unsafe, or its keys or shapes do not fit
            (the message lists the missing, unexpected and mis-shaped keys).
    """
    path = Path(path)
    state = read_torch_file(path, "weights file")
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("exit_heads.")}
    head = ("fc.weight", "fc.bias")
    if all(k in state and state[k].dim() > 0 and state[k].shape[0] != model.num_classes
           for k in head):
        log.warning("%s: fc has %d classes, the data %d: fc is left freshly initialised",
                    path, state["fc.bias"].shape[0], model.num_classes)
        state = {k: v for k, v in state.items() if k not in head}
        own = {k: v for k, v in own.items() if k not in head}
    problems = state_dict_mismatches(own, state)
    if problems:
        raise CheckpointError(f"weights in {path} do not fit {type(model).__name__} with "
                              f"{model.num_blocks} blocks and {model.input_shape[0]} input channels"
                              " (choose the model of the same depth, e.g. imagenet_resnet50 for"
                              " resnet50 weights, and 3-channel images):\n" + "\n".join(problems))
    model.load_state_dict(state, strict=False)
    log.info("loaded torchvision weights from %s", path)


def _factory(depth: int):
    def build(**kwargs: Any) -> ImageNetResNet:
        return ImageNetResNet(depth=depth, **kwargs)

    build.__name__ = f"imagenet_resnet{depth}"
    build.__doc__ = f"Multi-exit torchvision ResNet-{depth} (ImageNet layout, 224x224 by default)."
    return register_model(build)


imagenet_resnet18, imagenet_resnet34, imagenet_resnet50, imagenet_resnet101, imagenet_resnet152 = (
    _factory(d) for d in sorted(LAYOUTS))
