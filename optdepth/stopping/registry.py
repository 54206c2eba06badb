"""Registry of the stopping engine's policies (on reward paths; numpy only).

Their names are the methods' own (``least_squares`` for Longstaff–Schwartz regression,
``one_step_lookahead``), distinct from the network exit policies of
:data:`optdepth.offline.EXIT_POLICIES` (``lsm``, ``osla``, ...), which fit these on exit traces
with the features and costs of a trained network.
"""

from __future__ import annotations

from typing import Any

from optdepth.registry import Registry

from .base import StoppingPolicy
from .regression import LeastSquaresPolicy, OneStepLookaheadPolicy
from .rules import PatiencePolicy, ThresholdPolicy

__all__ = ["POLICIES", "create_policy", "list_policies"]

#: Policy name -> class. Add an entry to register a new policy.
POLICIES: Registry[type[StoppingPolicy]] = Registry("policy", {
    "least_squares": LeastSquaresPolicy,
    "one_step_lookahead": OneStepLookaheadPolicy,
    "threshold": ThresholdPolicy,
    "patience": PatiencePolicy,
}, hint="or add your class to optdepth.stopping.POLICIES")


def list_policies() -> list[str]:
    """Names accepted by :func:`create_policy`, sorted."""
    return POLICIES.names()


def create_policy(name: str, **kwargs: Any) -> StoppingPolicy:
    """Builds an unfitted policy by registry name.

    Args:
        name: One of :func:`list_policies`.
        **kwargs: Keyword arguments of the policy's constructor.

    Returns:
        A new policy instance.

    Raises:
        ConfigError (a ValueError): unknown name or bad arguments.
    """
    return POLICIES.create(name, **kwargs)
