"""Losses: multi-exit cross-entropy and the L_depth regularisers."""

from optdepth.losses.depth import (
    DecayHingePenalty,
    DepthRegularizer,
    DistillPenalty,
    KineticPenalty,
    RelativeNormPenalty,
    StoppingLossPenalty,
    SumPenalty,
    create_regularizer,
    list_regularizers,
    soft_stopping_distribution,
)
from optdepth.losses.multi_exit import exit_weights, multi_exit_cross_entropy

__all__ = ["DecayHingePenalty", "DepthRegularizer", "DistillPenalty", "KineticPenalty",
           "RelativeNormPenalty", "StoppingLossPenalty", "SumPenalty", "create_regularizer", "exit_weights",
           "list_regularizers", "multi_exit_cross_entropy", "soft_stopping_distribution"]
