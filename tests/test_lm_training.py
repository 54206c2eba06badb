"""Text data, LM training (run directory, resume), per-token traces and the LM demo pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from optdepth.checkpoints import load_model
from optdepth.data.text import (
    TextSplit,
    eval_windows,
    load_text_corpus,
    random_windows,
    stdlib_files,
)
from optdepth.errors import ConfigError, DataError
from optdepth.models.causal_lm import CausalLM
from optdepth.offline import evaluate_policies
from optdepth.offline.collect import collect_lm_traces, exit_perplexity
from optdepth.traces import exit_features, load_traces
from optdepth.training import LMTrainConfig, train_or_resume

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    """40 small 'source files' with a learnable pattern; one hidden file that must be skipped."""
    root = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    for i in range(40):
        sub = root / f"pkg{i % 3}"
        sub.mkdir(exist_ok=True)
        lines = [f"def f{j}(x):\n    return x + {int(rng.integers(10))}\n" for j in range(30)]
        (sub / f"mod{i:02d}.py").write_text("".join(lines))
    (root / ".hidden").write_text("secret")
    return root


# ----------------------------------------------------------------------------- data
def test_split_by_file_is_deterministic_and_disjoint(text_dir):
    a, b = load_text_corpus([text_dir]), load_text_corpus([text_dir])
    assert a.test.files == b.test.files and torch.equal(a.train.data, b.train.data)
    names = [set(s.files) for s in (a.train, a.calibration, a.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert sum(map(len, names)) == 40 and len(names[1]) == len(names[2]) == 2
    assert not any(".hidden" in f for s in names for f in s)
    assert load_text_corpus([text_dir], seed=1).test.files != a.test.files


def test_fewer_than_three_files_are_cut_into_contiguous_ranges(tmp_path):
    path = tmp_path / "one.txt"
    path.write_bytes(bytes(range(256)) * 4)
    corpus = load_text_corpus([path])
    joined = torch.cat([corpus.train.data, corpus.calibration.data, corpus.test.data])
    assert joined.tolist() == list(path.read_bytes())
    assert len(corpus.train) == round(0.9 * 1024)


def test_bad_text_paths_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_text_corpus([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no files found"):
        load_text_corpus([tmp_path / "empty"])
    (tmp_path / "tiny.txt").write_text("ab")
    with pytest.raises(DataError, match="give more text"):
        load_text_corpus([tmp_path / "tiny.txt"])


def test_stdlib_corpus_lists_the_standard_library_only():
    files = stdlib_files()
    assert len(files) > 100 and files == sorted(files)
    assert any(f.name == "os.py" for f in files)
    assert not any("site-packages" in f.parts or "test" in f.parts for f in files)


def test_windows_shift_targets_by_one_byte():
    split = TextSplit(torch.arange(100, dtype=torch.uint8), ("x",))
    inputs, targets = random_windows(split, 4, 10, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (4, 10) and inputs.dtype == torch.int64
    assert torch.equal(targets, inputs + 1)
    inputs, targets = eval_windows(split, 10)
    assert inputs.shape == (9, 10) and inputs.flatten().tolist() == list(range(90))
    assert eval_windows(split, 10, max_tokens=25)[0].shape == (2, 10)


# ----------------------------------------------------------------------------- training
def tiny_config(**changes) -> LMTrainConfig:
    return LMTrainConfig(model="lm_tiny", epochs=2, steps_per_epoch=4, batch_size=4,
                         lr_warmup_steps=2, eval_tokens=256, **changes)


@pytest.fixture(scope="module")
def trained(text_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("lm") / "run"
    corpus = load_text_corpus([text_dir])
    result = train_or_resume(tiny_config(beta=0.5), run, data=corpus, progress=False)
    return run, corpus, result


def test_training_writes_a_resumable_run_directory(trained):
    run, corpus, result = trained
    assert json.loads((run / "config.json").read_text())["model"] == "lm_tiny"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(records[-1]["cal_perplexity"]) == 3 and records[-1]["train_reg"] > 0
    assert (run / "checkpoints" / "last.pt").is_file() and any((run / "tb").iterdir())
    before = (run / "metrics.jsonl").read_text()
    again = train_or_resume(tiny_config(beta=0.5), run, data=corpus, progress=False)
    assert (run / "metrics.jsonl").read_text() == before and len(again.history) == 2
    loaded = load_model(run, model_type=CausalLM)
    ids = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(loaded(ids).logits, result.model(ids).logits)


def test_other_settings_in_the_same_folder_are_refused(trained):
    run, corpus, _ = trained
    checkpoint = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        train_or_resume(tiny_config(beta=0.1), run, data=corpus, progress=False)
    assert (run / "checkpoints" / "last.pt").read_bytes() == checkpoint


def test_bad_config_values_raise(tmp_path):
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        LMTrainConfig(steps_per_epoch=0)
    with pytest.raises(ConfigError, match="unknown regularizer"):
        LMTrainConfig(regularizer="nope")
    with pytest.raises(ConfigError, match="not a causal language model"):
        train_or_resume(LMTrainConfig(model="resnet20"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_evaluate_run_traces_an_lm_run_like_an_image_run(trained):
    """The one evaluation entry point serves LM runs: per-token traces of both splits, the LM
    summary, the files of the run layout, and a clear error for image data."""
    from helpers import tiny_data

    from optdepth.offline import evaluate_run
    from optdepth.rundir import RunLayout

    run, corpus, result = trained
    evaluation = evaluate_run(run, data=corpus, max_tokens=256, progress=False)
    assert set(evaluation.traces) == {"calibration", "test"}
    test = evaluation.traces["test"]
    assert test.probs.shape == (256, 3, 256) and test.metadata["unit"] == "token"
    direct = collect_lm_traces(result.model, corpus.test, "test", max_tokens=256)
    np.testing.assert_array_equal(test.probs, direct.probs)
    summary = json.loads(RunLayout(run).summary.read_text())
    assert summary["perplexity"] == evaluation.summary["perplexity"] and summary["arch"] == "lm_tiny"
    np.testing.assert_array_equal(load_traces(RunLayout(run).traces("test")).probs, test.probs)
    with pytest.raises(ValueError, match="TextCorpus"):
        evaluate_run(run, data=tiny_data(8, 8, 8), progress=False)


def test_token_traces_feed_the_exit_policies_unchanged(trained, tmp_path):
    _, corpus, result = trained
    model = result.model
    cal = collect_lm_traces(model, corpus.calibration, "calibration", max_tokens=512)
    test = collect_lm_traces(model, corpus.test, "test", max_tokens=512)
    n, t = 512, model.num_exits
    assert cal.probs.shape == (n, t, 256) and cal.features.shape == (n, t, 6)
    np.testing.assert_allclose(cal.probs.sum(-1), 1.0, atol=1e-5)
    relative = cal.residual_norms / np.maximum(cal.state_norms, 1e-12)
    np.testing.assert_array_equal(cal.features, exit_features(cal.probs, relative, cal.exit_blocks,
                                                              cal.exit_costs))
    inputs, targets = eval_windows(corpus.calibration, model.context, 512)
    assert cal.labels.tolist() == targets.flatten().tolist()
    ppl = exit_perplexity(cal)
    p_true = cal.probs[np.arange(n), -1, cal.labels].astype(np.float64)
    assert ppl[-1] == pytest.approx(float(np.exp(-np.log(p_true).mean())))
    test.save(tmp_path / "t.npz")
    evaluations = evaluate_policies(cal, load_traces(tmp_path / "t.npz"),
                                    ("max_prob", "patience", "oracle"))  # all six: the demo test
    for name, evaluation in evaluations.items():
        compute, accuracy = evaluation.iso_test
        assert 0 < compute <= 1 and 0 <= accuracy <= 1, name


# ----------------------------------------------------------------------------- the demo
@pytest.mark.slow
def test_lm_demo_quick_writes_the_image_demo_schema(text_dir, tmp_path):
    from optdepth.experiments.lm_demo import run_lm_demo

    out = tmp_path / "demo"
    metrics = run_lm_demo(out, schedule="quick", text=[str(text_dir)], model="lm_tiny",
                          progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["nets"]) == {"baseline", "ldepth"}
    for net in saved["nets"].values():
        t = len(net["exit_accuracy"])
        assert t == 3 and len(net["exit_compute"]) == len(net["perplexity"]) == t
        assert net["exit_compute"][-1] == 1.0 and len(net["relative_residual_norm"]) == t
        assert set(net["policies"]) == {"max_prob", "entropy", "patience", "osla", "lsm", "oracle"}
        assert net["mean_optimal_depth"] >= 1 and "certificate_depth" in net and net["rho"] > 0
        for name, record in net["policies"].items():
            iso = record["iso_accuracy"]
            assert 0 < iso["mean_compute"] <= 1 and "curve" in record
            if name != "oracle":
                assert iso["decode_speedup"] > 0 and iso["wall_speedup"] == iso["decode_speedup"]
                assert 0 <= iso["decode_accuracy"] <= 1
        spec = net["speculative"]
        assert 0 <= spec["draft_exit"] < t - 1 and spec["draft_tokens"] in (2, 4, 8)
        for batch in ("batch_1", "batch_8"):
            assert 0 <= spec[batch]["acceptance_rate"] <= 1 and spec[batch]["decode_speedup"] > 0
            # lossless up to float32 ties between two logits (rare; exact in float64 tests)
            assert spec[batch]["same_tokens_fraction"] >= 0.95
    assert metrics["nets"]["baseline"]["exit_accuracy"] == saved["nets"]["baseline"]["exit_accuracy"]
    report = (out / "report.md").read_text()
    assert "decode speed-up" in report and "](policy_curves.png)" in report
    assert "## Self-speculative decoding" in report
    assert (out / "runs" / "ldepth" / "evaluation" / "traces_test.npz").is_file()


def test_cli_trains_and_resumes_the_language_model(text_dir, tmp_path, capsys):
    from optdepth.cli import main

    run = tmp_path / "run"
    flags = ["--model", "lm_tiny", "--text", str(text_dir), "--steps-per-epoch", "3",
             "--batch-size", "4", "--threads", "1", "--no-progress"]
    assert main(["train", "--out", str(run), "--epochs", "1", *flags]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["model"], config["steps_per_epoch"], config["epochs"]) == ("lm_tiny", 3, 1)
    assert main(["train", "--out", str(run), "--epochs", "1", *flags]) == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0  # finished: kept
    assert (run / "metrics.jsonl").read_text() == before
    assert main(["train", "--out", str(tmp_path / "x"), "--model", "lm_tiny", "--dataset",
                 "imagefolder"]) == 2
    assert "--dataset apply to image models" in capsys.readouterr().err
