"""The offline layer: what is computed over whole splits, with every exit of the network run.

Forward passes over a split (:func:`forward_split`), exit traces of images and of tokens
(:func:`collect_traces`, :func:`collect_lm_traces`) and a run's evaluation
(:func:`evaluate_run`); exit policies fitted on calibration traces (:func:`fit_exit_policy`,
registry :data:`EXIT_POLICIES`) and evaluated on test traces (:func:`evaluate_policies`: curves,
iso-accuracy points, guaranteed operating points, the oracle bound, the comparison of two nets
at one accuracy); the finite-depth certificate of a trained network. The online layer
(:mod:`optdepth.online`) then runs a fitted policy for real.
"""

from optdepth.offline.collect import collect_lm_traces, collect_traces, summarize, summarize_lm
from optdepth.offline.evaluate import RunEvaluation, evaluate_run
from optdepth.offline.exit_policies import (
    EXIT_POLICIES,
    ExitPolicy,
    TraceSource,
    fit_exit_policy,
    list_exit_policies,
)
from optdepth.offline.forward import SplitOutputs, forward_split
from optdepth.offline.guarantees import Guarantee, GuaranteedPoint
from optdepth.offline.policy_evaluation import (
    ISO_TOLERANCE,
    NETWORK_POLICIES,
    PolicyEvaluation,
    evaluate_policies,
    gap_summary,
    iso_accuracy_index,
    matched_accuracy_comparison,
    oracle_exits,
)

__all__ = [
    "EXIT_POLICIES", "ISO_TOLERANCE", "NETWORK_POLICIES", "ExitPolicy", "Guarantee",
    "GuaranteedPoint", "PolicyEvaluation",
    "RunEvaluation", "SplitOutputs", "TraceSource", "collect_lm_traces", "collect_traces",
    "evaluate_policies", "evaluate_run", "fit_exit_policy", "forward_split", "gap_summary",
    "iso_accuracy_index", "list_exit_policies", "matched_accuracy_comparison", "oracle_exits",
    "summarize", "summarize_lm",
]
