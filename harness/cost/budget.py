"""Budgets: the one resource limit every method of a run gets, checked by the harness, not the method.

Written ``KIND=VALUE``. KIND is a registered :class:`~mpqbench.api.BudgetKind`: the built-in ``avg_bits``
(parameter-weighted weight bits), ``size_mb`` and ``bitops_g`` (:mod:`mpqbench.cost.kinds`), or one a plugin
registers (a target's latency); a kind with parameters takes them as ``KIND:key=value=VALUE``. VALUE is a
number or ``wN`` / ``wNaM``, the cost of the uniform N-bit (activations M, default N) policy of the run's
model with its fixed first/last layers, so one budget text means "the uniform-4-bit size" on every model.
Several budgets: ``size_mb=w4,w3`` (a value without a kind reuses the previous kind).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from mpqbench.cost.kinds import BUILTIN
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.plugin.objects import BudgetKind
from mpqbench.plugin.params import changed, coerce, split_component
from mpqbench.quant.policy import MIN_BITS, BitPolicy

_UNIFORM = re.compile(r"^w([2-8])(?:a([2-8]))?$")
RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    kind: BudgetKind
    value: float | None = None
    uniform: tuple[int, int] | None = None
    params: tuple[tuple[str, Any], ...] = ()
    """The kind's parameters, resolved (defaults plus overrides)."""

    @property
    def kind_text(self) -> str:
        """The kind as written: its name, then ``:key=value`` for each parameter off its default."""
        return ":".join([self.kind.name, *changed(dict(self.params), self.kind.params)])

    @property
    def text(self) -> str:
        if self.uniform:
            w, a = self.uniform
            return f"{self.kind_text}=w{w}" + (f"a{a}" if a != w else "")
        return f"{self.kind_text}={self.value:g}"

    def layer_cost(self, cost: CostModel, layer: str, w: int, a: int) -> float:
        return self.kind.layer_cost(cost, layer, w, a, dict(self.params))

    def resolve(self, cost: CostModel, fixed: Mapping[str, tuple[int, int]]) -> "Budget":
        """The numeric budget for one model; also checks that some policy can meet it."""
        budget = self
        if self.uniform:
            w, a = self.uniform
            budget = replace(self, value=self.measure(cost, BitPolicy.uniform(cost.layout, w, a, fixed)))
        budget.check_reachable(cost, BitPolicy.uniform(cost.layout, MIN_BITS, MIN_BITS, fixed),
                               f"the smallest policy ({MIN_BITS} bits, fixed layers kept)")
        return budget

    def check_reachable(self, cost: CostModel, smallest: BitPolicy, what: str) -> None:
        """A one-line UserError when ``smallest`` (the cheapest policy some method can produce) is over."""
        need = self.measure(cost, smallest)
        if need > self.value * (1 + RELATIVE_TOLERANCE):
            raise UserError(f"budget {self.text} is infeasible: {what} needs {self.kind.name} = {need:.4g} "
                            f"> {self.value:.4g}")

    def measure(self, cost: CostModel, policy: BitPolicy) -> float:
        return sum(self.layer_cost(cost, n, policy[n].w, policy[n].a) for n in cost.layers)

    def met(self, cost: CostModel, policy: BitPolicy) -> bool:
        return self.measure(cost, policy) <= self.value * (1 + RELATIVE_TOLERANCE)

    def record(self, cost: CostModel, policy: BitPolicy) -> dict:
        return {"text": self.text, "kind": self.kind.name, "unit": self.kind.unit, "value": self.value,
                "measured": self.measure(cost, policy), "met": self.met(cost, policy)}


def parse_budgets(text: str | list[str], kinds: Mapping[str, BudgetKind] | None = None) -> list[Budget]:
    """Parse ``size_mb=w4,w3`` / ``avg_bits=4`` / ``KIND:key=v=VALUE`` / a list of such strings, with the
    registry's budget kinds (the built-in ones by default)."""
    kinds = BUILTIN if kinds is None else kinds
    items = [t.strip() for part in ([text] if isinstance(text, str) else text) for t in str(part).split(",")]
    budgets: list[Budget] = []
    kind: BudgetKind | None = None
    params: tuple = ()
    for item in filter(None, items):
        if "=" in item:
            kind_text, _, value = item.rpartition("=")
            name, raw = split_component(kind_text)
            if name not in kinds:
                raise UserError(f"unknown budget kind {name!r} (known: {', '.join(sorted(kinds))})")
            kind = kinds[name]
            params = tuple(sorted(coerce(f"budget kind {name}", kind.params, raw).items()))
        else:
            value = item
        if kind is None:
            raise UserError(f"malformed budget {item!r}: write KIND=VALUE, KIND one of {', '.join(sorted(kinds))}")
        value = value.strip()
        match = _UNIFORM.match(value)
        if match:
            w = int(match.group(1))
            budgets.append(Budget(kind, uniform=(w, int(match.group(2) or w)), params=params))
            continue
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"malformed budget value {value!r} in {item!r}: a positive number or wN / wNaM") from None
        if not number > 0 or number != number or number == float("inf"):
            raise UserError(f"malformed budget value {value!r}: must be a positive finite number")
        budgets.append(Budget(kind, number, params=params))
    return budgets
