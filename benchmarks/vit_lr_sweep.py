"""The short experiment behind the ViT demo's optimiser settings: AdamW peak learning rates.

Trains the model (default ``vit``) with AdamW (weight decay 0.05 on weights only, warm-up half
an epoch, cosine) for a few epochs on the first images of Fashion-MNIST's training split, once
per learning rate, and records the calibration accuracy of every exit. Run from the repository
root (one heavy job at a time)::

    python benchmarks/vit_lr_sweep.py --lrs 1e-3 3e-3 6e-3 --epochs 2 --subset 20000 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from common import write_result

from optdepth.data import load_fashion_mnist
from optdepth.training import TrainConfig, train

log = logging.getLogger("vit_lr_sweep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 6e-3])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/vit_demo/lr_sweep.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_fashion_mnist()
    runs = []
    for lr in args.lrs:
        config = TrainConfig(model=args.model, optimizer="adamw", lr=lr, weight_decay=0.05,
                             epochs=args.epochs, train_subset=args.subset, augment=False,
                             threads=args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            history = train(config, Path(tmp) / "run", data=data, progress=False).history
        runs.append({"lr": lr, "cal_accuracy_per_epoch": [h["cal_accuracy"] for h in history],
                     "cal_exit_accuracy": history[-1]["cal_exit_accuracy"],
                     "epoch_seconds": [round(h["seconds"], 1) for h in history]})
        log.info("lr %g: calibration accuracy of the last exit %.4f", lr, history[-1]["cal_accuracy"])
    write_result(args.out, {"model": args.model, "epochs": args.epochs,
                            "train_subset": args.subset, "runs": runs})


if __name__ == "__main__":
    main()
