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

from functools import partial
from typing import Mapping

import torch

from mpqbench.cost.expected import PENALTY_FORMS, BudgetPenalty, expected_cost, fixed_cost, layer_cost_fns  # noqa: F401
from mpqbench.plugins.dfq.quantizer import BitLogits

FORMS = PENALTY_FORMS


def expected_bits(choices: Mapping[str, BitLogits], params: Mapping[str, int]) -> torch.Tensor:
    """Parameter-weighted expected weight bits over the layers of ``choices`` (``params``: weights per layer)."""
    total = sum(params[layer] for layer in choices)
    return expected_cost(choices, {layer: (lambda b, n=params[layer]: n * b / total) for layer in choices})


CostPenalty = partial(BudgetPenalty, form="abs")
"""The core's expected-cost penalty with DFQ's default two-sided form (see the module docstring)."""
