"""Sweep configuration (CLI flags or a TOML file) and its expansion into RunSpecs."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpqbench.budget import Budget, parse_budgets
from mpqbench.errors import UserError
from mpqbench.params import coerce, label, split_component
from mpqbench.recipe import Recipe, get_recipe


@dataclass(frozen=True)
class Component:
    """A method or target with its resolved parameters (defaults plus overrides)."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @classmethod
    def parse(cls, text: str, registry_get, overrides: dict | None = None) -> "Component":
        name, raw = split_component(text)
        plugin = registry_get(name)
        params = coerce(name, dict(plugin.params), {**(overrides or {}), **raw})
        return cls(name, tuple(sorted(params.items())))

    def label(self, defaults: dict) -> str:
        return label(self.name, self.kwargs, defaults)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid: frozen, hashable, and (with its plugin's fingerprint) the run's identity."""

    method: Component
    model: str
    dataset: str
    budget: Budget | None
    seed: int
    recipe: Recipe
    first_last_bits: int | None = 8

    def identity(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.method.params},
            "model": self.model,
            "dataset": self.dataset,
            "budget": self.budget.text if self.budget else None,
            "seed": self.seed,
            "recipe": self.recipe.to_json(),
            "first_last_bits": self.first_last_bits,
        }

    def run_id(self, fingerprint: dict[str, str]) -> str:
        blob = json.dumps({"spec": self.identity(), "plugin": fingerprint}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class SweepConfig:
    methods: list[str] = field(default_factory=lambda: ["uniform:bits=8"])
    targets: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["resnet20"])
    datasets: list[str] = field(default_factory=lambda: ["fashion-mnist"])
    budgets: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    recipe: str = "full"
    recipe_overrides: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_last: str = "8"
    out: str = "results"
    jobs: int = 1
    data_root: str | None = None
    deploy_images: int = 256
    device: str = "auto"

    @classmethod
    def from_toml(cls, path: str) -> "SweepConfig":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UserError(f"cannot read config {path}: {exc}") from None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"config {path}: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    def get_recipe(self) -> Recipe:
        return get_recipe(self.recipe).override(**self.recipe_overrides)

    def first_last_bits(self) -> int | None:
        if self.first_last in ("8", 8):
            return 8
        if self.first_last in ("search", "free"):
            return None
        raise UserError(f"--first-last must be 8 or search, not {self.first_last!r}")

    def parsed_budgets(self) -> list[Budget]:
        return parse_budgets(self.budgets) if self.budgets else []

    def expand(self, registry) -> list[RunSpec]:
        """The grid (dataset x model x method x budget x seed), with every name checked up front."""
        for name in self.datasets:
            registry.dataset(name)
        for name in self.models:
            registry.model(name)
        methods = [Component.parse(m, registry.method, self.params.get(split_component(m)[0]))
                   for m in self.methods]
        self.target_components(registry)  # validates target names and parameters
        budgets = self.parsed_budgets()
        recipe, first_last = self.get_recipe(), self.first_last_bits()
        if not self.seeds:
            raise UserError("no seeds given")
        specs = []
        for dataset in self.datasets:
            for model in self.models:
                for method in methods:
                    uses = registry.method(method.name).uses_budget(method.kwargs)
                    if uses and not budgets:
                        raise UserError(f"method {method.name} needs a budget: pass --budgets KIND=VALUE")
                    for budget in budgets if uses else [None]:
                        for seed in self.seeds:
                            specs.append(RunSpec(method, model, dataset, budget, int(seed), recipe, first_last))
        return list(dict.fromkeys(specs))

    def target_components(self, registry) -> list[Component]:
        return [Component.parse(t, registry.target, self.params.get(split_component(t)[0])) for t in self.targets]
