"""The end of DFQ-diff's search: argmax per unit, repaired to the budget by the core's integer program.

Each unit takes its most likely candidate (argmax of its logits; ties to the fewest bits). If that policy misses
the budget (the penalty bounds the *expected* cost, the argmax is discrete), the integer program maximises the
sum of the units' logits within the budget. A unit's logits are its log-probabilities up to a per-unit constant
and one common factor 1/T, so this is the most likely policy under the final distributions (at any temperature)
that meets the budget. The units' bits are then fixed in the logits (:func:`apply`); ``collapse()`` keeps them
with the steps learned there, and fine-tuning continues with the shared recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from mpqbench.cost.allocation import Allocation, allocate, searched_units, unit_policy
from mpqbench.plugins.dfq.quantizer import BitLogits


@dataclass(frozen=True)
class Discretised:
    bits: dict[str, int]
    """Weight bits per searched unit."""
    policy: object
    """The :class:`BitPolicy` (pinned layers as the run fixes them)."""
    repaired: bool
    """True when the argmax missed the budget and the integer program chose instead."""
    argmax_bits: dict[str, int]
    allocation: Allocation | None = None

    def record(self) -> dict:
        return {"bits": dict(self.bits), "argmax_bits": dict(self.argmax_bits), "repaired": self.repaired,
                **({"program": self.allocation.record()} if self.allocation else {})}


def logit_scores(choices: Mapping[str, BitLogits]) -> dict[str, dict[int, float]]:
    """Per unit and candidate: the final logit."""
    return {u: dict(zip(c.candidates, c.logits.detach().tolist())) for u, c in choices.items()}


def discretise(layout, cost, budget, fixed: Mapping[str, tuple[int, int]], choices: Mapping[str, BitLogits],
               act_bits: int | None, *, time_limit: float = 60.0) -> Discretised:
    """The argmax policy if it meets ``budget`` (as the harness measures it), else the integer program's policy
    over :func:`logit_scores`. ``choices``: unit name -> logits, for exactly the searched units."""
    units = searched_units(layout, fixed)
    if set(choices) != set(units):
        raise ValueError(f"logits for {sorted(choices)} do not match the searched units {units}")
    argmax = {u: choices[u].argmax_bits for u in units}
    policy = unit_policy(layout, fixed, argmax, act_bits)
    if budget.met(cost, policy):
        return Discretised(argmax, policy, False, argmax)
    candidates = {c.candidates for c in choices.values()}
    if len(candidates) != 1:
        raise ValueError(f"the units' candidate sets differ: {sorted(candidates)}")
    alloc = allocate(layout, cost, budget, fixed, logit_scores(choices), candidates.pop(), act_bits, maximize=True,
                     time_limit=time_limit)
    return Discretised(dict(alloc.bits), alloc.policy, True, argmax, alloc)


def apply(choices: Mapping[str, BitLogits], bits: Mapping[str, int]) -> None:
    """Fix every unit's bitwidth in its logits."""
    for unit, choice in choices.items():
        choice.set_bits(bits[unit])
