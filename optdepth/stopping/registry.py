"""Registry of stopping policies: a plain dict plus a small factory."""

from __future__ import annotations

from typing import Any

from optdepth.registry import Registry

from .base import StoppingPolicy
from .regression import LeastSquaresPolicy, OneStepLookaheadPolicy
from .rules import PatiencePolicy, ThresholdPolicy

__all__ = ["POLICIES", "create_policy", "list_policies"]

#: Policy name -> class. Add an entry to register a new policy.
POLICIES: Registry[type[StoppingPolicy]] = Registry("policy", {
    "lsm": LeastSquaresPolicy,
    "osla": OneStepLookaheadPolicy,
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
