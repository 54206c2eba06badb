"""The multi-exit ViT: residual process, exact partial forward, online == offline early exit,
AdamW training and the L_depth interface on its outputs."""

import json

import pytest
import torch
from helpers import assert_online_equals_offline, policy_grid, tiny_data, train_on_noisy_data
from torch.utils.flop_counter import FlopCounterMode

import optdepth
from optdepth.errors import ConfigError
from optdepth.losses.depth import create_regularizer, list_regularizers
from optdepth.models.vit import VisionTransformer
from optdepth.offline import fit_exit_policy, list_exit_policies
from optdepth.offline.exit_policies import FitContext
from optdepth.training import TrainConfig, train
from optdepth.training.trainer import build_optimizer

TINY_VIT = {"depth": 4, "dim": 32, "heads": 2, "patch_size": 7}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_block_is_an_exact_residual_process():
    """x_{l+1} = x_l + F(x_l); the norms reported are ||F|| and ||x_l|| per sample."""
    torch.manual_seed(0)
    model = optdepth.create_model("vit", **TINY_VIT).eval()
    x = model.stem(torch.randn(3, 1, 28, 28))
    assert x.shape == (3, 16, 32)  # (B, N = (28/7)^2, D)
    new, update = model.blocks[0](x)
    torch.testing.assert_close(new, x + update, rtol=0, atol=0)
    step = model.step(x, 0)
    torch.testing.assert_close(step.residual_norms[0], update.flatten(1).norm(dim=1))
    torch.testing.assert_close(step.state_norms[0], x.flatten(1).norm(dim=1))


def test_partial_forward_computes_nothing_beyond_the_exit():
    model = optdepth.create_model("vit", **TINY_VIT, exits=(0, 2)).eval()
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    heads = []
    for i, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, a, o, i=i: heads.append(i))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), FlopCounterMode(display=False) as part:
        model.forward_until(x, 1)
    assert calls == [0, 1, 2] and heads == [0, 1]
    with torch.no_grad(), FlopCounterMode(display=False) as full:
        model(x)
    ratio = part.get_total_flops() / full.get_total_flops()
    assert ratio == pytest.approx(float(model.exit_costs()[1]), rel=1e-6)


def test_attention_flops_are_counted():
    """The exit costs include attention (N^2 D per head): a plain-matmul kernel is counted."""
    model = optdepth.create_model("vit", **TINY_VIT).eval()
    tokens, dim = 16, 32
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.blocks[0].attn(torch.zeros(1, tokens, dim))
    linear = 2 * tokens * dim * 4 * dim  # qkv (3D) and proj (D)
    assert counter.get_total_flops() == linear + 2 * 2 * tokens * tokens * dim


def test_forward_final_equals_last_exit_and_skips_other_heads():
    torch.manual_seed(0)
    model = optdepth.create_model("vit", **TINY_VIT).eval()
    used = []
    for i, head in enumerate(model.heads):
        head.register_forward_hook(lambda m, a, o, i=i: used.append(i))
    x = torch.randn(5, 1, 28, 28)
    final = model.forward_final(x)
    assert used == [model.num_exits - 1]
    torch.testing.assert_close(final, model(x).logits[-1], rtol=0, atol=0)


def test_outputs_are_independent_of_the_batch():
    """Each sample's logits and norms are bitwise the same in a batch of 2, 3 or 9: what makes
    online early exit equal to the offline traces. (A batch of one is not: a one-row Linear
    takes another kernel, 1e-8 off, which is why the engine runs a lone sample as a pair.)"""
    torch.manual_seed(0)
    model = optdepth.create_model("vit", **TINY_VIT).eval()
    x = torch.randn(9, 1, 28, 28)
    with torch.no_grad():
        batch = model(x)
        for start, stop in ((0, 2), (2, 4), (4, 7), (7, 9)):
            part = model(x[start:stop])
            torch.testing.assert_close(part.logits, batch.logits[:, start:stop], rtol=0, atol=0)
            torch.testing.assert_close(part.residual_norms, batch.residual_norms[:, start:stop],
                                       rtol=0, atol=0)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"dim": 32, "heads": 3}, "dim must be a multiple of 4 and of heads"),
    ({"dim": 30, "heads": 2}, "dim must be a multiple of 4"),
    ({"patch_size": 5}, "patch_size must divide image_size"),
    ({"depth": 0}, "depth must be a positive int"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a number > 0"),
    ({"exits": "stages"}, "exits must be 'all', an int k"),
    ({"exits": (1, 1)}, "distinct block indices in \\[0, 5\\]"),
    ({"exits": [7]}, "distinct block indices"),
])
def test_bad_sizes_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        optdepth.create_model("vit", **kwargs)


def test_regularizers_work_on_vit_outputs():
    torch.manual_seed(0)
    model = optdepth.create_model("vit", **TINY_VIT)
    out = model(torch.randn(4, 1, 28, 28))
    targets = torch.randint(0, 10, (4,))
    needs = {"sum": {"terms": {"distill": 1.0, "stopping": 1.0}}}  # a sum names its terms
    for name in list_regularizers():
        reg = create_regularizer(name, beta=0.5, warmup_epochs=0.0, **needs.get(name, {}))
        reg.attach(model)
        value = reg(out, epoch=1.0, targets=targets)
        assert value.ndim == 0 and torch.isfinite(value)
        if value.requires_grad:
            value.backward(retain_graph=True)


@pytest.fixture(scope="module")
def trained_vit(one_thread):
    """A tiny ViT trained briefly on noisy synthetic data so that its exits disagree."""
    data = tiny_data(512, 256, 256)
    torch.manual_seed(0)
    model = optdepth.create_model("vit", **TINY_VIT)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cal, test = train_on_noisy_data(model, data, opt, steps=60)
    return model, data, cal, test


def test_online_equals_offline_for_every_policy(trained_vit):
    model, data, cal, test = trained_vit
    ctx = FitContext.from_traces(cal, folds=5)
    used = set()
    for name in list_exit_policies():
        for param in policy_grid(name, cal, patience=(1, 2)):
            policy = fit_exit_policy(name, ctx, float(param))
            # features "close", not bitwise: a batch of another size may take other kernels on
            # another CPU (MKL and oneDNN choose by vendor and shape)
            used |= assert_online_equals_offline(model, policy, data, test, f"{name}({param:.3g})")
    assert len(used) >= 3, f"policies used only exits {sorted(used)}: the test would be weak"


def test_adamw_exempts_norms_and_biases():
    model = optdepth.create_model("vit", **TINY_VIT)
    config = TrainConfig(model="vit", optimizer="adamw", lr=1e-3, weight_decay=0.05, momentum=0.8)
    opt = build_optimizer(model, config)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.999)
    decayed, plain = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in plain} == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert "blocks.0.attn.qkv.weight" in {names[i] for i in decayed}
    assert len(decayed) + len(plain) == len(names)
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'; choose one of sgd, adamw"):
        config.replace(optimizer="adam")


def test_adamw_training_learns_the_synthetic_task(tmp_path):
    data = tiny_data(n_train=1024, n_cal=256, n_test=64)
    config = TrainConfig(model="vit", model_kwargs=TINY_VIT, optimizer="adamw", lr=3e-3,
                         weight_decay=0.05, epochs=3, batch_size=32, eval_batch_size=256,
                         augment=False, beta=0.5)
    result = train(config, tmp_path / "run", data=data, progress=False)
    assert result.history[-1]["cal_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert len(result.history[-1]["cal_exit_accuracy"]) == 4
    model = optdepth.load_model(tmp_path / "run")
    assert isinstance(model, VisionTransformer) and model.arch_name == "vit"


@pytest.mark.slow  # ~40 s on two quiet cores (fits policies on a 5,000-image calibration split)
def test_demo_runs_for_the_vit_on_a_data_folder(tmp_path, fashion_folder):
    """run_demo(model=...) on synthetic IDX files: the ResNet demo's metrics schema, ViT settings."""
    from optdepth.experiments.image_demo import DEMO_MODELS, run_demo

    metrics = run_demo(tmp_path / "out", model="vit_tiny", schedule="quick", epochs=1,
                       data_dir=str(fashion_folder), threads=1, progress=False)
    assert metrics["model"] == "vit_tiny"
    config = json.loads((tmp_path / "out" / "runs" / "ldepth" / "config.json").read_text())
    assert config["model"] == "vit_tiny" and config["epochs"] == 1
    assert {k: config[k] for k in DEMO_MODELS["vit"].overrides} == dict(DEMO_MODELS["vit"].overrides)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for net in saved["nets"].values():
        exits = len(net["exit_accuracy"])
        assert exits == len(net["exit_compute"]) == len(net["relative_residual_norm"]) == 4
        assert net["exit_compute"][-1] == 1.0
        assert set(net["policies"]) == {"max_prob", "entropy", "patience", "osla", "lsm", "oracle"}
        assert {"rho", "certificate_depth", "mean_optimal_depth"} <= set(net)
        for record in net["policies"].values():
            assert {"accuracy", "mean_compute", "wall_speedup"} <= set(record["iso_accuracy"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Multi-exit `vit_tiny` on Fashion-MNIST" in report and "ResNet" not in report
