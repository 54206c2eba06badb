"""Offline evaluation of the causal LM: per-token exit traces, perplexity, summaries.

:func:`collect_lm_traces` runs deterministic contiguous windows and returns per-token exit
traces in the :mod:`optdepth.traces` format (one row per predicted token), so the exit
policies fit and evaluate on them unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optdepth.data.text import TextSplit, eval_windows
from optdepth.models.causal_lm import CausalLM
from optdepth.offline.evaluate import summarize
from optdepth.traces import Traces, exit_features


@torch.no_grad()
def collect_lm_traces(model: CausalLM, split: TextSplit, split_name: str = "test",
                      max_tokens: int | None = 8192, batch_size: int = 16) -> Traces:
    """Per-token exit traces on contiguous windows of ``split`` (one row per predicted token).

    Args:
        model: the LM (run in eval mode; its mode is restored).
        split: the text split.
        split_name: recorded in the metadata.
        max_tokens: cap on the predicted tokens (None: the whole split). Traces hold (N, T, 256)
            float32 probabilities, 1 KiB per token and exit.
        batch_size: windows per forward pass.

    Returns:
        :class:`~optdepth.traces.Traces` with labels = the next byte.
    """
    inputs, targets = eval_windows(split, model.context, max_tokens)
    was_training = model.training
    model.eval()
    probs, res, base = [], [], []
    try:
        for start in range(0, len(inputs), batch_size):
            out = model(inputs[start:start + batch_size])
            probs.append(out.logits.float().softmax(-1).permute(1, 0, 2))  # (B·S, T, V)
            res.append(out.residual_norms.T)
            base.append(out.state_norms.T)
    finally:
        model.train(was_training)
    probs_np = torch.cat(probs).numpy()
    residual, state = torch.cat(res).float().numpy(), torch.cat(base).float().numpy()
    costs = model.exit_costs().numpy()
    blocks = np.asarray(model.exit_blocks, dtype=np.int64)
    features = exit_features(probs_np, residual / np.maximum(state, 1e-12), blocks, costs)
    meta = {"arch": getattr(model, "arch_name", type(model).__name__),
            "arch_kwargs": getattr(model, "arch_kwargs", {}), "split": split_name,
            "unit": "token", "context": model.context}
    return Traces(probs=probs_np, labels=targets.reshape(-1).numpy(), features=features,
                  exit_costs=costs, residual_norms=residual, state_norms=state,
                  exit_blocks=blocks, metadata=meta)


def exit_perplexity(traces: Traces) -> list[float]:
    """(T,) perplexity exp(mean -log p(next byte)) of each exit over the traced tokens."""
    rows = np.arange(len(traces.labels))
    p_true = traces.probs[rows, :, traces.labels].astype(np.float64)  # (N, T)
    return [float(x) for x in np.exp(-np.log(np.clip(p_true, 1e-12, None)).mean(axis=0))]


def summarize_lm(traces: Traces, model: CausalLM) -> dict[str, Any]:
    """:func:`~optdepth.offline.evaluate.summarize` plus per-exit perplexity and layer fractions.

    ``exit_accuracy`` is next-token accuracy; ``exit_compute`` the FLOP fraction per generated
    token (CALM fills included, see :meth:`CausalLM.exit_costs`); ``exit_layers`` the plain
    fraction of layers run.
    """
    return {**summarize(traces), "perplexity": exit_perplexity(traces),
            "exit_layers": [float(x) for x in model.layer_fractions()],
            "n_tokens": int(len(traces.labels))}
