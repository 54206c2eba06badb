"""Real early exit: exit policies for multi-exit networks, the online engine, and timing.

Public API:
    Engine: :func:`early_exit_predict` (runs the net, retires samples as they stop),
    :func:`offline_exits` (the same policy on exit traces), :class:`EarlyExitResult`.
    Policies: :func:`fit_exit_policy`, :class:`ExitPolicy`, registry :data:`EXIT_POLICIES`,
    :func:`list_exit_policies`.
    Evaluation: :func:`evaluate_policies` (curves and iso-accuracy points of every policy,
    :class:`PolicyEvaluation`), :func:`iso_accuracy_index`, :func:`gap_summary`.
    Timing: :func:`measure_wall_speedups`, :func:`measure_wall_speedup`, :func:`full_depth_predict`,
    :func:`exit_time_shares`.
"""

from optdepth.inference.engine import EarlyExitResult, early_exit_predict, offline_exits
from optdepth.inference.policies import (
    EXIT_POLICIES,
    ExitPolicy,
    TraceSource,
    fit_exit_policy,
    list_exit_policies,
)
from optdepth.inference.suite import (
    ISO_TOLERANCE,
    NETWORK_POLICIES,
    PolicyEvaluation,
    evaluate_policies,
    gap_summary,
    iso_accuracy_index,
    matched_accuracy_comparison,
    oracle_exits,
)
from optdepth.inference.timing import (
    engine_time_breakdown,
    exit_time_shares,
    full_depth_predict,
    measure_wall_speedup,
    measure_wall_speedups,
)

__all__ = [
    "EXIT_POLICIES",
    "ISO_TOLERANCE",
    "NETWORK_POLICIES",
    "EarlyExitResult",
    "ExitPolicy",
    "PolicyEvaluation",
    "TraceSource",
    "early_exit_predict",
    "engine_time_breakdown",
    "evaluate_policies",
    "exit_time_shares",
    "fit_exit_policy",
    "full_depth_predict",
    "gap_summary",
    "iso_accuracy_index",
    "list_exit_policies",
    "matched_accuracy_comparison",
    "measure_wall_speedup",
    "measure_wall_speedups",
    "offline_exits",
    "oracle_exits",
]
