"""DDQ's resource penalty and the repair that makes the final policy meet the budget exactly.

**Penalty.** The run's budget is a sum over layers of ``cost_l(w_l, a_l)`` (size or average bits: weight bits
only; BitOPs: ``MACs_l * w_l * a_l``), with ``a_l`` the bits of the tensor the layer reads. Each bitwidth is
either fixed (an int: a pinned first/last layer, activations not learned) or a :class:`DDQQuantizer`, whose
gates give a distribution ``P(bits = b)`` (:meth:`DDQQuantizer.bit_probs`; gates independent). The expected
cost ``E = sum_l sum_{w,a} P_l(w) P_l(a) cost_l(w, a)`` is exact under that independence (a layer's weight
gates and its input's gates are different gates) and differentiable in the gate logits. The penalty is
``weight * f(E / budget - 1)`` (``form``; the paper's regulariser is not confirmed):

* ``hinge`` (default): ``max(0, r)``, pushes only while the expected cost is over the budget, as the
  reconstruction's ``lambda * max(0, M / M_target - 1)``; the task loss pulls bits back up, so training
  settles near the budget;
* ``square``: ``r^2``, pulls the expected cost to the budget from both sides.

``cost`` chooses what ``E`` is in the forward: ``expected`` is the expectation above; ``hard`` (what the method
uses by default) is the cost of the current hard gates, which the network computes with, with the expected
cost's gradient (a straight-through estimator, as for the gates themselves). Under ``expected`` the closed
gates' residual open probability keeps ``E`` above the hard cost, so a hinge keeps closing gates after the
hard policy already meets the budget (on the tiny model: 2-bit layers at a 3-bit budget).

``warmup`` steps ramp the weight linearly from 0 (noisy gate gradients early on: let the levels and ranges
settle first); the step is read from the trainer's ``state.step`` when called as a loss part.

**Repair.** Training leaves every gate open or closed, but nothing forces the resulting hard policy to meet
the budget. :func:`repair` hands per-unit scores (:func:`gate_scores`; by default each quantizer's ``map``
score, the log-probability of flipping the fewest, least confident gates: 0 at the trained bits) to the
core's exact integer program with ``maximize=True``: the final policy is the most probable gate setting
that meets the budget, and the trained one whenever it already does.

**Activation repair** (:func:`repair_acts`, when activation bits are learned under a budget that counts weight
bits only): the same objective under one integer row, the average activation bitwidth of the searched layers
at most a target: ``sum_g n_g b_g <= target * sum_g n_g`` over gate-sharing point groups ``g`` read by
``n_g`` layers. All terms are integers, so a dynamic program over the running sum solves it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from mpqbench.cost.allocation import allocate, searched_units
from mpqbench.errors import UserError
from mpqbench.plugins.ddq.quantizer import DDQQuantizer

BitSource = DDQQuantizer | int
PENALTY_FORMS = ("hinge", "square")
PENALTY_COSTS = ("expected", "hard")


@dataclass(frozen=True)
class CostTerm:
    """One layer's share of the budget: ``cost(w, a)`` at its weight and input-activation bitwidths."""

    layer: str
    weight: BitSource
    act: BitSource
    cost: Callable[[int, int], float]


def _support(source: BitSource) -> list[int]:
    if isinstance(source, DDQQuantizer):
        return list(range(source.max_bits + 1))
    return [int(source)]


def _probs(source: BitSource) -> torch.Tensor:
    if isinstance(source, DDQQuantizer):
        return source.bit_probs()
    return torch.ones(1)


class ResourcePenalty:
    """Differentiable penalty on the expected cost of the gates' bitwidths (module docstring).

    Call it as a trainer loss part, ``fn(state)``; :meth:`expected` and :meth:`hard` give the expected and
    the current (hard-gate) cost in the budget's unit.
    """

    def __init__(self, terms: Sequence[CostTerm], budget: float, *, form: str = "hinge", weight: float = 1.0,
                 warmup: int = 0, cost: str = "expected"):
        if form not in PENALTY_FORMS:
            raise UserError(f"DDQ penalty: unknown form {form!r} (known: {', '.join(PENALTY_FORMS)})")
        if cost not in PENALTY_COSTS:
            raise UserError(f"DDQ penalty: unknown cost {cost!r} (known: {', '.join(PENALTY_COSTS)})")
        self.cost = cost
        if not budget > 0:
            raise UserError(f"DDQ penalty: the budget must be positive, not {budget}")
        if not terms:
            raise UserError("DDQ penalty: no cost terms")
        self.terms = list(terms)
        self.budget = float(budget)
        self.form = form
        self.weight = float(weight)
        self.warmup = int(warmup)
        # cost table per term over the supports (bits below a quantizer's min_bits have probability 0)
        self._tables = [torch.tensor([[t.cost(w, a) if w > 0 and a > 0 else 0.0 for a in _support(t.act)]
                                      for w in _support(t.weight)], dtype=torch.float64) for t in self.terms]

    @classmethod
    def from_layer_cost(cls, layers: Sequence[str], layer_cost: Callable[[str, int, int], float],
                        weight_bits: Mapping[str, BitSource], act_bits: Mapping[str, BitSource], budget: float,
                        **kwargs: Any) -> "ResourcePenalty":
        """One term per layer: ``layer_cost(layer, w, a)`` (e.g. ``lambda l, w, a: run.cost.layer_cost(
        run.budget.kind, l, w, a)``), the layer's weight source and the source of the tensor it reads."""
        missing = [layer for layer in layers if layer not in weight_bits or layer not in act_bits]
        if missing:
            raise ValueError(f"DDQ penalty: no weight or activation bits for layers {missing}")
        terms = [CostTerm(layer, weight_bits[layer], act_bits[layer],
                          lambda w, a, layer=layer: layer_cost(layer, w, a)) for layer in layers]
        return cls(terms, budget, **kwargs)

    def expected(self) -> torch.Tensor:
        """Expected cost under the gates' open probabilities (float64 scalar, differentiable)."""
        total = None
        for term, table in zip(self.terms, self._tables):
            pw, pa = _probs(term.weight), _probs(term.act)
            device = pw.device if isinstance(term.weight, DDQQuantizer) else pa.device
            pw, pa = pw.to(device, torch.float64), pa.to(device, torch.float64)
            value = pw @ table.to(device) @ pa
            total = value if total is None else total + value.to(total.device)
        return total

    def hard(self) -> float:
        """Cost of the current hard bitwidths."""
        def bits(s: BitSource) -> int:
            return s.bits if isinstance(s, DDQQuantizer) else int(s)
        return float(sum(t.cost(bits(t.weight), bits(t.act)) for t in self.terms))

    def ramp(self, step: int | None) -> float:
        if not self.warmup or step is None:
            return 1.0
        return min(1.0, step / self.warmup)

    def __call__(self, state: Any = None) -> torch.Tensor:
        e = self.expected()
        if self.cost == "hard":
            e = e - e.detach() + self.hard()
        r = e / self.budget - 1
        value = torch.relu(r) if self.form == "hinge" else r * r
        return (self.weight * self.ramp(getattr(state, "step", None)) * value).to(torch.float32)


def gate_scores(units: Mapping[str, DDQQuantizer | Sequence[DDQQuantizer]], candidates: Sequence[int],
                kind: str = "map") -> dict[str, dict[int, float]]:
    """Per unit and candidate bitwidth, the sum of its quantizers' :meth:`DDQQuantizer.bit_scores` (several
    quantizers when a unit's layers each have their own gates): the objective of :func:`repair`."""
    scores: dict[str, dict[int, float]] = {}
    for unit, quantizers in units.items():
        qs = [quantizers] if isinstance(quantizers, DDQQuantizer) else list(quantizers)
        if not qs:
            raise ValueError(f"DDQ scores: unit {unit!r} has no quantizer")
        total = sum(q.bit_scores(kind) for q in qs)
        for b in candidates:
            if not 0 <= b < total.numel() or not torch.isfinite(total[b]):
                raise UserError(f"DDQ: unit {unit!r} cannot take {b} bits (its gates allow "
                                f"[{max(q.min_bits for q in qs)}, {min(q.max_bits for q in qs)}])")
        scores[unit] = {int(b): float(total[b]) for b in candidates}
    return scores


def repair(layout, cost, budget, fixed, units: Mapping[str, DDQQuantizer | Sequence[DDQQuantizer]],
           candidates: Sequence[int], act_bits: int | None, kind: str = "map"):
    """The final policy: the core's integer program maximising the gate scores within the budget.

    ``units`` maps every searched unit (``searched_units(layout, fixed)``) to its weight quantizer(s);
    ``act_bits`` as :func:`allocate` takes it (an int, or None for "the layer's weight bits"). Returns the
    core's ``Allocation`` (its ``bits`` per unit and ``policy``).
    """
    missing = [u for u in searched_units(layout, fixed) if u not in units]
    if missing:
        raise ValueError(f"DDQ repair: no gates for searched units {missing}")
    return allocate(layout, cost, budget, fixed, gate_scores(units, candidates, kind), candidates, act_bits,
                    maximize=True)


def repair_acts(groups: Mapping[str, tuple[DDQQuantizer, int]], target: float, candidates: Sequence[int],
                kind: str = "map") -> dict[str, int]:
    """Bits per activation group maximising the summed gate scores with ``sum n_g b_g <= target * sum n_g``
    (``groups``: name -> (quantizer, n_g)); ties go to the larger total. An unreachable target is a UserError."""
    total = sum(n for _, n in groups.values())
    cap = math.floor(target * total + 1e-9)
    best: dict[int, tuple[float, dict[str, int]]] = {0: (0.0, {})}
    for name, (q, n) in groups.items():
        scores = q.bit_scores(kind)
        step: dict[int, tuple[float, dict[str, int]]] = {}
        for used, (value, bits) in best.items():
            for b in candidates:
                if not 0 <= b < scores.numel() or not math.isfinite(float(scores[b])) or used + n * b > cap:
                    continue
                cand = (value + float(scores[b]), {**bits, name: int(b)})
                if used + n * b not in step or cand[0] > step[used + n * b][0]:
                    step[used + n * b] = cand
        best = step
        if not best:
            raise UserError(f"DDQ: no activation bits in {sorted(candidates)} average at most {target:g}")
    return max(best.items(), key=lambda kv: (kv[1][0], kv[0]))[1][1]
