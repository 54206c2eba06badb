"""One contract for every multi-exit model, checked by one parametrised test."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import optdepth
from optdepth.errors import ConfigError, DataError
from optdepth.models import ExitOutputs, list_models
from optdepth.models.base import per_sample_norm
from optdepth.models.resnet_cifar import exit_positions

# Defaults too slow for a contract check on CPU: the ImageNet ResNets run at 32x32 here.
FAST = {name: {"image_size": 32} for name in list_models() if name.startswith("imagenet_")}
# (name, overrides): every registered model, plus the exit placements.
CASES = [(name, FAST.get(name, {})) for name in list_models()] + [
    ("imagenet_resnet50", {"exits": "stages", "num_classes": 7, "image_size": 64}),
    ("resnet20", {"exits": "stages"}),
    ("resnet20", {"exits": 2}),
    ("resnet20", {"width": 2, "stem_stride": 1}),
    ("resnet32", {"in_channels": 3, "num_classes": 7, "image_size": 16}),
    ("vit", {"exits": 2}),
    ("vit", {"exits": (1, 3)}),
    ("vit_tiny", {"in_channels": 3, "num_classes": 7, "image_size": 16, "patch_size": 4}),
    ("node", {"grid": (0.2, 0.5, 1.0), "solver": "rk4", "shared_head": False, "downsample": 1}),
    ("node", {"in_channels": 3, "num_classes": 7, "image_size": 16, "width": 8, "exits": 3}),
]


def sample_input(model):
    """Three inputs for ``model`` and the number of prediction rows they give.

    Image models predict once per image; the causal LM predicts every next token, so its rows
    are (batch x sequence) tokens.
    """
    if len(model.input_shape) == 1:  # token ids (B, S), S up to the context
        return torch.randint(0, model.num_classes, (3, 8)), 3 * 8
    return torch.randn(3, *model.input_shape), 3


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=lambda v: str(v))
def test_multi_exit_contract(name, overrides):
    torch.manual_seed(0)
    model = optdepth.create_model(name, **overrides).eval()
    x, rows = sample_input(model)
    out = model(x)
    t, blocks = model.num_exits, model.num_blocks
    assert isinstance(out, ExitOutputs)
    assert out.logits.shape == (t, rows, model.num_classes)
    assert out.residual_norms.shape == (blocks, rows)
    assert out.state_norms.shape == (blocks, rows)
    assert (out.residual_norms >= 0).all() and (out.state_norms > 0).all()
    assert len(model.exit_blocks) == t and model.exit_blocks[-1] == blocks - 1

    costs = model.exit_costs()
    assert costs.shape == (t,) and costs.dtype == torch.float32
    assert costs[-1] == 1.0 and (costs > 0).all() and (costs.diff() > 0).all()

    # The partial forward matches the full forward on the exits it computes.
    k = t // 2
    part = model.forward_until(x, k)
    assert part.logits.shape == (k + 1, rows, model.num_classes)
    torch.testing.assert_close(part.logits, out.logits[: k + 1])
    torch.testing.assert_close(part.residual_norms, out.residual_norms[: part.residual_norms.shape[0]])


def test_partial_forward_computes_nothing_beyond_the_exit():
    model = optdepth.create_model("resnet20").eval()
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    x = torch.randn(2, 1, 28, 28)
    t = 3
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_until(x, t)
    assert calls == list(range(model.exit_blocks[t] + 1))
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        model(x)
    # FLOPs of the partial pass are exactly exit t's share of the full pass.
    ratio = counter.get_total_flops() / full.get_total_flops()
    assert ratio == pytest.approx(float(model.exit_costs()[t]), rel=1e-6)


def test_exit_costs_do_not_change_training_state():
    model = optdepth.create_model("resnet20").train()
    before = model.blocks[0].bn1.running_mean.clone()
    model.exit_costs()
    assert model.training
    torch.testing.assert_close(model.blocks[0].bn1.running_mean, before)


def test_residual_process_is_exact():
    """h_{t+1} = S_t(h_t) + F_t(h_t): norms reported are those of the two summands."""
    model = optdepth.create_model("resnet20").eval()
    h = model.stem(torch.randn(2, 1, 28, 28))
    new, residual, base = model.blocks[0](h)
    torch.testing.assert_close(new, base + residual)
    torch.testing.assert_close(base, h)  # identity shortcut in the first block


@pytest.mark.parametrize("shape", [(4,), (4, 7), (4, 3, 5, 5)])
def test_per_sample_norm_in_any_memory_format(shape):
    """One Euclidean norm per sample, equal to the flattened row's, channels-last included."""
    x = torch.randn(*shape, dtype=torch.float64)
    expected = x.reshape(shape[0], -1).norm(dim=1).float()
    torch.testing.assert_close(per_sample_norm(x), expected)
    if x.dim() == 4:
        torch.testing.assert_close(per_sample_norm(x.contiguous(memory_format=torch.channels_last)),
                                   expected)


@pytest.mark.parametrize(("exits", "expected"), [
    ("all", tuple(range(9))), ("stages", (2, 5, 8)), (2, (1, 3, 5, 7, 8)), (4, (3, 7, 8)),
    ([4, 1], (1, 4, 8)), ((0, 8), (0, 8)),
])
def test_exit_positions(exits, expected):
    assert exit_positions(9, 3, exits) == expected


@pytest.mark.parametrize("bad", [0, -1, "some", 1.5, True, (), (1, 1), (9,), (2.0,)])
def test_bad_exit_placement(bad):
    with pytest.raises(ConfigError, match="exits must be"):
        exit_positions(9, 3, bad)


def test_registry_errors():
    assert {"resnet20", "resnet32", "resnet56", "resnet110"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'resnet21'.*resnet20"):
        optdepth.create_model("resnet21")
    with pytest.raises(ConfigError, match="bad arguments"):
        optdepth.create_model("resnet20", colour=3)
    with pytest.raises(ConfigError, match="width must be a positive int"):
        optdepth.create_model("resnet20", width=0)


def test_wrong_image_shape_is_a_clear_error():
    model = optdepth.create_model("resnet20")
    with pytest.raises(DataError, match=r"expects images of shape \(B, 1, 28, 28\).*\(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="exit_index must be in"):
        model.forward_until(torch.randn(1, 1, 28, 28), 9)
