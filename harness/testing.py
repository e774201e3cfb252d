"""pytest plugin for method and target authors (entry point ``pytest11``: active once mpqbench is
installed). Fixtures build a real run on a tiny model and data set in seconds:

    def test_my_method(mpqbench_run, mpqbench_cell):
        run = mpqbench_run("my-method", budget="size_mb=w4")       # a RunContext, to call stages by hand
        policy = run.method.search(run)
        assert run.budget.met(run.cost, policy)
        record, artifacts = mpqbench_cell("my-method", budget="size_mb=w4")   # the whole pipeline
        assert record.status == "done" and record.budget["met"]
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpqbench.cost.budget import parse_budgets
from mpqbench.pipeline.context import RunContext
from mpqbench.pipeline.jobs import CellJob, CheckpointJob
from mpqbench.pipeline.preflight import load_data, preflight
from mpqbench.pipeline.record import RunRecord
from mpqbench.pipeline.spec import Component, RunSpec
from mpqbench.pipeline.stages import build_context, execute
from mpqbench.plugin.registry import Registry, load_registry
from mpqbench.train.checkpoints import Checkpoint
from mpqbench.train.recipe import get_recipe

TINY = dict(model="small-cnn", dataset="digits", recipe="tiny")


def make_spec(registry: Registry, method: str, *, params: str = "", model: str = TINY["model"],
              dataset: str = TINY["dataset"], budget: str | None = None, seed: int = 0, recipe: str = TINY["recipe"],
              first_last: int | None = 8, **recipe_changes) -> RunSpec:
    """A RunSpec for ``method`` (with ``params`` as on the command line, e.g. ``"beta=1:bits=4"``)."""
    component = Component.parse(method + (":" + params if params else ""), registry.method)
    registry.method(component.name).check(component.kwargs)
    kinds = registry.tables["budget kind"]
    return RunSpec(component, model, dataset, parse_budgets(budget, kinds)[0] if budget else None, seed,
                   get_recipe(recipe).override(**recipe_changes), first_last)


def _ready(registry: Registry, cache: Path, spec: RunSpec):
    """The spec's preflight plan, with its FP32 checkpoint trained into ``cache`` if it is not there."""
    plans, _ = preflight([spec], registry, cache, None)
    job = CheckpointJob(spec.model, spec, str(cache), None, "cpu")
    data = load_data(registry, spec, None, cache)
    if Checkpoint(spec.model, data, spec.recipe, job.seed, cache).problem():
        job()
    return plans[spec]


def make_run(registry: Registry, cache: Path, method: str, **kwargs) -> RunContext:
    """A RunContext for ``method`` (keyword arguments as :func:`make_spec`)."""
    spec = make_spec(registry, method, **kwargs)
    return build_context(spec, _ready(registry, cache, spec), registry, cache)


def run_cell(registry: Registry, cache: Path, method: str, *, targets: tuple[str, ...] = (),
             **kwargs) -> tuple[RunRecord, dict[str, bytes]]:
    """The whole pipeline of one cell (search, train, finalize, export, integer evaluation, targets), as the
    driver runs it, without a store: the record and the artifacts (``integer_model.npz``)."""
    spec = make_spec(registry, method, **kwargs)
    plan = _ready(registry, cache, spec)
    m = registry.method(spec.method.name)
    fingerprint = registry.fingerprint(m)
    record = CellJob(spec, plan, spec.run_id(fingerprint), spec.method.label(m.params), fingerprint).new_record()
    artifacts = execute(record, spec, plan, registry, cache, data_root=None, deploy_images=256, device="cpu",
                        targets=[Component.parse(t, registry.target) for t in targets])
    return record, artifacts


@pytest.fixture(scope="session")
def mpqbench_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the session (tiny FP32 checkpoints are trained once)."""
    return tmp_path_factory.mktemp("mpqbench-cache")


@pytest.fixture(scope="session")
def mpqbench_registry() -> Registry:
    return load_registry()


@pytest.fixture
def mpqbench_run(mpqbench_registry, mpqbench_cache):
    """``mpqbench_run(method, params=..., budget=..., model=..., dataset=..., seed=...)`` -> RunContext."""

    def factory(method: str, **kwargs) -> RunContext:
        return make_run(mpqbench_registry, mpqbench_cache, method, **kwargs)

    return factory


@pytest.fixture
def mpqbench_cell(mpqbench_registry, mpqbench_cache):
    """``mpqbench_cell(method, targets=(...), params=..., budget=...)`` -> (RunRecord, artifacts)."""

    def factory(method: str, **kwargs):
        return run_cell(mpqbench_registry, mpqbench_cache, method, **kwargs)

    return factory
