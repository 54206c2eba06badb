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


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def policy_table(net: Mapping[str, Any]) -> list[str]:
    """Markdown table of every policy's iso-accuracy point on the test split."""
    lines = [_row(["policy", "test acc. (%)", "mean compute", "compute speed-up",
                   "wall speed-up", "wall / compute", "ideal wall speed-up",
                   "engine / ideal"]), _row(["---"] * 8)]
    for name, record in net["policies"].items():
        iso, timing = record["iso_accuracy"], net["timing"].get(name)
        speedup = 1 / iso["mean_compute"]
        wall = iso["wall_speedup"]
        flag = "" if iso.get("reached", True) else " (target not reached)"
        lines.append(_row([name + flag, f"{100 * iso['accuracy']:.2f}", f"{iso['mean_compute']:.3f}",
                           f"{speedup:.2f}x", _fmt(wall, ".2f") + ("x" if wall else ""),
                           _fmt(timing and timing["wall_over_compute"], ".2f"),
                           _fmt(timing and timing.get("ideal_wall_speedup"), ".2f"),
                           _fmt(timing and timing.get("engine_efficiency"), ".2f")]))
    return lines


def comparison_lines(nets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Ours vs the best threshold rule and the oracle; L_depth vs baseline; the certificate."""
    lines = []
    for name, net in nets.items():
        gap = net["policy_comparison"]
        saving = gap["compute_saving_vs_rule"]
        verdict = f"{100 * abs(saving):.1f}% {'less' if saving >= 0 else 'more'} compute"
        lines.append(
            f"- {name}: best rule `{gap['best_rule']}` {gap['best_rule_compute']:.3f}, best of"
            f" ours `{gap['best_ours']}` {gap['best_ours_compute']:.3f} ({verdict}), oracle"
            f" {gap['oracle_compute']:.3f}: {100 * gap['oracle_gap_closed']:.0f}% of the gap"
            " from the rule to the oracle closed.")
    if {"baseline", "ldepth"} <= set(nets):
        ratios = []
        for policy, record in nets["baseline"]["policies"].items():
            ours = nets["ldepth"]["policies"][policy]["iso_accuracy"]["mean_compute"]
            ratios.append(f"`{policy}` {ours / record['iso_accuracy']['mean_compute']:.2f}")
        lines.append("- L_depth / baseline mean compute at iso-accuracy: " + ", ".join(ratios))
    return lines


def matched_accuracy_line(matched: Mapping[str, Any]) -> str:
    """The two nets at one absolute test accuracy (see ``matched_accuracy_comparison``)."""
    ratios = ", ".join(f"`{name}` {_fmt(record['ratio'], '.2f')}"
                       for name, record in matched["policies"].items())
    return (f"- L_depth / baseline mean compute at one test accuracy for both nets,"
            f" {100 * matched['accuracy']:.2f}% (0.5 points under the lower final exit; read off"
            f" the test curves, a comparison rather than an operating point): {ratios}")


def certificate_table(nets: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Certificate depth t̄ next to the measured mean depth of the LSM policy (blocks)."""
    lines = [_row(["net", "K", "ρ", "λ (LSM)", "L (q=0.99)", "t̄, one fit (blocks)",
                   "t̄, per stage (blocks)", "stage fits: ρ_s (R²)", "mean depth of LSM (blocks)"]),
             _row(["---"] * 9)]
    for name, net in nets.items():
        stages = ", ".join("—" if f["rho"] is None else f"{f['rho']:.2f} ({f['r2']:.2f})"
                           for f in net.get("stage_fits", []))
        lines.append(_row([name, f"{net['K']:.3f}", f"{net['rho']:.3f}", f"{net['lambda']:.4g}",
                           f"{net['lipschitz']:.3g}", _fmt(net["certificate_depth"], ".2f"),
                           _fmt(net.get("stage_certificate_depth"), ".2f"), stages or "—",
                           f"{net['mean_optimal_depth']:.2f}"]))
    return lines


def guarantee_section(nets: Mapping[str, Mapping[str, Any]], depth: int = 2) -> list[str]:
    """Each policy's guaranteed operating point under a heading of ``depth`` (empty when no
    guarantee was computed)."""
    records = {(n, p): r["guaranteed"] for n, net in nets.items()
               for p, r in net["policies"].items() if "guaranteed" in r}
    if not records:
        return []
    first = next(iter(records.values()))
    points = 100 * first["epsilon"]
    level = f"ε = {points:g} point{'' if points == 1 else 's'}" + (
        f", δ = {first['delta']:g}" if first["method"] == "ltt" else "")
    lines = ["#" * depth + " Guaranteed operating points", "",
             f"The cheapest member of each policy's family whose accuracy loss against the full"
             f" model is certified ({first['method'].upper()}, {level}): the policies are fitted"
             f" on {first['n_fit']:,} calibration samples and certified on the other"
             f" {first['n_calibration']:,}, which they never saw. Risk = share of samples the"
             f" full model gets right and the early exit wrong; test figures below.", "",
             _row(["net", "policy", "certified", "calibration risk (%)", "test risk (%)",
                   "test acc. (%)", "mean compute"]), _row(["---"] * 7)]
    for (net, policy), g in records.items():
        lines.append(_row([net, policy, "yes" if g["certified"] else "no",
                           _fmt(g["calibration_risk"] and 100 * g["calibration_risk"], ".2f"),
                           _fmt(g["test_risk"] and 100 * g["test_risk"], ".2f"),
                           _fmt(g["accuracy"] and 100 * g["accuracy"], ".2f"),
                           _fmt(g["mean_compute"], ".3f")]))
    return [*lines, ""]


def policy_section(nets: Mapping[str, Mapping[str, Any]],
                   matched: Mapping[str, Any] | None = None) -> list[str]:
    """The early-exit part of the report (``matched``: the nets at one test accuracy)."""
    lines = ["## Early exit: policies fitted on calibration, measured on test", "",
             "Each policy's operating point is chosen on the calibration split as the least mean"
             " compute within 0.5 points of the final exit's accuracy; the figures are measured on"
             " the test split. Wall speed-up: full-depth inference (stem, every block, last head)"
             " over real early exit, batch 256, median of interleaved runs in this process."
             " Ideal wall speed-up: that of an engine without overhead, the same network calls"
             " replayed back to back; where it is below the compute speed-up, early blocks cost"
             " more time per FLOP than late ones on this hardware. Engine / ideal: the ideal"
             " engine's time over the real one's. The oracle (earliest correct exit) is a bound,"
             " not a policy.", ""]
    for name, net in nets.items():
        lines += [f"### {name}", "", *policy_table(net), ""]
    lines += [*comparison_lines(nets), *([matched_accuracy_line(matched)] if matched else []),
              "", "![policy curves](policy_curves.png)", "",
              "![exit histograms](exit_histograms.png)", "",
              *guarantee_section(nets),
              "## Finite-depth certificate", "",
              "t̄ = log(L·K / (λ·ΔC)) / log(1/ρ) + 1 blocks, with K, ρ the fitted decay, λ the"
              " LSM operating point's price of compute, ΔC the mean compute per exit and L the"
              " 0.99-quantile of |Δ p_true| / relative residual norm over test steps. Per stage:"
              " the decay is fitted within each stage (it restarts at a stage's projection"
              " block) and t̄ is where the last stage's bound falls below λ·ΔC"
              " (`optdepth.stopping.stagewise_depth_certificate`).", "",
              *certificate_table(nets), ""]
    return lines


def _kwargs_text(model_kwargs: Mapping[str, Any]) -> str:
    """" (stem_stride=1, width=2)" for architecture overrides, "" for none."""
    if not model_kwargs:
        return ""
    return " (" + ", ".join(f"{k}={v!r}" for k, v in model_kwargs.items()) + ")"


def write_report(metrics: Mapping[str, Any], configs: Mapping[str, Any], path: Path) -> None:
    """Write report.md for the demo metrics (see optdepth.experiments.image_demo) atomically."""
    nets, sched, env = metrics["nets"], metrics["schedule"], metrics["environment"]
    subset = "all 55,000" if sched["train_subset"] is None else f"the first {sched['train_subset']:,}"
    lines = [
        "# optdepth demo report", "",
        f"Multi-exit `{configs['baseline'].model}`{_kwargs_text(configs['baseline'].model_kwargs)}"
        f" on Fashion-MNIST, `{sched['name']}` schedule:"
        f" {sched['epochs']}"
        f" epochs on {subset} training images"
        f" ({'with' if sched['augment'] else 'without'} augmentation): a baseline (β = 0)"
        f" and an L_depth net (β = {sched['beta']:g},"
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
        *(policy_section(nets, metrics.get("matched_accuracy"))
          if all("policies" in n for n in nets.values()) else []),
        "Per-net run directories (config, metrics.jsonl, TensorBoard events, checkpoints,"
        " exit traces) are under `runs/`.", "",
    ]
    write_text(path, "\n".join(lines))
