"""The expected cost of a network whose bits are still distributions (a gate's switch probabilities, a softmax
over candidates), and the budget penalty on it: the loss term every method that learns bits by gradient
descent needs, in the run's own budget unit.

Every budget kind is a sum over layers of the layer's cost at its bits, so with per-layer distributions over
weight bitwidths (activations fixed) ``E[C] = constant + sum_l sum_b p_l(b) * c_l(b)`` is exact and
differentiable in the distributions' parameters (``constant``: the pinned layers). The penalty is on
``r = E[C] / budget - 1`` (relative, so one weight serves every kind and model): ``hinge`` max(0, r), ``abs``
|r|, ``square`` r^2, ``linear`` E[C] / budget (always pushing down).
"""

from __future__ import annotations

from typing import Callable, Mapping, Protocol

import torch

from mpqbench.errors import UserError

CostFn = Callable[[int], float]
"""w -> a layer's share of the budget unit at w-bit weights."""
LayerCost = Callable[[str, int, int], float]
"""(layer, w, a) -> the layer's share of the run's budget measure (the budget kind's per-layer cost)."""
PENALTY_FORMS = ("hinge", "abs", "square", "linear")


class BitDistribution(Protocol):
    def probs(self) -> Mapping[int, torch.Tensor]: ...


def layer_cost_fns(layer_cost: LayerCost, layers, act_bits: int | Mapping[str, int]) -> dict[str, CostFn]:
    """Per layer, ``w -> layer_cost(layer, w, a)`` at the layer's fixed input activation bits ``a``."""
    def fn(layer: str) -> CostFn:
        a = act_bits if isinstance(act_bits, int) else act_bits[layer]
        return lambda w: layer_cost(layer, int(w), a)
    return {layer: fn(layer) for layer in layers}


def fixed_cost(layer_cost: LayerCost, fixed: Mapping[str, tuple[int, int]]) -> float:
    """The pinned layers' part of the budget measure (the penalty's constant)."""
    return float(sum(layer_cost(layer, w, a) for layer, (w, a) in fixed.items()))


def expected_cost(dists: Mapping[str, BitDistribution], costs: Mapping[str, CostFn],
                  constant: float = 0.0) -> torch.Tensor:
    """``constant + sum_l sum_b p_l(b) * costs[l](b)`` over the layers of ``dists`` (layer -> distribution;
    layers of one unit may share one)."""
    missing = set(dists) - set(costs)
    if missing:
        raise ValueError(f"no cost function for layers {sorted(missing)}")
    total = torch.zeros(())
    for layer, dist in dists.items():
        for bits, p in dist.probs().items():
            total = total + p * costs[layer](bits)
    return total + constant


def budget_penalty(expected: torch.Tensor, budget: float, form: str = "hinge") -> torch.Tensor:
    """The penalty on r = expected / budget - 1 (see the module docstring for the forms)."""
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
    raise UserError(f"unknown budget penalty form {form!r} (known: {', '.join(PENALTY_FORMS)})")


class BudgetPenalty:
    """The expected-cost budget penalty as a loss term: ``fn(state) -> tensor`` (``state`` unused)."""

    def __init__(self, dists: Mapping[str, BitDistribution], costs: Mapping[str, CostFn], budget: float, *,
                 constant: float = 0.0, form: str = "hinge"):
        if form not in PENALTY_FORMS:
            raise UserError(f"unknown budget penalty form {form!r} (known: {', '.join(PENALTY_FORMS)})")
        self.dists, self.costs, self.budget = dict(dists), dict(costs), float(budget)
        self.constant, self.form = float(constant), form

    def expected(self) -> torch.Tensor:
        return expected_cost(self.dists, self.costs, self.constant)

    def __call__(self, state=None) -> torch.Tensor:
        return budget_penalty(self.expected(), self.budget, self.form)


def model_penalty(budget, cost, model, dists: Mapping[str, BitDistribution], form: str) -> BudgetPenalty:
    """The penalty for ``dists`` (searched layer -> distribution) on a QuantModel: each searched layer's cost at
    the activation bits it reads in ``model``, every other layer's read-back cost a constant, so at the
    starting bits it equals the harness's own budget measure."""
    policy = model.policy()
    layer_cost = lambda layer, w, a: budget.layer_cost(cost, layer, w, a)  # noqa: E731
    costs = layer_cost_fns(layer_cost, dists, {layer: policy[layer].a for layer in dists})
    constant = sum(layer_cost(layer, policy[layer].w, policy[layer].a) for layer in cost.layers if layer not in dists)
    return BudgetPenalty(dists, costs, budget.value, constant=constant, form=form)
