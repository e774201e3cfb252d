"""Running a whole grid: skipping finished runs, parallel worker processes, progress, resumability."""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mpqbench.config import Component, RunSpec, SweepConfig
from mpqbench.cost import CostModel
from mpqbench.registry import Registry, load_registry
from mpqbench.runner import deploy_missing, execute, fingerprint, fixed_layers, load_data
from mpqbench.store import RunStore
from mpqbench.train import resolve_device

log = logging.getLogger("mpqbench.sweep")


@dataclass(frozen=True)
class Job:
    spec: RunSpec
    targets: tuple[Component, ...]
    out: str
    cache: str
    data_root: str | None
    deploy_images: int
    device: str


_REGISTRY: Registry | None = None


def _worker_init(threads: int, disabled: tuple[str, ...]) -> None:
    global _REGISTRY
    torch.set_num_threads(threads)
    _REGISTRY = load_registry(set(disabled))


def _run_job(job: Job) -> dict:
    record = execute(job.spec, _REGISTRY, RunStore(job.out), list(job.targets), Path(job.cache), job.data_root,
                     job.deploy_images, job.device)
    return _summary(record)


def _summary(record: dict) -> dict:
    return {"id": record["id"], "label": record["label"], "status": record["status"],
            "error": record.get("error")}


def sweep(cfg: SweepConfig, registry: Registry, cache: Path, disabled: set[str] = frozenset(),
          show_progress: bool = True) -> list[dict]:
    """Run every cell of the grid that has no finished record; returns one summary per cell.

    Finished runs are skipped (deploying only targets they lack); failed runs are retried. With
    ``cfg.jobs > 1`` cells run in separate processes sharing the cores (threads per worker = cores /
    jobs); each worker writes its own records, atomically, so an interrupted sweep loses only the
    cells in flight.
    """
    resolve_device(cfg.device)
    specs = cfg.expand(registry)
    targets = tuple(cfg.target_components(registry))
    check_inputs(specs, registry, cache, cfg.data_root)
    store = RunStore(cfg.out)
    summaries, pending = [], []
    for spec in specs:
        run_id = spec.run_id(fingerprint(registry.method(spec.method.name)))
        record = store.load(run_id)
        if record and record.get("status") == "done":
            deploy_missing(record, registry, store, list(targets), cache, cfg.data_root, cfg.deploy_images)
            summaries.append({**_summary(record), "status": "cached"})
        else:
            pending.append(Job(spec, targets, str(cfg.out), str(cache), cfg.data_root, cfg.deploy_images,
                               cfg.device))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(f"{len(pending)} runs to do, {len(summaries)} done", total=len(pending))
        if cfg.jobs <= 1:
            for job in pending:
                progress.update(task, description=_describe(job))
                summaries.append(_summary(execute(job.spec, registry, store, list(targets), cache, cfg.data_root,
                                                  cfg.deploy_images, cfg.device)))
                progress.advance(task)
        else:
            threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(cfg.jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads, tuple(disabled))) as pool:
                futures = {pool.submit(_run_job, job): job for job in pending}
                for future in as_completed(futures):
                    summaries.append(future.result())
                    progress.update(task, description=_describe(futures[future]))
                    progress.advance(task)
    return summaries


def check_inputs(specs: list[RunSpec], registry: Registry, cache: Path, data_root: str | None) -> None:
    """Fail before any run starts (one clear line) on a missing data set or an infeasible budget."""
    checked = set()
    for spec in specs:
        key = (spec.model, spec.dataset, spec.budget, spec.first_last_bits)
        if key in checked:
            continue
        checked.add(key)
        data = load_data(registry, spec, data_root, cache)
        if spec.budget is None:
            continue
        entry = registry.model(spec.model)
        model = entry.build(data.shape)
        layout = entry.layout(model)
        cost = CostModel.measure(model, layout, (data.shape.channels, data.shape.size, data.shape.size))
        spec.budget.resolve(cost, fixed_layers(layout, spec.first_last_bits))


def _describe(job: Job) -> str:
    s = job.spec
    budget = f" {s.budget.text}" if s.budget else ""
    return f"{s.method.name} {s.model}/{s.dataset}{budget} seed {s.seed}"
