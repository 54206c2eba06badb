"""The demo's figures for a bigger net: baseline vs L_depth ResNet-56 on the full schedule.

Trains both nets (the full schedule, augmentation and linear exit weights, for 20 epochs by
default: a ResNet-56 epoch costs about 2.5 ResNet-20 epochs), fits every exit policy on the
calibration split, measures it on the test split, times real early exit against full depth, and
copies the small outputs (metrics.json, report.md, plots; not checkpoints or traces) to
``benchmarks/results/deep_net/`` for the README's results table. The runs stay in ``--runs``, so
an interrupted benchmark resumes where it stopped. The nets train one after the other; to train
them side by side (one thread each, ~1 h 45 min on two cores), run the two ``optdepth train``
commands of ``configs/full_*.toml`` with ``--model resnet56 --epochs 20`` into
``RUNS/runs/baseline`` and ``RUNS/runs/ldepth`` first. Run it with nothing else busy::

    python benchmarks/deep_net.py --threads 1          # resnet56, 20 epochs, ~3 h
    python benchmarks/deep_net.py --model resnet110 --epochs 30 --threads 2
    # the demo's schedule (uniform exit weights, no augmentation), longer: 8 epochs
    python benchmarks/deep_net.py --schedule demo --epochs 8 --threads 1 \
        --runs runs/deep56u --results benchmarks/results/deep_net_uniform
    # ResNet-20 at full resolution (stages at 28, 14, 7 pixels: 4x the FLOPs of the demo's)
    python benchmarks/deep_net.py --model resnet20 --stem-stride 1 --epochs 15 --threads 1 \
        --runs runs/full_res --results benchmarks/results/full_res
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from optdepth.errors import OptDepthError
from optdepth.experiments.image_demo import SCHEDULES, run_demo

SMALL_OUTPUTS = ("metrics.json", "report.md", "exit_accuracy.png", "residual_decay.png",
                 "policy_curves.png", "exit_histograms.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet56", help="a registered image model")
    parser.add_argument("--schedule", default="full", choices=sorted(SCHEDULES))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the schedule")
    parser.add_argument("--beta", type=float, help="L_depth weight (default: the demo's)")
    parser.add_argument("--stem-stride", type=int,
                        help="ResNet stem stride (default 2: stages at 14, 7, 4 pixels; 1: 28, 14, 7)")
    parser.add_argument("--width", type=int, help="ResNet channel multiplier (default 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/deep_net", help="folder of the two runs")
    parser.add_argument("--results", default="benchmarks/results/deep_net")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model_kwargs = {key: value for key, value in (("stem_stride", args.stem_stride),
                                                  ("width", args.width)) if value is not None}
    try:
        metrics = run_demo(args.runs, model=args.model, schedule=args.schedule, beta=args.beta,
                           epochs=args.epochs, threads=args.threads, model_kwargs=model_kwargs)
    except OptDepthError as exc:  # bad settings: one message, exit code 2
        parser.error(str(exc))
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for name in SMALL_OUTPUTS:
        shutil.copy2(Path(args.runs) / name, results / name)
    for name, net in metrics["nets"].items():
        lsm = net["policies"]["lsm"]["iso_accuracy"]
        wall = "n/a" if lsm["wall_speedup"] is None else f"{lsm['wall_speedup']:.2f}x"
        print(f"{name:>8}: last exit {100 * net['exit_accuracy'][-1]:.2f}%, rho {net['rho']:.3f}, "
              f"LSM iso-accuracy compute {lsm['mean_compute']:.3f} (wall speed-up {wall})",
              flush=True)


if __name__ == "__main__":
    main()
