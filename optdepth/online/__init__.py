"""The online layer: running a network with real early exit, and timing it.

:func:`early_exit_predict` runs the net segment by segment on any batch source (in memory, or an
on-disk split streamed batch by batch) and retires each sample at the exit its policy picks, so
later blocks never run for it (:func:`offline_exits` applies the same policy to traces, for the
online = offline checks); per-token early exit and greedy decoding for the causal LM live in
:mod:`optdepth.online.generation`. Timing: interleaved wall-clock
speed-ups of policies over full depth (:func:`measure_wall_speedups`), the time to reach each
exit (:func:`exit_time_shares`; as prices for the policies, :func:`measure_latency_profile`)
the engine's own share (:func:`engine_time_breakdown`) and the ideal engine, a pass's network
calls replayed with nothing between them (:func:`replay_schedule`).
"""

from optdepth.online.engine import (
    EarlyExitResult,
    early_exit_predict,
    offline_exits,
    replay_schedule,
)
from optdepth.online.timing import (
    engine_time_breakdown,
    exit_time_shares,
    full_depth_predict,
    measure_latency_profile,
    measure_wall_speedups,
)

__all__ = ["EarlyExitResult", "early_exit_predict", "engine_time_breakdown", "exit_time_shares",
           "full_depth_predict", "measure_latency_profile", "measure_wall_speedups",
           "offline_exits", "replay_schedule"]
