"""The ``optdepth`` command: a thin layer over library functions.

    optdepth train --out RUN [--config FILE] [flags]      train (or --resume) a multi-exit net
    optdepth train --model lm --out RUN [--text PATH...]  the same for the causal LM
    optdepth evaluate RUN                                 per-exit accuracy, norms, exit traces
    torchrun --nproc_per_node=N -m optdepth train ...     the same on N processes (DDP); the
                                                          --batch-size is global
    optdepth demo --out DIR [--model vit] [--quick]       baseline vs L_depth, report.md
    optdepth demo --model hf-gpt2 --out DIR               the same on transformers' GPT-2
    optdepth compare --out DIR --variants none distill:2 --seeds 0 1 2 3 4
                                                          paired seeds: medians, intervals
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from optdepth.errors import ConfigError, OptDepthError

log = logging.getLogger("optdepth")

# flag -> (TrainConfig field, type, help)
TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--model": ("model", str, "registered model name (default resnet20; lm, lm_small, lm_tiny,"
                " hf-gpt2: causal LMs, trained on --text)"),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "global batch size (split evenly across torchrun processes)"),
    "--optimizer": ("optimizer", str, "sgd (default) | adamw"),
    "--lr": ("lr", float, "peak learning rate"),
    "--weight-decay": ("weight_decay", float, "weight decay (AdamW: on weights only)"),
    "--beta": ("beta", float, "weight of the depth regulariser L_depth (0 = off)"),
    "--regularizer": ("regularizer", str, "L_depth variant"),
    "--beta-warmup-epochs": ("beta_warmup_epochs", float, "epochs over which beta ramps up"),
    "--exit-weighting": ("exit_weighting", str, "uniform | linear"),
    "--dataset": ("dataset", str, "fashion-mnist (default) | imagefolder"),
    "--data-dir": ("data_dir", str, "folder with the four Fashion-MNIST IDX .gz files, or the"
                   " ImageFolder root holding train/ and val/"),
    "--image-size": ("image_size", int, "imagefolder crop side in pixels (default 224)"),
    "--calibration-size": ("calibration_size", int, "training images held out for calibration"),
    "--workers": ("workers", int, "imagefolder DataLoader workers per process (default 4)"),
    "--device": ("device", str, "cuda | cpu | cuda:N (default: cuda if available)"),
    "--train-subset": ("train_subset", int, "train on the first N images only"),
    "--seed": ("seed", int, "random seed"),
    "--threads": ("threads", int, "torch CPU threads"),
}
#: model_kwargs the train command sets -> their flags (image models only)
MODEL_FLAGS = {"width": "--width", "weights_path": "--weights", "exits": "--exits",
               "freeze_backbone": "--freeze-backbone"}


def _folder(text: str) -> str:
    """A folder argument: an empty one would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a folder path, not empty")
    return text


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a multi-exit network with L_depth")
    p.add_argument("--out", required=True, type=_folder, help="run directory to create (or resume)")
    p.add_argument("--config", help="JSON or TOML file of TrainConfig fields")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--width", type=int, help="channel width multiplier of the model")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    for flag, (field, kind, text) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=field, type=kind, help=text)
    p.add_argument("--weights", help="torchvision state dict file loaded into the backbone"
                   " (imagenet_resnet* models; nothing is downloaded)")
    p.add_argument("--freeze-backbone", action="store_true", default=None,
                   help="train only the exit heads (imagenet_resnet* models)")
    p.add_argument("--exits", help="exit placement: all | stages | k (every k-th block)")
    p.add_argument("--skip-bad-images", dest="skip_bad_images", action="store_true", default=None,
                   help="imagefolder: leave unreadable images out (logged) instead of stopping")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast + channels-last (default: on for cuda, off on cpu)")
    p.add_argument("--text", nargs="+", metavar="PATH",
                   help="causal LM (--model lm...): text files or folders to train on (default:"
                   " the Python standard library's sources)")
    p.add_argument("--steps-per-epoch", type=int, help="causal LM: optimiser steps per epoch")


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a run and write its exit traces")
    p.add_argument("run", type=_folder, help="run directory written by `optdepth train`")
    p.add_argument("--data-dir", help="the data's folder, if it moved since training (default:"
                   " the run's config)")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", help="cuda | cpu (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true")


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="baseline vs L_depth multi-exit net (resnet20, vit, lm), with report")
    p.add_argument("--out", default="demo_out", type=_folder,
                   help="output folder (default demo_out)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    group.add_argument("--full", action="store_true",
                       help="the full schedule: 30 epochs with augmentation and linear exit"
                       " weights (about an hour on two quiet cores)")
    p.add_argument("--epochs", type=int, help="override the schedule's epochs")
    p.add_argument("--beta", type=float, help="L_depth weight of the second net")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX .gz files")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--model", default="resnet20",
                   help="resnet20 (default), vit or another registered image model; lm: the causal"
                   " LM; hf-gpt2: transformers' GPT-2 with exits (needs optdepth[hf])")
    p.add_argument("--weights", help="hf-gpt2: the user's GPT-2 weights (.safetensors or a state"
                   " dict; the exits train on the frozen model instead of training it from scratch)")
    p.add_argument("--text", nargs="+", metavar="PATH",
                   help="lm demo: text files or folders (default: the Python standard library)")
    p.add_argument("--no-progress", action="store_true")


def _add_compare(sub: Any) -> None:
    p = sub.add_parser("compare", help="paired multi-seed comparison of training methods, with"
                       " medians, 95% intervals and p-values")
    p.add_argument("--out", required=True, type=_folder, help="compare folder (resumed if it"
                   " holds the same compare)")
    p.add_argument("--model", default="resnet20", help="an image model the demo supports")
    p.add_argument("--schedule", default="demo", help="quick | demo (default) | full")
    p.add_argument("--variants", nargs="+", metavar="VARIANT",
                   help="none or <regularizer>:<beta> each, the reference first (default: none"
                   " and the model's demo L_depth, distill:2 for the ResNets)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                   help="training seeds, at least 2 (default 0 1 2 3 4)")
    p.add_argument("--epochs", type=int, help="override the schedule's epochs")
    p.add_argument("--data-dir", help="folder with the four Fashion-MNIST IDX .gz files")
    p.add_argument("--jobs", type=int, help="runs trained at once, one process each (default:"
                   " as many as the cores allow)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: the cores"
                   " shared between the jobs)")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optdepth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_demo(sub)
    _add_compare(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> None:
    from optdepth.training import LMTrainConfig, TrainConfig, train

    config_type = LMTrainConfig if _wants_lm(args) else TrainConfig
    config = config_type.from_file(args.config) if args.config else config_type()
    changes = _flag_changes(args, config_type is LMTrainConfig)
    if "model_kwargs" in changes:
        changes["model_kwargs"] = {**config.model_kwargs, **changes["model_kwargs"]}
    if args.resume and (changes or args.config):
        log.warning("--resume continues with the run's stored config.json; other flags ignored")
    result = train(config.replace(**changes), args.out, resume=args.resume,
                   progress=not args.no_progress)
    last = result.history[-1]
    log.info("done: %d epochs, calibration accuracy of the last exit %.4f; run in %s",
             last["epoch"], last["cal_accuracy"], result.run_dir)


def _flag_changes(args: argparse.Namespace, lm: bool) -> dict[str, Any]:
    """The config fields the command line sets; ConfigError for image-only flags on an LM."""
    from optdepth.training import LMTrainConfig

    flags = {**{flag: field for flag, (field, _, _) in TRAIN_FLAGS.items()},
             "--skip-bad-images": "skip_bad_images", "--amp": "amp", "--text": "text",
             "--steps-per-epoch": "steps_per_epoch"}
    given = {flag: field for flag, field in flags.items() if getattr(args, field) is not None}
    model_kwargs = {key: value for key, value in (
        ("width", args.width), ("weights_path", args.weights),
        ("freeze_backbone", args.freeze_backbone), ("exits", _exits(args.exits)))
        if value is not None}
    lm_fields = {f.name for f in dataclasses.fields(LMTrainConfig)}
    if lm:
        image_only = [flag for flag, field in given.items() if field not in lm_fields]
        image_only += [MODEL_FLAGS[key] for key in model_kwargs]
        if image_only:
            raise ConfigError(f"{', '.join(image_only)} apply to image models; a causal LM trains"
                              " on --text files (default: the Python standard library)")
    elif "text" in given.values() or "steps_per_epoch" in given.values():
        raise ConfigError("--text and --steps-per-epoch apply to the causal LM (--model lm)")
    changes = {field: getattr(args, field) for field in given.values()}
    if model_kwargs:
        changes["model_kwargs"] = model_kwargs
    return changes


def _wants_lm(args: argparse.Namespace) -> bool:
    """Whether ``train`` is asked for the causal LM: by --model, LM-only flags, --config, or
    (on --resume) the run's stored config."""
    from pathlib import Path

    from optdepth.models.registry import is_language_model
    from optdepth.training.config import read_settings

    if args.model is not None:
        return is_language_model(args.model)
    if args.text or args.steps_per_epoch is not None:
        return True
    stored = Path(args.out) / "config.json" if args.resume else args.config
    if stored is None or not Path(stored).is_file():
        return False
    settings = read_settings(stored)
    return "steps_per_epoch" in settings or is_language_model(str(settings.get("model", "")))


def _exits(text: str | None) -> str | int | None:
    """--exits value: "all", "stages" or an int k."""
    return int(text) if text is not None and text.isdigit() else text


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from optdepth.offline import evaluate_run

    summary = evaluate_run(args.run, batch_size=args.batch_size, progress=not args.no_progress,
                           device=args.device, data_dir=args.data_dir).summary
    accs = ", ".join(f"{100 * a:.2f}" for a in summary["exit_accuracy"])
    log.info("test accuracy per exit (%%): %s", accs)
    log.info("decay fit: K = %.3f, rho = %.3f", summary["decay_fit"]["K"],
             summary["decay_fit"]["rho"])


def _cmd_lm_demo(args: argparse.Namespace) -> None:
    from optdepth.experiments.lm_demo import DEFAULT_BETA, run_lm_demo

    schedule = "quick" if args.quick else "full" if args.full else "demo"
    metrics = run_lm_demo(args.out, schedule=schedule,
                          beta=DEFAULT_BETA if args.beta is None else args.beta,
                          epochs=args.epochs, text=args.text or args.data_dir and [args.data_dir],
                          threads=args.threads, progress=not args.no_progress, model=args.model,
                          weights=args.weights)
    for name, net in metrics["nets"].items():
        log.info("%-8s last exit: next-token accuracy %.2f%%, perplexity %.3f", name,
                 100 * net["exit_accuracy"][-1], net["perplexity"][-1])
    log.info("report: %s/report.md (%.1f min)", args.out, metrics["wall_seconds"] / 60)


def _cmd_demo(args: argparse.Namespace) -> None:
    from optdepth.experiments.image_demo import run_demo
    from optdepth.models.registry import is_language_model

    if is_language_model(args.model):  # the causal LM demo (lm, lm_small, lm_tiny, hf-gpt2)
        _cmd_lm_demo(args)
        return
    if args.weights is not None:
        raise ConfigError("--weights applies to --model hf-gpt2 (the user's GPT-2 weights)")
    schedule = "quick" if args.quick else "full" if args.full else "demo"
    metrics = run_demo(args.out, model=args.model, schedule=schedule, beta=args.beta, epochs=args.epochs,
                       data_dir=args.data_dir, threads=args.threads,
                       progress=not args.no_progress)
    for name, net in metrics["nets"].items():
        log.info("%-8s last exit %.2f%%, rho %.3f", name, 100 * net["exit_accuracy"][-1],
                 net["rho"])
    log.info("report: %s/report.md (%.1f min)", args.out, metrics["wall_seconds"] / 60)


def _cmd_compare(args: argparse.Namespace) -> None:
    from optdepth.experiments.compare import compare

    result = compare(args.out, model=args.model, schedule=args.schedule, variants=args.variants,
                     seeds=args.seeds, epochs=args.epochs, data_dir=args.data_dir,
                     jobs=args.jobs, threads=args.threads, progress=not args.no_progress)
    summary = result.summary
    for variant, policies in result.paired.items():
        for policy, stats in policies.items():
            stat = stats["matched_ratio"]
            if stat["ci95"] is not None:
                log.info("%s / %s, %-8s compute at matched accuracy: median %.3f [%.3f, %.3f]",
                         variant, summary["reference"], policy, stat["median"], *stat["ci95"])
    for run in result.excluded:
        log.warning("excluded (diverged): %s seed %d", run["variant"], run["seed"])
    log.info("report: %s/report.md (%.1f min)", args.out, summary["wall_seconds"] / 60)


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
            "compare": _cmd_compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    quiet = int(os.environ.get("RANK", "0")) > 0  # under torchrun only rank 0 logs
    logging.basicConfig(level=logging.WARNING if quiet else logging.DEBUG if args.verbose
                        else logging.INFO, format="%(message)s")
    try:
        COMMANDS[args.command](args)
    except OptDepthError as exc:
        print(f"optdepth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optdepth: interrupted; completed epochs are saved, rerun with --resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
