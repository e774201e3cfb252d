"""pytest plugin for method and target authors (entry point ``pytest11``: active once mpqbench is
installed). Fixtures build a real run context on a tiny model and data set in seconds:

    def test_my_method(mpqbench_run):
        run = mpqbench_run("my-method", budget="size_mb=w4")
        policy = run.method.search(run)
        assert run.budget.met(run.cost, policy)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpqbench.budget import parse_budgets
from mpqbench.config import Component, RunSpec
from mpqbench.context import RunContext
from mpqbench.recipe import get_recipe
from mpqbench.registry import Registry, load_registry
from mpqbench.runner import build_context

TINY = dict(model="small-cnn", dataset="digits", recipe="tiny")


def make_run(registry: Registry, cache: Path, method: str, *, params: str = "", model: str = TINY["model"],
             dataset: str = TINY["dataset"], budget: str | None = None, seed: int = 0,
             recipe: str = TINY["recipe"], first_last: int | None = 8, **recipe_changes) -> RunContext:
    """A RunContext for ``method`` (with ``params`` as on the command line, e.g. ``"beta=1:bits=4"``)."""
    text = method + (":" + params if params else "")
    component = Component.parse(text, registry.method)
    spec = RunSpec(component, model, dataset, parse_budgets(budget)[0] if budget else None, seed,
                   get_recipe(recipe).override(**recipe_changes), first_last)
    return build_context(spec, registry, cache)


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
