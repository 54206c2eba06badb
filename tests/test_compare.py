"""`optdepth compare`: paired statistics with known answers, pairing, resume, bad input.

Tiny synthetic data (tests/helpers.py) and one-epoch ResNet-20s: the figures mean nothing, the
behaviour is what is checked.
"""

import json
import re
import shutil
from functools import partial

import numpy as np
import pytest
import torch
from helpers import tiny_data

from optdepth.cli import main
from optdepth.errors import ConfigError, RunDirError
from optdepth.experiments import pipeline
from optdepth.experiments.compare import Variant, compare, summarize
from optdepth.experiments.image_demo import SCHEDULES, demo_base_config
from optdepth.experiments.paired import bootstrap_median_interval, paired_stat, signed_rank_p
from optdepth.offline import evaluate_policies
from optdepth.training import TrainConfig, train
from optdepth.training import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("one_thread")
STAT_KEYS = {"median", "ci95", "values", "p_value"}


@pytest.fixture(scope="module")
def data():
    # 768 training images: 3 steps of the demo's batch of 256, so that L_depth (ramped up over
    # the first epoch) changes the weights
    return tiny_data(n_train=768)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, data):
    """A 3-seed compare in which distill:2 diverges at seed 2 (a NaN loss from step 2 on)."""
    original = trainer_module._Run._loss

    def loss(self, inputs, targets, epoch):
        total, ce, reg = original(self, inputs, targets, epoch)
        if self.config.seed == 2 and self.config.beta > 0 and epoch > 0.3:
            total = total * float("nan")
        return total, ce, reg

    out = tmp_path_factory.mktemp("compare") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module._Run, "_loss", loss)
        # 2 cross-fitting folds instead of 10: the same code paths, a fifth of the fitting time
        patch.setattr(pipeline, "evaluate_policies", partial(evaluate_policies, folds=2))
        result = compare(out, schedule="quick", epochs=1, seeds=[0, 1, 2], data=data, jobs=1,
                         threads=1, progress=False)
    return out, result


# --- statistics: known answers --------------------------------------------------------------

def test_wilcoxon_matches_a_hand_computed_case():
    # |d| ranks 2, 3, 4, 1, 5; W- = 1. Of the 2^5 sign patterns, 2 have W <= 1: p = 2 * 2/32
    assert signed_rank_p([1.0, 2.0, 3.0, -0.5, 4.0]) == pytest.approx(0.125)
    # all five positive: the least p-value five seeds can give, 2 / 2^5
    assert signed_rank_p([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.0625)
    assert paired_stat([1, 2, 3, 4, 5], list(range(5)), "diff")["p_floor"] == 0.0625
    assert signed_rank_p([0.0, 0.0, 0.0]) == 1.0


def test_ratios_are_tested_on_the_log_scale():
    # 0.5 and 2 are equally far from "no change": their log-ratios cancel
    assert paired_stat([0.5, 2.0, 0.5, 2.0], [0, 1, 2, 3], "ratio")["p_value"] == pytest.approx(1.0)
    assert paired_stat([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], list(range(6)),
                       "ratio")["p_value"] < 0.05


def test_bootstrap_interval_holds_the_median_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.8, 0.1, 5), rng.normal(0.8, 0.1, 80)
    for values in (few, many):
        low, high = bootstrap_median_interval(values)
        assert low <= np.median(values) <= high
        assert values.min() <= low and high <= values.max()
    assert np.ptp(bootstrap_median_interval(many)) < np.ptp(bootstrap_median_interval(few))
    assert bootstrap_median_interval(few) == bootstrap_median_interval(few)  # fixed seed


def test_one_value_has_no_interval_and_no_test():
    stat = paired_stat([0.9], [3], "ratio")
    assert stat["median"] == 0.9 and stat["ci95"] is None and stat["p_value"] is None


def _record(seed, final, rho, curve):
    policies = {"lsm": {"curve": curve, "iso_accuracy": {"mean_compute": curve[0][0],
                                                         "accuracy": curve[0][1]}}}
    return {"variant": "?", "seed": seed, "net": {
        "exit_accuracy": [0.5, final], "rho": rho, "policies": policies,
        "policy_comparison": {"oracle_gap_closed": 0.5}}}


def test_identical_variants_give_ratio_one_and_difference_zero():
    curves = {0: [[0.3, 0.88], [0.6, 0.9]], 1: [[0.2, 0.8], [0.5, 0.86]]}
    records = {(v, s): _record(s, 0.9 - 0.04 * s, 0.7, curves[s]) for v in ("a", "b")
               for s in (0, 1)}
    summary = summarize(records, ["a", "b"], [0, 1])
    stats = summary["paired"]["b"]["lsm"]
    assert stats["matched_ratio"]["values"] == [1.0, 1.0] == stats["iso_ratio"]["values"]
    assert stats["final_accuracy_diff"]["values"] == [0.0, 0.0] == stats["rho_diff"]["values"]
    assert stats["matched_ratio"]["ci95"] == [1.0, 1.0] and stats["matched_ratio"]["p_value"] == 1
    # one level for all: the lowest final exit (0.86) minus 0.5 points, read on each curve
    assert summary["matched_accuracy"]["accuracy"] == pytest.approx(0.855)
    assert [e["matched_compute"]["lsm"] for e in summary["per_seed"]["a"]] == [0.3, 0.5]


# --- pairing ----------------------------------------------------------------------------------

def test_same_seed_gives_every_variant_the_same_start_and_batches(tmp_path, data, monkeypatch):
    """The trainer's own first epoch: initial weights and every batch, per (variant, seed)."""
    seen = {}
    original = trainer_module._Run.train_epoch

    def train_epoch(self, epoch, progress):
        weights = {k: v.clone() for k, v in self.model.state_dict().items()}
        batches = [targets.clone() for _, targets in self.task.batches(epoch)]
        seen[(self.config.regularizer, self.config.beta, self.config.seed)] = (weights, batches)
        return original(self, epoch, progress)

    monkeypatch.setattr(trainer_module._Run, "train_epoch", train_epoch)
    base = demo_base_config(SCHEDULES["quick"], None, 1).replace(epochs=1, train_subset=768)
    for text, seed in (("none", 0), ("distill:2", 0), ("none", 1)):
        train(Variant.parse(text).config(base, seed), tmp_path / f"{text}-{seed}", data=data,
              progress=False)
    (w0, b0), (w1, b1), (w2, b2) = (seen[k] for k in seen)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert len(b0) == 3 and all(torch.equal(x, y) for x, y in zip(b0, b1, strict=True))
    assert not all(torch.equal(w0[k], w2[k]) for k in w0)  # another seed, another start
    assert not all(torch.equal(x, y) for x, y in zip(b0, b2, strict=True))


# --- the compare folder -----------------------------------------------------------------------

def test_compare_json_schema(compared):
    out, result = compared
    saved = json.loads((out / "compare.json").read_text())
    assert saved["model"] == "resnet20" and saved["schedule"] == "quick"
    assert saved["seeds"] == [0, 1, 2] and saved["variants"] == ["none", "distill:2"]
    assert saved["paired"] == json.loads(json.dumps(result.paired))
    assert set(saved["per_seed"]) == {"none", "distill:2"}
    policies = {"max_prob", "entropy", "patience", "osla", "lsm", "oracle"}
    for entries in saved["per_seed"].values():
        for entry in entries:
            assert {"seed", "final_accuracy", "rho", "iso_compute", "matched_compute"} <= set(entry)
            assert set(entry["iso_compute"]) == set(entry["matched_compute"]) == policies
            assert 0 < entry["rho"] and 0 <= entry["final_accuracy"] <= 1
    assert set(saved["paired"]) == {"distill:2"}
    for stats in saved["paired"]["distill:2"].values():
        assert {"matched_ratio", "iso_ratio", "final_accuracy_diff"} <= set(stats)
        for stat in stats.values():
            assert STAT_KEYS <= set(stat)
            low, high = stat["ci95"]
            assert low <= stat["median"] <= high and len(stat["values"]) == 2
            assert 0 < stat["p_value"] <= 1
    assert "rule" in saved["matched_accuracy"]
    report = (out / "report.md").read_text()
    for png in ("forest.png", "seed_bands.png"):
        assert f"]({png})" in report
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / ".optdepth").read_text())["kind"] == "compare"


def test_a_diverged_seed_is_excluded_by_name(compared):
    out, result = compared
    assert [(e["variant"], e["seed"]) for e in result.excluded] == [("distill:2", 2)]
    assert "nan" in result.excluded[0]["reason"]
    assert [e["seed"] for e in result.summary["per_seed"]["distill:2"]] == [0, 1]
    assert [e["seed"] for e in result.summary["per_seed"]["none"]] == [0, 1, 2]
    for stats in result.paired["distill:2"].values():  # seed 2 is unpaired: in no statistic
        assert all(stat["seeds"] == [0, 1] for stat in stats.values())
    assert "`distill:2` seed 2:" in (out / "report.md").read_text()


def test_rerun_resumes_without_retraining(compared, data):
    out, result = compared
    files = sorted(out.glob("runs/*/*/checkpoints/last.pt")) + sorted(out.glob("results/*/*"))
    before = {p: p.stat().st_mtime_ns for p in files}
    assert len(files) == 11  # 5 trained runs (one diverged in epoch 1) and 6 records
    again = compare(out, schedule="quick", epochs=1, seeds=[0, 1, 2], data=data, jobs=1,
                    progress=False)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert again.paired == result.paired and again.excluded == result.excluded


def test_another_model_schedule_or_reference_is_refused(compared, data):
    out, _ = compared
    before = (out / "compare.json").read_bytes()
    for changes, message in (({"model": "resnet32"}, "model: 'resnet20' there"),
                             ({"epochs": 2}, "schedule: quick (1 epochs) there"),
                             ({"variants": ["distill:2", "none"]}, "reference: 'none' there")):
        kwargs = {"schedule": "quick", "epochs": 1, "seeds": [0, 1], **changes}
        with pytest.raises(RunDirError, match=re.escape(message)):
            compare(out, data=data, jobs=1, progress=False, **kwargs)
    assert (out / "compare.json").read_bytes() == before


def test_a_variant_added_later_reuses_the_reference_runs(compared, data, tmp_path, monkeypatch):
    out, result = compared
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    records = sorted(grown.glob("results/*/*.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    monkeypatch.setattr(pipeline, "evaluate_policies", partial(evaluate_policies, folds=2))
    again = compare(grown, schedule="quick", epochs=1, seeds=[0, 1, 2], data=data, jobs=1,
                    variants=["none", "distill:2", "stopping:1"], progress=False)
    assert {p: p.stat().st_mtime_ns for p in records} == before  # nothing retrained
    assert again.paired["distill:2"] == result.paired["distill:2"]
    assert set(again.paired) == {"distill:2", "stopping:1"}
    assert json.loads((grown / "settings.json").read_text())["variants"] == \
        ["none", "distill:2", "stopping:1"]
    final = again.summary["per_variant"]["none"]["final_accuracy"]
    values = [e["final_accuracy"] for e in again.summary["per_seed"]["none"]]
    assert final["median"] == np.median(values) and final["ci95"][0] <= final["median"]
    assert "## Each variant over its seeds" in (grown / "report.md").read_text()


@pytest.mark.slow  # ~30 s: four runs in two spawned workers, each fitting every policy
def test_parallel_workers_give_the_in_process_results(compared, data, tmp_path):
    """Two spawned workers, one thread each, train the same nets as one in-process job (their
    policies are fitted with the default 10 folds, the fixture's with 2)."""
    out, result = compared
    parallel = compare(tmp_path / "par", schedule="quick", epochs=1, seeds=[0, 1], data=data,
                       jobs=2, threads=1, progress=False)
    assert parallel.summary["jobs"] == 2
    keys = ("seed", "final_accuracy", "rho")
    for variant, entries in parallel.summary["per_seed"].items():
        assert [{k: e[k] for k in keys} for e in entries] == \
            [{k: e[k] for k in keys} for e in result.summary["per_seed"][variant][:2]]


@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "0"], "an interval needs at least 2 seeds"),
    (["--seeds", "0", "0"], "seeds must be distinct"),
    (["--variants", "none", "bogus:1"], "unknown variant 'bogus:1'"),
    (["--variants", "none", "distill"], "unknown variant 'distill'"),
    (["--variants", "none", "distill:-1"], "beta must be a finite number > 0"),
    (["--variants", "none"], "at least two variants"),
    (["--variants", "none", "distill:2", "distill:2.0"], "variants must differ"),
    (["--schedule", "slow"], "unknown schedule 'slow'"),
    (["--model", "lm"], "is a causal LM"),
    (["--jobs", "0"], "jobs must be a positive integer"),
])
def test_bad_input_is_one_clear_error(args, message, tmp_path, capsys, fashion_folder):
    code = main(["compare", "--out", str(tmp_path / "out"), "--data-dir", str(fashion_folder),
                 "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert err.count("optdepth: error:") == 1
    assert not (tmp_path / "out").exists()


def test_variant_names_are_canonical():
    assert Variant.parse("distill:2.0").name == "distill:2" == Variant.parse("distill:2").name
    assert Variant.parse("none").folder == "none" and Variant.parse("relative:0.1").folder \
        == "relative_0.1"
    with pytest.raises(ConfigError):
        Variant.parse(3)


def test_a_combined_variant_trains_the_sum_of_its_terms():
    both = Variant.parse("distill:2.0+stopping:1")
    assert both.name == "distill:2+stopping:1" and both.folder == "distill_2+stopping_1"
    config = both.config(TrainConfig(model="resnet20", epochs=1), seed=3)
    assert (config.regularizer, config.beta, config.seed) == ("sum", 1.0, 3)
    assert config.regularizer_kwargs == {"terms": {"distill": 2.0, "stopping": 1.0}}
    single = Variant.parse("distill:2").config(TrainConfig(model="resnet20", epochs=1), seed=0)
    assert (single.regularizer, single.beta) == ("distill", 2.0)
    for text, message in (("distill:2+distill:1", "names a regularizer twice"),
                          ("distill:2+", "unknown variant"), ("sum:1", "unknown variant"),
                          ("distill:2+stopping:0", "beta must be a finite number > 0")):
        with pytest.raises(ConfigError, match=message):
            Variant.parse(text)


def test_results_of_another_folder_kind_are_not_touched(tmp_path, data):
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an optdepth output folder"):
        compare(tmp_path / "theirs", schedule="quick", epochs=1, seeds=[0, 1], data=data)
