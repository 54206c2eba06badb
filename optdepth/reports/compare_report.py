"""The compare's report.md: paired results per variant and policy, per-seed figures, plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optdepth.io import write_text
from optdepth.reports.demo_report import _fmt, _row


def _stat(stat: Mapping[str, Any], scale: float = 1.0, spec: str = ".3f") -> str:
    """"median [lo, hi], p = …" of a STAT (``scale``: 100 for accuracy points)."""
    if stat["median"] is None:
        return "– (no paired seed)"
    text = format(scale * stat["median"], spec)
    if stat["ci95"] is not None:
        lo, hi = (format(scale * x, spec) for x in stat["ci95"])
        text += f" [{lo}, {hi}], p = {stat['p_value']:.3g}"
    return text + f" (n = {len(stat['values'])})"


def paired_table(paired: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One row per policy: both compute ratios, the final exit's accuracy and ρ differences."""
    lines = [_row(["policy", "compute ratio at matched accuracy", "compute ratio at iso-accuracy",
                   "Δ final-exit acc. (points)", "Δ ρ"]), _row(["---"] * 5)]
    for policy, stats in paired.items():
        lines.append(_row([policy, _stat(stats["matched_ratio"]), _stat(stats["iso_ratio"]),
                           _stat(stats["final_accuracy_diff"], 100, ".2f"),
                           _stat(stats["rho_diff"])]))
    return lines


def _spread(spread: Mapping[str, Any] | None, scale: float = 1.0, spec: str = ".3f") -> str:
    """"median [lo, hi]" of one variant's per-seed values."""
    if spread is None or spread["median"] is None:
        return "–"
    text = format(scale * spread["median"], spec)
    if spread["ci95"] is not None:
        text += " [" + ", ".join(format(scale * x, spec) for x in spread["ci95"]) + "]"
    return text


def variant_table(summary: Mapping[str, Any], policies: tuple[str, ...] | None = None,
                  variants: tuple[str, ...] | None = None) -> list[str]:
    """Each variant's own figures (median [95% interval] over its seeds) and, for the later
    variants, the paired compute ratio to the reference at iso-accuracy: the headline table.

    ``policies`` and ``variants`` select rows (default: all of compare.json's)."""
    policies = tuple(summary["policies"]) if policies is None else policies
    variants = tuple(summary["variants"]) if variants is None else variants
    lines = [_row(["variant", "final-exit acc. (%)", "policy", "compute at iso-accuracy",
                   "test acc. there (%)", f"compute / `{summary['reference']}`'s (paired)"]),
             _row(["---"] * 6)]
    for variant in variants:
        own = summary["per_variant"][variant]
        for policy in policies:
            paired = summary["paired"].get(variant, {}).get(policy)
            ratio = "1 (reference)" if paired is None else _stat(paired["iso_ratio"])
            lines.append(_row([f"`{variant}`", _spread(own["final_accuracy"], 100, ".2f"), policy,
                               _spread(own["iso_compute"][policy]),
                               _spread(own["iso_accuracy"][policy], 100, ".2f"), ratio]))
    return lines


def gap_lines(summary: Mapping[str, Any]) -> list[str]:
    """Per variant, the share of the gap from the best threshold rule to the oracle (compute at
    iso-accuracy) that the best stopping policy (LSM or OSLA) closes, over its seeds."""
    lines = ["Share of the gap from the best threshold rule to the oracle closed by the best"
             " stopping policy (LSM or OSLA), at iso-accuracy (1: the oracle's compute; 0: no"
             " better than the rule):", ""]
    for variant in summary["variants"]:
        gap = summary["per_variant"][variant].get("oracle_gap_closed")
        lines.append(f"- `{variant}`: {_spread(gap)}")
    return [*lines, ""]


def seed_table(per_seed: Mapping[str, list[Mapping[str, Any]]], policies: list[str]) -> list[str]:
    """One row per converged run: final-exit accuracy, ρ and each policy's iso-accuracy compute."""
    lines = [_row(["variant", "seed", "final-exit acc. (%)", "ρ"]
                  + [f"{p} compute (iso / matched)" for p in policies]),
             _row(["---"] * (4 + len(policies)))]
    for variant, entries in per_seed.items():
        for e in entries:
            computes = [f"{e['iso_compute'][p]:.3f} / {_fmt(e['matched_compute'][p], '.3f')}"
                        for p in policies]
            lines.append(_row([variant, e["seed"], f"{100 * e['final_accuracy']:.2f}",
                               f"{e['rho']:.3f}", *computes]))
    return lines


def excluded_lines(excluded: list[Mapping[str, Any]]) -> list[str]:
    """The diverged runs, by name; they are in no median, interval or test."""
    if not excluded:
        return ["No run diverged.", ""]
    lines = ["Excluded (training diverged; in no median, interval or test, and their seed is"
             " unpaired for the other variants):", ""]
    lines += [f"- `{e['variant']}` seed {e['seed']}: {e['reason']}" for e in excluded]
    return [*lines, ""]


def write_compare_report(summary: Mapping[str, Any], path: Path) -> None:
    """Write report.md for compare.json's ``summary`` (optdepth.experiments.compare) atomically."""
    plan, env = summary["settings"]["schedule"], summary["environment"]
    subset = "all" if plan["train_subset"] is None else f"the first {plan['train_subset']:,}"
    level = summary["matched_accuracy"]["accuracy"]
    lines = [
        "# optdepth compare report", "",
        f"`{summary['model']}` on Fashion-MNIST, `{plan['name']}` schedule ({plan['epochs']}"
        f" epochs on {subset} training images), variants"
        f" {', '.join(f'`{v}`' for v in summary['variants'])}, seeds"
        f" {', '.join(map(str, summary['seeds']))}. Each variant is compared with"
        f" `{summary['reference']}` at the same seed (same initial weights, same batches).", "",
        f"{summary['jobs']} runs at a time, {summary['threads_per_job']} torch threads each;"
        f" torch {env['torch']} on {env['machine']}; this call took"
        f" {summary['wall_seconds'] / 60:.1f} min (runs done by an earlier call not counted).", "",
        *excluded_lines(summary["excluded"]),
        "Matched accuracy: " + ("–" if level is None else f"{100 * level:.2f}%") + " — "
        + summary["matched_accuracy"]["rule"] + ". Iso-accuracy: " + summary["iso_accuracy_rule"]
        + ".", "",
        "Each cell: median over seeds [95% bootstrap interval], Wilcoxon signed-rank p (n paired"
        f" seeds). Statistics: {summary['statistics']}; with {len(summary['seeds'])} seeds no"
        f" p-value can be below {2 / 2 ** len(summary['seeds']):.3g}. Ratios below 1: the variant"
        " needs less compute.", ""]
    lines += ["## Each variant over its seeds", "", *variant_table(summary), "", *gap_lines(summary)]
    for variant, paired in summary["paired"].items():
        lines += [f"## `{variant}` against `{summary['reference']}`", "", *paired_table(paired), ""]
    lines += ["![forest plot](forest.png)", "",
              "## Accuracy against compute, over seeds", "",
              "Median over seeds (line) and min–max band of the best test accuracy each policy"
              " reaches within a compute budget; dashed: the matched accuracy.", "",
              "![seed bands](seed_bands.png)", "",
              "## Per seed", "", *seed_table(summary["per_seed"], summary["policies"]), "",
              "Run directories: `runs/<variant>/seed<k>/`; each run's measured record:"
              " `results/<variant>/seed<k>.json`.", ""]
    write_text(path, "\n".join(lines))
