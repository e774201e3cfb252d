"""``traffic_kb``: a budget kind for memory traffic per image, in KiB.

A layer moves its weights (``params x w`` bits, read once per ``batch`` images) and its input activations
(``in_channels x H x W x a`` bits). Every budget kind is a per-layer sum like this, which is what lets the
core's integer program spend it layer by layer; ``--budgets traffic_kb=w4`` means "the traffic of the
uniform 4-bit policy", ``--budgets traffic_kb:batch=8=w4`` the same with weights amortised over 8 images.
"""

from __future__ import annotations

from mpqbench import hookimpl
from mpqbench.api import BudgetKind


def traffic_kb(cost, layer: str, w: int, a: int, params) -> float:
    c = cost.layers[layer]  # params, macs and shape (mpqbench.integer.shapes.LayerShape)
    inputs = c.shape.in_channels * c.shape.in_hw[0] * c.shape.in_hw[1]
    return (c.params * w / params["batch"] + inputs * a) / 8 / 1024


@hookimpl
def mpqbench_register_budget_kinds(register):
    register(BudgetKind("traffic_kb", "KiB", traffic_kb, "weights (per batch) plus input activations, KiB/image",
                        {"batch": 1}))
