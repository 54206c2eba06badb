"""Real early exit on a briefly trained net: online == offline, retired samples skip blocks."""

import copy

import numpy as np
import pytest
import torch
from helpers import assert_online_equals_offline, policy_grid, tiny_data, train_on_noisy_data

import optdepth
from optdepth.errors import DataError
from optdepth.offline import ExitPolicy, TraceSource, fit_exit_policy, list_exit_policies
from optdepth.offline.exit_policies import FitContext
from optdepth.online import (
    EarlyExitResult,
    early_exit_predict,
    engine_time_breakdown,
    exit_time_shares,
    full_depth_predict,
    measure_latency_profile,
    measure_wall_speedups,
    offline_exits,
    replay_schedule,
)
from optdepth.online.timing import ENGINE_PARTS, interleaved_times, paired
from optdepth.stopping import NotFittedError, ThresholdPolicy
from optdepth.traces import FEATURES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    """A ResNet-20 trained for 40 noisy steps: early exits are weak, late ones good, so the
    policies spread samples over many exits."""
    data = tiny_data(512, 256, 256)
    torch.manual_seed(0)
    model = optdepth.create_model("resnet20")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cal, test = train_on_noisy_data(model, data, opt, steps=40)
    return model, data, cal, test


@pytest.fixture(scope="module")
def policies(trained):
    _, _, cal, _ = trained
    ctx = FitContext.from_traces(cal, folds=5)
    return [(name, p, fit_exit_policy(name, ctx, float(p)))
            for name in list_exit_policies() for p in policy_grid(name, cal)]


def test_online_equals_offline_for_every_policy(trained, policies):
    model, data, _, test = trained
    used = set()
    for name, param, policy in policies:
        used |= assert_online_equals_offline(model, policy, data, test, f"{name}({param:.3g})")
    assert len(used) >= 4, f"policies used only exits {sorted(used)}: the test would be weak"


def test_result_fields(trained, policies):
    model, data, _, test = trained
    policy = dict(((n, i), p) for i, (n, _, p) in enumerate(policies) if n == "lsm").popitem()[1]
    model.train()
    result = early_exit_predict(model, policy, data.test, 50)
    assert model.training  # mode restored
    n, costs = len(data.test), model.exit_costs().numpy().astype(np.float64)
    assert isinstance(result, EarlyExitResult)
    assert result.predictions.shape == result.exit_index.shape == result.compute.shape == (n,)
    assert result.predictions.dtype == result.exit_index.dtype == np.int64
    assert result.probs.shape == (n, model.num_classes) and result.features is None
    np.testing.assert_array_equal(result.compute, costs[result.exit_index])
    np.testing.assert_array_equal(result.probs.argmax(-1), result.predictions)
    np.testing.assert_allclose(result.probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result.labels, data.test.labels.numpy())
    assert result.accuracy == pytest.approx((result.predictions == result.labels).mean())
    assert result.mean_compute == pytest.approx(result.compute.mean())
    np.testing.assert_allclose(result.probs, test.probs[np.arange(n), result.exit_index],
                               rtol=1e-6, atol=1e-7)
    bare = early_exit_predict(model, policy, data.test.images[:10])
    assert bare.labels is None and bare.accuracy is None


def _count_block_inputs(model):
    counts = [[] for _ in model.blocks]
    handles = [block.register_forward_hook(
        lambda mod, inp, out, i=i: counts[i].append(inp[0].shape[0]))
        for i, block in enumerate(model.blocks)]
    return counts, handles


@pytest.mark.parametrize("refill", [False, True])
def test_retired_samples_skip_later_blocks(trained, policies, refill):
    model, data, _, test = trained
    name, _, policy = next(p for p in policies if p[0] == "max_prob")
    exits = offline_exits(policy, test).exit_index
    batch_size = 32
    counts, handles = _count_block_inputs(model)
    try:
        early_exit_predict(model, policy, data.test, batch_size, refill=refill)
    finally:
        for h in handles:
            h.remove()
    for block, seen in enumerate(counts):  # exit t follows block t in resnet20
        reached = int((exits >= block).sum())
        assert all(size <= batch_size for size in seen)
        if not refill:  # batch by batch: the exact count (a lone sample runs as a pair)
            per_batch = [int((exits[s:s + batch_size] >= block).sum())
                         for s in range(0, len(exits), batch_size)]
            assert seen == [k if k > 1 else 2 for k in per_batch if k > 0]
        else:
            assert reached <= sum(seen) <= reached + seen.count(2)
    assert sum(counts[-1]) < len(exits)  # some samples really left before the last block


@pytest.mark.parametrize("refill", [False, True])
def test_schedule_lists_every_network_call_and_replays(trained, policies, refill):
    """The schedule is the pass's network calls: the stem takes every sample once, segment t
    takes exactly the samples whose exit is t or later, no call exceeds the batch size; and
    the replay makes the same calls, in order, on the same batch sizes."""
    model, data, _, test = trained
    policy = next(p for n, _, p in policies if n == "lsm")
    batch_size = 48
    result = early_exit_predict(model, policy, data.test, batch_size, refill=refill)
    schedule = result.schedule
    assert all(0 < k <= batch_size for _, k in schedule)
    entered = np.zeros(model.num_exits + 1, dtype=np.int64)  # index 0: the stem
    for t, k in schedule:
        entered[t + 1] += k
    reached = [(result.exit_index >= t).sum() for t in range(model.num_exits)]
    np.testing.assert_array_equal(entered, [len(data.test), *reached])
    if refill:  # every call but the final flush of each queue gets a full batch
        assert sum(k < batch_size for t, k in schedule if t >= 0) <= model.num_exits
    replay = replay_schedule(model, schedule, data.test.images)  # computes its states first
    calls = []
    handles = [model.blocks[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0])),
               model.heads[-1].register_forward_hook(lambda m, i, o: calls.append(-i[0].shape[0]))]
    try:
        replay()
    finally:
        for h in handles:
            h.remove()
    pair = [max(k, 2) for t, k in schedule if t == 0]  # a lone sample runs as a pair
    assert [c for c in calls if c > 0] == pair
    assert [-c for c in calls if c < 0] == [max(k, 2) for t, k in schedule
                                            if t == model.num_exits - 1]
    assert offline_exits(policy, test).schedule is None


def test_replay_schedule_refuses_what_it_cannot_replay(trained):
    model, data, _, _ = trained
    images = data.test.images
    with pytest.raises(ValueError, match="empty"):
        replay_schedule(model, (), images)
    with pytest.raises(ValueError, match="up to 64 samples but only 10 images"):
        replay_schedule(model, ((-1, 64), (0, 64)), images[:10])
    with pytest.raises(ValueError, match="another model"):
        replay_schedule(model, ((-1, 8), (model.num_exits, 8)), images)
    with pytest.raises(DataError, match="expects images of shape"):
        replay_schedule(model, ((-1, 8),), torch.zeros(8, 3, 28, 28))


def test_channels_last_model_stays_channels_last_and_online_equals_offline(trained, policies):
    """A channels-last model: retiring samples keeps the state channels-last (no block gets an
    NCHW input to reorder), and the exits equal those of traces taken in that layout."""
    from optdepth.offline import collect_traces

    model, data, _, _ = trained
    model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    test = collect_traces(model, data.test, "test", batch_size=100)
    layouts = []
    handles = [block.register_forward_pre_hook(
        lambda mod, inp: layouts.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
        for block in model.blocks]
    try:
        for name in ("max_prob", "lsm"):
            policy = next(p for n, _, p in policies if n == name)
            assert_online_equals_offline(model, policy, data, test, f"channels-last {name}")
    finally:
        for h in handles:
            h.remove()
    assert layouts and all(layouts)


def test_stop_at_first_exit_runs_no_later_block(trained):
    model, data, cal, _ = trained
    stop_now = fit_exit_policy("max_prob", cal, -1.0)  # every max_prob >= -1
    counts, handles = _count_block_inputs(model)
    try:
        result = early_exit_predict(model, stop_now, data.test, 64)
    finally:
        for h in handles:
            h.remove()
    assert (result.exit_index == 0).all() and result.mean_compute == pytest.approx(
        float(model.exit_costs()[0]))
    assert sum(counts[0]) == len(data.test) and all(not c for c in counts[1:])


def test_bad_inputs_are_clear_errors(trained, policies):
    model, data, cal, _ = trained
    policy = policies[0][2]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            early_exit_predict(model, policy, data.test, bad)
    with pytest.raises(ValueError, match="empty"):
        early_exit_predict(model, policy, data.test.subset(0))
    with pytest.raises(ValueError, match="batch source .* or an images tensor"):
        early_exit_predict(model, policy, [1, 2, 3])
    with pytest.raises(DataError, match="expects images of shape"):
        early_exit_predict(model, policy, torch.zeros(4, 3, 28, 28))
    with pytest.raises(NotFittedError):
        early_exit_predict(model, ThresholdPolicy(0), data.test)
    three_exits = ThresholdPolicy(0, threshold=0.5).fit(np.zeros((4, 3)), np.zeros((4, 3, 6)))
    with pytest.raises(ValueError, match="fitted for a network with 3 exits but the model "
                                         r"\(resnet20\) has 9"):
        early_exit_predict(model, three_exits, data.test)
    two_features = ThresholdPolicy(0, threshold=0.5).fit(np.zeros((4, 9)), np.zeros((4, 9, 2)))
    with pytest.raises(ValueError, match="fitted on 2 features but the model .* provides 6"):
        early_exit_predict(model, two_features, data.test)
    other = fit_exit_policy("max_prob", cal, 0.5)
    costs = tuple(float(c) for c in cal.exit_costs)
    other.source = TraceSource("resnet56", costs, FEATURES)
    with pytest.raises(ValueError, match="'resnet56' model but the model .* from a 'resnet20'"):
        early_exit_predict(model, other, data.test)
    other.source = TraceSource("resnet20", (0.5,) * 8 + (1.0,), FEATURES)
    with pytest.raises(ValueError, match="different models"):
        early_exit_predict(model, other, data.test)
    stages = optdepth.create_model("resnet20", exits="stages").eval()
    with pytest.raises(ValueError, match="9 exits but the model .* has 3"):
        early_exit_predict(stages, policy, data.test)


def test_exit_time_shares_are_cumulative_fractions_of_the_full_pass(trained):
    model = trained[0]
    shares = exit_time_shares(model, trained[1].test.images[:32], repeats=3)
    assert shares.shape == (model.num_exits,) and np.all(np.diff(shares) > 0)
    # the last exit runs every block plus every head and norm: about the full pass, not 9 of it
    # (a wall-clock ratio of 3 repeats on shared cores: wide bounds)
    assert 0.2 < shares[-1] < 10.0
    was_training = model.training
    model.train()
    exit_time_shares(model, trained[1].test.images[:4], repeats=1)
    assert model.training  # its mode is restored
    model.train(was_training)
    with pytest.raises(ValueError, match="at least one image"):
        exit_time_shares(model, trained[1].test.images[:0])
    with pytest.raises(DataError):
        exit_time_shares(model, torch.zeros(2, 3, 28, 28))


def test_exit_policy_is_a_stopping_policy_with_a_source(trained, policies):
    _, _, cal, _ = trained
    for name, _, policy in policies:
        assert isinstance(policy, ExitPolicy) and policy.kind == name
        assert policy.n_steps_ == 9 and policy.n_features_ == len(FEATURES)
        assert policy.source == TraceSource.of_traces(cal)


def test_interleaved_times_reverse_odd_rounds_and_pair_by_round():
    calls = []
    sides = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = interleaved_times(sides, 3)
    assert calls == list("abccbaabc")  # odd rounds run the sides in reverse
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abc", 3)
    known = {"x": [1.0, 4.0, 9.0], "y": [1.0, 2.0, 1.0]}  # per-round ratios 1, 2, 9
    assert paired(known, "x", "y") == 2.0
    assert paired(known, "x", "missing") is None


def test_full_depth_baseline_and_wall_speedup_smoke(trained, policies):
    model, data, _, test = trained
    split = data.test.subset(64)
    final = full_depth_predict(model, split, 16)
    np.testing.assert_array_equal(final, test.probs[:64, -1].argmax(-1))
    np.testing.assert_array_equal(full_depth_predict(model, split, 16, all_exits=True), final)
    policy = next(p for n, _, p in policies if n == "lsm")
    report = measure_wall_speedups(model, {"lsm": policy}, split, batch_size=16,
                                   repeats=1)["lsm"]
    assert report["baseline"] == "final_head" and report["threads"] == torch.get_num_threads()
    assert report["wall_speedup"] > 0 and report["wall_speedup_all_exits"] > 0
    assert report["compute_speedup"] == pytest.approx(1 / report["mean_compute"])
    assert report["repeats"] == 1 and report["n_samples"] == 64
    assert len(report["exit_time_share"]) == model.num_exits
    # one round: each paired median is that round's ratio
    assert report["ideal_wall_speedup"] == pytest.approx(report["full_depth_s"]
                                                         / report["ideal_engine_s"])
    assert report["engine_efficiency"] == pytest.approx(report["ideal_engine_s"]
                                                        / report["early_exit_s"])
    profile = measure_latency_profile(model, split, batch_size=16, repeats=1)
    prices = profile.prices(test, 16)  # traces of the same model: accepted
    assert prices.shape == (model.num_exits,) and (np.diff(prices) >= 0).all() and prices[0] > 0
    assert profile.batch_size == 16 and profile.threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="needs at least 16 samples"):
        measure_latency_profile(model, split.subset(8), batch_size=16)
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        measure_wall_speedups(model, {"lsm": policy}, split, repeats=0)
    with pytest.raises(ValueError, match="empty"):
        full_depth_predict(model, split.subset(0))


def test_engine_profiler_ranges_and_time_breakdown(trained, policies):
    model, data, _, _ = trained
    split = data.test.subset(64)
    policy = next(p for n, _, p in policies if n == "lsm")
    deepest = int(early_exit_predict(model, policy, split, 16).exit_index.max())
    with torch.profiler.profile() as prof:
        early_exit_predict(model, policy, split, 16)
    labels = {e.key for e in prof.key_averages() if e.key.startswith("optdepth::")}
    segments = {label for label in labels if label.startswith("optdepth::segment_")}
    # one range per segment that ran, none for the segments no sample reached
    assert segments == {f"optdepth::segment_{t}" for t in range(deepest + 1)}
    assert {"optdepth::stem", "optdepth::decide", "optdepth::regroup"} <= labels
    parts = engine_time_breakdown(model, policy, split, 16)
    assert parts["segments"] > 0 and parts["total"] > 0
    assert all(parts[k] >= 0 for k in (*ENGINE_PARTS, "other"))
    shares = [parts[f"share_{k}"] for k in (*ENGINE_PARTS, "other")]
    assert sum(shares) == pytest.approx(1.0)  # the parts lie inside the pass: no clipping
