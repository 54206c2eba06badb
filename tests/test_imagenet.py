"""ImageNet path on CPU: torchvision ResNets with exits, ImageFolder data, training, evaluation."""

import json
import logging

import numpy as np
import pytest
import torch
import torchvision
from helpers import write_imagefolder
from torchvision.models.resnet import BasicBlock, Bottleneck

import optdepth
from optdepth.cli import main
from optdepth.data.imagefolder import load_imagefolder
from optdepth.errors import CheckpointError, ConfigError, DataError
from optdepth.models.resnet_imagenet import residual_branch
from optdepth.offline import evaluate_policies, evaluate_run, fit_exit_policy
from optdepth.offline.exit_policies import FitContext
from optdepth.online import early_exit_predict, offline_exits
from optdepth.traces import load_traces
from optdepth.training import TrainConfig, train

SMALL = 32  # image side in training tests (resnet18 at 32x32: ~0.5 s per step of 8 on one thread)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("imagefolder"))


def tiny_config(folder, **changes):
    config = TrainConfig(model="imagenet_resnet18", dataset="imagefolder", data_dir=str(folder),
                         image_size=SMALL, calibration_size=4, workers=0, epochs=1, batch_size=8,
                         eval_batch_size=16, lr=0.05, beta=0.5, beta_warmup_epochs=0.0,
                         augment=False, device="cpu",
                         model_kwargs={"exits": "stages"})
    return config.replace(**changes)


@pytest.mark.parametrize("block", [BasicBlock(64, 64),
                                   Bottleneck(64, 32, stride=2, downsample=torch.nn.Sequential(
                                       torch.nn.Conv2d(64, 128, 1, stride=2, bias=False),
                                       torch.nn.BatchNorm2d(128)))], ids=["basic", "bottleneck"])
def test_residual_branch_rebuilds_the_torchvision_block(block):
    torch.manual_seed(0)
    h = torch.randn(2, 64, 8, 8)
    for mode in (True, False):
        block.train(mode)
        state, residual, shortcut = residual_branch(block, h)
        torch.testing.assert_close(state, block(h), rtol=0, atol=0)
        torch.testing.assert_close(state, torch.relu(residual + shortcut), rtol=0, atol=0)
    if block.downsample is None:
        assert shortcut is h


def test_torchvision_state_dict_gives_torchvision_logits(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    model = optdepth.create_model("imagenet_resnet18", image_size=64, weights_path=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model.forward_final(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(x).logits[-1], expected, rtol=1e-5, atol=1e-5)
    assert "weights_path" not in model.arch_kwargs  # the checkpoint holds the weights from now on
    assert model.state_dict().keys() - {"exit_heads." + k for k in model.exit_heads.state_dict()} \
        == reference.state_dict().keys()


def test_state_dicts_that_do_not_fit_are_clear_errors(tmp_path, caplog):
    r50 = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), r50)
    with pytest.raises(CheckpointError, match=r"(?s)do not fit.*unexpected \(198\).*mis-shaped "
                                              r"\(24\): fc.weight: file \(1000, 2048\)"):
        optdepth.create_model("imagenet_resnet18", image_size=64, weights_path=str(r50))
    r18 = tmp_path / "resnet18.pt"
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), r18)
    with pytest.raises(CheckpointError, match=r"(?s)do not fit.*missing \(\d+\): layer1.2"):
        optdepth.create_model("imagenet_resnet34", image_size=64, weights_path=str(r18))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights file"):
        optdepth.create_model("imagenet_resnet18", image_size=64, weights_path=str(junk))
    # a pretrained 1000-class fc and a 3-class model: the backbone loads, fc stays fresh
    with caplog.at_level(logging.WARNING):
        model = optdepth.create_model("imagenet_resnet18", image_size=64, num_classes=3,
                                      weights_path=str(r18))
    assert "fc is left freshly initialised" in caplog.text
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_exit_placement_and_bad_arguments():
    assert optdepth.create_model("imagenet_resnet18", image_size=64).exit_blocks == tuple(range(8))
    assert optdepth.create_model("imagenet_resnet18", image_size=64,
                                 exits="stages").exit_blocks == (1, 3, 5, 7)
    r50 = optdepth.create_model("imagenet_resnet50", image_size=64, exits="stages")
    assert r50.exit_blocks == (2, 6, 12, 15) and r50.num_blocks == 16
    assert optdepth.create_model("imagenet_resnet34", image_size=64, exits=4).exit_blocks == \
        (3, 7, 11, 15)
    with pytest.raises(ConfigError, match="image_size"):
        optdepth.create_model("imagenet_resnet18", image_size=0)
    with pytest.raises(ConfigError, match="exits"):
        optdepth.create_model("imagenet_resnet18", exits="some")


def test_frozen_backbone_trains_only_the_exits():
    torch.manual_seed(0)
    model = optdepth.create_model("imagenet_resnet18", image_size=SMALL, num_classes=3,
                                  freeze_backbone=True).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("exit_heads", "fc"))}
    assert not model.bn1.training and not model.layer2[0].bn1.training and model.exit_heads.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, SMALL, SMALL)).logits.sum().backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("exit_heads", "fc")) for k in changed)  # BN stats too


def test_imagefolder_splits_and_batches(folder):
    data = load_imagefolder(folder, image_size=SMALL, calibration_size=4, workers=0)
    assert data.classes == ("ant", "bee", "cat")
    assert (len(data.train), len(data.calibration), len(data.test)) == (32, 4, 12)
    train_paths = {p for p, _ in data.train.samples}
    assert not train_paths & {p for p, _ in data.calibration.samples}
    again = load_imagefolder(folder, image_size=SMALL, calibration_size=4, workers=0)
    assert again.calibration.samples == data.calibration.samples  # fixed split seed
    images, labels = next(data.test.batches(5))
    assert images.shape == (5, 3, SMALL, SMALL) and labels.dtype == torch.int64
    assert data.test.num_batches(5) == 3 and sum(len(y) for _, y in data.test.batches(5)) == 12
    # the tint of class k shows in channel k after the ImageNet normalisation
    assert (images.mean(dim=(2, 3)).argmax(1) == labels % 3).all()
    shards = [torch.cat([y for _, y in data.train.batches(8, shuffle=True, rank=r, world_size=2)])
              for r in range(2)]
    whole = torch.cat([y for _, y in data.train.batches(8, shuffle=True)])
    assert sorted(torch.cat(shards).tolist()) == sorted(whole.tolist())


def test_imagefolder_bad_input(tmp_path, folder):
    with pytest.raises(DataError, match="train does not exist"):
        load_imagefolder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    for split in ("train", "val"):
        (empty / split / "ant").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no usable images"):
        load_imagefolder(empty)
    lacking = write_imagefolder(tmp_path / "lacking", n_train=2, n_val=1)
    for png in (lacking / "val" / "bee").iterdir():
        png.unlink()
    (lacking / "val" / "bee").rmdir()
    with pytest.raises(DataError, match=r"val/ lacks \['bee'\]"):
        load_imagefolder(lacking)
    with pytest.raises(DataError, match="calibration_size"):
        load_imagefolder(folder, calibration_size=36)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_image_is_named_or_skipped_on_request(tmp_path, workers, caplog):
    root = write_imagefolder(tmp_path / "data", n_train=4, n_val=2)
    bad = root / "val" / "cat" / "001.png"
    bad.write_bytes(b"\x89PNG broken")
    data = load_imagefolder(root, image_size=SMALL, calibration_size=1, workers=workers)
    with pytest.raises(DataError, match=f"cannot read image {bad}.*--skip-bad-images") as info:
        list(data.test.batches(4))
    assert "Traceback" not in str(info.value)
    data = load_imagefolder(root, image_size=SMALL, calibration_size=1, workers=workers,
                            skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([y for _, y in data.test.batches(4)])
    assert len(labels) == 5 and data.test.skipped == {str(bad)}
    assert str(bad) in caplog.text


def test_training_evaluation_traces_and_policies_on_an_imagefolder(tmp_path, folder):
    run = tmp_path / "run"
    result = train(tiny_config(folder, epochs=2), run, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and len(records[0]["cal_exit_accuracy"]) == 4
    assert records[0]["train_reg"] > 0 and np.isfinite(records[-1]["train_loss"])
    assert result.history == records or [r["epoch"] for r in result.history] == [1, 2]
    summary = evaluate_run(run, batch_size=16, progress=False).summary
    assert len(summary["exit_accuracy"]) == 4 and summary["exit_compute"][-1] == 1.0
    test = load_traces(run / "evaluation" / "traces_test.npz")
    cal = load_traces(run / "evaluation" / "traces_calibration.npz")
    assert test.probs.shape == (12, 4, 3) and cal.probs.shape == (4, 4, 3)
    assert test.residual_norms.shape == (12, 8)
    evaluations = evaluate_policies(cal, test, names=("max_prob", "oracle"), tolerance=1.0, folds=2)
    assert set(evaluations) == {"max_prob", "oracle"}
    # the engine streams the on-disk split batch by batch and matches the traces exactly
    data = load_imagefolder(folder, image_size=SMALL, calibration_size=4, workers=0)
    policy = fit_exit_policy("max_prob", FitContext.from_traces(cal, folds=2),
                             float(np.median(cal.features[:, :-1, 0])))
    for batch_size in (5, 16):
        online = early_exit_predict(result.model.cpu(), policy, data.test, batch_size)
        offline = offline_exits(policy, test)
        np.testing.assert_array_equal(online.exit_index, offline.exit_index)
        np.testing.assert_array_equal(online.predictions, offline.predictions)
        np.testing.assert_array_equal(online.labels, test.labels)


def test_cli_train_and_evaluate_an_imagefolder_run(tmp_path, folder, caplog):
    run = tmp_path / "cli"
    flags = ["--dataset", "imagefolder", "--data-dir", str(folder), "--model", "imagenet_resnet18",
             "--image-size", str(SMALL), "--calibration-size", "4", "--workers", "0",
             "--epochs", "1", "--batch-size", "16", "--exits", "stages", "--freeze-backbone",
             "--device", "cpu", "--no-progress"]
    assert main(["train", "--out", str(run), *flags]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model_kwargs"] == {"exits": "stages", "freeze_backbone": True}
    assert config["dataset"] == "imagefolder" and config["image_size"] == SMALL
    assert main(["evaluate", str(run), "--batch-size", "16", "--device", "cpu",
                 "--no-progress"]) == 0
    assert (run / "evaluation" / "summary.json").is_file()


@pytest.mark.parametrize(("flags", "message"), [
    (["--dataset", "imagefolder"], "needs data_dir"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--image-size", "32"], "image_size applies to the imagefolder dataset only"),
    (["--dataset", "imagefolder", "--data-dir", "/nonexistent"], "does not exist"),
])
def test_cli_bad_dataset_flags_are_one_clear_message(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
