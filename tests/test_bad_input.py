"""Bad input, as a hostile but realistic user gives it: every case ends in one message and exit
code 2 (or one clear exception from the Python API), and files already there are unchanged.

Categories: data files, config values, checkpoints, output folders, concurrent writers, API
misuse. Each CLI case runs ``optdepth.cli.main`` in-process, so that an uncaught exception fails
the test with its traceback instead of hiding in a subprocess's stderr.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synthetic_arrays, tiny_data, write_fashion_folder, write_idx

import optdepth
from optdepth.cli import main
from optdepth.data.fashion_mnist import FILES
from optdepth.errors import CheckpointError, ConfigError, DataError, TraceError
from optdepth.offline import collect_traces
from optdepth.rundir import RunLayout, write_lock
from optdepth.traces import load_traces
from optdepth.training import TrainConfig

TRAIN = ["--epochs", "1", "--train-subset", "256", "--batch-size", "64", "--lr", "0.05",
         "--threads", "1", "--no-progress"]


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (the lock file, which holds a pid, aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".optdepth.lock"}


def refused(args: list[str], capsys, message: str, *untouched: Path) -> str:
    """Run the CLI; assert exit code 2, one message containing ``message``, no traceback, and
    every file under ``untouched`` unchanged. Returns stderr."""
    before = [checksums(folder) for folder in untouched]
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err and err.count("optdepth: error:") == 1, err
    assert [checksums(folder) for folder in untouched] == before
    return err


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    return write_fashion_folder(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_folder):
    """A trained and evaluated run (1 epoch on 256 synthetic images)."""
    folder = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--out", str(folder), "--data-dir", str(data_folder), *TRAIN]) == 0
    assert main(["evaluate", str(folder), "--no-progress", "--batch-size", "500"]) == 0
    return folder


@pytest.fixture
def run_copy(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


# ----------------------------------------------------------------------------- data files
def _corrupt_bytes(folder: Path) -> None:
    path = folder / FILES["train_images"]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))


def _truncate(folder: Path) -> None:
    path = folder / FILES["test_images"]
    path.write_bytes(path.read_bytes()[:500])


def _no_test_images(folder: Path) -> None:
    write_idx(folder / FILES["test_images"], np.zeros((0, 28, 28), np.uint8))
    write_idx(folder / FILES["test_labels"], np.zeros((0,), np.uint8))


def _wrong_size(folder: Path) -> None:
    images, _ = synthetic_arrays(400, 2)
    write_idx(folder / FILES["test_images"], np.pad(images, ((0, 0), (2, 2), (2, 2))))


def _bad_labels(folder: Path) -> None:
    write_idx(folder / FILES["test_labels"], np.full(400, 12, np.uint8))


def _not_gzip(folder: Path) -> None:
    (folder / FILES["train_labels"]).write_bytes(b"plain text, not gzip")


def _missing(folder: Path) -> None:
    (folder / FILES["test_labels"]).unlink()


def _bad_magic(folder: Path) -> None:
    with gzip.open(folder / FILES["train_labels"], "wb") as f:
        f.write(b"\x01\x02\x03\x04" + bytes(100))


DATA_CASES = {
    "corrupt compressed bytes": (_corrupt_bytes, "cannot read"),
    "truncated file": (_truncate, "cannot read"),
    "zero test images": (_no_test_images, "the test files hold no images"),
    "32x32 images": (_wrong_size, "expected (N, 28, 28) images"),
    "labels above 9": (_bad_labels, "labels go up to 12"),
    "not gzip": (_not_gzip, "cannot read"),
    "missing file": (_missing, "lacks t10k-labels-idx1-ubyte.gz"),
    "bad magic number": (_bad_magic, "bad magic number"),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_files(case, data_folder, run, tmp_path, capsys):
    damage, message = DATA_CASES[case]
    broken = tmp_path / "data"
    shutil.copytree(data_folder, broken)
    damage(broken)
    out = tmp_path / "new_run"
    refused(["train", "--out", str(out), "--data-dir", str(broken), *TRAIN], capsys, message,
            broken)
    assert not out.exists()  # nothing left behind to block the corrected command
    refused(["evaluate", str(run), "--data-dir", str(broken), "--no-progress"], capsys, message,
            run, broken)


def test_nan_images_are_named_as_bad_input(run):
    model = optdepth.load_model(run)
    data = tiny_data(16, 16, 16)
    data.test.images[3, 0, 5, 5] = float("nan")
    with pytest.raises(DataError, match=r"NaN or infinite values \(samples 3\)"):
        collect_traces(model, data.test)
    cal = load_traces(run / "evaluation" / "traces_calibration.npz")
    policy = optdepth.evaluate_policies(cal, cal, names=["max_prob"])["max_prob"].policy
    with pytest.raises(DataError, match=r"NaN or infinite values \(samples 3\)"):
        optdepth.early_exit_predict(model, policy, data.test)


def test_finite_check_is_exact_where_the_fast_sum_overflows():
    """The check sums the batch first: huge finite values overflow that sum but pass, and an
    inf or NaN among them is still named by sample."""
    check = optdepth.models.MultiExitModel.check_finite
    huge = torch.full((4, 1, 3, 3), 3e38)
    check(huge)  # finite everywhere, though huge.sum() is inf
    for bad in (float("inf"), float("-inf"), float("nan")):
        x = huge.clone()
        x[2, 0, 1, 1] = bad
        with pytest.raises(DataError, match=r"NaN or infinite values \(samples 12\)"):
            check(x, offset=10)
    check(torch.empty(0, 1, 3, 3))


# ----------------------------------------------------------------------------- config values
CONFIG_CASES = {
    'augment = "no"': ("augment must be true or false, got 'no'"),
    'seed = "x"': "seed must be an integer, got 'x'",
    "seed = 1.5": "seed must be an integer, got 1.5",
    "seed = -1": "seed must be an integer in [0, 2^32 - 1]",
    'model_kwargs = "wide"': "model_kwargs must be a table of settings",
    "model_kwargs = { width = 0 }": "width must be a positive int",
    "model_kwargs = { width = 1000000000000 }": "does not fit in memory",
    "data_dir = 5": "data_dir must be a string or null, got 5",
    "device = 5": "device must be a string or null, got 5",
    'device = "gpu"': "device must be 'cpu', 'cuda' or 'cuda:N'",
    "epochs = 10000000": "epochs must be a positive integer <= 100,000",
    "threads = true": "threads must be an integer or null, got True",
    "lr = inf": "lr must be a finite number in (0, 1e+06]",
    "lr = 1e39": "lr must be a finite number in (0, 1e+06]",
    "threads = 100000": "threads must be an integer in [1, 1024]",
    "model_kwargs = { num_classes = 5 }": "model_kwargs must not set num_classes",
    "regularizer_kwargs = { beta = 2 }": "regularizer_kwargs must not set beta",
    'regularizer = "decay_hinge"\nregularizer_kwargs = { rho = "0.5" }': "rho must be a number in (0, 1]",
    "epochz = 3": "unknown config keys: epochz",
    "epochs = ": "cannot read config file",
}


@pytest.mark.parametrize("line", CONFIG_CASES)
def test_bad_config_file_values(line, tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(line + "\n")
    out = tmp_path / "run"
    err = refused(["train", "--out", str(out), "--config", str(config)], capsys,
                  CONFIG_CASES[line], tmp_path)
    assert str(config) in err or "fit in memory" in err or "positive int" in err
    assert not out.exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--device", "gpu"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--calibration-size", "-5"], "calibration_size must be a positive integer or null"),
    (["--workers", "-1"], "workers must be an integer in [0"),
])
def test_bad_flags(flags, message, tmp_path, capsys):
    refused(["train", "--out", str(tmp_path / "run"), *flags], capsys, message, tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("changes", "message"), [
    ({"threads": True}, "threads must be an integer or null, got True"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"amp": "yes"}, "amp must be true or false or null"),
    ({"augment": 0}, "augment must be true or false"),
    ({"epochs": 10**9}, "epochs must be a positive integer <= 100,000"),
    ({"model_kwargs": [("width", 2)]}, "model_kwargs must be a table of settings"),
])
def test_api_config_types_are_strict(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        TrainConfig(**changes)
    with pytest.raises(ConfigError):
        TrainConfig().replace(**changes)


# ----------------------------------------------------------------------------- checkpoints
def _edit_checkpoint(run_dir: Path, edit) -> None:
    path = RunLayout(run_dir).checkpoint
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def _other_width(ckpt):
    other = optdepth.create_model("resnet20", width=2)
    ckpt["arch"]["kwargs"]["width"] = 2
    ckpt["state_dict"] = other.state_dict()


CHECKPOINT_CASES = {
    "another width": (_other_width, "the run's config asks for 'resnet20'"),
    "another architecture": (lambda c: c["arch"].update(name="resnet32"),
                             "holds 'resnet32'"),
    "format version as a string": (lambda c: c.update(format_version="1"),
                                   "format_version is '1', not a positive integer"),
    "newer format": (lambda c: c.update(format_version=99), "newer than this optdepth supports"),
    "arch not a mapping": (lambda c: c.update(arch="resnet20"), "arch must be"),
    "no state dict": (lambda c: c.pop("state_dict"), "state_dict must be a non-empty mapping"),
    "state dict of strings": (lambda c: c.update(state_dict={"w": "x"}),
                              "state_dict must be a non-empty mapping"),
    "petabyte arguments": (lambda c: c["arch"]["kwargs"].update(width=10**8),
                           "width: checkpoint 100000000, config 'default'"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoints_on_evaluate_and_resume(case, run_copy, capsys):
    edit, message = CHECKPOINT_CASES[case]
    _edit_checkpoint(run_copy, edit)
    refused(["evaluate", str(run_copy), "--no-progress"], capsys, message, run_copy)
    refused(["train", "--out", str(run_copy), "--resume", "--no-progress"], capsys, message,
            run_copy)


def test_checkpoint_arguments_that_would_allocate_petabytes(run_copy, tmp_path):
    """Arguments that agree with the config still have to fit the stored weights: the model is
    sized on the meta device first, so nothing is allocated."""
    # width 10^5: 1.6 million channels, about 90 TB of float32 weights
    _edit_checkpoint(run_copy, lambda c: c["arch"]["kwargs"].update(width=10**5))
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "model_kwargs": {"width": 10**5}}))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="stored weights do not fit resnet20"):
        optdepth.load_model(run_copy)
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(("content", "message"), [
    (b"", "corrupt, truncated or not a torch file"),
    (None, "corrupt, truncated or not a torch file"),  # truncated copy
    (b"not a checkpoint at all", "corrupt, truncated or not a torch file"),
])
def test_unreadable_checkpoints(content, message, run_copy, capsys):
    path = RunLayout(run_copy).checkpoint
    path.write_bytes(path.read_bytes()[:2000] if content is None else content)
    refused(["evaluate", str(run_copy), "--no-progress"], capsys, message, run_copy)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_checkpoint_is_refused_without_unsafe_advice(run_copy, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format_version": 1, "payload": _Payload()}, RunLayout(run_copy).checkpoint)
    err = refused(["evaluate", str(run_copy), "--no-progress"], capsys, "refusing to load",
                  run_copy)
    assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    assert not (tmp_path / "pwned").exists()


def test_resume_needs_a_consistent_history(run_copy, capsys):
    _edit_checkpoint(run_copy, lambda c: c.update(epoch=5))
    refused(["train", "--out", str(run_copy), "--resume", "--no-progress"], capsys,
            "must be an integer equal to the number of history records", run_copy)


# ----------------------------------------------------------------------------- output folders
def test_folder_with_someone_elses_files_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"my": "results"}\n')
    refused(["train", "--out", str(out), *TRAIN], capsys,
            "is not empty and is not an optdepth output folder (no .optdepth marker): it holds"
            " metrics.jsonl", out)
    refused(["demo", "--quick", "--out", str(out), "--no-progress"], capsys,
            "(no .optdepth marker): it holds metrics.jsonl", out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


@pytest.mark.parametrize("config", ['{"learning_rate": 3}', "{}",
                                    '{"epochs": 10, "lr": 0.1, "seed": 1, "batch_size": 32}'])
def test_someone_elses_config_json_is_refused(config, tmp_path, capsys):
    """A config.json that even parses as ours does not make another tool's folder ours."""
    out = tmp_path / "theirs"
    (out / "tb").mkdir(parents=True)
    (out / "config.json").write_text(config)
    (out / "metrics.jsonl").write_text('{"val_acc": 0.93}\n')
    (out / "tb" / "events.out.tfevents.1.host").write_text("x")
    refused(["train", "--out", str(out), *TRAIN], capsys, "is not an optdepth output folder", out)


def test_a_run_folder_is_not_a_demo_folder(run, capsys):
    refused(["demo", "--quick", "--out", str(run), "--no-progress"], capsys,
            "is an optdepth run folder, not a demo folder", run)


@pytest.mark.parametrize("out", ["/proc/optdepth_run", "data/t10k-labels-idx1-ubyte.gz/run",
                                 "x" * 300, "loop"])
def test_output_folder_that_cannot_be_created(out, data_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(data_folder, tmp_path / "data")
    os.symlink("loop", tmp_path / "loop")
    refused(["train", "--out", out, *TRAIN], capsys, "cannot use", tmp_path)


def test_resume_after_editing_config_json_is_refused(run_copy, capsys):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "epochs": 2, "lr": 1e3}))
    refused(["train", "--out", str(run_copy), "--resume", "--no-progress"], capsys,
            "was written with other settings than the run's config.json (epochs, lr differ)",
            run_copy)


@pytest.mark.parametrize("name", ["summary.json", "traces_test.npz"])
def test_evaluation_file_that_cannot_be_written(name, run_copy, capsys):
    target = run_copy / "evaluation" / name
    target.unlink()
    target.mkdir()
    refused(["evaluate", str(run_copy), "--no-progress"], capsys, f"cannot write {target}")
    for traces in (run_copy / "evaluation").glob("*.npz"):  # what was written is whole
        if traces.is_file():
            load_traces(traces)


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    refused(["train", "--out", str(target), *TRAIN], capsys, "is a file, not a folder", tmp_path)


def test_finished_run_is_not_overwritten(run, capsys):
    refused(["train", "--out", str(run), *TRAIN], capsys, "already holds a run; pass --resume", run)


def test_evaluate_needs_a_trained_run(tmp_path, capsys):
    refused(["evaluate", str(tmp_path), "--no-progress"], capsys, "holds no trained run", tmp_path)


# ----------------------------------------------------------------------------- concurrency
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "optdepth", *args]


def test_second_writer_gets_a_busy_error(run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from optdepth.rundir import write_lock\n"
         "with write_lock(sys.argv[1], 'run'):\n print('locked', flush=True);"
         " time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = refused(["evaluate", str(run), "--no-progress"], capsys, "is busy", run)
        assert f"process {holder.pid}" in err
        refused(["train", "--out", str(run), "--resume", "--no-progress"], capsys, "is busy", run)
    finally:
        holder.kill()
        holder.wait()
    assert main(["evaluate", str(run), "--no-progress"]) == 0  # a dead holder leaves no lock


def test_concurrent_evaluates_leave_every_file_readable(run):
    for _ in range(3):
        procs = [subprocess.Popen(_cli("evaluate", str(run), "--no-progress"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        assert all(code in (0, 2) for code, _ in results), results
        assert any(code == 0 for code, _ in results), results
        assert all("is busy" in err for code, err in results if code == 2), results
        assert all("Traceback" not in err for _, err in results), results
        for name in ("calibration", "test"):
            load_traces(run / "evaluation" / f"traces_{name}.npz")
        json.loads((run / "evaluation" / "summary.json").read_text())
        optdepth.load_model(run)


def test_leftovers_of_killed_writes_are_removed(run_copy):
    stale = [RunLayout(run_copy).checkpoint.parent / ".last.pt.k1ll3d.tmp",
             run_copy / "evaluation" / ".traces_test.npz.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"")
    with write_lock(run_copy, "run"):
        assert not any(path.exists() for path in stale)


# ----------------------------------------------------------------------------- API misuse
def test_evaluate_batch_size_must_be_positive(run, capsys):
    refused(["evaluate", str(run), "--batch-size", "0"], capsys,
            "batch size must be a positive integer, got 0", run)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def _bad_metadata(path: Path) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **{**arrays, "metadata": np.array("{not json")})


def _inconsistent(path: Path) -> None:
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(path, **{**arrays, "labels": arrays["labels"][:-3]})


TRACE_CASES = {
    "empty file": (lambda p: p.write_bytes(b""), "cannot read trace file"),
    "truncated file": (_truncated, "cannot read trace file"),
    "bad metadata": (_bad_metadata, "metadata is not valid JSON"),
    "inconsistent shapes": (_inconsistent, "holds inconsistent arrays: labels has shape"),
    "missing file": (lambda p: p.unlink(), "does not exist"),
}


@pytest.mark.parametrize("case", TRACE_CASES)
def test_bad_trace_files_name_the_file(case, run_copy):
    damage, message = TRACE_CASES[case]
    path = run_copy / "evaluation" / "traces_test.npz"
    damage(path)
    with pytest.raises(TraceError, match=message) as info:
        load_traces(path)
    assert str(path) in str(info.value)


def test_empty_out_is_refused(capsys):
    with pytest.raises(SystemExit) as info:  # argparse: usage line, one error, exit code 2
        main(["train", "--out", "", *TRAIN])
    assert info.value.code == 2 and "must be a folder path, not empty" in capsys.readouterr().err


def test_renamed_class_folders_are_refused_on_evaluate(tmp_path, capsys):
    """Labels follow the sorted class folders: a renamed class would shift every label."""
    from helpers import write_imagefolder

    data = write_imagefolder(tmp_path / "images")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--dataset", "imagefolder", "--data-dir", str(data),
                 "--model", "imagenet_resnet18", "--image-size", "32", "--calibration-size", "4",
                 "--workers", "0", "--exits", "stages", "--device", "cpu", *TRAIN,
                 "--train-subset", "32"]) == 0
    for split in ("train", "val"):
        (data / split / "ant").rename(data / split / "zebra")
    refused(["evaluate", str(run), "--no-progress"], capsys,
            "the data's classes are not the ones", run)


def test_one_class_imagefolder_is_refused(tmp_path, capsys):
    from helpers import write_imagefolder

    data = write_imagefolder(tmp_path / "images", classes=("ant",))
    refused(["train", "--out", str(tmp_path / "run"), "--dataset", "imagefolder", "--data-dir",
             str(data), "--model", "imagenet_resnet18", "--workers", "0", *TRAIN], capsys,
            "a classifier needs at least two", data)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m, x: m(x.to(torch.uint8)), DataError, "expects float images, got torch.uint8"),
    (lambda m, x: m.forward_until(x, "2"), ValueError, "exit_index must be in"),
    (lambda m, x: collect_traces(m, x), ValueError, "must be a batch source"),
    (lambda m, x: collect_traces(m, tiny_data(8, 8, 8).test, batch_size=0),
     ValueError, "batch_size must be a positive integer"),
    (lambda m, x: optdepth.evaluate_run("nowhere", data="x"), ValueError,
     "data must be a dataset"),
    (lambda m, x: optdepth.train({"epochs": 1}, "run"), TypeError, "config must be a TrainConfig"),
    (lambda m, x: optdepth.train(TrainConfig(), "run", data=np.zeros(3)), TypeError,
     "data must be a dataset"),
    (lambda m, x: optdepth.create_model("imagenet_resnet18", freeze_backbone="no"), ConfigError,
     "freeze_backbone must be true or false"),
])
def test_api_misuse_is_one_clear_error(call, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = optdepth.create_model("resnet20").eval()
    with pytest.raises(error, match=message):
        call(model, torch.randn(2, 1, 28, 28))
    assert not any(tmp_path.iterdir())


def test_policy_evaluation_arguments_are_checked(run):
    cal = load_traces(run / "evaluation" / "traces_calibration.npz")
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        optdepth.evaluate_policies(cal, cal, names=["lsm"], folds=0)
    with pytest.raises(ValueError, match=r"tolerance must be an accuracy loss in \[-1, 1\]"):
        optdepth.evaluate_policies(cal, cal, names=["max_prob"], tolerance=float("nan"))


def test_trace_values_that_no_network_writes_are_refused(run_copy):
    path = run_copy / "evaluation" / "traces_test.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["probs"][0, 0, 0] = float("nan")
    np.savez(path, **arrays)
    with pytest.raises(TraceError, match="probs must be probabilities"):
        load_traces(path)


def test_train_subset_larger_than_the_data_is_refused(data_folder, tmp_path, capsys):
    out = tmp_path / "run"
    refused(["train", "--out", str(out), "--data-dir", str(data_folder), *TRAIN,
             "--train-subset", "100000"], capsys, "train_subset 100,000 is larger than the"
            " training split (600 images)", data_folder)
    assert not out.exists()
