"""Registry of stopping policies: a plain dict plus a small factory."""

from __future__ import annotations

from typing import Any

from .base import StoppingPolicy
from .regression import LeastSquaresPolicy, OneStepLookaheadPolicy
from .rules import PatiencePolicy, ThresholdPolicy

__all__ = ["POLICIES", "create_policy", "list_policies"]

#: Policy name -> class. Add an entry to register a new policy.
POLICIES: dict[str, type[StoppingPolicy]] = {
    "lsm": LeastSquaresPolicy,
    "osla": OneStepLookaheadPolicy,
    "threshold": ThresholdPolicy,
    "patience": PatiencePolicy,
}


def list_policies() -> list[str]:
    """Names accepted by :func:`create_policy`, sorted."""
    return sorted(POLICIES)


def create_policy(name: str, **kwargs: Any) -> StoppingPolicy:
    """Builds an unfitted policy by registry name.

    Args:
        name: One of :func:`list_policies`.
        **kwargs: Keyword arguments of the policy's constructor.

    Returns:
        A new policy instance.
    """
    if not isinstance(name, str) or name not in POLICIES:
        raise ValueError(
            f"unknown policy {name!r}; choose one of {', '.join(map(repr, list_policies()))} "
            f"(or add your class to optdepth.stopping.POLICIES)"
        )
    return POLICIES[name](**kwargs)
