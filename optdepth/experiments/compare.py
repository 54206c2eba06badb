"""Paired multi-seed comparison of training methods: ``optdepth compare``.

``compare(out, model="resnet20", schedule="demo", variants=["none", "distill:2"],
seeds=[0, 1, 2, 3, 4])`` trains every (variant, seed) with the image demo's settings (one
pipeline: :func:`~optdepth.experiments.pipeline.train_and_evaluate` and
:func:`~optdepth.experiments.pipeline.policy_suite`), then reports each later variant against
the first, seed by seed: mean compute at one matched test accuracy and at iso-accuracy (ratios),
the final exit's accuracy and the fitted decay rate ρ (differences), each as a median, a paired
95% bootstrap interval and a Wilcoxon p-value (:mod:`optdepth.experiments.paired`).

A variant is ``none`` (no L_depth), ``<regularizer>:<beta>`` with a name of the L_depth
registry (:data:`optdepth.losses.depth.REGULARIZERS`), or several of those joined by ``+``
(``distill:2+stopping:1``: their sum): a new variant needs only its registry entry. Seeds are
paired: a run's seed alone decides its initial weights (``torch.manual_seed`` before the model
is built) and its batch order (a generator seeded by seed and epoch), so the same seed gives
every variant the same start and the same data.

The folder::

    .optdepth, settings.json        marker (kind "compare") and what this compare is
    runs/<variant>/seed<k>/         each run directory (optdepth.rundir.RunLayout)
    results/<variant>/seed<k>.json  each run's measured record, or its divergence
    compare.json, report.md         the comparison; forest.png, seed_bands.png

A rerun with the same settings reuses every finished record and resumes the others; variants
and seeds may be added (the reference's runs are reused), but a folder of another model,
schedule or reference variant is refused. A run whose loss became NaN is recorded
as diverged and excluded by name; rerunning does not retry it (training is deterministic given
its seed; delete its ``results`` file to retry).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from optdepth.data.fashion_mnist import FashionMNIST, load_fashion_mnist
from optdepth.errors import ConfigError, RunDirError, TrainingError
from optdepth.experiments.image_demo import (
    demo_base_config,
    demo_model,
    demo_plan,
    fit_plan_to_data,
)
from optdepth.experiments.paired import bootstrap_median_interval, paired_stat
from optdepth.experiments.pipeline import net_metrics, policy_suite, train_and_evaluate
from optdepth.io import write_json
from optdepth.losses.depth import REGULARIZERS
from optdepth.offline.exit_policies import ExitPolicy
from optdepth.offline.policy_evaluation import ISO_TOLERANCE, compute_at_accuracy
from optdepth.reports.compare_report import write_compare_report
from optdepth.reports.environment import environment
from optdepth.reports.plots import plot_forest, plot_seed_bands
from optdepth.rundir import write_lock, write_marker
from optdepth.training.config import TrainConfig

log = logging.getLogger(__name__)

BASELINE = "none"
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: How compare.json states its matched accuracy level.
MATCHED_RULE = ("the lowest final-exit test accuracy over every converged run of this compare,"
                f" minus {100 * ISO_TOLERANCE:g} points: one absolute level that every run's final"
                " exit reaches, read on each run's test curves")
ISO_RULE = ("each run's own operating point, chosen on calibration: the least mean compute within"
            f" {100 * ISO_TOLERANCE:g} points of its final exit's calibration accuracy; measured"
            " on test")


@dataclass(frozen=True)
class Variant:
    """One training method: no L_depth (no terms) or a sum of L_depth variants, each at its β.

    ``terms`` is ((regularizer, beta), ...): one term trains that regulariser at that β, several
    train :class:`~optdepth.losses.depth.SumPenalty` of them (``distill:2+stopping:1``).
    """

    terms: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, text: Any) -> Variant:
        """``"none"``, ``"<regularizer>:<beta>"`` (``"distill:2"``) or several joined by ``+``."""
        if text == BASELINE:
            return cls(())
        if not isinstance(text, str):
            raise ConfigError(f"unknown variant {text!r}: a variant is '{BASELINE}' or"
                              " '<regularizer>:<beta>' (e.g. distill:2)")
        terms = tuple(cls._term(text, part) for part in text.split("+"))
        if len({name for name, _ in terms}) < len(terms):
            raise ConfigError(f"variant {text!r} names a regularizer twice")
        return cls(terms)

    @staticmethod
    def _term(text: str, part: str) -> tuple[str, float]:
        """One ``<regularizer>:<beta>`` of variant ``text``."""
        known = ", ".join(n for n in REGULARIZERS.names() if n != "sum")
        name, sep, beta_text = part.partition(":")
        if not sep or name not in REGULARIZERS.names() or name == "sum":
            raise ConfigError(f"unknown variant {text!r}: a variant is '{BASELINE}' or"
                              f" '<regularizer>:<beta>' (e.g. distill:2), several joined by '+'"
                              f" (distill:2+stopping:1), regularizers: {known}")
        try:
            beta = float(beta_text)
        except ValueError:
            beta = math.nan
        if not 0.0 < beta < math.inf:
            raise ConfigError(f"variant {text!r}: beta must be a finite number > 0 (the baseline"
                              f" is '{BASELINE}')")
        return name, beta

    @property
    def name(self) -> str:
        """The canonical spelling (``distill:2.0`` -> ``distill:2``)."""
        return "+".join(f"{n}:{b:.15g}" for n, b in self.terms) or BASELINE

    @property
    def folder(self) -> str:
        """The name as a folder name (":" is not allowed in Windows file names)."""
        return self.name.replace(":", "_")

    def config(self, base: TrainConfig, seed: int) -> TrainConfig:
        """``base`` trained with this variant's L_depth and ``seed`` (the baseline as the demo's:
        β = 0, the regulariser left at the default)."""
        if not self.terms:
            return base.replace(beta=0.0, seed=seed)
        if len(self.terms) == 1:
            (name, beta), = self.terms
            return base.replace(regularizer=name, beta=beta, seed=seed)
        return base.replace(regularizer="sum", beta=1.0, seed=seed,
                            regularizer_kwargs={"terms": dict(self.terms)})


@dataclass(frozen=True)
class CompareJob:
    """One (variant, seed) run, as a worker process receives it (everything picklable).

    ``data``: the dataset, or None for the worker to load it from ``config.data_dir`` (sending
    55,000 images to each process costs more than reading them).
    """

    variant: str
    seed: int
    config: TrainConfig
    run_dir: Path
    result_path: Path
    threads: int
    data: FashionMNIST | None = None


@dataclass(frozen=True)
class CompareResult:
    """What :func:`compare` measured: ``summary`` is compare.json, ``out`` the folder."""

    out: Path
    summary: dict[str, Any]

    @property
    def paired(self) -> dict[str, Any]:
        """variant -> policy -> {"matched_ratio", "iso_ratio", "final_accuracy_diff", ...}."""
        return self.summary["paired"]

    @property
    def excluded(self) -> list[dict[str, Any]]:
        """The diverged runs: {"variant", "seed", "reason"} each."""
        return self.summary["excluded"]


def _untimed(fitted: dict[str, ExitPolicy]) -> dict[str, dict[str, Any]]:
    """The pipeline's timer for compare: none. A compare measures compute, not wall time: its
    runs share the cores, so their timings would measure each other."""
    return {}


def run_job(job: CompareJob) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it, fit its policies; write and return its record.

    The record holds ``variant``, ``seed``, ``config`` and either ``net`` (the demo's net
    metrics: exit accuracy, decay fit, policies with their test curves) or ``diverged`` (the
    trainer's message). Runs in a worker process, or in the caller's with its threads restored.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(job.threads)
    try:
        data = job.data if job.data is not None else load_fashion_mnist(job.config.data_dir)
        record: dict[str, Any] = {"variant": job.variant, "seed": job.seed,
                                  "config": job.config.to_dict()}
        try:
            evaluation = train_and_evaluate(job.config, job.run_dir, data, progress=False)
        except TrainingError as exc:  # a NaN loss: recorded, excluded by name, never averaged
            record["diverged"] = str(exc)
        else:
            net = net_metrics(evaluation.summary)
            net.update(policy_suite(evaluation, _untimed).metrics(net, "wall_speedup"))
            record["net"] = net
        write_json(job.result_path, record)
        return record
    finally:
        torch.set_num_threads(before)


def compare(out: str | Path, *, model: str = "resnet20", schedule: str = "demo",
            variants: list[str] | None = None, seeds: list[int] = DEFAULT_SEEDS,
            epochs: int | None = None, data_dir: str | None = None,
            data: FashionMNIST | None = None, jobs: int | None = None,
            threads: int | None = None, progress: bool = True) -> CompareResult:
    """Train every variant at every seed and compare them, paired by seed, against the first.

    Args:
        out: the compare folder (resumed if it holds this compare; see the module docstring).
        model: a registered image model; its demo settings apply (optimizer, lr, ...).
        schedule: a demo schedule: ``"quick"``, ``"demo"`` or ``"full"``.
        variants: ``"none"`` or ``"<regularizer>:<beta>"`` each, the reference first (default:
            ``none`` and the model's demo L_depth, ``distill:2`` for the ResNets).
        seeds: at least 2 distinct training seeds.
        epochs: override the schedule's epochs.
        data_dir, data: the Fashion-MNIST folder, or the dataset itself (then sent to every
            worker; for small in-memory data).
        jobs: runs trained at once, each in its own process (default: as many as the cores
            allow at ``threads`` each, at most one per run left to do).
        threads: torch threads per run (default: the cores shared evenly between the jobs).
        progress: a progress bar over the runs.

    Returns:
        :class:`CompareResult`; compare.json and report.md are written to ``out``.

    Raises:
        ConfigError: fewer than 2 seeds, an unknown variant, model or schedule, bad jobs.
        RunDirError: ``out`` holds another compare (or is not ours); nothing is changed.
    """
    start = time.perf_counter()
    out = Path(out)
    chosen = _parse_variants(model, variants)
    seeds = _check_seeds(seeds)
    _workers(1, jobs, threads)  # bad jobs or threads fail before the folder is made
    _check_image_model(model)
    plan = demo_plan(schedule, model, epochs)
    demo_base_config(plan, data_dir, None, model)  # bad settings fail before the folder is made
    with write_lock(out, "compare"):
        dataset = data if data is not None else load_fashion_mnist(data_dir)
        plan = fit_plan_to_data(plan, len(dataset.train))
        # threads=None: each worker sets its own, so another --jobs still resumes these runs
        base = demo_base_config(plan, data_dir, None, model)
        settings = {"model": model, "schedule": dataclasses.asdict(plan),
                    "reference": chosen[0].name, "variants": [v.name for v in chosen],
                    "base_config": base.to_dict()}
        _claim_settings(out, settings)
        todo = [job for job in _jobs(out, chosen, seeds, base)
                if not job.result_path.is_file()]
        workers, per_job = _workers(len(todo), jobs, threads)
        ship = data is not None or workers == 1  # else each worker reads data_dir itself
        todo = [dataclasses.replace(job, threads=per_job, data=dataset if ship else None)
                for job in todo]
        log.info("compare: %d runs to do of %d, %d at a time with %d threads each", len(todo),
                 len(chosen) * len(seeds), workers, per_job)
        _run_jobs(todo, workers, progress)
        records = {(v.name, s): _read_record(_result_path(out, v, s))
                   for v in chosen for s in seeds}
        summary = summarize(records, [v.name for v in chosen], seeds)
        summary.update(model=model, schedule=plan.name, settings=settings,
                       jobs=workers, threads_per_job=per_job, environment=environment(),
                       wall_seconds=time.perf_counter() - start,
                       runs={v.name: {str(s): str(Path("runs") / v.folder / f"seed{s}")
                                      for s in seeds} for v in chosen})
        _write_outputs(out, summary, records)
    return CompareResult(out, summary)


def _write_outputs(out: Path, summary: dict[str, Any],
                   records: dict[tuple[str, int], dict[str, Any]]) -> None:
    """The forest plot, the seed bands, compare.json and report.md, each written atomically."""
    curves = {p: {v: [records[(v, s)]["net"]["policies"][p]["curve"] for s in summary["seeds"]
                      if "net" in records[(v, s)]] for v in summary["variants"]}
              for p in summary["policies"] if p != "oracle"}  # the oracle is a single point
    plot_forest(summary["paired"], out / "forest.png")
    plot_seed_bands(curves, summary["matched_accuracy"]["accuracy"], out / "seed_bands.png")
    write_json(out / "compare.json", summary)
    write_compare_report(summary, out / "report.md")


def _parse_variants(model: str, variants: list[str] | None) -> list[Variant]:
    """The variants, parsed; default: the baseline and the model's demo L_depth."""
    if variants is None:
        settings = demo_model(model)
        variants = [BASELINE, f"{settings.regularizer}:{settings.beta:.15g}"]
    if isinstance(variants, str) or len(variants) < 2:
        raise ConfigError(f"compare needs at least two variants (the reference first), got"
                          f" {variants!r}")
    parsed = [Variant.parse(v) for v in variants]
    names = [v.name for v in parsed]
    if len(set(names)) < len(names):
        raise ConfigError(f"variants must differ, got {names}")
    return parsed


def _check_seeds(seeds: Any) -> list[int]:
    """At least two distinct integer seeds, in the given order."""
    seeds = list(seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be integers, got {seeds!r}")
    if len(set(seeds)) < len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    if len(seeds) < 2:
        raise ConfigError(f"an interval needs at least 2 seeds, got {len(seeds)}: {seeds};"
                          " pass --seeds 0 1 ... (5 or more for a usable interval)")
    return seeds


def _check_image_model(model: str) -> None:
    """compare runs the image demo: a causal LM is refused with a clear message."""
    if isinstance(model, str) and model.startswith("lm"):
        raise ConfigError(f"compare trains the image demo's models; {model!r} is a causal LM")


def _claim_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse a folder that holds another compare; mark a new one and record its settings."""
    path = out / "settings.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{path} is unreadable; restore it or use another folder") from exc
        stored.setdefault("reference", (stored.get("variants") or [None])[0])
        # the variants after the reference may change: each (variant, seed) has its own record
        differ = [key for key in settings if key != "variants" and stored.get(key) != settings[key]]
        if len(differ) > 1 and "base_config" in differ:  # it follows from the others
            differ.remove("base_config")
        if differ:
            shown = "; ".join(f"{k}: {_short(stored.get(k))} there, {_short(settings[k])} asked"
                              for k in differ)
            raise RunDirError(f"{out} holds a compare with other settings ({shown}); results"
                              " are never mixed: use another output folder (nothing was changed)")
        if stored.get("variants") == settings["variants"]:
            return
    else:
        write_marker(out, "compare")
    write_json(path, settings)


def _short(value: Any) -> str:
    """A settings value for a message: a schedule by its name and epochs."""
    if isinstance(value, dict) and "name" in value:
        return f"{value['name']} ({value['epochs']} epochs)"
    return "other training settings" if isinstance(value, dict) else repr(value)


def _result_path(out: Path, variant: Variant, seed: int) -> Path:
    return out / "results" / variant.folder / f"seed{seed}.json"


def _jobs(out: Path, variants: list[Variant], seeds: list[int],
          base: TrainConfig) -> list[CompareJob]:
    """Every (variant, seed) run, seed-major so that early results pair up."""
    return [CompareJob(v.name, s, v.config(base, s), out / "runs" / v.folder / f"seed{s}",
                       _result_path(out, v, s), threads=1)
            for s in seeds for v in variants]


def _cpus() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers(runs: int, jobs: int | None, threads: int | None) -> tuple[int, int]:
    """(processes, torch threads each): the cores shared between at most ``runs`` jobs."""
    for name, value in (("jobs", jobs), ("threads", threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    cpus = _cpus()
    if jobs is None:
        jobs = cpus // threads if threads else cpus
    jobs = max(1, min(jobs, runs))
    return jobs, threads or max(1, cpus // jobs)


def _run_jobs(todo: list[CompareJob], workers: int, progress: bool) -> None:
    """Run the jobs: in this process for one worker, else in spawned processes (fork would copy
    torch's thread pools). Each job writes its own record, so a kill loses only runs in flight;
    the first error cancels the jobs not started and is raised."""
    bar = tqdm(total=len(todo), desc="compare runs", unit="run", disable=not progress)
    try:
        if workers == 1:
            for job in todo:
                _log_record(run_job(job))
                bar.update()
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(run_job, job) for job in todo]
            try:
                for future in as_completed(futures):
                    _log_record(future.result())
                    bar.update()
            finally:
                for future in futures:
                    future.cancel()
    finally:
        bar.close()


def _log_record(record: dict[str, Any]) -> None:
    if "diverged" in record:
        log.warning("%s seed %d diverged, excluded: %s", record["variant"], record["seed"],
                    record["diverged"])
    else:
        log.info("%s seed %d: final exit %.2f%%, rho %.3f", record["variant"], record["seed"],
                 100 * record["net"]["exit_accuracy"][-1], record["net"]["rho"])


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}; delete it to redo that run") from exc


def summarize(records: dict[tuple[str, int], dict[str, Any]], variants: list[str],
              seeds: list[int]) -> dict[str, Any]:
    """compare.json's measurements from the runs' records.

    Args:
        records: (variant, seed) -> the record :func:`run_job` wrote, for every pair.
        variants: the variant names, the reference first.
        seeds: the seeds, in order.

    Returns:
        ``seeds``, ``variants``, ``per_seed`` (converged runs only), ``paired`` (each later
        variant against the first, on the seeds both converged on), ``excluded`` (diverged runs
        by name), ``matched_accuracy`` (the level and its rule), ``policies`` and the rules.
    """
    converged = {key: r["net"] for key, r in records.items() if "net" in r}
    excluded = [{"variant": v, "seed": s, "reason": records[(v, s)]["diverged"]}
                for v in variants for s in seeds if "diverged" in records[(v, s)]]
    level = (min(net["exit_accuracy"][-1] for net in converged.values()) - ISO_TOLERANCE
             if converged else None)
    policies = list(next(iter(converged.values()))["policies"]) if converged else []
    per_seed = {v: [_seed_entry(s, converged[(v, s)], level) for s in seeds if (v, s) in converged]
                for v in variants}
    paired = {v: _paired(per_seed[variants[0]], per_seed[v], policies) for v in variants[1:]}
    per_variant = {v: _variant_stats(per_seed[v], policies) for v in variants}
    return {"seeds": list(seeds), "variants": list(variants), "reference": variants[0],
            "policies": policies, "per_seed": per_seed, "paired": paired,
            "per_variant": per_variant, "excluded": excluded,
            "matched_accuracy": {"accuracy": level, "rule": MATCHED_RULE},
            "iso_accuracy_rule": ISO_RULE,
            "statistics": "median of the per-seed paired values; ci95: percentile bootstrap of"
                          " the median (10,000 resamples of the seeds, seed 0); p_value:"
                          " two-sided Wilcoxon signed-rank test (ratios as log-ratios against"
                          " 0), which cannot go below p_floor = 2 / 2^n for n seeds"}


def _seed_entry(seed: int, net: dict[str, Any], level: float) -> dict[str, Any]:
    """One converged run's entry of ``per_seed``; a matched compute is None where the policy's
    test curve never reaches ``level``."""
    records = net["policies"]
    return {"seed": seed, "final_accuracy": net["exit_accuracy"][-1], "rho": net["rho"],
            "iso_compute": {p: r["iso_accuracy"]["mean_compute"] for p, r in records.items()},
            "matched_compute": {p: compute_at_accuracy(r["curve"], level)
                                for p, r in records.items()},
            "iso_accuracy": {p: r["iso_accuracy"]["accuracy"] for p, r in records.items()},
            "oracle_gap_closed": net["policy_comparison"]["oracle_gap_closed"]}


def _spread(values: list[float]) -> dict[str, Any]:
    """{"median", "ci95"} of one variant's per-seed values (ci95 None below 2 seeds)."""
    if not values:
        return {"median": None, "ci95": None, "n": 0}
    ci = list(bootstrap_median_interval(values)) if len(values) >= 2 else None
    return {"median": float(np.median(values)), "ci95": ci, "n": len(values)}


def _variant_stats(entries: list[dict[str, Any]], policies: list[str]) -> dict[str, Any]:
    """One variant's own figures over its seeds (not paired): the final exit's accuracy, each
    policy's compute and test accuracy at iso-accuracy, and the share of the gap from the best
    threshold rule to the oracle that the best stopping policy closes (``oracle_gap_closed``
    of :func:`~optdepth.offline.policy_evaluation.gap_summary`, where defined); median and
    bootstrap interval."""
    closed = [e["oracle_gap_closed"] for e in entries if e["oracle_gap_closed"] is not None]
    return {"final_accuracy": _spread([e["final_accuracy"] for e in entries]),
            "iso_compute": {p: _spread([e["iso_compute"][p] for e in entries]) for p in policies},
            "iso_accuracy": {p: _spread([e["iso_accuracy"][p] for e in entries]) for p in policies},
            "oracle_gap_closed": _spread(closed)}


def _paired(reference: list[dict[str, Any]], entries: list[dict[str, Any]],
            policies: list[str]) -> dict[str, dict[str, Any]]:
    """policy -> STATs of one variant against the reference, over the seeds both have."""
    ref = {e["seed"]: e for e in reference}
    pairs = [(ref[e["seed"]], e) for e in entries if e["seed"] in ref]
    seeds = [e["seed"] for _, e in pairs]
    accuracy = paired_stat([e["final_accuracy"] - r["final_accuracy"] for r, e in pairs], seeds,
                           "diff")
    rho = paired_stat([e["rho"] - r["rho"] for r, e in pairs], seeds, "diff")
    out = {}
    for policy in policies:
        out[policy] = {"matched_ratio": _ratio(pairs, "matched_compute", policy),
                       "iso_ratio": _ratio(pairs, "iso_compute", policy),
                       "final_accuracy_diff": accuracy, "rho_diff": rho}
    return out


def _ratio(pairs: list[tuple[dict, dict]], key: str, policy: str) -> dict[str, Any]:
    """The STAT of variant / reference compute, on the seeds where both have one."""
    kept = [(e["seed"], e[key][policy] / r[key][policy]) for r, e in pairs
            if r[key][policy] is not None and e[key][policy] is not None]
    return paired_stat([q for _, q in kept], [s for s, _ in kept], "ratio")
