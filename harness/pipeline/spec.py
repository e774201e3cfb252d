"""A run's identity: a method or target with its parameters (:class:`Component`), and one cell of the grid
(:class:`RunSpec`), frozen and hashable; with its plugin's fingerprint, a RunSpec hashes to the run id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mpqbench.cost.budget import Budget
from mpqbench.plugin.params import coerce, label, split_component
from mpqbench.train.recipe import Recipe


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

    def describe(self, label: str) -> str:
        """What the progress bar shows: ``uniform(a=8,w=2) resnet20/fashion-mnist size_mb=w3 seed 1``."""
        budget = f" {self.budget.text}" if self.budget else ""
        return f"{label} {self.model}/{self.dataset}{budget} seed {self.seed}"
