"""What the cluster executors (``ray``, ``slurm``) share: the resources a job asks for, its result made safe to
send back, a check that a node runs the driver's method code, and FP32 checkpoint files carried to a node
whose cache folder lacks them.

A job (:mod:`mpqbench.pipeline.jobs`) runs wherever the cluster puts it and loads what it needs there: the
plugins, the data set, and the FP32 checkpoint from the cache folder the driver names (``job.cache``). On one
machine, or with that folder on shared storage, the checkpoint a checkpoint job wrote is simply there; on a
node with a cache of its own it is not, so an executor may hand a cell the checkpoint's files
(:func:`checkpoint_files` on the node that trained it or on the driver, :func:`restore` on the cell's node).
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

from mpqbench.errors import UserError
from mpqbench.pipeline.jobs import CellJob, CheckpointJob, DeployJob, worker_registry
from mpqbench.system.paths import write_atomic

log = logging.getLogger("mpqbench.executor")

GPU_TARGETS = frozenset({"cuda"})
"""Targets that deploy on a CUDA device: a job deploying to one asks for a GPU."""


def threads(job) -> int:
    """CPUs a job asks for: its recipe's torch threads (every job sets them itself)."""
    recipe = getattr(getattr(job, "spec", None), "recipe", None)
    return int(recipe.threads) if recipe else 1


def needs_gpu(job, cluster_has_gpus: bool) -> bool:
    """A job trains on CUDA (``--device cuda``, or ``auto`` on a cluster that has GPUs) or deploys to a CUDA
    target. ``auto`` follows the cluster, not the driver: a CPU-only head may drive GPU nodes."""
    device = getattr(job, "device", "cpu")
    if isinstance(job, (CheckpointJob, CellJob)) and (device.startswith("cuda") or
                                                       (device == "auto" and cluster_has_gpus)):
        return True
    return any(t.name in GPU_TARGETS for t in getattr(job, "targets", ()))


def describe(job) -> str:
    """A short name for the job (process titles, logs)."""
    if isinstance(job, CellJob):
        return f"cell {job.run_id}"
    if isinstance(job, DeployJob):
        return f"deploy {job.run_id}"
    if isinstance(job, CheckpointJob):
        return f"fp32 {job.model}/{job.spec.dataset} s{job.seed}"
    return type(job).__name__


def portable(exc: BaseException) -> Exception:
    """The job's exception if it survives pickling (so the record names its type as a local run would), else
    a RuntimeError carrying its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def check_code(job) -> None:
    """A cell's run id hashes the driver's method code; refuse to run it on a node with other code, whose
    record would carry a run id its code did not earn."""
    if not isinstance(job, CellJob):
        return
    registry = worker_registry(job.disabled)
    here = registry.fingerprint(registry.method(job.spec.method.name))
    if here != job.fingerprint:
        raise UserError(f"this node has other code for method {job.spec.method.name} ({here}) than the driver "
                        f"({job.fingerprint}): install the same mpqbench and plugins on every node")


def checkpoint_identity(job) -> tuple:
    """What names one FP32 checkpoint in a sweep, for a checkpoint job or a cell: model, data set, FP32 seed
    and the recipe's FP32 fields (a sweep has one data root)."""
    recipe = job.spec.recipe
    model = job.model if isinstance(job, CheckpointJob) else job.spec.model
    return model, job.spec.dataset, recipe.fp32_seed_for(job.spec.seed), json.dumps(recipe.fp32_key(),
                                                                                     sort_keys=True)


def trained_files(cache: str, meta: dict) -> dict[str, bytes]:
    """The files a checkpoint job wrote (weights and sidecar), by name, from its returned metadata."""
    folder = Path(cache) / "checkpoints"
    return {p.name: p.read_bytes() for p in sorted(folder.glob(f"*-{meta['key']}.*")) if not p.name.startswith(".")}


def cached_files(cache: str, identity: tuple) -> dict[str, bytes]:
    """The files of a checkpoint already in this machine's cache (trained by an earlier sweep), found by its
    sidecar; empty when there is none."""
    model, dataset, seed, fp32_key = identity
    folder = Path(cache) / "checkpoints"
    files = {}
    for sidecar in sorted(folder.glob(f"{model}-{dataset}-s{seed}-*.json")):
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if json.dumps(meta.get("recipe"), sort_keys=True) == fp32_key and sidecar.with_suffix(".pt").exists():
            files.update(trained_files(cache, meta))
    return files


def restore(files: dict[str, bytes] | None, cache: str) -> None:
    """Write checkpoint files into this node's cache where they are missing or differ (atomically: cells on
    one node may restore the same file at once)."""
    folder = Path(cache) / "checkpoints"
    for name, data in (files or {}).items():
        path = folder / name
        try:
            if path.read_bytes() == data:
                continue
        except OSError:
            pass
        write_atomic(path, data)
        log.info("restored FP32 checkpoint file %s from the driver", path)
