"""The end of SDQ's stage 1: a policy that meets the budget exactly.

The search's policy is every unit's current level b_i (what bit decay left; with the default threshold 0.5 that
is its expected bits E[b] = b_{i-1} + beta (b_i - b_{i-1}) rounded to the nearer of the pair). If that policy
misses the budget (the penalty works on the expected cost, the policy is discrete), the core's integer program
picks the policy closest to the DBPs within the budget: per unit and candidate b the score is -(b - E[b])^2,
maximised, so a unit whose beta sat near its threshold gives up its level first and, between two such units,
the program prefers cutting the one that saves more cost. Units' final bits are then written back into the gates
(:func:`apply`) so that ``collapse()`` keeps the repaired bitwidths with the steps learned there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from mpqbench.cost.allocation import Allocation, allocate, searched_units, unit_policy
from mpqbench.plugins.sdq.quantizer import DBPGate


@dataclass(frozen=True)
class Repair:
    bits: dict[str, int]
    """Weight bits per searched unit."""
    policy: object
    """The :class:`BitPolicy` (pinned layers as the run fixes them)."""
    repaired: bool
    """True when the gates' levels missed the budget and the integer program chose instead."""
    search_bits: dict[str, int]
    """The gates' levels before any repair."""
    allocation: Allocation | None = None

    def record(self) -> dict:
        return {"bits": dict(self.bits), "search_bits": dict(self.search_bits), "repaired": self.repaired,
                **({"program": self.allocation.record()} if self.allocation else {})}


def dbp_scores(gates: Mapping[str, DBPGate]) -> dict[str, dict[int, float]]:
    """Per unit and candidate: -(b - E[b])^2."""
    scores = {}
    for unit, gate in gates.items():
        e = gate.expected_bits().item()
        scores[unit] = {b: -(b - e) ** 2 for b in gate.candidates}
    return scores


def final_policy(layout, cost, budget, fixed: Mapping[str, tuple[int, int]], gates: Mapping[str, DBPGate],
                 act_bits: int | None, *, time_limit: float = 60.0) -> Repair:
    """The gates' levels if they meet ``budget`` (as the harness measures it), else the integer program's
    policy over :func:`dbp_scores`. ``gates``: unit name -> gate, for exactly the searched units."""
    units = searched_units(layout, fixed)
    if set(gates) != set(units):
        raise ValueError(f"gates {sorted(gates)} do not match the searched units {units}")
    levels = {u: gates[u].bits for u in units}
    policy = unit_policy(layout, fixed, levels, act_bits)
    if budget.met(cost, policy):
        return Repair(levels, policy, False, levels)
    candidates = {g.candidates for g in gates.values()}
    if len(candidates) != 1:
        raise ValueError(f"the gates' candidate sets differ: {sorted(candidates)}")
    alloc = allocate(layout, cost, budget, fixed, dbp_scores(gates), candidates.pop(), act_bits, maximize=True,
                     time_limit=time_limit)
    return Repair(dict(alloc.bits), alloc.policy, True, levels, alloc)


def apply(gates: Mapping[str, DBPGate], bits: Mapping[str, int]) -> None:
    """Set every gate to its unit's final bits."""
    for unit, gate in gates.items():
        gate.set_bits(bits[unit])
