"""DFQ-diff's differentiable cost: the expected cost of the relaxed network under its softmax distributions.

Every budget kind is a sum over layers of the layer's cost at its weight bits (activations are not searched, so
BitOPs are taken at each layer's fixed input bits), hence the expected cost
``E[C] = constant + sum_l sum_k p_lk * c_l(b_k)`` is exact and differentiable in the logits (``constant``: the
pinned layers). :func:`expected_bits` is the paper-style special case, the parameter-weighted expected bits
``sum_l n_l sum_k p_lk b_k / sum_l n_l`` (its ratio to 32 is the expected inverse compression rate).

The loss term is on r = E[C] / budget - 1 (relative, so one weight serves every kind and model): ``form="abs"``
|r| (default), ``"hinge"`` max(0, r), ``"square"`` r^2, ``"linear"`` E[C] / budget (the paper-style compression
term, always pushing down; the argmax is then repaired to the budget). The default is two-sided because the
annealed temperature sharpens each distribution onto its argmax: with a one-sided hinge, mass spread over bits
around the budget collapses onto the lower argmax once the hinge is off, and the final policy falls well under
the budget (on the small CNN with a 3-bit size budget, 50 Adam steps end at 0.75 of it with the hinge, at 1.00
with ``abs``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from mpqbench.errors import UserError
from mpqbench.plugins.dfq.quantizer import BitLogits

CostFn = Callable[[int], float]
"""w -> a layer's share of the budget unit at w-bit weights."""
LayerCost = Callable[[str, int, int], float]
"""(layer, w, a) -> the layer's share of the run's budget measure (the budget kind's per-layer cost)."""
FORMS = ("hinge", "abs", "square", "linear")


def layer_cost_fns(layer_cost: LayerCost, layers, act_bits: int | Mapping[str, int]) -> dict[str, CostFn]:
    """Per layer, ``w -> layer_cost(layer, w, a)`` at the layer's fixed input activation bits ``a``."""
    def fn(layer: str) -> CostFn:
        a = act_bits if isinstance(act_bits, int) else act_bits[layer]
        return lambda w: layer_cost(layer, int(w), a)
    return {layer: fn(layer) for layer in layers}


def fixed_cost(layer_cost: LayerCost, fixed: Mapping[str, tuple[int, int]]) -> float:
    """The pinned layers' part of the budget measure."""
    return float(sum(layer_cost(layer, w, a) for layer, (w, a) in fixed.items()))


def expected_cost(choices: Mapping[str, BitLogits], costs: Mapping[str, CostFn], constant: float = 0.0) -> torch.Tensor:
    """``constant + sum_l sum_k p_lk * costs[l](b_k)`` over the layers of ``choices`` (layer -> logits; layers of
    one unit share theirs)."""
    missing = set(choices) - set(costs)
    if missing:
        raise ValueError(f"no cost function for layers {sorted(missing)}")
    total = torch.zeros(())
    for layer, choice in choices.items():
        table = torch.tensor([costs[layer](b) for b in choice.candidates], dtype=choice.logits.dtype)
        total = total + (choice.weights() * table.to(choice.logits.device)).sum()
    return total + constant


def expected_bits(choices: Mapping[str, BitLogits], params: Mapping[str, int]) -> torch.Tensor:
    """Parameter-weighted expected weight bits over the layers of ``choices`` (``params``: weights per layer)."""
    total = sum(params[layer] for layer in choices)
    return expected_cost(choices, {layer: (lambda b, n=params[layer]: n * b / total) for layer in choices})


def penalty(expected: torch.Tensor, budget: float, form: str = "abs") -> torch.Tensor:
    """The loss on r = expected / budget - 1 (see the module docstring)."""
    if not budget > 0:
        raise ValueError(f"budget must be positive, not {budget}")
    ratio = expected / budget
    if form == "hinge":
        return torch.relu(ratio - 1)
    if form == "abs":
        return (ratio - 1).abs()
    if form == "square":
        return (ratio - 1) ** 2
    if form == "linear":
        return ratio
    raise UserError(f"dfq-diff: unknown cost penalty form {form!r} (known: {', '.join(FORMS)})")


class CostPenalty:
    """The expected-cost penalty as a loss term ``fn(state) -> tensor`` (``state`` unused)."""

    def __init__(self, choices: Mapping[str, BitLogits], costs: Mapping[str, CostFn], budget: float, *,
                 constant: float = 0.0, form: str = "abs"):
        if form not in FORMS:
            raise UserError(f"dfq-diff: unknown cost penalty form {form!r} (known: {', '.join(FORMS)})")
        self.choices, self.costs, self.budget = dict(choices), dict(costs), float(budget)
        self.constant, self.form = float(constant), form

    def expected(self) -> torch.Tensor:
        return expected_cost(self.choices, self.costs, self.constant)

    def __call__(self, state=None) -> torch.Tensor:
        return penalty(self.expected(), self.budget, self.form)
