"""The real-data smoke test: `optdepth demo --quick` end to end, on Fashion-MNIST."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optdepth.data import fashion_mnist as fm

pytestmark = [
    pytest.mark.data,
    pytest.mark.skipif(not fm.SYSTEM_DIR.is_dir(),
                       reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)"),
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The quick demo, run with HOME and the two documented caches redirected: it must write
    nothing outside its output folder but into those caches."""
    root = tmp_path_factory.mktemp("demo")
    out, home = root / "out", root / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(root / "mpl"),
           "OPTDEPTH_CACHE": str(root / "cache")}
    proc = subprocess.run([sys.executable, "-m", "optdepth", "demo", "--quick", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(home.rglob("*")), "the demo wrote under HOME"
    return out


def test_quick_demo_writes_report_metrics_and_plots(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert set(metrics["nets"]) == {"baseline", "ldepth"}
    assert metrics["model_kwargs"] == {}
    for net in metrics["nets"].values():
        assert len(net["exit_accuracy"]) == len(net["exit_compute"]) == 9
        assert net["exit_compute"][-1] == 1.0
        assert len(net["relative_residual_norm"]) == 9
        assert 0 < net["rho"] and net["K"] > 0
        # A real network on real data: far above chance (0.1) after the quick schedule. Its 64
        # steps at lr 0.2 are chaotic: over seeds 0-2 with AVX-512 and AVX2 kernels the last
        # exit reached 0.68-0.75, so 0.5 leaves a margin no CPU's numerics cross.
        assert net["exit_accuracy"][-1] > 0.5
        assert set(net["policies"]) == {"max_prob", "entropy", "patience", "osla", "lsm", "oracle"}
        for name, record in net["policies"].items():
            iso = record["iso_accuracy"]
            assert all(len(point) == 2 for point in record["curve"])
            assert 0 < iso["mean_compute"] <= 1 and 0 < iso["accuracy"] <= 1
            assert sum(record["exit_histogram"]) == 10_000
            if name != "oracle":  # the oracle is a bound: nothing to time or certify
                assert iso["wall_speedup"] > 0
                guaranteed = record["guaranteed"]  # certified on 2,500 unseen samples
                assert guaranteed["n_calibration"] == 2500 and guaranteed["epsilon"] == 0.01
                if guaranteed["certified"]:
                    assert guaranteed["p_value"] <= 0.1 and 0 < guaranteed["mean_compute"] <= 1
        assert net["mean_optimal_depth"] >= 1 and "certificate_depth" in net
    matched = metrics["matched_accuracy"]
    lower = min(net["exit_accuracy"][-1] for net in metrics["nets"].values())
    assert matched["accuracy"] == pytest.approx(lower - 0.005)
    assert set(matched["policies"]) == set(metrics["nets"]["baseline"]["policies"])
    report = (demo_dir / "report.md").read_text()
    assert f"one test accuracy for both nets, {100 * matched['accuracy']:.2f}%" in report
    assert "## Guaranteed operating points" in report and "LTT, ε = 1 point, δ = 0.1" in report
    for png in ("exit_accuracy.png", "residual_decay.png", "policy_curves.png",
                "exit_histograms.png"):
        assert f"]({png})" in report
        assert (demo_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("baseline", "ldepth"):
        run = demo_dir / "runs" / name
        assert (run / "evaluation" / "traces_test.npz").is_file()
        assert (run / "checkpoints" / "last.pt").is_file()


def test_rerun_resumes_without_retraining(demo_dir):
    from optdepth.data import load_fashion_mnist
    from optdepth.experiments.image_demo import SCHEDULES, demo_configs
    from optdepth.training import train_or_resume

    run = demo_dir / "runs" / "ldepth"
    before = (run / "metrics.jsonl").read_text()
    config = demo_configs(SCHEDULES["quick"], None, None, None)["ldepth"]
    result = train_or_resume(config, run, data=load_fashion_mnist(), progress=False)
    assert len(result.history) == config.epochs
    assert (run / "metrics.jsonl").read_text() == before


def test_other_settings_in_the_same_folder_are_refused(demo_dir):
    checkpoint = demo_dir / "runs" / "baseline" / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "optdepth", "demo", "--quick", "--epochs", "3",
                           "--out", str(demo_dir), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "holds a run with other settings" in proc.stderr and "Traceback" not in proc.stderr
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("name", ["baseline", "ldepth"])
def test_full_schedule_config_files_are_the_demo_full_schedule(name):
    """configs/full_*.toml train exactly the nets `optdepth demo --full --threads 1` trains, so
    runs trained side by side from them are picked up by the demo instead of refused."""
    from optdepth.experiments.image_demo import SCHEDULES, demo_configs
    from optdepth.training import TrainConfig

    path = Path(__file__).resolve().parents[1] / "configs" / f"full_{name}.toml"
    expected = demo_configs(SCHEDULES["full"], None, None, 1)[name]
    assert TrainConfig.from_file(path) == expected


def test_model_kwargs_reach_both_nets():
    from optdepth.experiments.image_demo import SCHEDULES, demo_configs

    plain = demo_configs(SCHEDULES["full"], None, None, 1)
    full_res = demo_configs(SCHEDULES["full"], None, None, 1, "resnet20", {"stem_stride": 1})
    for name, config in full_res.items():
        assert config == plain[name].replace(model_kwargs={"stem_stride": 1})


def test_other_architecture_in_the_same_folder_is_refused(demo_dir):
    """run_demo with architecture overrides does not reuse (or touch) runs of another shape."""
    from optdepth.errors import ConfigError
    from optdepth.experiments.image_demo import run_demo

    checkpoint = demo_dir / "runs" / "baseline" / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    with pytest.raises(ConfigError, match="other settings"):
        run_demo(demo_dir, schedule="quick", model_kwargs={"stem_stride": 1}, progress=False)
    assert checkpoint.read_bytes() == before
