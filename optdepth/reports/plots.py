"""Publication-style PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from optdepth.io import atomic_write  # noqa: E402

STYLE = {"figure.dpi": 150, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}


def _save(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (see :func:`optdepth.io.atomic_write`) and close it."""
    try:
        atomic_write(path, lambda file: fig.savefig(file, format="png", bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_exit_accuracy(nets: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Test accuracy of every exit against its cumulative compute, one line per net.

    Args:
        nets: name -> {"exit_compute": (T,), "exit_accuracy": (T,)}.
        path: output PNG.
    """
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for name, net in nets.items():
            ax.plot(net["exit_compute"], 100 * np.asarray(net["exit_accuracy"]), marker="o",
                    markersize=3, label=name)
        ax.set_xlabel("cumulative compute (fraction of full depth)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Accuracy of each exit")
        ax.legend(frameon=False)
        _save(fig, path)


def plot_residual_decay(nets: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Relative residual norm per block (log scale) with each net's fitted K·ρ^t.

    Args:
        nets: name -> {"relative_residual_norm": (blocks,), "K": float, "rho": float}.
        path: output PNG.
    """
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.2, 3.0))
        for name, net in nets.items():
            r = np.asarray(net["relative_residual_norm"])
            t = np.arange(len(r))
            (line,) = ax.semilogy(t + 1, r, marker="o", markersize=3, linestyle="none")
            ax.semilogy(t + 1, net["K"] * net["rho"] ** t, color=line.get_color(),
                        label=f"{name}: ρ = {net['rho']:.3f}")
        ax.set_xlabel("residual block t")
        ax.set_ylabel("‖F_t(h_t)‖ / ‖h_t‖")
        ax.set_title("Residual-norm decay (points) and fit K·ρ^t (lines)")
        ax.legend(frameon=False)
        _save(fig, path)


def plot_policy_curves(nets: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Test accuracy against mean compute for every policy, one panel per net.

    Args:
        nets: name -> {"policies": {policy: {"curve": [[compute, accuracy], ...],
            "iso_accuracy": {"mean_compute", "accuracy"}}}, "exit_accuracy": (T,)}.
        path: output PNG; the iso-accuracy points are marked, the dashed line is the final
            exit's accuracy minus 0.5 points.
    """
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(nets), figsize=(4.2 * len(nets), 3.2), sharey=True,
                                 squeeze=False)
        for ax, (net_name, net) in zip(axes[0], nets.items(), strict=True):
            for name, record in net["policies"].items():
                curve = np.asarray(record["curve"])
                (line,) = ax.plot(curve[:, 0], 100 * curve[:, 1], linewidth=1, label=name,
                                  marker="*" if name == "oracle" else None)
                iso = record["iso_accuracy"]
                ax.plot(iso["mean_compute"], 100 * iso["accuracy"], "o", color=line.get_color(),
                        markersize=4)
            final = 100 * net["exit_accuracy"][-1]
            ax.axhline(final - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.set_ylim(final - 6, max(final + 1.5, 100 * _oracle_accuracy(net) + 0.5))
            ax.set_xlabel("mean compute (fraction of full depth)")
            ax.set_title(net_name)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(frameon=False, fontsize=7)
        _save(fig, path)


def _oracle_accuracy(net: Mapping[str, Any]) -> float:
    oracle = net["policies"].get("oracle")
    return oracle["iso_accuracy"]["accuracy"] if oracle else net["exit_accuracy"][-1]


def plot_exit_histograms(nets: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Share of test inputs leaving at each exit, per policy at its iso-accuracy point."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(nets), figsize=(4.2 * len(nets), 3.0), sharey=True,
                                 squeeze=False)
        for ax, (net_name, net) in zip(axes[0], nets.items(), strict=True):
            names = list(net["policies"])
            width = 0.8 / len(names)
            for i, name in enumerate(names):
                counts = np.asarray(net["policies"][name]["exit_histogram"], dtype=float)
                exits = np.arange(1, len(counts) + 1)
                ax.bar(exits + (i - (len(names) - 1) / 2) * width, counts / counts.sum(), width,
                       label=name)
            ax.set_xlabel("exit")
            ax.set_title(net_name)
        axes[0][0].set_ylabel("share of test inputs")
        axes[0][-1].legend(frameon=False, fontsize=7)
        _save(fig, path)


def plot_forest(paired: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Per-seed compute ratios against the reference, with their median and 95% interval.

    Args:
        paired: variant -> policy -> {"matched_ratio": STAT, "iso_ratio": STAT} (compare.json);
            one row per (variant, policy), one panel per ratio.
        path: output PNG; the dashed line is "no change" (ratio 1).
    """
    rows = [(v, p) for v, policies in paired.items() for p in policies]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 0.9 + 0.28 * max(1, len(rows))),
                                 sharey=True, squeeze=False)
        for ax, key, title in zip(axes[0], ("matched_ratio", "iso_ratio"),
                                  ("at one matched test accuracy", "at iso-accuracy"),
                                  strict=True):
            for y, (variant, policy) in enumerate(rows):
                stat = paired[variant][policy][key]
                ax.plot(stat["values"], [y] * len(stat["values"]), "o", color="tab:blue",
                        alpha=0.45, markersize=3)
                if stat["ci95"] is not None:
                    ax.plot(stat["ci95"], [y, y], color="black", linewidth=1.2)
                if stat["median"] is not None:
                    ax.plot(stat["median"], y, "D", color="black", markersize=4)
            ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel("mean compute / reference's")
            ax.set_title(title)
        axes[0][0].set_yticks(range(len(rows)), [f"{v} · {p}" for v, p in rows])
        axes[0][0].invert_yaxis()
        _save(fig, path)


def accuracy_envelope(curve: Any, grid: np.ndarray) -> np.ndarray:
    """(G,) the best test accuracy a curve's points reach at compute <= each grid value (NaN
    below its cheapest point): curves traced on different grids become comparable.

    Args:
        curve: (K, 2) [mean compute, accuracy] points.
        grid: (G,) compute values, increasing.
    """
    curve = np.asarray(curve, dtype=float).reshape(-1, 2)
    order = np.argsort(curve[:, 0], kind="stable")
    best = np.maximum.accumulate(curve[order, 1])  # (K,) best accuracy up to each compute
    index = np.searchsorted(curve[order, 0], grid, side="right") - 1  # (G,) last point <= c
    return np.where(index >= 0, best[np.maximum(index, 0)], np.nan)


def plot_seed_bands(curves: Mapping[str, Mapping[str, list[Any]]], level: float | None,
                    path: Path) -> None:
    """Accuracy against mean compute per policy: each variant's median over seeds and its
    min–max band, where every seed's curve has a point.

    Args:
        curves: policy -> variant -> per-seed test curves ((K, 2) [compute, accuracy] each).
        level: the compare's matched accuracy (dashed line), or None.
        path: output PNG.
    """
    grid = np.linspace(0.0, 1.0, 201)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, max(1, len(curves)), figsize=(3.4 * max(1, len(curves)), 3.0),
                                 sharey=True, squeeze=False)
        tops = [level] if level is not None else []  # no curves (no run converged): one empty panel
        for ax, (policy, by_variant) in zip(axes[0], curves.items(), strict=False):
            for variant, seed_curves in by_variant.items():
                if not seed_curves:
                    continue
                acc = 100 * np.stack([accuracy_envelope(c, grid) for c in seed_curves])  # (S, G)
                shown = ~np.isnan(acc).any(axis=0)
                (line,) = ax.plot(grid[shown], np.median(acc[:, shown], axis=0), linewidth=1,
                                  label=variant)
                ax.fill_between(grid[shown], acc[:, shown].min(axis=0),
                                acc[:, shown].max(axis=0), color=line.get_color(), alpha=0.2)
                tops.append(np.nanmax(acc) / 100)
            if level is not None:
                ax.axhline(100 * level, color="grey", linestyle="--", linewidth=0.8)
            ax.set_xlabel("mean compute (fraction of full depth)")
            ax.set_title(policy)
        if tops:
            axes[0][0].set_ylim(100 * min(tops) - 6, 100 * max(tops) + 1)
        axes[0][0].set_ylabel("test accuracy (%)")
        axes[0][-1].legend(frameon=False, fontsize=7)
        _save(fig, path)
