"""Sweep configuration (command-line flags or a TOML file), validated, and its expansion into RunSpecs.

The TOML file takes the flags' keys, spelt either way (``first-last`` or ``first_last``), plus the tables
``[recipe_overrides]`` (recipe fields, as ``--set``), ``[params.<plugin>]`` (a method's or target's
parameters for every use of it) and ``[method_budgets]`` (a method's own budgets, replacing ``budgets`` for
that method only: HAWQ-V3's {4, 8} bits at ``size_mb=w5,w6,w7`` beside methods at 2-3 bits; keyed by the plugin's
name, or by the method exactly as written in ``methods``, e.g. ``"uniform:a=8"``, which wins). List keys
take a TOML list or one comma-separated string. Every ill-typed value is reported, one line each, before
anything runs (see ``examples/sweep.toml``). A suite (:mod:`mpqbench.suites`) is such a file shipped with the
package.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mpqbench.cost.budget import Budget, parse_budgets
from mpqbench.errors import UserError
from mpqbench.pipeline.spec import Component, RunSpec
from mpqbench.plugin.params import split_component
from mpqbench.train.recipe import Recipe, get_recipe

LIST_KEYS = ("methods", "targets", "models", "datasets", "budgets")


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=lambda: ["fp32", "uniform:w=8"])
    targets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["resnet20"])
    datasets: list[str] = field(default_factory=lambda: ["fashion-mnist"])
    budgets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    recipe: str = "full"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    method_budgets: dict[str, list[str]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_last: str = "8"
    out: str = "results"
    jobs: int = 1
    executor: str = ""
    data_root: str | None = None
    deploy_images: int = 256
    device: str = "auto"
    retry_failed: bool = False
    keep_going: bool = False

    @classmethod
    def from_toml(cls, path: str) -> "SweepConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read config {path}: {exc}") from None
        cfg = cls()
        errors = []
        known = {f.name for f in fields(cls)}
        for raw_key, value in data.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                errors.append(f"unknown key {raw_key!r} (known: {', '.join(sorted(known))})")
                continue
            try:
                setattr(cfg, key, _typed(key, value))
            except ValueError as exc:
                errors.append(f"{raw_key}: {exc}")
        if errors:
            raise UserError(f"config {path}:\n  " + "\n  ".join(errors))
        return cfg

    @classmethod
    def from_suite(cls, name: str) -> "SweepConfig":
        """The configuration of a shipped suite (``mpqbench run --suite NAME``)."""
        from mpqbench import suites

        return cls.from_toml(str(suites.path(name)))

    def set(self, key: str, value: Any) -> None:
        """Set a field from a command-line value (already split), validated like the TOML file. ``--budgets``
        replaces every budget of the file, a method's own (``method_budgets``) included: what is passed runs."""
        try:
            setattr(self, key, _typed(key, value))
        except ValueError as exc:
            raise UserError(f"--{key.replace('_', '-')}: {exc}") from None
        if key == "budgets":
            self.method_budgets = {}

    def get_recipe(self) -> Recipe:
        return get_recipe(self.recipe).override(**self.recipe_overrides)

    def first_last_bits(self) -> int | None:
        if str(self.first_last) == "8":
            return 8
        if self.first_last in ("search", "free"):
            return None
        raise UserError(f"--first-last must be 8 or search, not {self.first_last!r}")

    def parsed_budgets(self, registry, method: str | None = None) -> list[Budget]:
        """The budgets of ``method`` as written in ``methods`` (its own ``method_budgets``, under that text or its
        plugin's name, if it has them), or the shared ones."""
        name = split_component(method)[0] if method else None
        texts = self.method_budgets.get(method, self.method_budgets.get(name, self.budgets))
        return parse_budgets(texts, registry.tables["budget kind"]) if texts else []

    def expand(self, registry) -> list[RunSpec]:
        """The grid (dataset x model x method x budget x seed), with every name checked up front."""
        for name, what in ((self.methods, "--methods"), (self.models, "--models"), (self.datasets, "--datasets")):
            if not name:
                raise UserError(f"{what} is empty: name at least one")
        if not self.seeds:
            raise UserError("--seeds is empty: name at least one")
        for name in self.datasets:
            registry.dataset(name)
        for name in self.models:
            registry.model(name)
        methods = [Component.parse(m, registry.method, self.params.get(split_component(m)[0]))
                   for m in self.methods]
        for m in methods:
            registry.method(m.name).check(m.kwargs)
        for name in self.method_budgets:
            registry.method(split_component(name)[0])
        self.target_components(registry)  # validates target names and parameters
        budgets = [self.parsed_budgets(registry, text) for text in self.methods]
        recipe, first_last = self.get_recipe(), self.first_last_bits()
        specs = []
        for dataset in self.datasets:
            for model in self.models:
                for method, method_budgets in zip(methods, budgets):
                    uses = registry.method(method.name).uses_budget(method.kwargs)
                    if uses and not method_budgets:
                        raise UserError(f"method {method.name} needs a budget: pass --budgets KIND=VALUE "
                                        f"(e.g. size_mb=w4)")
                    for budget in method_budgets if uses else [None]:
                        for seed in self.seeds:
                            specs.append(RunSpec(method, model, dataset, budget, int(seed), recipe, first_last))
        return list(dict.fromkeys(specs))

    def target_components(self, registry) -> list[Component]:
        return [Component.parse(t, registry.target, self.params.get(split_component(t)[0])) for t in self.targets]


def _typed(key: str, value: Any) -> Any:
    """``value`` as field ``key`` needs it; ValueError (one line) when it cannot be."""
    if key in LIST_KEYS:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"expected a list of strings or one comma-separated string, not {value!r}")
        return [v.strip() for v in items if v.strip()]
    if key == "seeds":
        items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else value
        try:
            seeds = [int(v) for v in items if str(v).strip()] if isinstance(items, list) else None
        except (TypeError, ValueError):
            seeds = None
        if seeds is None or any(isinstance(v, (bool, float)) for v in items) or any(s < 0 for s in seeds):
            raise ValueError(f"expected non-negative integers (a list or '0,1,2'), not {value!r}")
        return seeds
    if key in ("jobs", "deploy_images"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected an integer >= 1, not {value!r}")
        return value
    if key in ("retry_failed", "keep_going"):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {value!r}")
        return value
    if key == "recipe_overrides":
        if not isinstance(value, dict):
            raise ValueError("expected a table of recipe fields")
        return dict(value)
    if key == "method_budgets":
        if not isinstance(value, dict):
            raise ValueError("expected a table of method = budgets")
        return {name: _typed("budgets", v) for name, v in value.items()}
    if key == "params":
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValueError("expected tables [params.<plugin>] of parameters")
        return {k: dict(v) for k, v in value.items()}
    if key == "first_last":
        if str(value) not in ("8", "search", "free"):
            raise ValueError(f"expected 8 or search, not {value!r}")
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {value!r}")
    return value
