"""Budgets: the one resource limit every method of a run gets, checked by the harness, not the method.

Written ``KIND=VALUE``: KIND is ``avg_bits`` (parameter-weighted weight bits), ``size_mb`` or ``bitops_g``;
VALUE is a number or ``wN`` / ``wNaM``, the cost of the uniform N-bit (activations M, default N) policy of
the run's model with its fixed first/last layers, so one budget text means "the uniform-4-bit size" on
every model. Several budgets: ``size_mb=w4,w3`` (a value without a kind reuses the previous kind).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Mapping

from mpqbench.cost import CostModel
from mpqbench.errors import UserError
from mpqbench.policy import MIN_BITS, BitPolicy

KINDS = ("avg_bits", "size_mb", "bitops_g")
_UNIFORM = re.compile(r"^w([2-8])(?:a([2-8]))?$")
RELATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Budget:
    kind: str
    value: float | None = None
    uniform: tuple[int, int] | None = None

    @property
    def text(self) -> str:
        if self.uniform:
            w, a = self.uniform
            return f"{self.kind}=w{w}" + (f"a{a}" if a != w else "")
        return f"{self.kind}={self.value:g}"

    def resolve(self, cost: CostModel, fixed: Mapping[str, tuple[int, int]]) -> "Budget":
        """The numeric budget for one model; also checks that some policy can meet it."""
        budget = self
        if self.uniform:
            w, a = self.uniform
            budget = replace(self, value=self.measure(cost, BitPolicy.uniform(cost.layout, w, a, fixed)))
        smallest = self.measure(cost, BitPolicy.uniform(cost.layout, MIN_BITS, MIN_BITS, fixed))
        if smallest > budget.value * (1 + RELATIVE_TOLERANCE):
            raise UserError(f"budget {self.text} is infeasible: the smallest policy ({MIN_BITS} bits, fixed "
                            f"layers kept) needs {self.kind} = {smallest:.4g} > {budget.value:.4g}")
        return budget

    def measure(self, cost: CostModel, policy: BitPolicy) -> float:
        return cost.total(self.kind, policy)

    def met(self, cost: CostModel, policy: BitPolicy) -> bool:
        return self.measure(cost, policy) <= self.value * (1 + RELATIVE_TOLERANCE)


def parse_budgets(text: str | list[str]) -> list[Budget]:
    """Parse ``size_mb=w4,w3`` / ``avg_bits=4`` / a list of such strings into budgets."""
    items = [t.strip() for part in ([text] if isinstance(text, str) else text) for t in str(part).split(",")]
    budgets, kind = [], None
    for item in filter(None, items):
        if "=" in item:
            kind, _, value = item.partition("=")
            kind = kind.strip()
        else:
            value = item
        if kind is None:
            raise UserError(f"malformed budget {item!r}: write KIND=VALUE, KIND one of {', '.join(KINDS)}")
        if kind not in KINDS:
            raise UserError(f"unknown budget kind {kind!r} (known: {', '.join(KINDS)})")
        value = value.strip()
        match = _UNIFORM.match(value)
        if match:
            w = int(match.group(1))
            budgets.append(Budget(kind, uniform=(w, int(match.group(2) or w))))
            continue
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"malformed budget value {value!r} in {item!r}: a positive number or wN / wNaM") from None
        if not number > 0:
            raise UserError(f"malformed budget value {value!r}: must be positive")
        budgets.append(Budget(kind, number))
    return budgets
