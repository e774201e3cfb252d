"""The shared part of methods that allocate weight bitwidths to units (OMPQ, the sensitivity baseline, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from mpqbench.cost.allocation import check_bits, lowest_policy, searched_units
from mpqbench.plugin.objects import Method

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from mpqbench.pipeline.context import RunContext


class AllocationMethod(Method):
    """A method that gives each searched unit one of ``params["candidates"]`` weight bitwidths, activations at
    ``params["a"]`` (None: following the weights), e.g. by scoring units and solving the core's integer
    program: the parameter check, the cheapest policy and the run's candidates and units, shared."""

    def check(self, params: Mapping[str, Any]) -> None:
        check_bits(self.name, params["candidates"], params["a"])

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def candidates_and_units(self, run: "RunContext") -> tuple[tuple[int, ...], list[str]]:
        """The run's candidate bitwidths (checked) and its searched units in network order."""
        return check_bits(self.name, run.params["candidates"], run.params["a"]), searched_units(run.layout, run.fixed)
