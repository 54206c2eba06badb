"""Evaluation: full forward passes over splits, exit traces, per-run evaluation reports."""

from optdepth.evaluation.evaluate import collect_traces, evaluate_run, summarize
from optdepth.evaluation.inference import SplitOutputs, forward_split

__all__ = ["SplitOutputs", "collect_traces", "evaluate_run", "forward_split", "summarize"]
