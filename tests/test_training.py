"""Training runs: run-directory contents, exact resume after a kill, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import tiny_data

import optdepth
from optdepth.checkpoints import FORMAT_VERSION, load_checkpoint, save_checkpoint
from optdepth.cli import main
from optdepth.errors import CheckpointError, ConfigError, TrainingError
from optdepth.training import TrainConfig, train

TINY = TrainConfig(model="resnet20", epochs=2, batch_size=64, lr=0.05, eval_batch_size=256,
                   beta=0.5, beta_warmup_epochs=1.0)


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_run_directory_contents(tmp_path, tiny):
    result = train(TINY, tmp_path / "run", data=tiny, progress=False)
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == TINY.to_dict()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(records[0]["cal_exit_accuracy"]) == 9 and len(records[0]["relative_residual_norm"]) == 9
    assert records[0]["beta"] == 0.5 and records[0]["train_reg"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION and ckpt["arch"]["name"] == "resnet20"
    assert ckpt["epoch"] == 2 and set(ckpt) >= {"config", "state_dict", "optimizer", "metric"}
    model = optdepth.load_model(run)
    for key, value in result.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    assert not model.training
    # the ResNet trained channels-last (faster on CPU); a loaded model is plain NCHW
    conv = "blocks.0.conv1.weight"
    assert result.model.state_dict()[conv].is_contiguous(memory_format=torch.channels_last)
    assert model.state_dict()[conv].is_contiguous()
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_training_learns_the_synthetic_task(tmp_path):
    # enough steps (4 epochs x 32 batches) for BatchNorm's running statistics to settle; no
    # augmentation: its 2-pixel shifts move a class's bar onto the next class's row, which left
    # the accuracy curve crossing 0.9 only in the last epoch, at a point that varied by CPU
    data = tiny_data(n_train=1024, n_cal=256, n_test=64)
    config = TINY.replace(epochs=4, batch_size=32, beta=0.0, lr=0.05, augment=False)
    result = train(config, tmp_path / "run", data=data, progress=False)
    assert result.history[-1]["cal_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, tiny):
    config = TINY.replace(epochs=3)
    full = train(config, tmp_path / "full", data=tiny, progress=False)

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", data=tiny, progress=False, callbacks=[stop_after_first_epoch])
    resumed = train(config, tmp_path / "cut", resume=True, data=tiny, progress=False)
    assert without_time(resumed.history) == without_time(full.history)
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


def _cli(*args):
    return [sys.executable, "-m", "optdepth", *args]


def test_resume_after_sigkill_reproduces_metrics(tmp_path, fashion_folder):
    flags = ["--data-dir", str(fashion_folder), "--epochs", "3", "--train-subset", "512",
             "--batch-size", "64", "--lr", "0.05", "--beta", "0.5", "--threads", "1",
             "--no-progress"]
    subprocess.run(_cli("train", "--out", str(tmp_path / "full"), *flags), check=True,
                   capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli("train", "--out", str(cut), *flags),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = cut / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert done >= 1
    subprocess.run(_cli("train", "--out", str(cut), "--resume", "--no-progress"), check=True,
                   capture_output=True)

    def records(run):
        return without_time(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())

    assert records(cut) == records(tmp_path / "full")
    # TensorBoard events are rewritten from the checkpoint's history: one file, no lost epochs
    events = list((cut / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1


def test_existing_run_is_never_overwritten(tmp_path, tiny):
    train(TINY.replace(epochs=1), tmp_path / "run", data=tiny, progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(TINY.replace(epochs=1, lr=0.3), tmp_path / "run", data=tiny, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_run_stopped_inside_its_first_epoch_is_taken_over(tmp_path, tiny):
    # A kill before the first checkpoint leaves config.json only: nothing to keep, so the
    # same settings restart it and other settings replace it.
    config, run = TINY.replace(epochs=1), tmp_path / "run"
    run.mkdir()
    (run / ".optdepth").write_text('{"kind": "run"}')  # what a killed first epoch leaves
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    (run / "metrics.jsonl").write_text("")
    result = optdepth.training.train_or_resume(config.replace(lr=0.03), run, data=tiny,
                                               progress=False)
    assert [r["epoch"] for r in result.history] == [1]
    assert json.loads((run / "config.json").read_text()) == config.replace(lr=0.03).to_dict()


@pytest.mark.parametrize("rerun", ["corrected", "resume"])
def test_run_that_diverged_in_its_first_epoch_can_be_rerun(tmp_path, tiny, rerun):
    """A NaN first epoch leaves a folder that the corrected command or --resume takes over."""
    run = tmp_path / "run"
    diverging = TINY.replace(epochs=1, lr=1e6, lr_warmup_epochs=0.0)
    with pytest.raises(TrainingError, match="loss became"):
        train(diverging, run, data=tiny, progress=False)
    if rerun == "resume":  # the stored settings start again (and diverge again), not refused
        with pytest.raises(TrainingError, match="loss became"):
            train(TINY, run, resume=True, data=tiny, progress=False)
        return
    result = train(diverging.replace(lr=0.05), run, data=tiny, progress=False)
    assert [r["epoch"] for r in result.history] == [1]
    assert json.loads((run / "config.json").read_text())["lr"] == 0.05


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path, tiny):
    with pytest.raises(TrainingError, match="loss became .* lower --lr or --beta"):
        train(TINY.replace(lr=1e6, lr_warmup_epochs=0.0), tmp_path / "run", data=tiny,
              progress=False)


def test_checkpoint_errors(tmp_path, tiny):
    train(TINY.replace(epochs=1), tmp_path / "run", data=tiny, progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match="holds a 'resnet20' model, not 'resnet56'"):
        load_checkpoint(path, expected_arch="resnet56")
    ckpt = load_checkpoint(path)
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {k: v for k, v in ckpt.items() if k != "format_version"})
    data = torch.load(newer, weights_only=True)
    data["format_version"] = FORMAT_VERSION + 1
    torch.save(data, newer)
    with pytest.raises(CheckpointError, match="newer than this optdepth supports"):
        load_checkpoint(newer)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, {**ckpt, "arch": {"name": "resnet32", "kwargs": {}}})
    with pytest.raises(CheckpointError, match="weights do not fit resnet32"):
        optdepth.load_model(wrong)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(TINY, tmp_path / "empty", resume=True, data=tiny, progress=False)


@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "-0.1"], "lr must be a finite number in (0, 1e+06]"),
    (["--beta", "-1"], "beta must be a finite number >= 0"),
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--regularizer", "l7"], "unknown regularizer 'l7'"),
    (["--epochs", "0"], "epochs must be a positive integer"),
])
def test_cli_bad_config_is_one_clear_message(tmp_path, capsys, flags, message):
    assert main(["train", "--out", str(tmp_path / "r"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_config_file_and_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('epochs = 7\nbeta = 0.25\nmodel_kwargs = { width = 2 }\n')
    config = TrainConfig.from_file(path)
    assert (config.epochs, config.beta, config.model_kwargs) == (7, 0.25, {"width": 2})
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochz": 3}')
    with pytest.raises(ConfigError, match="unknown config keys: epochz"):
        TrainConfig.from_file(bad)


def test_run_that_cannot_start_leaves_no_folder_behind(tmp_path, tiny):
    """Bad model arguments fail before config.json is written, so the corrected command works."""
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="width must be a positive int"):
        train(TINY.replace(epochs=1, model_kwargs={"width": 0}), run, data=tiny, progress=False)
    assert not run.exists()
    result = train(TINY.replace(epochs=1), run, data=tiny, progress=False)
    assert [r["epoch"] for r in result.history] == [1]
