"""Exit traces and run evaluation: features against direct computation, file round trip."""

import json

import numpy as np
import pytest
import torch

import optdepth
from optdepth.offline import collect_traces, evaluate_run
from optdepth.traces import FEATURES, Traces, exit_features, load_traces
from optdepth.training import TrainConfig, train


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return optdepth.create_model("resnet20", exits="stages").eval()


def test_traces_match_a_direct_forward(model, tiny):
    traces = collect_traces(model, tiny.test, "test", batch_size=50)
    n, t = len(tiny.test), model.num_exits
    assert traces.probs.shape == (n, t, 10) and traces.features.shape == (n, t, len(FEATURES))
    with torch.no_grad():
        out = model(tiny.test.images)
    np.testing.assert_allclose(traces.probs, out.logits.softmax(-1).permute(1, 0, 2).numpy(),
                               rtol=1e-5, atol=1e-6)
    f = dict(zip(FEATURES, np.moveaxis(traces.features, -1, 0), strict=True))
    p = traces.probs
    np.testing.assert_allclose(f["max_prob"], p.max(-1), rtol=1e-6)
    top2 = np.sort(p, -1)[..., -2]
    np.testing.assert_allclose(f["margin"], p.max(-1) - top2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f["entropy"], -(p * np.log(p)).sum(-1), rtol=1e-4, atol=1e-6)
    pred = p.argmax(-1)
    assert (f["agreement"][:, 0] == 0).all()
    np.testing.assert_array_equal(f["agreement"][:, 1:], pred[:, 1:] == pred[:, :-1])
    rel = (out.residual_norms / out.state_norms).T.numpy()[:, list(model.exit_blocks)]
    np.testing.assert_allclose(f["relative_residual_norm"], rel, rtol=1e-5)
    np.testing.assert_allclose(f["cost"], np.broadcast_to(model.exit_costs().numpy(), (n, t)))


def test_exit_features_known_values():
    probs = np.array([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]])  # one sample, two exits
    feats = exit_features(probs, np.array([[0.5, 0.25]]), np.array([0, 1]), np.array([0.4, 1.0]))
    np.testing.assert_allclose(feats[0, :, 0], [0.7, 0.8])
    np.testing.assert_allclose(feats[0, :, 1], [0.5, 0.7])
    np.testing.assert_allclose(feats[0, 0, 2], -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1)))
    np.testing.assert_allclose(feats[0, :, 3], [0, 0])
    np.testing.assert_allclose(feats[0, :, 4:], [[0.5, 0.4], [0.25, 1.0]])


def test_trace_file_round_trip_and_errors(model, tiny, tmp_path):
    traces = collect_traces(model, tiny.calibration, "calibration")
    traces.save(tmp_path / "t.npz")
    back = load_traces(tmp_path / "t.npz")
    for key in ("probs", "labels", "features", "exit_costs", "residual_norms", "exit_blocks"):
        np.testing.assert_array_equal(getattr(back, key), getattr(traces, key))
    assert back.metadata["split"] == "calibration" and back.feature_names == FEATURES
    assert not list(tmp_path.glob(".*"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not an optdepth trace file"):
        load_traces(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read trace file"):
        load_traces(tmp_path / "junk.npz")


def test_empty_split_is_a_clear_error(model, tiny):
    with pytest.raises(ValueError, match="split is empty"):
        collect_traces(model, tiny.test.subset(0), "test")


def test_traces_module_does_not_need_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; "
            "import optdepth.traces, optdepth.stopping; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_evaluate_run_writes_summary_and_traces(tmp_path, tiny):
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, eval_batch_size=256)
    train(config, tmp_path / "run", data=tiny, progress=False)
    summary = evaluate_run(tmp_path / "run", data=tiny, progress=False).summary
    out = tmp_path / "run" / "evaluation"
    assert json.loads((out / "summary.json").read_text()) == summary
    test = load_traces(out / "traces_test.npz")
    assert isinstance(test, Traces) and len(test.labels) == len(tiny.test)
    np.testing.assert_allclose(summary["exit_accuracy"], test.exit_accuracy())
    assert len(summary["relative_residual_norm"]) == 9 and summary["exit_compute"][-1] == 1.0
    fit = summary["decay_fit"]
    assert fit["K"] > 0 and fit["rho"] > 0
    assert (out / "traces_calibration.npz").is_file()
