"""The jobs a sweep hands to an executor: train an FP32 checkpoint, run a cell, deploy targets on a stored
run. Each is a small picklable callable that loads what it needs in whatever process runs it (plugins, the
data set, the checkpoint from the cache) and returns its result to the driver, the only writer of the store.
Each job sets the recipe's thread count itself, so a result never depends on ``--jobs`` or the executor.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpqbench.pipeline.preflight import Plan, load_data
from mpqbench.pipeline.record import RunRecord, now
from mpqbench.pipeline.spec import Component, RunSpec
from mpqbench.pipeline.stages import execute, redeploy
from mpqbench.train.checkpoints import Checkpoint
from mpqbench.train.loop import resolve_device

progress_log = logging.getLogger("mpqbench.progress")


@functools.lru_cache(maxsize=4)
def worker_registry(disabled: frozenset[str]):
    """The plugins, loaded once per process."""
    from mpqbench.plugin.registry import load_registry

    return load_registry(set(disabled))


@dataclass(frozen=True)
class CheckpointJob:
    """Train one FP32 checkpoint into the cache; returns its metadata."""

    model: str
    spec: RunSpec
    """A cell that needs the checkpoint (its data set, recipe and FP32 seed)."""
    cache: str
    data_root: str | None
    device: str
    disabled: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return f"FP32 {self.model}/{self.spec.dataset} seed {self.seed}"

    @property
    def seed(self) -> int:
        return self.spec.recipe.fp32_seed_for(self.spec.seed)

    def __call__(self) -> dict:
        registry = worker_registry(self.disabled)
        torch.set_num_threads(self.spec.recipe.threads)
        data = load_data(registry, self.spec, self.data_root, Path(self.cache))
        checkpoint = Checkpoint(self.model, data, self.spec.recipe, self.seed, Path(self.cache))

        def progress(epoch: int, epochs: int, parts: dict) -> None:
            progress_log.info("%s epoch %d/%d", self.label, epoch, epochs,
                              extra={"progress": (self.label, epoch, epochs)})

        return checkpoint.train(registry.model(self.model), data, resolve_device(self.device), progress)


@dataclass(frozen=True)
class CellJob:
    """Run one cell; returns its record and artifacts."""

    spec: RunSpec
    plan: Plan
    run_id: str
    label: str
    fingerprint: dict = field(hash=False, compare=False)
    targets: tuple[Component, ...] = ()
    cache: str = ""
    data_root: str | None = None
    deploy_images: int = 256
    device: str = "cpu"
    disabled: frozenset[str] = frozenset()

    def new_record(self) -> RunRecord:
        return RunRecord(id=self.run_id, label=self.label, spec=self.spec.identity(), plugin=self.fingerprint,
                         started=now())

    def __call__(self) -> tuple[RunRecord, dict[str, bytes]]:
        registry = worker_registry(self.disabled)
        torch.set_num_threads(self.spec.recipe.threads)
        record = self.new_record()
        artifacts = execute(record, self.spec, self.plan, registry, Path(self.cache), targets=list(self.targets),
                            data_root=self.data_root, deploy_images=self.deploy_images, device=self.device)
        return record, artifacts


@dataclass(frozen=True)
class DeployJob:
    """Deploy targets on a finished run's stored integer model; returns the new target sections."""

    spec: RunSpec
    run_id: str
    npz: bytes = field(repr=False)
    targets: tuple[Component, ...]
    cache: str
    data_root: str | None
    images: int
    disabled: frozenset[str] = frozenset()

    def __call__(self) -> dict[str, dict]:
        registry = worker_registry(self.disabled)
        torch.set_num_threads(self.spec.recipe.threads)
        data = load_data(registry, self.spec, self.data_root, Path(self.cache))
        inputs = data.test.x[:self.images].numpy()
        return redeploy(self.npz, inputs, registry, list(self.targets), self.run_id, Path(self.cache))
