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
from optdepth.evaluation.certificate import network_certificate
from optdepth.inference import evaluate_policies, gap_summary, oracle_exits
from optdepth.inference.generation import measure_decode_speedups, teacher_forced_decode
from optdepth.io import write_json, write_text
from optdepth.models.causal_lm import CausalLM
from optdepth.registry import Registry
from optdepth.reports.demo_report import (
    certificate_table,
    comparison_lines,
    exit_table,
    policy_table,
    residual_table,
)
from optdepth.reports.environment import environment
from optdepth.reports.plots import (
    plot_exit_accuracy,
    plot_exit_histograms,
    plot_policy_curves,
    plot_residual_decay,
)
from optdepth.rundir import write_lock, write_marker
from optdepth.traces import Traces
from optdepth.training.lm_trainer import (
    LMTrainConfig,
    collect_lm_traces,
    summarize_lm,
    train_lm,
)

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
    :func:`~optdepth.evaluation.certificate.network_certificate` at the LSM operating point
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


def _decode_table(net: dict[str, Any]) -> list[str]:
    """Per policy: layers, real decoding accuracy and measured decoding speed."""
    lines = ["| policy | mean layers | trace acc. (%) | decode acc. (%) | tokens/s early exit |"
             " tokens/s full depth | decode speed-up |", "| --- " * 7 + "|"]
    for name, record in net["policies"].items():
        iso, timing = record["iso_accuracy"], net["timing"].get(name)
        if timing is None:
            continue
        lines.append(f"| {name} | {iso['mean_layers']:.3f} | {100 * iso['accuracy']:.2f} |"
                     f" {100 * iso['decode_accuracy']:.2f} | {timing['tokens_per_s']:.0f} |"
                     f" {timing['full_depth_tokens_per_s']:.0f} | {iso['decode_speedup']:.2f}x |")
    return lines


def write_lm_report(metrics: dict[str, Any], path: Path) -> None:
    """Write the LM demo's report.md (atomically) from its metrics."""
    nets, sched, env, model = (metrics[k] for k in ("nets", "schedule", "environment", "model"))
    timing = next(iter(nets["baseline"]["timing"].values()), {})
    lines = [
        "# optdepth language-model demo report", "",
        f"Multi-exit byte-level causal LM (D = {model['dim']}, {model['layers']} layers, context"
        f" {model['context']}) on `{metrics['corpus']['source']}`, split by file"
        f" ({metrics['corpus']['train_bytes']:,} / {metrics['corpus']['calibration_bytes']:,} /"
        f" {metrics['corpus']['test_bytes']:,} bytes), `{sched['name']}` schedule:"
        f" {sched['epochs']} x {sched['steps_per_epoch']} AdamW steps of {sched['batch_size']}"
        f" windows. Baseline β = 0; L_depth net β = {sched['beta']:g}. Figures on"
        f" {nets['baseline']['n_tokens']:,} test tokens.", "",
        f"Wall time {metrics['wall_seconds'] / 60:.1f} min; torch {env['torch']},"
        f" {env['threads']} threads on {env['machine']}.", "",
        "## Next-token accuracy and perplexity of each exit", "",
        "Compute: FLOPs per generated token to reach and evaluate the exit (FlopCounterMode, one"
        " decoding step at mid-context), **including the CALM K/V projections of the skipped"
        " layers** and every exit head up to it, as a fraction of a full-depth step.", "",
        *exit_table(nets), "",
        "| exit | layers | " + " | ".join(f"{n} perplexity" for n in nets) + " |",
        "| --- " * (2 + len(nets)) + "|",
        *(f"| {t + 1} | {layer:.3f} | " + " | ".join(f"{nets[n]['perplexity'][t]:.3f}" for n in nets)
          + " |" for t, layer in enumerate(nets["baseline"]["exit_layers"])), "",
        "![exit accuracy](exit_accuracy.png)", "",
        "## Residual-norm decay", "", *residual_table(nets), "",
        "![residual decay](residual_decay.png)", "",
        "## Early exit per token", "",
        "Policies are fitted on calibration tokens; each operating point is the least mean compute"
        " within 0.5 points of the final exit's calibration accuracy, measured on test tokens"
        " (trace accuracy assumes a full-depth context). Decode accuracy: the same policy in"
        " real cached decoding, teacher-forced over the test tokens, where earlier tokens' deeper"
        f" keys/values come from CALM fills. Decoding speed: greedy, {timing.get('batch_size')}"
        f" prompts decoded together, {timing.get('max_new_tokens')} new tokens, median of"
        f" {timing.get('repeats')} interleaved repeats, {timing.get('threads')} threads.", "",
    ]
    for name, net in nets.items():
        lines += [f"### {name}", "", *policy_table(net), "", *_decode_table(net), "",
                  f"Full-depth decode accuracy (teacher-forced, cached): "
                  f"{100 * net['decode_accuracy_full_depth']:.2f}%.", ""]
    lines += [*comparison_lines(nets), "", "![policy curves](policy_curves.png)", "",
              "![exit histograms](exit_histograms.png)", "",
              "## Finite-depth certificate", "",
              "As in the image demo: t̄ = log(L·K / (λ·ΔC)) / log(1/ρ) + 1 layers at the LSM"
              " operating point, next to the mean depth (layers) LSM stops tokens at.", "",
              *certificate_table(nets), "",
              "Per-net run directories (config, metrics.jsonl, TensorBoard events, checkpoints,"
              " test exit traces) are under `runs/`.", ""]
    write_text(path, "\n".join(lines))
