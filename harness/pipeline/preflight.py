"""What every cell needs that does not depend on training, computed once per sweep before anything runs:
the data set, the model's layout and cost model (from its structure: an untrained model has the same), the
layers the run pins, the budget resolved to a number, and whether the method can meet it at all.

A budget no policy of the method can meet (e.g. HAWQ-V3's {4, 8} under the uniform-3-bit size) is refused
here, in one line, instead of after minutes of search; ``--keep-going`` records such cells as failed and runs
the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from mpqbench.cost.budget import Budget
from mpqbench.cost.model import CostModel
from mpqbench.data.splits import DataSplits
from mpqbench.errors import UserError
from mpqbench.pipeline.spec import RunSpec
from mpqbench.quant.layout import QuantLayout


@dataclass(frozen=True)
class Plan:
    """The preflight of one cell (small and picklable: sent with the cell's job)."""

    layout: QuantLayout
    cost: CostModel
    fixed: Mapping[str, tuple[int, int]]
    budget: Budget | None


@functools.lru_cache(maxsize=8)
def _dataset(registry, name: str, root: str | None, cache: Path) -> DataSplits:
    return registry.dataset(name).load(root, cache / "data")


def load_data(registry, spec: RunSpec, root: str | None, cache: Path) -> DataSplits:
    """The spec's data set with the recipe's subsets (loaded once per process)."""
    return _dataset(registry, spec.dataset, root, cache).subset(spec.recipe.train_subset, spec.recipe.test_subset)


def fixed_layers(layout: QuantLayout, bits: int | None) -> dict[str, tuple[int, int]]:
    """The layers a run pins: first and last at W``bits``A``bits``, or none when they are searched."""
    return {} if bits is None else {layout.first: (bits, bits), layout.last: (bits, bits)}


def _structure(registry, model: str, data: DataSplits) -> tuple[QuantLayout, CostModel]:
    entry = registry.model(model)
    module = entry.build(data.shape)
    layout = entry.layout(module)
    return layout, CostModel.measure(module, layout, (data.shape.channels, data.shape.size, data.shape.size))


def preflight(specs: list[RunSpec], registry, cache: Path, data_root: str | None,
              keep_going: bool = False) -> tuple[dict[RunSpec, Plan], dict[RunSpec, str]]:
    """Plans for every spec, and the specs refused (with the one-line reason) when ``keep_going``; without it
    the first refusal is raised as a UserError."""
    structures: dict[tuple[str, str], tuple[QuantLayout, CostModel]] = {}
    resolved: dict[tuple, Budget] = {}
    plans, refused = {}, {}
    for spec in specs:
        data = load_data(registry, spec, data_root, cache)
        key = (spec.model, spec.dataset)
        if key not in structures:
            structures[key] = _structure(registry, spec.model, data)
        model_layout, cost = structures[key]
        fixed = fixed_layers(model_layout, spec.first_last_bits)
        method = registry.method(spec.method.name)
        layout = method.units(spec.method.kwargs, model_layout)
        try:
            budget = None
            if spec.budget is not None:
                bkey = (key, spec.budget, spec.first_last_bits)
                if bkey not in resolved:
                    resolved[bkey] = spec.budget.resolve(cost, fixed)
                budget = resolved[bkey]
                smallest = method.smallest_policy(spec.method.kwargs, layout, fixed)
                if smallest is not None:
                    budget.check_reachable(cost, smallest, f"{spec.method.name}'s smallest policy on {spec.model}")
            plans[spec] = Plan(layout, cost, fixed, budget)
        except UserError as exc:
            if not keep_going:
                raise
            refused[spec] = str(exc)
    return plans, refused
