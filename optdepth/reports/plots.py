"""Publication-style PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {"figure.dpi": 150, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False}


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


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
