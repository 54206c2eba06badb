"""The demo's report.md: tables of the measured figures and links to the plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optdepth.io import write_text


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def exit_table(nets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown table: one row per exit, compute then each net's test accuracy (%)."""
    names = list(nets)
    first = nets[names[0]]
    lines = [_row(["exit", "compute"] + [f"{n} acc. (%)" for n in names]),
             _row(["---"] * (2 + len(names)))]
    for t, cost in enumerate(first["exit_compute"]):
        accs = [f"{100 * nets[n]['exit_accuracy'][t]:.2f}" for n in names]
        lines.append(_row([t + 1, f"{cost:.3f}"] + accs))
    return lines


def residual_table(nets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Markdown table: relative residual norm per block for each net, then the fitted K, ρ."""
    names = list(nets)
    blocks = len(nets[names[0]]["relative_residual_norm"])
    lines = [_row(["block"] + names), _row(["---"] * (1 + len(names)))]
    for b in range(blocks):
        lines.append(_row([b + 1] + [f"{nets[n]['relative_residual_norm'][b]:.4f}" for n in names]))
    lines.append(_row(["fitted K"] + [f"{nets[n]['K']:.3f}" for n in names]))
    lines.append(_row(["fitted ρ"] + [f"{nets[n]['rho']:.3f}" for n in names]))
    return lines


def write_report(metrics: Mapping[str, Any], configs: Mapping[str, Any], path: Path) -> None:
    """Write report.md for the demo metrics (see optdepth.demo) atomically."""
    nets, sched, env = metrics["nets"], metrics["schedule"], metrics["environment"]
    subset = "all 55,000" if sched["train_subset"] is None else f"the first {sched['train_subset']:,}"
    lines = [
        "# optdepth demo report", "",
        f"Multi-exit ResNet-20 on Fashion-MNIST, trained {sched['epochs']} epochs on {subset}"
        f" training images: a baseline (β = 0) and an L_depth net (β = {sched['beta']:g},"
        f" regulariser `{configs['ldepth'].regularizer}`). Test split: 10,000 images.", "",
        f"Wall time {metrics['wall_seconds'] / 60:.1f} min; torch {env['torch']},"
        f" {env['threads']} threads on {env['machine']}.", "",
        "## Accuracy of each exit", "",
        "Compute is cumulative FLOPs to reach and evaluate the exit, as a fraction of the full"
        " forward pass (torch FlopCounterMode).", "",
        *exit_table(nets), "", "![exit accuracy](exit_accuracy.png)", "",
        "## Residual-norm decay", "",
        "Mean over test images of ‖F_t(h_t)‖ / ‖h_t‖ per block, and the least-squares fit"
        " K·ρ^t (log scale). ρ < 1 means diminishing returns of depth.", "",
        *residual_table(nets), "", "![residual decay](residual_decay.png)", "",
        "Per-net run directories (config, metrics.jsonl, TensorBoard events, checkpoints,"
        " exit traces) are under `runs/`.", "",
    ]
    write_text(path, "\n".join(lines))
