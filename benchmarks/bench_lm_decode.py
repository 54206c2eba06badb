"""Greedy decoding with per-token early exit and self-speculative decoding against full depth.

For each LM run directory (``optdepth demo --model lm`` writes ``DIR/runs/{baseline,ldepth}``)
the script traces the calibration and test splits, fits every exit policy on calibration
tokens, picks its iso-accuracy point on calibration (least mean compute within 0.5 points of
the final exit's next-token accuracy), reads its test figures, measures the next-token accuracy
of real cached early-exit decoding (teacher-forced, CALM fills), and times greedy generation:
full depth (every layer, last head only) against early exit under each policy, for each batch
size, interleaved A B C ... A B C, median of per-round ratios. It also times "static" exits
(every token stops at exit k) to show what per-exit overhead costs at this model size, and
self-speculative decoding, its draft (exit, tokens per pass) chosen on calibration prompts.
Any LM run works: ``--model lm`` and ``--model hf-gpt2`` demos alike.

Run from the repository root with nothing else busy::

    python benchmarks/bench_lm_decode.py demo_out/runs/baseline demo_out/runs/ldepth
    python benchmarks/bench_lm_decode.py RUN --threads 2 --repeats 7 --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="LM run directories")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_lm_decode.json"))
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads, and OMP/OPENBLAS/MKL threads before numpy loads")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each side")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8],
                        help="prompts decoded together")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-bytes", type=int, default=32)
    parser.add_argument("--eval-tokens", type=int, default=8192,
                        help="calibration and test tokens traced")
    parser.add_argument("--text", nargs="+", default=None,
                        help="the runs' text files or folders (default: Python stdlib)")
    args = parser.parse_args(argv)
    for name in ("threads", "repeats", "new_tokens", "prompt_bytes", "eval_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be >= 1")
    for run in args.runs:
        if not (run / "checkpoints" / "last.pt").is_file():
            parser.error(f"{run}/checkpoints/last.pt is missing; train with "
                         "`optdepth demo --model lm --out DIR` (or --model hf-gpt2) first")
    return args


def static_policies(model: Any) -> dict[str, Any]:
    """Policies that stop every token at exit k (on the cost feature): overhead versus depth."""
    import numpy as np

    from optdepth.stopping import ThresholdPolicy
    from optdepth.traces import FEATURES

    costs, t = model.exit_costs().numpy(), model.num_exits
    return {f"static_exit_{k}": ThresholdPolicy(FEATURES.index("cost"), float(costs[k]) - 1e-6)
            .fit(np.zeros((2, t)), np.zeros((2, t, len(FEATURES)))) for k in range(t)}


def bench_run(run: Path, corpus: Any, args: argparse.Namespace) -> dict[str, Any]:
    from optdepth.checkpoints import load_model
    from optdepth.data.text import eval_windows, spread_prompts
    from optdepth.experiments.lm_demo import choose_draft
    from optdepth.models.decoder import DecoderLM
    from optdepth.offline import evaluate_policies
    from optdepth.offline.collect import collect_lm_traces
    from optdepth.online.generation import measure_decode_speedups, teacher_forced_decode

    model = load_model(run, model_type=DecoderLM)
    cal = collect_lm_traces(model, corpus.calibration, "calibration", args.eval_tokens)
    test = collect_lm_traces(model, corpus.test, "test", args.eval_tokens)
    evaluations = evaluate_policies(cal, test)
    fitted = {n: e.policy for n, e in evaluations.items() if e.policy is not None}
    inputs, targets = eval_windows(corpus.test, model.context, args.eval_tokens)
    full_preds, _ = teacher_forced_decode(model, inputs)
    record: dict[str, Any] = {
        "final_exit_test_accuracy": float(test.exit_accuracy()[-1]),
        "decode_accuracy_full_depth": float((full_preds == targets.numpy()).mean()),
        "exit_compute": [float(c) for c in test.exit_costs], "policies": {}, "timing": {}}
    for name, e in evaluations.items():
        compute, accuracy = e.iso_test
        entry = {"mean_compute": compute, "accuracy": accuracy, "reached": e.reached}
        if name in fitted:
            preds, exits = teacher_forced_decode(model, inputs, fitted[name])
            entry["decode_accuracy"] = float((preds == targets.numpy()).mean())
            entry["decode_mean_layers"] = float((exits + 1).mean() / model.num_blocks)
        record["policies"][name] = entry
    length = min(args.prompt_bytes, model.context // 4)
    new = min(args.new_tokens, model.context - length + 1)
    record["draft"] = choose_draft(model, spread_prompts(corpus.calibration, 3, length), new)
    drafts = {"speculative": (record["draft"]["draft_exit"], record["draft"]["draft_tokens"])}
    for batch in args.batch_sizes:
        prompts = spread_prompts(corpus.test, batch, length)
        timing = measure_decode_speedups(model, prompts, new, repeats=args.repeats, drafts=drafts,
                                         policies={**fitted, **static_policies(model)})
        record["timing"][f"batch_{batch}"] = timing
        for name, t in timing.items():
            extra = (f"compute {t['mean_compute']:.3f}" if "mean_compute" in t else
                     f"acceptance {t['acceptance_rate']:.3f}, same tokens {t['same_tokens_fraction']:.3f}")
            print(f"{run_key(run):16s} batch {batch:3d} {name:14s} decode speed-up"
                  f" {t['decode_speedup']:5.2f}x"
                  f"  {t['tokens_per_s']:7.0f} tok/s (full {t['full_depth_tokens_per_s']:7.0f})"
                  f"  {extra}", flush=True)
    return record


def run_key(run: Path) -> str:
    """A run's name in the results: ``demo/net`` (two demos both hold a ``baseline``)."""
    return f"{run.resolve().parent.parent.name}/{run.name}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for var in THREAD_VARS:  # before numpy/torch load their thread pools
        os.environ[var] = str(args.threads)

    from common import set_threads, write_result

    from optdepth.data.text import load_text_corpus

    set_threads(args.threads)
    corpus = load_text_corpus(args.text)
    load_before = os.getloadavg()
    results = {run_key(run): bench_run(run, corpus, args) for run in args.runs}
    for run_name, record in results.items():
        for name, entry in record["policies"].items():
            print(f"{run_name:16s} {name:9s} iso-accuracy: test acc {100 * entry['accuracy']:.2f}%"
                  f" (final {100 * record['final_exit_test_accuracy']:.2f}%), compute"
                  f" {entry['mean_compute']:.3f}, decode acc "
                  f"{100 * entry.get('decode_accuracy', float('nan')):.2f}%")
    write_result(args.out, {"runs": results, "repeats": args.repeats,
                            "batch_sizes": args.batch_sizes, "new_tokens": args.new_tokens,
                            "eval_tokens": args.eval_tokens, "load_average_before": load_before},
                 argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
