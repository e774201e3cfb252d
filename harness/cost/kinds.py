"""The built-in budget kinds (registered by :mod:`mpqbench.plugin.core`): the three units of the shared cost
model (:meth:`mpqbench.cost.model.CostModel.layer_cost`)."""

from __future__ import annotations

from functools import partial

from mpqbench.plugin.objects import BudgetKind


def _builtin(unit: str, cost, layer: str, w: int, a: int, params) -> float:
    return cost.layer_cost(unit, layer, w, a)


KINDS = (
    BudgetKind("avg_bits", "bits", partial(_builtin, "avg_bits"), "parameter-weighted average weight bits"),
    BudgetKind("size_mb", "MiB", partial(_builtin, "size_mb"), "conv/linear weights, sum(params x bits) / 8 / 2^20"),
    BudgetKind("bitops_g", "GBitOPs", partial(_builtin, "bitops_g"),
               "sum(MACs x w x a) over conv/linear layers, a = the layer's input activation bits"),
)

BUILTIN = {kind.name: kind for kind in KINDS}
