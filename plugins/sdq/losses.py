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
from typing import Callable

import torch
from torch import nn

from mpqbench.cost.expected import (  # noqa: F401
    PENALTY_FORMS,
    BudgetPenalty,
    budget_penalty,
    expected_cost,
    fixed_cost,
    layer_cost_fns,
)
from mpqbench.errors import UserError
from mpqbench.quant.quantizers import Quantizer

WEIGHTINGS = ("entropy", "surprisal", "none")
# The expected-cost regulariser is the core's (shared with every method that learns bits by gradient descent).
BudgetRegularizer = BudgetPenalty


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
