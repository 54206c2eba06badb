"""General optimal stopping on arrays (numpy/scipy only; importing it never imports torch).

Nothing here knows about neural networks: a policy sees a reward matrix ``rewards`` (N, T)
(the realised reward of stopping at step t on path n) and observable ``features`` (N, T, F),
and the same code prices a Bermudan option by Longstaff–Schwartz.

Public API:
    Policies (``fit(rewards, features) -> self``, ``stop_times(features) -> (N,)``,
    ``stop_at(features_prefix, t) -> (N,) bool``): :class:`StoppingPolicy`,
    :class:`LeastSquaresPolicy`, :class:`OneStepLookaheadPolicy`, :class:`ThresholdPolicy`,
    :class:`PatiencePolicy`; registry :data:`POLICIES`, :func:`create_policy`,
    :func:`list_policies`.
    Evaluation: :func:`oracle_stop_times`, :func:`policy_value`.
    Exact chains: :func:`backward_induction`.
    Free boundaries of 1-D diffusions: :func:`solve_free_boundary`.
    Continuous-depth bridge: :func:`fit_diffusion`, :func:`fit_logistic`, :func:`bridge`,
    :func:`bridge_margin_process`, :func:`free_boundary_rule`, :func:`discrete_boundary_convergence`.
    Operating points: :func:`frontier`, :func:`operating_point`.
    Theory: :func:`fit_diminishing_returns`, :func:`depth_certificate`,
    :func:`stagewise_depth_certificate`,
    :func:`simulate_residual_stopping`.
"""

from ._validation import NotFittedError
from .base import PolicyValue, StoppingPolicy, oracle_stop_times, policy_value
from .bridge import (
    BoundaryRule,
    BridgeResult,
    ConvergenceStudy,
    bridge,
    bridge_margin_process,
    discrete_boundary_convergence,
    free_boundary_rule,
    margin_paths,
)
from .diffusion_fit import DiffusionFit, LogisticFit, fit_diffusion, fit_logistic
from .exact import BackwardInductionResult, backward_induction
from .free_boundary import FreeBoundary, FreeBoundarySolution, solve_free_boundary
from .operating_points import Frontier, OperatingPoint, frontier, operating_point
from .registry import POLICIES, create_policy, list_policies
from .regression import LeastSquaresPolicy, OneStepLookaheadPolicy
from .risk_control import RiskControlResult, hoeffding_bentkus_p_value, risk_control
from .rules import PatiencePolicy, ThresholdPolicy
from .theory import (
    DiminishingReturnsFit,
    ResidualStoppingSimulation,
    depth_certificate,
    fit_diminishing_returns,
    simulate_residual_stopping,
    stagewise_depth_certificate,
)

__all__ = [
    "POLICIES",
    "BackwardInductionResult",
    "BoundaryRule",
    "BridgeResult",
    "ConvergenceStudy",
    "DiffusionFit",
    "LogisticFit",
    "DiminishingReturnsFit",
    "FreeBoundary",
    "FreeBoundarySolution",
    "Frontier",
    "LeastSquaresPolicy",
    "NotFittedError",
    "OneStepLookaheadPolicy",
    "OperatingPoint",
    "PatiencePolicy",
    "PolicyValue",
    "ResidualStoppingSimulation",
    "RiskControlResult",
    "StoppingPolicy",
    "ThresholdPolicy",
    "backward_induction",
    "bridge",
    "bridge_margin_process",
    "discrete_boundary_convergence",
    "fit_diffusion",
    "fit_logistic",
    "free_boundary_rule",
    "margin_paths",
    "create_policy",
    "depth_certificate",
    "stagewise_depth_certificate",
    "fit_diminishing_returns",
    "frontier",
    "hoeffding_bentkus_p_value",
    "list_policies",
    "operating_point",
    "oracle_stop_times",
    "policy_value",
    "risk_control",
    "simulate_residual_stopping",
    "solve_free_boundary",
]
