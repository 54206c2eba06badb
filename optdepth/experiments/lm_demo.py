"""The language-model demo: a baseline and an L_depth multi-exit byte-level LM, end to end.

``run_lm_demo(out)`` trains both LMs on the Python standard library's sources (or the user's
text), writes per-token exit traces of the calibration and test splits, fits every exit policy
on calibration tokens, measures it on test tokens, times greedy decoding with real per-token
early exit (CALM fills) against full depth, and writes ``out/report.md``, ``out/metrics.json``
(the image demo's schema, see :mod:`optdepth.experiments.image_demo`) and PNG plots. Each net's
run directory lives in ``out/runs/{baseline,ldepth}`` (the pipeline of
:mod:`optdepth.experiments.pipeline`); re-running on the same folder resumes what was there.

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
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optdepth.data.text import TextCorpus, TextSplit, eval_windows, load_text_corpus, spread_prompts
from optdepth.experiments.pipeline import net_metrics, policy_suite, train_and_evaluate, write_outputs
from optdepth.models.decoder import DecoderLM
from optdepth.offline.evaluate import RunEvaluation
from optdepth.offline.exit_policies import ExitPolicy
from optdepth.online.generation import generate, measure_decode_speedups, teacher_forced_decode
from optdepth.registry import Registry
from optdepth.reports.environment import environment
from optdepth.reports.lm_report import write_lm_report
from optdepth.rundir import write_lock, write_marker
from optdepth.training.config import LMTrainConfig

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
#: Draft lengths tried for self-speculative decoding.
DRAFT_TOKENS = (2, 4, 8)
#: Calibration prompts the draft is chosen on.
DRAFT_PROMPTS = 3


def lm_demo_configs(schedule: LMDemoSchedule, beta: float, text: list[str] | None,
                    threads: int | None, model: str = "lm",
                    weights: str | None = None) -> dict[str, LMTrainConfig]:
    """The two LMs: identical but for β (0 for the baseline).

    With the user's ``weights`` (hf-gpt2) the backbone is frozen and per-exit adapters train.
    """
    kwargs = {} if weights is None else {"weights_path": str(weights), "head": "adapter"}
    base = LMTrainConfig(model=model, model_kwargs=kwargs, epochs=schedule.epochs,
                         steps_per_epoch=schedule.steps_per_epoch, batch_size=schedule.batch_size,
                         text=None if text is None else tuple(text), threads=threads,
                         eval_tokens=min(schedule.eval_tokens, 8192))
    return {"baseline": base.replace(beta=0.0), "ldepth": base.replace(beta=beta)}


def _decode_prompts(split: TextSplit, plan: LMDemoSchedule,
                    context: int) -> tuple[list[list[int]], int]:
    """The timed prompts (spread over ``split``) and the number of tokens to generate,
    shortened if needed to fit the model's context."""
    length = min(plan.prompt_bytes, context // 4)
    prompts = spread_prompts(split, plan.decode_prompts, length)
    return prompts, min(plan.decode_tokens, context - len(prompts[0]) + 1)


def choose_draft(model: DecoderLM, prompts: list[list[int]], new_tokens: int,
                 rounds: int = 3) -> dict[str, Any]:
    """The fastest (draft exit, draft tokens) of self-speculative decoding on some prompts.

    Every exit but the last with each of DRAFT_TOKENS drafts per pass decodes each prompt at
    batch 1, once untimed, then ``rounds`` timed times, interleaved; the least median total time
    decides (acceptance varies from prompt to prompt, so one prompt is a poor judge). The demo
    calls this on calibration prompts, so that the test prompts it then measures on did not
    choose it.

    Returns:
        ``draft_exit``, ``draft_tokens`` and ``seconds`` ({"exit/tokens": median seconds}).
    """
    candidates = [(e, k) for e in range(model.num_exits - 1) for k in DRAFT_TOKENS]
    times: dict[str, list[float]] = {f"{e}/{k}": [] for e, k in candidates}

    def decode_all(e: int, k: int) -> float:
        start = time.perf_counter()
        for prompt in prompts:
            generate(model, [prompt], new_tokens, draft_exit=e, draft_tokens=k)
        return time.perf_counter() - start

    for e, k in candidates:
        decode_all(e, k)
    for _ in range(rounds):
        for e, k in candidates:
            times[f"{e}/{k}"].append(decode_all(e, k))
    seconds = {key: statistics.median(values) for key, values in times.items()}
    best = min(seconds, key=seconds.get)
    exit_index, tokens = map(int, best.split("/"))
    return {"draft_exit": exit_index, "draft_tokens": tokens, "seconds": seconds}


def speculative_metrics(model: DecoderLM, corpus: TextCorpus, plan: LMDemoSchedule) -> dict[str, Any]:
    """Self-speculative decoding against full depth, at batch 1 and with every prompt batched.

    The draft is chosen on calibration prompts (:func:`choose_draft`) and measured on the test
    prompts, interleaved with full-depth decoding (:func:`measure_decode_speedups`).
    """
    calibration, _ = _decode_prompts(corpus.calibration, plan, model.context)
    prompts, new_tokens = _decode_prompts(corpus.test, plan, model.context)
    choice = choose_draft(model, calibration[:DRAFT_PROMPTS], new_tokens)
    draft = {"speculative": (choice["draft_exit"], choice["draft_tokens"])}
    batches = sorted({1, len(prompts)})
    timed = {f"batch_{b}": measure_decode_speedups(model, prompts[:b], new_tokens, drafts=draft,
                                                   repeats=plan.timing_repeats)["speculative"]
             for b in batches}
    return {**choice, "draft_layers": model.exit_blocks[choice["draft_exit"]] + 1, **timed}


def lm_policy_metrics(evaluation: RunEvaluation, corpus: TextCorpus, plan: LMDemoSchedule,
                      net: dict[str, Any]) -> dict[str, Any]:
    """Fit every policy on calibration tokens, measure on test tokens, time real decoding.

    The image demo's policy entries (see
    :meth:`~optdepth.experiments.pipeline.PolicySuite.metrics`), the speed-up being greedy
    decoding's, plus per policy ``mean_layers`` and, for the timed ones, ``decode_speedup`` and
    ``decode_accuracy`` (teacher-forced cached early-exit decoding), and the net's
    ``decode_accuracy_full_depth``.
    """
    model = evaluation.model

    def timer(fitted: dict[str, ExitPolicy]) -> dict[str, dict[str, Any]]:
        return measure_decode_speedups(model, *_decode_prompts(corpus.test, plan, model.context),
                                       policies=fitted, repeats=plan.timing_repeats)

    suite = policy_suite(evaluation, timer)
    metrics = suite.metrics(net, "decode_speedup")
    inputs, targets = eval_windows(corpus.test, model.context, plan.eval_tokens)
    layers = model.layer_fractions().numpy()
    for name, record in metrics["policies"].items():
        iso = record["iso_accuracy"]
        iso["mean_layers"] = float(layers[suite.exits[name]].mean())
        if name in suite.timing:
            preds, _ = teacher_forced_decode(model, inputs, suite.fitted[name])
            iso["decode_speedup"] = iso["wall_speedup"]
            iso["decode_accuracy"] = float((preds == targets.numpy()).mean())
            suite.timing[name]["wall_over_compute"] = iso["decode_speedup"] \
                * suite.timing[name]["mean_compute"]
    full_preds, _ = teacher_forced_decode(model, inputs, None)
    return {**metrics, "decode_accuracy_full_depth": float((full_preds == targets.numpy()).mean())}


def run_lm_demo(out: str | Path, *, schedule: str = "demo", beta: float = DEFAULT_BETA,
                epochs: int | None = None, text: list[str] | None = None,
                threads: int | None = None, progress: bool = True,
                model: str = "lm", weights: str | None = None) -> dict[str, Any]:
    """Train, evaluate and report both demo LMs; return the metrics written to metrics.json.

    Args:
        out: output folder (resumed if it holds the same runs).
        schedule: ``"quick"`` (smoke test), ``"demo"`` or ``"full"``.
        beta: L_depth weight of the second net.
        epochs: override the schedule's epochs.
        text: text files or folders (None: the Python standard library's sources).
        threads, progress: as for training.
        model: a registered causal LM (``lm``, ``lm_small``; ``lm_tiny`` for smoke tests;
            ``hf-gpt2``: transformers' GPT-2 with exits).
        weights: the user's weights for ``hf-gpt2`` (safetensors or a state dict): the exits
            train on the frozen model instead of training it from scratch.
    """
    out, start = Path(out), time.perf_counter()
    plan = SCHEDULES[schedule] if epochs is None else dataclasses.replace(SCHEDULES[schedule],
                                                                          epochs=epochs)
    configs = lm_demo_configs(plan, beta, text, threads, model, weights)
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
        evaluation = train_and_evaluate(config, out / "runs" / name, corpus, progress,
                                        max_tokens=plan.eval_tokens)
        nets[name] = net_metrics(evaluation.summary)
        log.info("fitting exit policies and timing early-exit decoding for %s", name)
        nets[name].update(lm_policy_metrics(evaluation, corpus, plan, nets[name]))
        log.info("choosing and timing self-speculative decoding for %s", name)
        nets[name]["speculative"] = speculative_metrics(evaluation.model, corpus, plan)
    lm = evaluation.model
    metrics = {"nets": nets, "schedule": {**dataclasses.asdict(plan), "beta": configs["ldepth"].beta},
               "model": {"name": model, "context": lm.context, "layers": lm.num_blocks,
                         "dim": lm.dim, "parameters": sum(p.numel() for p in lm.parameters())},
               "corpus": {"source": corpus.source, **{f"{s}_bytes": len(getattr(corpus, s))
                                                      for s in ("train", "calibration", "test")}},
               "environment": environment(),
               "wall_seconds": time.perf_counter() - start}
    write_outputs(out, metrics, write_lm_report)
    return metrics
