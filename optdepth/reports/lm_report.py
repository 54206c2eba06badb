"""The LM demo's report.md: per-exit accuracy and perplexity, per-token early exit, decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optdepth.io import write_text
from optdepth.reports.demo_report import (
    certificate_table,
    comparison_lines,
    exit_table,
    guarantee_section,
    policy_table,
    residual_table,
)


def _decode_table(net: dict[str, Any]) -> list[str]:
    """Per policy: layers, real decoding accuracy and measured decoding speed."""
    lines = ["| policy | mean layers | trace acc. (%) | decode acc. (%) | tokens/s early exit |"
             " tokens/s full depth | decode speed-up |", "| --- " * 7 + "|"]
    for name, record in net["policies"].items():
        iso, timing = record["iso_accuracy"], net["timing"].get(name)
        if timing is None:
            continue
        lines.append(f"| {name} | {iso['mean_layers']:.3f} | {100 * iso['accuracy']:.2f} |"
                     f" {100 * iso['decode_accuracy']:.2f} | {timing['tokens_per_s']:.0f} |"
                     f" {timing['full_depth_tokens_per_s']:.0f} | {iso['decode_speedup']:.2f}x |")
    return lines


def speculative_section(nets: dict[str, Any], depth: int = 2) -> list[str]:
    """Per net: the chosen draft, its acceptance and measured decoding speed against full depth."""
    lines = [f"{'#' * depth} Self-speculative decoding", "",
             "The first layers up to a draft exit propose tokens greedily; the remaining layers"
             " verify all of them in one pass and keep the longest prefix full-depth greedy"
             " decoding agrees with, plus the full model's next token, so the output is the"
             " full-depth greedy output. The draft (exit, tokens per pass) is the fastest on"
             " calibration prompts; speeds are measured on the test prompts, interleaved with"
             " full-depth decoding (median of repeats).", "",
             "| net | batch | draft layers | draft tokens | acceptance | tokens per pass |"
             " tokens/s speculative | tokens/s full depth | speed-up | same tokens |",
             "| --- " * 10 + "|"]
    for name, net in nets.items():
        spec = net.get("speculative")
        for t in (v for k, v in (spec or {}).items() if k.startswith("batch_")):
            lines.append(f"| {name} | {t['batch_size']} | {spec['draft_layers']} |"
                         f" {spec['draft_tokens']} | {100 * t['acceptance_rate']:.1f}% |"
                         f" {t['tokens_per_round']:.2f} | {t['tokens_per_s']:.0f} |"
                         f" {t['full_depth_tokens_per_s']:.0f} | {t['decode_speedup']:.2f}x |"
                         f" {100 * t['same_tokens_fraction']:.1f}% |")
    return [*lines, ""]


def write_lm_report(metrics: dict[str, Any], path: Path) -> None:
    """Write the LM demo's report.md (atomically) from its metrics."""
    nets, sched, env, model = (metrics[k] for k in ("nets", "schedule", "environment", "model"))
    timing = next(iter(nets["baseline"]["timing"].values()), {})
    lines = [
        "# optdepth language-model demo report", "",
        f"Multi-exit byte-level causal LM `{model['name']}` (D = {model['dim']},"
        f" {model['layers']} layers, context {model['context']}) on"
        f" `{metrics['corpus']['source']}`, split by file"
        f" ({metrics['corpus']['train_bytes']:,} / {metrics['corpus']['calibration_bytes']:,} /"
        f" {metrics['corpus']['test_bytes']:,} bytes), `{sched['name']}` schedule:"
        f" {sched['epochs']} x {sched['steps_per_epoch']} AdamW steps of {sched['batch_size']}"
        f" windows. Baseline β = 0; L_depth net β = {sched['beta']:g}. Figures on"
        f" {nets['baseline']['n_tokens']:,} test tokens.", "",
        f"Wall time {metrics['wall_seconds'] / 60:.1f} min; torch {env['torch']},"
        f" {env['threads']} threads on {env['machine']}.", "",
        "## Next-token accuracy and perplexity of each exit", "",
        "Compute: FLOPs per generated token to reach and evaluate the exit (FlopCounterMode, one"
        " decoding step at mid-context), **including the CALM K/V projections of the skipped"
        " layers** and every exit head up to it, as a fraction of a full-depth step.", "",
        *exit_table(nets), "",
        "| exit | layers | " + " | ".join(f"{n} perplexity" for n in nets) + " |",
        "| --- " * (2 + len(nets)) + "|",
        *(f"| {t + 1} | {layer:.3f} | " + " | ".join(f"{nets[n]['perplexity'][t]:.3f}" for n in nets)
          + " |" for t, layer in enumerate(nets["baseline"]["exit_layers"])), "",
        "![exit accuracy](exit_accuracy.png)", "",
        "## Residual-norm decay", "", *residual_table(nets), "",
        "![residual decay](residual_decay.png)", "",
        "## Early exit per token", "",
        "Policies are fitted on calibration tokens; each operating point is the least mean compute"
        " within 0.5 points of the final exit's calibration accuracy, measured on test tokens"
        " (trace accuracy assumes a full-depth context). Decode accuracy: the same policy in"
        " real cached decoding, teacher-forced over the test tokens, where earlier tokens' deeper"
        f" keys/values come from CALM fills. Decoding speed: greedy, {timing.get('batch_size')}"
        f" prompts decoded together, {timing.get('max_new_tokens')} new tokens, median of"
        f" {timing.get('repeats')} interleaved repeats, {timing.get('threads')} threads.", "",
    ]
    for name, net in nets.items():
        lines += [f"### {name}", "", *policy_table(net), "", *_decode_table(net), "",
                  f"Full-depth decode accuracy (teacher-forced, cached): "
                  f"{100 * net['decode_accuracy_full_depth']:.2f}%.", ""]
    lines += [*comparison_lines(nets), "", "![policy curves](policy_curves.png)", "",
              "![exit histograms](exit_histograms.png)", "",
              *speculative_section(nets),
              *guarantee_section(nets),
              "## Finite-depth certificate", "",
              "As in the image demo: t̄ = log(L·K / (λ·ΔC)) / log(1/ρ) + 1 layers at the LSM"
              " operating point, next to the mean depth (layers) LSM stops tokens at.", "",
              *certificate_table(nets), "",
              "Per-net run directories (config, metrics.jsonl, TensorBoard events, checkpoints,"
              " test exit traces) are under `runs/`.", ""]
    write_text(path, "\n".join(lines))
