"""Two-process gloo DDP on a tiny ImageFolder matches one process at the same global batch.

Why the match can be tight: the backbone is frozen (``freeze_backbone``), so its BatchNorm runs
in eval mode with fixed statistics and every layer treats each sample alone; the exits
(pool + linear) have no BatchNorm. Each rank then computes the mean loss of its half of the
global batch, DDP averages the two gradients, and the result equals the single-process
gradient of the whole batch up to floating-point summation order (measured here: ~1e-7
relative). Training BatchNorm layers would not match: each rank normalises with the statistics
of its own half batch (use SyncBatchNorm on GPUs, which gloo on CPU does not support).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from helpers import write_imagefolder

from optdepth.errors import ConfigError
from optdepth.training import TrainConfig, train
from optdepth.training.distributed import DistContext, check_batch_size

RTOL = 1e-4  # losses and weights, DDP against one process (see the module docstring)


pytestmark = pytest.mark.usefixtures("one_thread")


def config_for(folder):
    return TrainConfig(model="imagenet_resnet18", dataset="imagefolder", data_dir=str(folder),
                       image_size=32, calibration_size=4, workers=0, epochs=2, batch_size=8,
                       eval_batch_size=16, lr=0.05, beta=0.5, beta_warmup_epochs=0.0,
                       augment=False, device="cpu",
                       model_kwargs={"exits": "stages", "freeze_backbone": True})


def without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def assert_histories_close(got, expected):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected]
    for a, b in zip(without_time(got), without_time(expected), strict=True):
        for key in ("train_loss", "train_ce", "train_reg", "lr"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), key
        assert a["cal_exit_accuracy"] == b["cal_exit_accuracy"]


def assert_weights_close(got, expected):
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=RTOL, atol=1e-6)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("ddp_data"))  # 32 train images: even shares


@pytest.fixture(scope="module")
def single(folder, tmp_path_factory):
    """The single-process reference run (2 epochs, global batch 8)."""
    return train(config_for(folder), tmp_path_factory.mktemp("single") / "run", progress=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two torchrun processes: ~40 s on two busy cores, mostly start-up
def test_torchrun_two_processes_match_one(tmp_path, folder, single):
    run = tmp_path / "ddp"
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config_for(folder).to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "optdepth", "train", "--config", str(cfg), "--out", str(run), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert_histories_close(records, single.history)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]  # rank 0 only
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # the unwrapped model
    assert_weights_close(ckpt["state_dict"], single.model.state_dict())
    assert "epoch 2" in proc.stderr and proc.stderr.count("epoch 2:") == 1  # only rank 0 logs


def _stop_after_first_epoch(record):
    if record["epoch"] == 1:
        raise KeyboardInterrupt


def _worker(rank, world, port, folder, run):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two processes share the machine
    try:
        train(config_for(folder), run, progress=False, callbacks=[_stop_after_first_epoch])
    except KeyboardInterrupt:
        pass


@pytest.mark.slow  # two spawned processes, then a resume: ~50 s on two busy cores
def test_ddp_checkpoint_resumes_with_one_process(tmp_path, folder, single):
    run = tmp_path / "cut"
    mp.spawn(_worker, args=(2, _free_port(), folder, run), nprocs=2, join=True)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # stopped after epoch 1
    resumed = train(config_for(folder), run, resume=True, progress=False)  # one process
    assert_histories_close(resumed.history, single.history)
    assert_weights_close(resumed.model.state_dict(), single.model.state_dict())


def test_global_batch_must_split_evenly():
    two = DistContext(rank=0, world_size=2, device=torch.device("cpu"))
    check_batch_size(8, two)
    with pytest.raises(ConfigError, match="must be divisible by the number of processes: 7 over 2"):
        check_batch_size(7, two)


def test_in_memory_shards_partition_each_global_batch(tiny):
    whole = list(tiny.train.batches(48, shuffle=True, augment=True, seed=3, epoch=1))
    shards = [list(tiny.train.batches(48, shuffle=True, augment=True, seed=3, epoch=1, rank=r,
                                      world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == tiny.train.num_batches(48, 2)
    for (images, labels), a, b in zip(whole, *shards, strict=True):
        torch.testing.assert_close(torch.cat([a[0], b[0]]), images, rtol=0, atol=0)
        assert torch.equal(torch.cat([a[1], b[1]]), labels)
