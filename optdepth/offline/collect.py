"""Exit traces of a split, and their summaries: every exit of the network run on every sample.

:func:`collect_traces` runs an image model over a batch source; :func:`collect_lm_traces` runs a
causal LM over deterministic contiguous windows of a text split and returns one row per
predicted token. Both return :class:`~optdepth.traces.Traces`, so the exit policies fit and
evaluate on them unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from optdepth.data.source import BatchSource
from optdepth.data.text import TextSplit, eval_windows
from optdepth.models.base import MultiExitModel
from optdepth.models.decoder import DecoderLM
from optdepth.offline.certificate import stage_decay_fits
from optdepth.offline.forward import forward_split
from optdepth.stopping import fit_diminishing_returns
from optdepth.traces import Traces, exit_features


def collect_traces(model: MultiExitModel, split: BatchSource, split_name: str = "test",
                   batch_size: int = 1000, progress: bool = False) -> Traces:
    """Run every exit on ``split`` and return its :class:`~optdepth.traces.Traces`.

    Raises:
        ValueError: ``split`` is not a batch source (e.g. a bare tensor: wrap it as
            ``optdepth.data.Split(images, labels)``), is empty, or ``batch_size`` < 1.
    """
    if not hasattr(split, "batches") or not hasattr(split, "__len__"):
        raise ValueError(f"split must be a batch source such as optdepth.data.Split(images,"
                         f" labels), got {type(split).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(split) == 0:
        raise ValueError(f"the {split_name} split is empty: nothing to trace")
    out = forward_split(model, split, batch_size, progress, desc=f"traces ({split_name})")
    costs = model.exit_costs().numpy()
    blocks = np.asarray(model.exit_blocks, dtype=np.int64)
    relative = out.residual_norms / np.maximum(out.state_norms, 1e-12)
    features = exit_features(out.probs, relative, blocks, costs)
    meta = {"arch": getattr(model, "arch_name", type(model).__name__),
            "arch_kwargs": getattr(model, "arch_kwargs", {}), "split": split_name,
            "stage_starts": [int(b) for b in getattr(model, "stage_starts", (0,))]}
    return Traces(probs=out.probs, labels=out.labels, features=features, exit_costs=costs,
                  residual_norms=out.residual_norms, state_norms=out.state_norms,
                  exit_blocks=blocks, metadata=meta)


def summarize(traces: Traces) -> dict[str, Any]:
    """Per-exit accuracy, compute and residual-norm decay (with the K, ρ fit) of test traces."""
    relative = traces.mean_relative_norms()
    fit = fit_diminishing_returns(relative)
    return {
        "stage_fits": stage_decay_fits(relative, traces.metadata.get("stage_starts", [0])),
        "exit_accuracy": [float(a) for a in traces.exit_accuracy()],
        "exit_compute": [float(c) for c in traces.exit_costs],
        "exit_blocks": [int(b) for b in traces.exit_blocks],
        "relative_residual_norm": [float(r) for r in relative],
        "decay_fit": {"K": float(fit.K), "rho": float(fit.rho), "r2": float(fit.r_squared)},
    }


@torch.no_grad()
def collect_lm_traces(model: DecoderLM, split: TextSplit, split_name: str = "test",
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
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, res, base = [], [], []
    try:
        for start in range(0, len(inputs), batch_size):
            out = model(inputs[start:start + batch_size].to(device))
            probs.append(out.logits.float().softmax(-1).permute(1, 0, 2).cpu())  # (B·S, T, V)
            res.append(out.residual_norms.T.cpu())
            base.append(out.state_norms.T.cpu())
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


def summarize_lm(traces: Traces, model: DecoderLM) -> dict[str, Any]:
    """:func:`summarize` plus per-exit perplexity and layer fractions.

    ``exit_accuracy`` is next-token accuracy; ``exit_compute`` the FLOP fraction per generated
    token (CALM fills included, see :meth:`DecoderLM.exit_costs`); ``exit_layers`` the plain
    fraction of layers run.
    """
    return {**summarize(traces), "perplexity": exit_perplexity(traces),
            "exit_layers": [float(x) for x in model.layer_fractions()],
            "n_tokens": int(len(traces.labels))}
