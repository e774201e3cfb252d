"""``qerror``: the policy with the least total weight-quantization error within the budget.

A classic data-free baseline for bit allocation: for every searched unit and candidate bitwidth ``b``, the
error is ``sum ||W - Q_b(W)||^2`` over the unit's layers, ``Q_b`` the per-output-channel symmetric grid with
step ``max|W_c| / (2^(b-1) - 1)`` (the grid the shared fine-tune starts from, before LSQ learns its steps).
The core's integer program (:func:`mpqbench.cost.allocation.allocate`) then minimises the summed error under
the run's budget, whatever its kind. Activations stay at ``a`` bits. Unnormalised errors are the choice here:
a large layer's error counts for more, which is what the size of its output perturbation suggests.
"""

from __future__ import annotations

import torch

from mpqbench import hookimpl
from mpqbench.api import AllocationMethod
from mpqbench.cost.allocation import allocate
from mpqbench.quant.quantizers import int_range


def quant_error(weight: torch.Tensor, bits: int) -> float:
    """Squared error of the per-output-channel symmetric ``bits``-bit max-abs grid."""
    lo, hi = int_range(bits, signed=True)
    w = weight.detach().double().flatten(1)
    step = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / hi
    q = torch.clamp(torch.round(w / step), lo, hi) * step
    return float(((w - q) ** 2).sum())


class QError(AllocationMethod):
    name = "qerror"
    version = "1"
    description = "least total weight-quantization error within the budget (per-channel max-abs grids)"
    params = {"candidates": (2, 3, 4, 6, 8), "a": 8}

    # check (a one-line UserError before any run) and smallest_policy come from AllocationMethod

    def search(self, run):
        p = run.params
        candidates, units = self.candidates_and_units(run)
        groups = {run.layout.unit_name(g): g for g in run.layout.weight_groups}
        modules = dict(run.fp32_model().named_modules())
        with run.measure("search:errors"):
            errors = {u: {b: sum(quant_error(modules[layer].weight, b) for layer in groups[u]) for b in candidates}
                      for u in units}
        with run.measure("search:solver"):
            result = allocate(run.layout, run.cost, run.budget, run.fixed, errors, candidates, p["a"],
                              maximize=False)
        run.extra["qerror"] = {"errors": {u: {str(b): round(e, 6) for b, e in v.items()} for u, v in errors.items()},
                               **result.record()}
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(QError())
