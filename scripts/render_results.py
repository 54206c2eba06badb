"""Render docs/results.md (and the README's quick-start table) from benchmarks/results/.

Every figure on that page is read from a JSON file here; nothing is typed by hand. Run it after
adding or re-running a result:

    .venv/bin/python scripts/render_results.py            # writes docs/results.md, README.md
    .venv/bin/python scripts/render_results.py --check    # exit 1 if either is out of date

Each entry of :data:`RESULTS` names a result by its configuration (model, schedule, variant,
seeds), the command that produced it and its file. Entries with a ``compare.json``
(``optdepth compare``) get their paired multi-seed tables rendered; entries with a
``metrics.json`` in the demo's schema get their single-run tables (per-exit accuracy, each
policy's iso-accuracy point, the comparison at one test accuracy); the others are listed with
their JSON, which holds the figures. The README's headline table comes from the compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optdepth.reports.compare_report import gap_lines, paired_table, variant_table
from optdepth.reports.demo_report import (
    _row,
    exit_table,
    guarantee_section,
    matched_accuracy_line,
    policy_table,
)
from optdepth.reports.lm_report import speculative_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
#: The README's headline block, rendered from this compare: the demo's two training methods,
#: the best threshold rule, LSM and the oracle bound.
README_RESULT = "compare_resnet20_demo"
README_VARIANTS = ("none", "distill:2")
README_POLICIES = ("max_prob", "lsm", "oracle")
BLOCK = ("<!-- results:demo:start -->", "<!-- results:demo:end -->")


@dataclass(frozen=True)
class Result:
    """One committed result: where it is, what configuration it is, how it was produced."""

    path: str  # under benchmarks/results/: a folder with metrics.json, or a JSON file
    model: str
    schedule: str
    variant: str
    seeds: str
    command: str


RESULTS = (
    Result("compare_resnet20_demo", "resnet20", "demo (5 epochs)",
           "none, distill 2, stopping 1/4, distill 2 + stopping 1", "0 1 2 3 4",
           "optdepth compare --variants none distill:2 stopping:1 stopping:4"
           " distill:2+stopping:1 --seeds 0 1 2 3 4 --jobs 2 --threads 1 --out DIR"),
    Result("demo_resnet20", "resnet20", "demo (5 epochs)", "none vs distill β=2", "0",
           "optdepth demo --out DIR"),
    Result("depth_sweep", "resnet20, 32, 56, 110", "quick, 3 epochs on 20,000 images",
           "none (the finite-depth theorem)", "0 1 2",
           "python benchmarks/depth_sweep.py --threads 2 --runs DIR"),
    Result("full_resnet20", "resnet20", "full (30 epochs)", "none vs relative β=0.1", "0",
           "optdepth demo --full --threads 1 --out DIR"),
    Result("full_res", "resnet20, stem_stride=1", "full, 15 epochs", "none vs distill β=2", "0",
           "python benchmarks/deep_net.py --model resnet20 --stem-stride 1 --epochs 15"
           " --threads 1 --runs DIR --results benchmarks/results/full_res"),
    Result("deep_net", "resnet56", "full, 20 epochs", "none vs distill β=2", "0",
           "python benchmarks/deep_net.py --threads 1 --runs DIR"),
    Result("deep_net_uniform", "resnet56", "demo, 8 epochs", "none vs distill β=2", "0",
           "python benchmarks/deep_net.py --schedule demo --epochs 8 --threads 1 --runs DIR"
           " --results benchmarks/results/deep_net_uniform"),
    Result("vit_demo", "vit", "demo (4 epochs)", "none vs relative β=0.5", "0",
           "optdepth demo --model vit --out DIR --threads 1"),
    Result("lm_demo", "lm (byte level, 6 layers)", "demo", "none vs relative β=0.5", "0",
           "optdepth demo --model lm --out DIR"),
    Result("hf_gpt2_demo", "hf-gpt2 (transformers GPT-2, bytes, 6 layers)", "demo",
           "none vs relative β=0.5", "0", "optdepth demo --model hf-gpt2 --out DIR"),
    Result("ablate_ldepth.json", "resnet20", "demo (5 epochs)",
           "none, relative 0.1/0.5, distill 1/2/4", "0",
           "python benchmarks/ablate_ldepth.py --variants none relative:0.5 distill:1.0"
           " distill:2.0 distill:4.0 relative:0.1 --epochs 5 --no-augment --threads 1"),
    Result("ablate_ldepth_seeds.json", "resnet20", "demo (5 epochs)",
           "none, relative 0.1, distill 2", "0 1 2",
           "python benchmarks/ablate_ldepth.py --variants none relative:0.1 distill:2.0"
           " --epochs 5 --no-augment --threads 1 --seeds 0 1 2"),
    Result("ablate_ldepth_channels_last.json", "resnet20", "demo (5 epochs)",
           "none, distill 2", "1 2",
           "python benchmarks/ablate_ldepth.py --variants none distill:2.0 --epochs 5"
           " --no-augment --threads 1 --seeds 1 2 --runs runs/ablation_cl"),
    Result("ablate_ldepth_linear.json", "resnet20", "demo, linear exit weights",
           "none, distill 2", "0 1 2",
           "python benchmarks/ablate_ldepth.py --variants none distill:2.0 --epochs 5"
           " --no-augment --exit-weighting linear --threads 1 --seeds 0 1 2"),
    Result("ablate_ldepth_6epochs.json", "resnet20", "demo, 6 epochs", "none, distill 2",
           "0 1 2", "python benchmarks/ablate_ldepth.py --variants none distill:2.0 --epochs 6"
           " --no-augment --threads 1 --seeds 0 1 2"),
    Result("bench_early_exit_demo.json", "resnet20 (demo nets)", "–", "timing", "–",
           "python benchmarks/bench_early_exit.py RUN... --out"
           " benchmarks/results/bench_early_exit_demo.json"),
    Result("bench_early_exit_deep56u.json", "resnet56 (demo schedule)", "–", "timing", "–",
           "python benchmarks/bench_early_exit.py runs/deep56u/runs/baseline"
           " runs/deep56u/runs/ldepth --out benchmarks/results/bench_early_exit_deep56u.json"),
    Result("bench_decision_cost.json", "resnet20, resnet56", "–", "decision cost", "–",
           "python benchmarks/bench_decision_cost.py RUN... --threads 1 --repeats 15"),
    Result("bench_lm_decode.json", "lm and hf-gpt2 (demo nets)", "–",
           "decoding speed: early exit, self-speculative", "–",
           "python benchmarks/bench_lm_decode.py RUNS... --threads 2 --batch-sizes 1 8"),
    Result("wrapped_forward.json", "timm resnet50 (wrapped)", "–", "full-depth forward time", "–",
           "python benchmarks/wrapped_forward.py --threads 2 --rounds 8"),
    Result("neural_ode.json", "node (midpoint, 8 exits)", "2 epochs", "none, kinetic", "0",
           "python benchmarks/neural_ode.py --threads 1"),
    Result("ode_bridge_convergence.json", "synthetic diffusion", "–", "free boundary", "–",
           "python benchmarks/ode_bridge_convergence.py"),
    Result("bench_free_boundary.json", "American put", "–", "solver accuracy", "–",
           "python benchmarks/bench_free_boundary.py"),
    Result("bench_stopping.json", "synthetic paths", "–", "stopping engine", "–",
           "python benchmarks/bench_stopping.py"),
    Result("risk_control_resplits.json", "resnet20 (demo nets)", "demo (5 epochs)",
           "guarantee validity", "0 (200 re-splits)",
           "python benchmarks/risk_control_resplits.py DIR/runs/baseline DIR/runs/ldepth"),
    Result("latency_priced.json", "resnet20 (demo nets)", "demo (5 epochs)",
           "FLOP- vs latency-priced", "0",
           "python benchmarks/latency_priced.py DIR/runs/baseline DIR/runs/ldepth --threads 2"),
    Result("latency_priced_resnet56.json", "resnet56 (demo schedule, 8 epochs)", "demo, 8 epochs",
           "FLOP- vs latency-priced", "0",
           "python benchmarks/latency_priced.py DIR/runs/baseline DIR/runs/ldepth --threads 2"
           " --out benchmarks/results/latency_priced_resnet56.json, DIR from"
           " `python benchmarks/deep_net.py --schedule demo --epochs 8 --threads 2 --runs DIR`"),
    Result("batch_size_sweep.json", "resnet20 (demo L_depth net)", "demo (5 epochs)",
           "timing against batch size", "–",
           "python benchmarks/batch_size_sweep.py DIR/runs/ldepth --threads 2"
           " --batch-sizes 64 128 256 512 1024 --repeats 9"),
    Result("batch_size_sweep_malloc_tuned.json", "resnet20 (demo L_depth net)", "demo (5 epochs)",
           "timing against batch size, glibc malloc tuned", "–",
           "MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296"
           " MALLOC_TOP_PAD_=268435456 python benchmarks/batch_size_sweep.py DIR/runs/ldepth"
           " --threads 2 --batch-sizes 64 128 256 512 1024 --repeats 9"
           " --out benchmarks/results/batch_size_sweep_malloc_tuned.json"),
    Result("bench_imagenet_cpu64.json", "imagenet_resnet50, 64 px", "–", "throughput", "–",
           "python benchmarks/bench_imagenet_gpu.py --device cpu --image-size 64"
           " --batch-size 16 --threads 1"),
)


def _read(result: Result, name: str) -> dict[str, Any] | None:
    """The result folder's ``name`` (metrics.json, compare.json), or None."""
    path = RESULTS_DIR / result.path / name
    return json.loads(path.read_text()) if path.is_file() else None


def _index() -> list[str]:
    lines = ["| result | model | schedule | variants | seeds | command |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in RESULTS:
        link = f"[{r.path}](../benchmarks/results/{r.path})"
        lines.append(f"| {link} | {r.model} | {r.schedule} | {r.variant} | {r.seeds} |"
                     f" `{r.command}` |")
    return lines


def _section(result: Result, metrics: dict[str, Any]) -> list[str]:
    env = metrics["environment"]
    lines = [f"## {result.path}: {result.model}, {result.schedule}", "",
             f"`{result.command}` — torch {env['torch']}, {env['threads']} thread(s),"
             f" {env['machine']}, {metrics['wall_seconds'] / 60:.1f} min;"
             f" full report: [report.md](../benchmarks/results/{result.path}/report.md).", "",
             "Test accuracy per exit:", "", *exit_table(metrics["nets"]), ""]
    for name, net in metrics["nets"].items():
        lines += [f"Policies of `{name}` at their iso-accuracy point:", "", *policy_table(net), ""]
    if "matched_accuracy" in metrics:
        lines += [matched_accuracy_line(metrics["matched_accuracy"]), ""]
    if any("speculative" in net for net in metrics["nets"].values()):
        lines += speculative_section(metrics["nets"], depth=3)
    return [*lines, *guarantee_section(metrics["nets"], depth=3)]


def _compare_section(result: Result, summary: dict[str, Any]) -> list[str]:
    """A compare's tables: each variant over its seeds, then each against the reference."""
    env, level = summary["environment"], summary["matched_accuracy"]["accuracy"]
    lines = [f"## {result.path}: {result.model}, {result.schedule}, seeds {result.seeds}", "",
             f"`{result.command}` — torch {env['torch']}, {env['machine']}; full report with the"
             f" forest plot and per-seed values: [report.md](../benchmarks/results/{result.path}"
             "/report.md). Each cell: median over seeds [95% bootstrap interval]; paired cells"
             " add the Wilcoxon p-value. Iso-accuracy: " + summary["iso_accuracy_rule"] + "."
             " Matched accuracy: " + ("–" if level is None else f"{100 * level:.2f}%") + ", "
             + summary["matched_accuracy"]["rule"] + ".", "", *variant_table(summary), "",
             *gap_lines(summary)]
    for variant, paired in summary["paired"].items():
        lines += [f"`{variant}` against `{summary['reference']}`, paired by seed:", "",
                  *paired_table(paired), ""]
    return lines


def _depth_sweep_section(result: Result, sweep: dict[str, Any]) -> list[str]:
    """Stopping depths and certificates against the net's depth, median [min, max] over seeds."""
    def cell(entry: dict[str, Any] | None, spec: str = ".2f", scale: float = 1.0) -> str:
        if entry is None:
            return "∞"
        lo, mid, hi = (format(scale * entry[k], spec) for k in ("min", "median", "max"))
        return f"{mid} [{lo}, {hi}]"

    lines = [f"## {result.path}: {result.model}, {result.schedule}, seeds {result.seeds}", "",
             f"`{result.command}`, {sweep['threads']} threads. At one price of compute,"
             f" λ = {sweep['price_per_resnet20_pass']:g} (accuracy) per ResNet-20 forward pass,"
             " so a block costs the same in every net: the mean depth (blocks run) at which LSM"
             " and the prophet stop on test, and the finite-depth certificate t̄ from one decay"
             " fit and from one fit per stage. Median [min, max] over seeds.", "",
             _row(["net", "blocks", "final-exit acc. (%)", "LSM depth", "prophet depth",
                   "t̄ (one fit)", "t̄ (per stage)"]), _row(["---"] * 7)]
    for depth, e in sweep["per_depth"].items():
        lines.append(_row([f"resnet{depth}", e["blocks"], cell(e["final_accuracy"], ".2f", 100),
                           cell(e["lsm_depth"]), cell(e["prophet_depth"]),
                           cell(e["certificate_depth"], ".1f"),
                           cell(e["stage_certificate_depth"], ".1f")]))
    return [*lines, "", f"![depth sweep](../benchmarks/results/{result.path}/depth_sweep.png)", ""]


def _batch_sweep_section(result: Result, sweep: dict[str, Any]) -> list[str]:
    """Early exit against full depth per batch size, and the fastest against the fastest."""
    env = sweep["environment"]
    malloc = " ".join(f"{k}={v}" for k, v in sweep["malloc_env"].items()) or "glibc defaults"
    lines = [f"## {result.path}: {result.model}, {result.variant}", "",
             f"`{result.command}` — torch {env['torch']}, {sweep['threads']} threads,"
             f" {env['machine']}, malloc: {malloc}. Every side at every batch size timed in the"
             f" same {sweep['repeats']} interleaved rounds; ratios are medians of per-round"
             " ratios. Ideal w/c: the ideal engine's wall / compute, the most any engine could"
             " reach on this machine for these exits and batches. Faults: minor page faults of"
             " one pass (full depth / early exit / ideal engine). The wall speed-up trails the"
             " compute speed-up for two reasons this separates: the early, wide blocks cost more"
             " time per FLOP than the late ones (ideal w/c below 1), and every network call of the"
             " engine carries its own cost for the decision, the retiring and the regrouping of"
             " samples (engine / ideal below 1), which grows more slowly than the call, so larger"
             " batches spread it over more samples."
             " Under glibc's default malloc, batches with large activations page-fault on every"
             " call; the MALLOC_* settings of the second sweep remove that (jemalloc or tcmalloc"
             " preloaded are the usual alternative, not measured here).", "",
             _row(["batch", "policy", "full depth (s)", "early exit (s)", "wall speed-up",
                   "wall / compute", "ideal w/c", "engine / ideal", "calls", "faults"]),
             _row(["---"] * 10)]
    for batch, entry in sweep["batch_sizes"].items():
        for name, rec in entry["policies"].items():
            lines.append(_row([batch, name, f"{entry['full_depth_s']:.3f}",
                               f"{rec['early_exit_s']:.3f}", f"{rec['wall_speedup']:.2f}×",
                               f"{rec['wall_over_compute']:.2f}",
                               f"{rec['ideal_wall_over_compute']:.2f}",
                               f"{rec['engine_efficiency']:.2f}", rec["network_calls"],
                               f"{entry['full_depth_faults']} / {rec['early_exit_faults']}"
                               f" / {rec['ideal_engine_faults']}"]))
    best = sweep["best_against_best"]
    lines += ["", "Fastest against fastest: " + "; ".join(
        f"{name} at batch {rec['batch']}: {rec['wall_speedup']:.2f}× over full depth at batch"
        f" {best['full_depth_batch']}" for name, rec in best["policies"].items()) + ".", ""]
    return lines


def readme_block(summary: dict[str, Any]) -> str:
    """The headline table: the demo's two nets over seeds, three policies at iso-accuracy."""
    lines = variant_table(summary, README_POLICIES, README_VARIANTS)
    env = summary["environment"]
    return "\n".join([*lines, "", f"(median [95% bootstrap interval] over {len(summary['seeds'])}"
                      f" paired seeds; torch {env['torch']}; the oracle is a bound, not a policy;"
                      " other variants, matched-accuracy ratios and p-values:"
                      " [docs/results.md](docs/results.md).)"])


def render_readme(text: str) -> str:
    """``text`` (the README) with its results block rendered anew."""
    start, end = text.index(BLOCK[0]), text.index(BLOCK[1])
    summary = _read(next(r for r in RESULTS if r.path == README_RESULT), "compare.json")
    return text[:start + len(BLOCK[0])] + "\n" + readme_block(summary) + "\n" + text[end:]


def render() -> str:
    """The whole page, as markdown."""
    lines = ["# Results", "",
             "Rendered by `scripts/render_results.py` from the files in `benchmarks/results/`:"
             " every figure here is read from those JSON files. The first result compares training"
             " methods over paired seeds, with intervals; the others are one seed per net unless"
             " their seeds column says otherwise, and their differences between training methods"
             " are within the seed-to-seed spread the compare measures. Wall-clock figures are"
             " interleaved medians on the machine and thread count stated.", "",
             "## Index", "", *_index(), ""]
    for result in RESULTS:
        if (summary := _read(result, "compare.json")) is not None:
            lines += _compare_section(result, summary)
        elif (sweep := _read(result, "depth_sweep.json")) is not None:
            lines += _depth_sweep_section(result, sweep)
        elif (metrics := _read(result, "metrics.json")) is not None:
            lines += _section(result, metrics)
        elif result.path.startswith("batch_size_sweep"):
            lines += _batch_sweep_section(result, json.loads((RESULTS_DIR / result.path).read_text()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if docs/results.md is stale")
    args = parser.parse_args(argv)
    missing = [r.path for r in RESULTS if not (RESULTS_DIR / r.path).exists()]
    if missing:
        print(f"render_results: missing result files: {', '.join(missing)}", file=sys.stderr)
        return 1
    pages = {PAGE: render(), README: render_readme(README.read_text())}
    if args.check:
        stale = [path for path, text in pages.items()
                 if not path.is_file() or path.read_text() != text]
        for path in stale:
            print(f"{path} is out of date: run scripts/render_results.py", file=sys.stderr)
        return int(bool(stale))
    for path, text in pages.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
