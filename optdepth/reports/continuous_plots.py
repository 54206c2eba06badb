"""Plots of continuous-depth stopping: value function, stopping region, free boundary, and the
discrete (T-block) boundaries converging to it. PNG via matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from optdepth.reports.plots import STYLE, _save, plt
from optdepth.stopping import BridgeResult, ConvergenceStudy, FreeBoundarySolution


def _region(ax: Any, sol: FreeBoundarySolution, t_offset: float = 0.0) -> None:
    """Stopping region (shaded) over (time, x) and the free boundary (lines)."""
    t = sol.t + t_offset
    ax.contourf(t, sol.x, sol.stop_region.T.astype(float), levels=[0.5, 1.5], colors=["0.8"])
    # points, not lines: column k of the boundary array can switch between branches over time
    for k in range(sol.boundary.x.shape[1]):
        ax.plot(t, sol.boundary.x[:, k], ls="none", marker=".", ms=1.5, color="C3",
                label="free boundary" if k == 0 else None)
    ax.set_ylabel("state x")


def _value(ax: Any, sol: FreeBoundarySolution, label_t: str) -> None:
    ax.plot(sol.x, sol.values[0], label=f"value V(x, {label_t})")
    ax.plot(sol.x, sol.payoff_values[0], ls="--", label="payoff (stop now)")
    ax.fill_between(sol.x, sol.values[0].min(), sol.values[0].max(), where=sol.stop_region[0],
                    color="0.85", label="stopping region", step="mid")
    ax.set_xlabel("state x")
    ax.legend(frameon=False, fontsize=7, loc="best")


def plot_convergence(study: ConvergenceStudy, path: Path, *, title: str = "",
                     shown: tuple[int, ...] = (4, 16, 64)) -> None:
    """Value function, stopping region with the free boundary and the discrete boundaries of
    T-block chains, and the max boundary distance / value error against T (log-log).

    Args:
        study: from :func:`optdepth.stopping.discrete_boundary_convergence`.
        path: output PNG.
        title: figure title.
        shown: the T whose boundaries are drawn (those present in the study).
    """
    sol = study.solution
    with plt.rc_context(STYLE):
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(11.5, 3.2))
        _value(a, sol, "0")
        a.set_title("value function at t = 0")
        _region(b, sol)
        markers = iter("os^vD<>")
        for t_blocks, rows in zip(study.steps, study.discrete, strict=True):
            if int(t_blocks) not in shown:
                continue
            ts = np.concatenate([np.full(len(p), t) for t, p in rows])
            xs = np.concatenate([p for _, p in rows])
            b.scatter(ts, xs, s=9, marker=next(markers), label=f"T = {t_blocks} blocks", zorder=3)
        b.set_xlabel("depth t")
        b.set_title("stopping region (grey) and boundaries")
        b.legend(frameon=False, fontsize=7, loc="upper right")
        c.loglog(study.steps, study.max_distance, marker="o", label="max boundary distance")
        c.loglog(study.steps, study.value_error, marker="s", label="max |V_T - V| at t = 0")
        ref = study.max_distance[0] * (study.steps / study.steps[0]) ** -0.5
        c.loglog(study.steps, ref, ls=":", color="0.5", label="slope -1/2")
        c.set_xlabel("blocks T (step 1/T)")
        c.set_title("discrete -> continuous")
        c.legend(frameon=False, fontsize=7)
        if title:
            fig.suptitle(title, y=1.04)
        _save(fig, path)


def plot_bridge(result: BridgeResult, path: Path, *, title: str = "", n_paths: int = 40) -> None:
    """The bridge on a network: V and payoff at the first exit, the stopping region over depth
    with sample margin paths, and the policies' values with standard errors.

    Args:
        result: from :func:`optdepth.stopping.bridge` or ``bridge_margin_process``.
        path: output PNG.
        title: figure title.
        n_paths: test paths drawn over the stopping region.
    """
    sol, times = result.rule.solution, result.times
    with plt.rc_context(STYLE):
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(11.5, 3.2))
        _value(a, sol, f"s={times[0]:.3g}")
        a.set_title("value at the first exit")
        _region(b, sol, t_offset=float(times[0]))
        idx = np.linspace(0, result.test_paths.shape[0] - 1, n_paths).astype(int)
        b.plot(times, result.test_paths[idx].T, color="C0", lw=0.5, alpha=0.5)
        b.set_xlabel("depth s")
        b.set_ylim(sol.x[0], sol.x[-1])
        b.set_title("stopping region, test margin paths")
        b.legend(frameon=False, fontsize=7, loc="upper right")
        names = list(result.values)
        means = [result.values[n].mean for n in names]
        errs = [2 * result.values[n].standard_error for n in names]
        c.errorbar(range(len(names)), means, yerr=errs, fmt="o", capsize=3)
        c.set_xticks(range(len(names)), names, rotation=30)
        c.set_ylabel("mean reward (± 2 SE)")
        c.set_title(f"policy values, λ = {result.lam:g}")
        if title:
            fig.suptitle(title, y=1.04)
        _save(fig, path)
