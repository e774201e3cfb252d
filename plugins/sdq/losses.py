"""SDQ's loss terms, usable by any method's training: the expected-cost budget regulariser (stage 1) and
entropy-aware bin regularisation, EBR (stage 2). Each is a plain function plus a callable ``fn(state)`` for the
trainer's ``add_loss`` (the weight lambda is the trainer's).

**Budget regulariser.** Every budget kind is a sum over layers of the layer's cost at its weight bits (size,
average bits; BitOPs at the layer's fixed activation bits), so the expected cost under the layers' bitwidth
distributions is ``E[C] = constant + sum_l sum_b p_l(b) * c_l(b)``, exact and differentiable in the DBPs
(``constant``: the pinned layers). The penalty is on r = E[C] / budget - 1 (relative, so one weight works for
every budget kind and model): ``form="hinge"`` max(0, r) (default: off once the budget is met), ``"abs"`` |r| and
``"square"`` r^2 (pull to the budget from both sides), ``"linear"`` E[C] / budget (always pushes down, the
"expected compression" term). Any object with ``probs() -> {bits: tensor}`` is a distribution here (SDQ's gates,
DFQ's logits).

**EBR.** Bin regularisation (Xu et al., ICCV 2021): per quantization bin i of a layer (the weights whose integer
code is i, as the fake-quant forward computes it), (mean_i(v) - level_i)^2 + var_i(v), empty bins skipped,
population variance (0 for one weight). Here v = w / step in code units and level_i = i - zero_point, so the
term is scale-free across layers and per-channel steps pool into one set of bins; the step is the quantizer's
current one, which EBR does not move. Note (mean - level)^2 + var = mean of (v - level)^2: BR is the bin-averaged
squared quantization error, each bin counting once whatever its occupancy. SDQ's entropy-aware version (its
Eq. 10, not seen) weights bins by entropy so they stay evenly used; the reconstruction here, ``weighting``:

* ``"entropy"`` (default): w_i = -K p_i log p_i / log K, bin i's term of the code entropy (p_i its occupancy,
  K = 2^bits bins), scaled so that evenly used bins weigh 1 each (then EBR = BR);
* ``"surprisal"``: w_i = -log p_i / log K, under-used bins pulled harder;
* ``"none"``: w_i = 1, plain BR.

A layer's term is ``sum_i w_i * BR_i / K`` (a mean over its bins, so layers at different bitwidths weigh alike);
the model's EBR is the sum over its quantized conv/linear layers. It is exactly 0 when every weight sits on its
level.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Protocol

import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.quant.quantizers import Quantizer

CostFn = Callable[[int], float]
"""w -> a layer's share of the budget unit at w-bit weights."""
PENALTY_FORMS = ("hinge", "abs", "square", "linear")
WEIGHTINGS = ("entropy", "surprisal", "none")


class BitDistribution(Protocol):
    def probs(self) -> Mapping[int, torch.Tensor]: ...


LayerCost = Callable[[str, int, int], float]
"""(layer, w, a) -> the layer's share of the run's budget measure (the budget kind's per-layer cost)."""


def layer_cost_fns(layer_cost: LayerCost, layers, act_bits: int | Mapping[str, int]) -> dict[str, CostFn]:
    """Per layer, ``w -> layer_cost(layer, w, a)`` at the layer's fixed input activation bits ``a``."""
    def fn(layer: str) -> CostFn:
        a = act_bits if isinstance(act_bits, int) else act_bits[layer]
        return lambda w: layer_cost(layer, int(w), a)
    return {layer: fn(layer) for layer in layers}


def fixed_cost(layer_cost: LayerCost, fixed: Mapping[str, tuple[int, int]]) -> float:
    """The pinned layers' part of the budget measure (the regulariser's constant)."""
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


class BudgetRegularizer:
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


def bin_regularization(w: torch.Tensor, quantizer: Quantizer, weighting: str = "entropy") -> torch.Tensor:
    """One layer's (entropy-aware) bin regularisation of weights ``w`` on ``quantizer``'s current grid."""
    if weighting not in WEIGHTINGS:
        raise UserError(f"unknown EBR weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    codes = quantizer.integers(w)
    s = quantizer.scale().to(device=w.device, dtype=w.dtype)
    z = quantizer.zero_point().to(w.device)
    shape = (-1,) + (1,) * (w.dim() - 1) if s.numel() > 1 else (1,)
    residual = w / s.reshape(shape) - (codes - z.reshape(shape)).to(w.dtype)
    k = quantizer.qmax - quantizer.qmin + 1
    index = (codes - quantizer.qmin).flatten()
    counts = torch.bincount(index, minlength=k).to(w.dtype)
    squares = torch.zeros(k, dtype=w.dtype, device=w.device).index_add(0, index, residual.flatten() ** 2)
    used = counts > 0
    per_bin = squares[used] / counts[used]
    if weighting == "none":
        return per_bin.sum() / k
    p = counts[used] / counts.sum()
    if weighting == "entropy":
        weights = -k * p * torch.log(p) / math.log(k)
    else:
        weights = -torch.log(p) / math.log(k)
    return (weights * per_bin).sum() / k


def ebr(model: nn.Module, weighting: str = "entropy") -> torch.Tensor:
    """EBR summed over every module with a weight and a non-float ``weight_quantizer`` (conv/linear layers of
    a ``QuantModel``)."""
    total = torch.zeros(())
    for module in model.modules():
        q = getattr(module, "weight_quantizer", None)
        if isinstance(q, Quantizer) and not q.is_float:
            total = total + bin_regularization(module.weight, q, weighting)
    return total


def ebr_term(weighting: str = "entropy") -> Callable[[object], torch.Tensor]:
    """EBR as a loss term ``fn(state)`` on ``state.model`` (for ``trainer.add_loss("ebr", ..., weight=0.1)``,
    SDQ's lambda_E)."""
    if weighting not in WEIGHTINGS:
        raise UserError(f"unknown EBR weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")
    return lambda state: ebr(state.model, weighting)
