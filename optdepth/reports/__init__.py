"""Reports: plots and markdown written from metrics, never from live models."""

from optdepth.reports.plots import (
    plot_exit_accuracy,
    plot_exit_histograms,
    plot_policy_curves,
    plot_residual_decay,
)

__all__ = ["plot_exit_accuracy", "plot_exit_histograms", "plot_policy_curves",
           "plot_residual_decay"]
