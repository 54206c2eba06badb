"""The language-model demo: a baseline and an L_depth multi-exit byte-level LM, end to end.

``run_lm_demo(out)`` trains both LMs on the Python standard library's sources (or the user's
text), writes per-token exit traces of the calibration and test splits, fits every exit policy
on calibration tokens, measures it on test tokens, times greedy decoding with real per-token
early exit (CALM fills) against full depth, and writes ``out/report.md``, ``out/metrics.json``
(the image demo's schema, see :mod:`optdepth.demo`) and PNG plots. Each net's run directory
lives in ``out/runs/{baseline,ldepth}``; re-running on the same folder resumes what was there.

LM-specific entries: per net ``perplexity`` (per exit), ``exit_layers`` (layer fraction per
exit) and, per policy, in ``iso_accuracy``: ``decode_speedup`` (full-depth greedy decoding time
over early-exit greedy decoding time, median of interleaved repeats; also given as
``wall_speedup``), ``decode_accuracy`` (test next-token accuracy of real cached early-exit
decoding, teacher-forced, with CALM fills) and ``mean_layers``. ``exit_compute`` is the FLOP
fraction per generated token, CALM K/V fills of skipped layers and the exit heads included
(:meth:`~optdepth.models.causal_lm.CausalLM.exit_costs`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optdepth.data.text import TextCorpus, eval_windows, load_text_corpus, spread_prompts
from optdepth.io import write_json
from optdepth.models.causal_lm import CausalLM
from optdepth.offline import evaluate_policies, gap_summary, oracle_exits
from optdepth.offline.certificate import network_certificate
from optdepth.offline.lm import collect_lm_traces, summarize_lm
from optdepth.online.generation import measure_decode_speedups, teacher_forced_decode
from optdepth.registry import Registry
from optdepth.reports.environment import environment
from optdepth.reports.lm_report import write_lm_report
from optdepth.reports.plots import (
    plot_exit_accuracy,
    plot_exit_histograms,
    plot_policy_curves,
    plot_residual_decay,
)
from optdepth.rundir import write_lock, write_marker
from optdepth.traces import Traces
from optdepth.training.lm_trainer import LMTrainConfig, train_lm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMDemoSchedule:
    """How long the LM demo trains and how much it measures.

    Attributes:
        epochs, steps_per_epoch, batch_size: training length (windows of the model's context).
        eval_tokens: calibration and test tokens traced (each, per net).
        decode_prompts, prompt_bytes, decode_tokens: the timed greedy decoding (prompts taken
            from the test split, decoded together as one batch).
        timing_repeats: interleaved timed runs per side.
    """

    name: str
    epochs: int
    steps_per_epoch: int
    batch_size: int = 16
    eval_tokens: int = 8192
    decode_prompts: int = 8
    prompt_bytes: int = 32
    decode_tokens: int = 64
    timing_repeats: int = 5


SCHEDULES: Registry[LMDemoSchedule] = Registry("schedule", {
    "quick": LMDemoSchedule("quick", epochs=2, steps_per_epoch=15, eval_tokens=2048,
                            decode_tokens=24, timing_repeats=1),
    "demo": LMDemoSchedule("demo", epochs=4, steps_per_epoch=150),
    "full": LMDemoSchedule("full", epochs=10, steps_per_epoch=300, eval_tokens=16384),
})
DEFAULT_BETA = 0.5


def lm_demo_configs(schedule: LMDemoSchedule, beta: float, text: list[str] | None,
                    threads: int | None, model: str = "lm") -> dict[str, LMTrainConfig]:
    """The two LMs: identical but for β (0 for the baseline)."""
    base = LMTrainConfig(model=model, epochs=schedule.epochs,
                         steps_per_epoch=schedule.steps_per_epoch, batch_size=schedule.batch_size,
                         text=None if text is None else tuple(text), threads=threads,
                         eval_tokens=min(schedule.eval_tokens, 8192))
    return {"baseline": base.replace(beta=0.0), "ldepth": base.replace(beta=beta)}


def _decode_prompts(corpus: TextCorpus, plan: LMDemoSchedule,
                    context: int) -> tuple[list[list[int]], int]:
    """The timed prompts (spread over the test split) and the number of tokens to generate,
    shortened if needed to fit the model's context."""
    length = min(plan.prompt_bytes, context // 4)
    prompts = spread_prompts(corpus.test, plan.decode_prompts, length)
    return prompts, min(plan.decode_tokens, context - len(prompts[0]) + 1)


def evaluate_lm_net(model: CausalLM, run_dir: Path, corpus: TextCorpus,
                    plan: LMDemoSchedule) -> tuple[dict[str, Any], Traces, Traces]:
    """Trace both splits (the test traces are saved), summarise the test split."""
    traces = {name: collect_lm_traces(model, getattr(corpus, name), name, plan.eval_tokens)
              for name in ("calibration", "test")}
    summary = summarize_lm(traces["test"], model)
    fit = summary.pop("decay_fit")
    net = {**summary, "rho": fit["rho"], "K": fit["K"], "decay_fit_r2": fit["r2"],
           "calibration_exit_accuracy": [float(a) for a in traces["calibration"].exit_accuracy()]}
    with write_lock(run_dir, "run"):
        traces["test"].save(run_dir / "evaluation" / "traces_test.npz")
        write_json(run_dir / "evaluation" / "summary.json", net)
    return net, traces["calibration"], traces["test"]


def lm_policy_metrics(model: CausalLM, cal: Traces, test: Traces, corpus: TextCorpus,
                      plan: LMDemoSchedule, fit: dict[str, float]) -> dict[str, Any]:
    """Fit every policy on calibration tokens, measure on test tokens, time real decoding.

    Also returns the certificate fields of
    :func:`~optdepth.offline.certificate.network_certificate` at the LSM operating point
    (``fit``: the net's decay fit K, rho), as the image demo does.
    """
    evaluations = evaluate_policies(cal, test)
    fitted = {n: e.policy for n, e in evaluations.items() if e.policy is not None}
    timing = measure_decode_speedups(model, fitted, *_decode_prompts(corpus, plan, model.context),
                                     plan.timing_repeats)
    inputs, targets = eval_windows(corpus.test, model.context, plan.eval_tokens)
    layers = model.layer_fractions().numpy()
    policies = {}
    for name, evaluation in evaluations.items():
        record = evaluation.metrics(timing[name]["decode_speedup"] if name in timing else None)
        stops = (oracle_exits(test.correct()) if name == "oracle"
                 else fitted[name].stop_times(test.features))
        record["exit_histogram"] = np.bincount(stops, minlength=len(test.exit_costs)).tolist()
        iso = record["iso_accuracy"]
        iso["mean_layers"] = float(layers[stops].mean())
        if name in timing:
            preds, _ = teacher_forced_decode(model, inputs, fitted[name])
            iso["decode_speedup"] = iso["wall_speedup"]
            iso["decode_accuracy"] = float((preds == targets.numpy()).mean())
            timing[name]["wall_over_compute"] = iso["decode_speedup"] * timing[name]["mean_compute"]
        policies[name] = record
    full_preds, _ = teacher_forced_decode(model, inputs, None)
    certificate = network_certificate(test, fit["K"], fit["rho"], evaluations["lsm"].iso_param,
                                      fitted["lsm"].stop_times(test.features))
    return {"policies": policies, "policy_comparison": gap_summary(evaluations),
            "timing": timing, **certificate,
            "decode_accuracy_full_depth": float((full_preds == targets.numpy()).mean())}


def run_lm_demo(out: str | Path, *, schedule: str = "demo", beta: float = DEFAULT_BETA,
                epochs: int | None = None, text: list[str] | None = None,
                threads: int | None = None, progress: bool = True,
                model: str = "lm") -> dict[str, Any]:
    """Train, evaluate and report both demo LMs; return the metrics written to metrics.json.

    Args:
        out: output folder (resumed if it holds the same runs).
        schedule: ``"quick"`` (smoke test), ``"demo"`` or ``"full"``.
        beta: L_depth weight of the second net.
        epochs: override the schedule's epochs.
        text: text files or folders (None: the Python standard library's sources).
        threads, progress: as for training.
        model: a registered causal LM (``lm``, ``lm_small``; ``lm_tiny`` for smoke tests).
    """
    out, start = Path(out), time.perf_counter()
    plan = SCHEDULES[schedule] if epochs is None else dataclasses.replace(SCHEDULES[schedule],
                                                                          epochs=epochs)
    configs = lm_demo_configs(plan, beta, text, threads, model)
    with write_lock(out, "lm-demo"):
        corpus = load_text_corpus(text)
        write_marker(out, "lm-demo")
        return _train_and_report(out, model, plan, configs, corpus, progress, start)


def _train_and_report(out: Path, model: str, plan: LMDemoSchedule,
                      configs: dict[str, LMTrainConfig], corpus: TextCorpus, progress: bool,
                      start: float) -> dict[str, Any]:
    """Both LMs: train (or resume), evaluate, fit and time the policies; plots and report."""
    nets = {}
    for name, config in configs.items():
        log.info("training LM %s (beta = %g, %d x %d steps)", name, config.beta, config.epochs,
                 config.steps_per_epoch)
        run_dir = out / "runs" / name
        lm = train_lm(config, run_dir, corpus=corpus, progress=progress).model
        nets[name], cal, test = evaluate_lm_net(lm, run_dir, corpus, plan)
        log.info("fitting exit policies and timing early-exit decoding for %s", name)
        nets[name].update(lm_policy_metrics(lm, cal, test, corpus, plan, nets[name]))
    metrics = {"nets": nets, "schedule": {**dataclasses.asdict(plan), "beta": configs["ldepth"].beta},
               "model": {"name": model, "context": lm.context, "layers": lm.num_blocks,
                         "dim": lm.dim, "parameters": sum(p.numel() for p in lm.parameters())},
               "corpus": {"source": corpus.source, **{f"{s}_bytes": len(getattr(corpus, s))
                                                      for s in ("train", "calibration", "test")}},
               "environment": environment(),
               "wall_seconds": time.perf_counter() - start}
    plot_exit_accuracy(nets, out / "exit_accuracy.png")
    plot_residual_decay(nets, out / "residual_decay.png")
    plot_policy_curves(nets, out / "policy_curves.png")
    plot_exit_histograms(nets, out / "exit_histograms.png")
    write_json(out / "metrics.json", metrics)
    write_lm_report(metrics, out / "report.md")
    return metrics
