"""optdepth.wrap on timm and torchvision backbones (ResNet, ViT, ConvNeXt), and user weights.

Known answers: the last exit and forward_final are the original model's logits; forward_until
runs no block past the exit; a frozen backbone changes in nothing (BatchNorm statistics
included) while its exits train; real early exit on a wrapped model equals the offline replay
of its traces; weights round-trip through safetensors and state-dict files, and a file of
another architecture changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from helpers import assert_online_equals_offline, require_extra
from torchvision.models.convnext import CNBlockConfig

import optdepth
from optdepth.errors import CheckpointError, ConfigError
from optdepth.offline.collect import collect_traces
from optdepth.wrappers.weights import load_weights

timm = require_extra("timm")
pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(name: str, in_chans: int = 3, classes: int = 5) -> torch.nn.Module:
    """A tiny random-init backbone of each supported kind (eval mode)."""
    torch.manual_seed(0)
    from timm.models.convnext import ConvNeXt
    from timm.models.vision_transformer import VisionTransformer
    nets = {
        "timm_resnet": lambda: timm.create_model("resnet18", pretrained=False, num_classes=classes,
                                                 in_chans=in_chans),
        "timm_vit": lambda: VisionTransformer(img_size=32 if in_chans == 3 else 28,
                                              patch_size=8 if in_chans == 3 else 7, in_chans=in_chans,
                                              embed_dim=32, depth=4, num_heads=2,
                                              num_classes=classes),
        "timm_convnext": lambda: ConvNeXt(in_chans=in_chans, depths=(1, 1, 2, 1),
                                          dims=(8, 16, 24, 32), num_classes=classes),
        "tv_resnet": lambda: torchvision.models.resnet18(num_classes=classes),
        "tv_vit": lambda: torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=classes),
        "tv_convnext": lambda: torchvision.models.convnext.ConvNeXt(
            [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, None, 2)],
            num_classes=classes),
    }
    return nets[name]().eval()


FAMILIES = ("timm_resnet", "timm_vit", "timm_convnext", "tv_resnet", "tv_vit", "tv_convnext")
SHAPE = {"timm_vit": None, "tv_vit": None}  # ViTs know their image size; CNNs get 64 px


def wrapped(name: str, **kwargs):
    return optdepth.wrap(backbone(name), input_shape=SHAPE.get(name, (3, 64, 64)), **kwargs)


@pytest.mark.parametrize("name", FAMILIES)
def test_last_exit_and_forward_final_are_the_original_model(name):
    model = wrapped(name)
    x = torch.randn(3, *model.input_shape)
    with torch.no_grad():
        reference = model.backbone(x)
        out = model(x)
        torch.testing.assert_close(out.logits[-1], reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.forward_final(x), reference, rtol=0, atol=0)
    assert out.logits.shape == (model.num_exits, 3, 5) == (model.num_blocks, 3, 5)
    assert out.residual_norms.shape == (model.num_blocks, 3)
    assert bool((out.state_norms > 0).all())
    costs = model.exit_costs()
    assert costs[-1] == 1.0 and bool((costs.diff() > 0).all())


@pytest.mark.parametrize("name", ["timm_resnet", "tv_convnext", "timm_vit"])
def test_forward_until_runs_no_unit_beyond_the_exit(name):
    model = wrapped(name, exits=[0, 2])
    ran = []
    for i, unit in enumerate(model._family.units):
        unit.block.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.no_grad():
        out = model.forward_until(torch.randn(2, *model.input_shape), 1)
    assert ran == [0, 1, 2] and out.logits.shape[0] == 2 and out.residual_norms.shape[0] == 3


def test_resnet_residual_is_the_block_output_minus_its_shortcut():
    model = wrapped("tv_resnet")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = model.stem(x)
        for unit in model._family.units[:3]:  # block 2 is layer2's first: a 1x1 downsample
            shortcut = h if unit.shortcut is None else unit.shortcut(h)
            new = unit.block(h)
            expected = (new - shortcut).flatten(1).norm(dim=1)
            h = new
        out = model.forward_until(x, 2)
    torch.testing.assert_close(out.residual_norms[2], expected)
    assert model._family.units[2].shortcut is not None


def test_stage_exits_and_shared_vit_heads():
    assert wrapped("timm_resnet", exits="stages").exit_blocks == (1, 3, 5, 7)
    assert wrapped("tv_convnext", exits="stages").exit_blocks == (0, 1, 3)
    shared, linear = wrapped("timm_vit"), wrapped("timm_vit", head="linear")
    assert sum(p.numel() for p in shared.heads.parameters()) == 0
    assert sum(p.numel() for p in linear.heads.parameters()) > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # a shared exit is the model's own norm and head on that block
        h = shared.step(shared.stem(x), 0).state
        torch.testing.assert_close(shared.exit_logits(h, 0), shared.backbone.forward_head(
            shared.backbone.norm(h)))


def test_a_frozen_backbone_keeps_its_weights_and_batchnorm_statistics():
    model = wrapped("timm_resnet", exits="stages").train()
    assert not model.backbone.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("heads.") for n in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        out = model(torch.randn(8, 3, 64, 64))
        loss = optdepth.multi_exit_cross_entropy(out.logits, torch.randint(0, 5, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("heads.") for k in changed)


def test_train_backbone_fine_tunes_everything_under_ldepth():
    model = wrapped("tv_resnet", exits="stages", train_backbone=True).train()
    assert model.backbone.training
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regularizer = optdepth.create_regularizer("relative", beta=1.0)
    out = model(torch.randn(8, 3, 64, 64))
    loss = optdepth.multi_exit_cross_entropy(out.logits, torch.randint(0, 5, (8,))) + regularizer(out)
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert any("layer1" in k for k in changed) and any("running_mean" in k for k in changed)


@pytest.mark.parametrize("name", ["timm_resnet", "timm_vit"])
def test_real_early_exit_on_a_wrapped_model_equals_the_offline_replay(name, tiny):
    model = optdepth.wrap(backbone(name, in_chans=1, classes=10), input_shape=(1, 28, 28))
    cal = collect_traces(model, tiny.calibration, "calibration")
    test = collect_traces(model, tiny.test, "test")
    threshold = float(np.median(cal.features[:, 0, 0]))  # about half stop at the first exit
    policy = optdepth.fit_exit_policy("max_prob", cal, threshold)
    exits = assert_online_equals_offline(model, policy, tiny, test, name)
    assert len(exits) > 1


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_round_trip(tmp_path, suffix):
    from safetensors.torch import save_file

    source = backbone("timm_resnet")
    torch.manual_seed(1)
    target = timm.create_model("resnet18", pretrained=False, num_classes=5)  # other weights
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    load_weights(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_weights_file_of_another_architecture_changes_nothing(tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(backbone("tv_vit").state_dict(), path)
    target = backbone("tv_resnet")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="(?s)does not fit ResNet.*missing"):
        load_weights(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_unsafe_corrupt_and_missing_weights_files_are_refused(tmp_path):
    target = backbone("tv_resnet")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_weights(target, tmp_path / "bad.safetensors")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="Python objects"):
        load_weights(target, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(target, tmp_path / "absent.pt")


# ----------------------------------------------------------------------------- bad input
def test_an_unknown_model_names_what_was_looked_for():
    with pytest.raises(ConfigError, match="cannot find the blocks of Sequential.*ResNets.*ViTs"):
        optdepth.wrap(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_bad_exits_heads_and_shapes_are_refused():
    with pytest.raises(ConfigError, match=r"exits must be"):
        wrapped("tv_resnet", exits=[8])
    with pytest.raises(ConfigError, match="head must be"):
        wrapped("tv_resnet", head="adapter")
    with pytest.raises(ConfigError, match="one stage"):
        wrapped("tv_vit", exits="stages")
    with pytest.raises(ConfigError, match="input_shape"):
        optdepth.wrap(backbone("tv_resnet"), input_shape=(64, 64))
    with pytest.raises(ConfigError, match="cannot run on images of shape"):
        optdepth.wrap(backbone("timm_convnext"), input_shape=(3, 8, 8))

    class Doubled(torchvision.models.ResNet):
        def forward(self, x):
            return 2 * super().forward(x)

    doubled = Doubled(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=5).eval()
    with pytest.raises(ConfigError, match="override forward"):
        optdepth.wrap(doubled, input_shape=(3, 64, 64))
    with pytest.raises(ConfigError, match="already a multi-exit model"):
        optdepth.wrap(wrapped("tv_resnet"))
