"""The driver: expands the grid, runs the preflight, decides what is left to do, hands jobs to an executor
(FP32 checkpoints first, as their own jobs), and is the only writer of the store.

What a rerun does with each cell: a finished record is kept (targets it lacks are deployed on its stored
integer model); a failed one is kept and reported unless ``--retry-failed``; an unreadable one is set aside
and the cell redone; a missing or corrupt FP32 checkpoint is (re)trained. ``--dry-run`` prints all of this
and runs nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from tabulate import tabulate

from mpqbench.errors import WorkerDied
from mpqbench.pipeline.config import SweepConfig
from mpqbench.pipeline.jobs import CellJob, CheckpointJob, DeployJob
from mpqbench.pipeline.preflight import load_data, preflight
from mpqbench.pipeline.record import RunRecord, now
from mpqbench.pipeline.spec import Component
from mpqbench.pipeline.store import RunStore
from mpqbench.system.environment import environment
from mpqbench.train.checkpoints import Checkpoint
from mpqbench.train.loop import resolve_device

log = logging.getLogger("mpqbench.driver")


@dataclass
class Outcome:
    """What the sweep did with one cell (for the summary lines)."""

    id: str
    label: str
    status: str  # done | failed | cached | kept-failed
    error: str | None = None
    targets: dict[str, str] = field(default_factory=dict)
    """Target -> one line, for targets that did not finish (unavailable or failed)."""


def _target_problems(record: RunRecord) -> dict[str, str]:
    problems = {}
    for name, section in record.targets.items():
        if section.get("status") != "done":
            text = section.get("reason") or section.get("error") or ""
            problems[name] = f"{section.get('status')}: {text.strip().splitlines()[0] if text.strip() else ''}"
    return problems


def _current(section: dict | None, component: Component, fingerprint: dict) -> bool:
    """A finished section from the same target code with the same parameters."""
    return bool(section) and section.get("status") == "done" and section.get("params") == component.kwargs \
        and section.get("plugin") == fingerprint


class _ProgressLog(logging.Handler):
    """Turns the jobs' ``mpqbench.progress`` records (FP32 epochs) into progress-bar tasks."""

    def __init__(self, progress: Progress):
        super().__init__()
        self.progress, self.tasks = progress, {}

    def emit(self, record: logging.LogRecord) -> None:
        label, done, total = record.progress
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(f"{label}: epochs", total=total)
        self.progress.update(self.tasks[label], completed=done)


def sweep(cfg: SweepConfig, registry, cache: Path, disabled: frozenset[str] = frozenset(), *,
          console: Console | None = None, show_progress: bool = True, dry_run: bool = False) -> list[Outcome]:
    """Run every cell of the grid that has no finished record; returns one outcome per cell."""
    resolve_device(cfg.device)
    specs = cfg.expand(registry)
    targets = tuple(cfg.target_components(registry))
    plans, refused = preflight(specs, registry, cache, cfg.data_root, cfg.keep_going)
    store = RunStore(cfg.out)
    if not dry_run:
        store.check_writable()
    chosen = cfg.executor or ("process" if cfg.jobs > 1 else "local")  # name:key=value, as a method's parameters
    chosen = Component.parse(chosen, lambda name: registry.get("executor", name), cfg.params.get(chosen.split(":")[0]))
    executor = registry.get("executor", chosen.name)
    common = dict(cache=str(cache), data_root=cfg.data_root, disabled=frozenset(disabled))
    outcomes: list[Outcome] = []
    cells: list[CellJob] = []
    deploys: list[DeployJob] = []
    for spec in specs:
        method = registry.method(spec.method.name)
        fingerprint = registry.fingerprint(method)
        run_id, label = spec.run_id(fingerprint), spec.method.label(method.params)
        cell = CellJob(spec, plans.get(spec), run_id, label, fingerprint, targets, deploy_images=cfg.deploy_images,
                       device=cfg.device, cache=common["cache"], data_root=cfg.data_root, disabled=common["disabled"])
        if spec in refused:
            record = cell.new_record()
            record.status, record.error, record.finished = "failed", f"UserError: {refused[spec]}", now()
            if not dry_run:
                store.write(record)
            outcomes.append(Outcome(run_id, label, "failed", record.error))
            continue
        record = store.load(run_id, quarantine=not dry_run)
        if record is not None and record.done:
            todo = tuple(t for t in targets if not _current(record.targets.get(t.name), t,
                                                              registry.fingerprint(registry.target(t.name))))
            artifact = store.artifact(run_id, "integer_model.npz")
            if todo and "int_top1" in record.metrics and artifact.exists():
                deploys.append(DeployJob(spec, run_id, artifact.read_bytes(), todo, images=cfg.deploy_images,
                                         **common))
            outcomes.append(Outcome(run_id, label, "cached", targets=_target_problems(record)))
        elif record is not None and record.status == "failed" and not cfg.retry_failed:
            outcomes.append(Outcome(run_id, label, "kept-failed", record.error))
        else:
            cells.append(cell)
    checkpoints = _checkpoints(cells, registry, cache, cfg)
    if dry_run:
        _print_plan(specs, cells, deploys, checkpoints, outcomes)
        return outcomes
    _run(executor, chosen.kwargs, cfg, store, cells, deploys, checkpoints, outcomes, console, show_progress)
    return outcomes


def _checkpoints(cells: list[CellJob], registry, cache: Path, cfg: SweepConfig) -> dict[str, tuple]:
    """Checkpoint key -> (Checkpoint, problem or None, a CheckpointJob, the run ids needing it)."""
    found = {}
    for cell in cells:
        spec = cell.spec
        data = load_data(registry, spec, cfg.data_root, cache)
        ckpt = Checkpoint(spec.model, data, spec.recipe, spec.recipe.fp32_seed_for(spec.seed), cache)
        if ckpt.key in found:
            found[ckpt.key][3].add(cell.run_id)
        else:
            problem = ckpt.problem()
            if problem and problem != "missing":
                log.warning("%s: %s; it is trained again", ckpt.label, problem)
            found[ckpt.key] = (ckpt, problem, CheckpointJob(spec.model, spec, str(cache), cfg.data_root, cfg.device,
                                                            cell.disabled), {cell.run_id})
    return found


def _print_plan(specs, cells, deploys, checkpoints, outcomes) -> None:
    todo = {c.run_id for c in cells}
    rows = [(c.run_id, c.label, c.spec.model, c.spec.dataset, c.spec.budget.text if c.spec.budget else "-",
             c.spec.seed, "to run") for c in cells]
    rows += [(o.id, o.label, "", "", "", "", {"cached": "done", "kept-failed": "failed (kept; --retry-failed)",
                                                "failed": f"refused: {o.error}"}[o.status])
             for o in outcomes if o.id not in todo]
    print(tabulate(rows, headers=["run", "method", "model", "dataset", "budget", "seed", "state"]))
    for ckpt, problem, _, _ in checkpoints.values():
        print(f"{ckpt.label}: {'to train (' + problem + ')' if problem else 'cached'}")
    print(f"{len(specs)} cells: {len(cells)} to run, {len(deploys)} finished runs to deploy on targets, "
          f"{sum(1 for c in checkpoints.values() if c[1])} FP32 checkpoints to train")


def _run(executor, params, cfg, store: RunStore, cells, deploys, checkpoints, outcomes, console,
         show_progress) -> None:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    progress_logger = logging.getLogger("mpqbench.progress")
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as progress:
        handler = _ProgressLog(progress)
        progress_logger.addHandler(handler)
        progress_logger.setLevel(logging.INFO)
        progress_logger.propagate = False
        try:
            train = [entry for entry in checkpoints.values() if entry[1]]
            blocked: dict[str, str] = {}
            for i, result in executor.run([entry[2] for entry in train], cfg.jobs, params):
                if isinstance(result, Exception):
                    error = f"FP32 checkpoint failed: {type(result).__name__}: {result}"
                    blocked.update(dict.fromkeys(train[i][3], error))
            for cell in (c for c in cells if c.run_id in blocked):
                outcomes.append(_finish(cell, RuntimeError(blocked[cell.run_id]), store))
            jobs = [*(c for c in cells if c.run_id not in blocked), *deploys]
            task = progress.add_task(f"{len(cells)} runs, {len(deploys)} deployments", total=len(jobs))
            running: dict[int, str] = {}

            def started(i: int) -> None:
                running[i] = getattr(jobs[i], "label", "")
                progress.update(task, description="running: " + "; ".join(
                    jobs[k].spec.describe(running[k]) if isinstance(jobs[k], CellJob) else f"deploy {jobs[k].run_id}"
                    for k in sorted(running)))

            for i, result in executor.run(jobs, cfg.jobs, params, on_start=started):
                running.pop(i, None)
                outcome = _finish(jobs[i], result, store)
                outcomes[:] = [o for o in outcomes if o.id != outcome.id] + [outcome]
                progress.advance(task)
        finally:
            progress_logger.removeHandler(handler)
            progress_logger.propagate = True


def _finish(job, result, store: RunStore) -> Outcome:
    """Write what a job returned (the driver is the only writer) and say what happened."""
    if isinstance(job, DeployJob):
        record = store.load(job.run_id)
        if isinstance(result, Exception):
            return Outcome(job.run_id, record.label if record else job.run_id, "cached",
                           targets={t.name: f"failed: {type(result).__name__}: {result}" for t in job.targets})
        record.targets.update(result)
        store.write(record)
        return Outcome(record.id, record.label, "cached", targets=_target_problems(record))
    if isinstance(result, Exception):
        record = job.new_record()
        record.status, record.finished = "failed", now()
        record.error = f"worker died: {result}" if isinstance(result, WorkerDied) else str(result) \
            if isinstance(result, RuntimeError) else f"{type(result).__name__}: {result}"
        record.environment = environment()
    else:
        record, artifacts = result
        for name, data in artifacts.items():
            store.write_artifact(record.id, name, data)
    store.write(record)
    return Outcome(record.id, record.label, record.status, record.error, _target_problems(record))
