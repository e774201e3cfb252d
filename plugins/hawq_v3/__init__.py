"""HAWQ-V3: Hessian-aware mixed precision by integer programming (Yao et al., ICML 2021, arXiv 2011.10680).

The Hessian-aware reference for OMPQ:

1. **Units** (``share``): the layers that share one weight bitwidth. ``conv1`` (default): a residual block's
   downsample conv shares the bits of the block's *first* conv, the conv reading the same input, as the
   official ILP ties them (``x4 == x6``: ``layer2.0.conv1`` with the downsample); ``conv2``: the model's own
   declaration (with the block's second conv, as OMPQ and the other methods). The run is fine-tuned and its
   policies checked on these units (``units``, :func:`unit_layout`).
2. **Sensitivity**: per unit, the trace of the Hessian of the training loss with respect to all the unit's
   weights, by Hutchinson's estimator (Rademacher vectors, Hessian-vector products through autograd; at
   most ``iters`` iterations, stopping at relative tolerance ``tol`` as PyHessian does), on ``batches``
   batches of ``batch`` training images drawn by the run's seed, divided by the unit's parameter count. FP32
   model with batch norm in eval mode: the Hessian of the deterministic network that is fine-tuned and
   deployed (HAWQ-V3 folds BN and fine-tunes with fixed BN), and no coupling between the images of a batch
   through batch statistics. The official notebook keeps one trace per *layer* and ties the downsample's
   bits by an equality; here the tied layers are one unit whose trace covers all their weights (per-layer
   traces are recorded as well). A negative estimate (possible away from a minimum) is kept as is, as in
   the official ILP: that unit then prefers fewer bits.
3. **Perturbation** (``perturbation``): Delta_u(b) = ||Q_b(W_u) - W_u||^2. ``minmax`` (default): HAWQ-V3's
   weight quantizer, symmetric per output channel with step max|w| / (2^(b-1) - 1), no clipping
   (:func:`mpqbench.quant.quantizers.minmax_quantize`); ``lsq``: the fine-tune's LSQ quantizer at its initial
   step, several times wider at 8 bits (it is set for training), which inflates Delta(8) and so shrinks
   what 8 bits gain over fewer.
4. **Program**: minimise sum_u trace_u / n_u * Delta_u(b_u) over b_u in ``candidates`` (default {4, 8}, the
   paper's hardware-supported set) within the run's budget, solved exactly by
   :func:`mpqbench.cost.allocation.allocate`.
5. **Activations**: with ``a=None`` (default) each searched layer's input takes that layer's weight bits, as
   in the official ``bit_config.py``; layers reading one tensor take the largest (with ``share=conv1`` a
   downsample and its block's first conv read one tensor and are one unit, so they agree; with ``conv2`` the
   BitOPs of the downsample, a product of two units' choices, is modelled exactly). An integer ``a`` fixes
   them.
6. Fine-tuning is the shared recipe.

``run.extra["hawq-v3"]`` keeps the tied groups, the traces (total and per parameter, per unit and per layer), the Delta
table, iterations used, convergence, the Hessian batch and the program's answer; search time splits into
``search:trace``, ``search:delta`` and ``search:solver``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench import hookimpl
from mpqbench.api import Benchmark, Method
from mpqbench.cost.allocation import allocate, check_bits, lowest_policy, searched_units
from mpqbench.cost.model import CostModel
from mpqbench.data.loader import to_float
from mpqbench.errors import UserError
from mpqbench.plugin.params import Choice
from mpqbench.plugins.hawq_v3.hessian import PERTURBATIONS, hutchinson, perturbation
from mpqbench.quant.layout import QuantLayout

SHARES = ("conv1", "conv2")
"""Which conv of its block a residual downsample shares bits with; the first is the default."""


def unit_layout(layout: QuantLayout, share: str) -> QuantLayout:
    """HAWQ-V3's units on the model's ``layout``. ``conv2``: the layout as declared. ``conv1``: a layer the
    model ties to others (a downsample conv) moves to the unit of the layer outside its group that reads the
    same tensor (the block's first conv); a tied layer with no such reader stays where the model put it."""
    if share == "conv2":
        return layout
    unit_of = {layer: layout.unit_name(g) for g in layout.weight_groups for layer in g}
    anchor = dict(unit_of)
    for group in layout.weight_groups:
        if len(group) > 1:
            for layer in group:
                readers = [m for m in layout.act_group_of(layer) if m not in group]
                if readers:
                    anchor[layer] = unit_of[readers[0]]
    tied = defaultdict(list)
    for layer in layout.layers:
        tied[anchor[layer]].append(layer)
    return layout.regroup(tied.values())


def sensitivity(model: nn.Module, layout: QuantLayout, cost: CostModel, searched: Sequence[str],
                losses: Sequence[Callable[[], torch.Tensor]], candidates: Sequence[int], *, iters: int, tol: float,
                quantizer: str, seed: int, timer: Callable[[str], ContextManager]) -> dict:
    """Per-unit traces (phase ``search:trace``), perturbations (``search:delta``) and the program's scores
    trace_u / n_u * Delta_u(b), for the ``searched`` units of ``layout`` (HAWQ-V3's own, see :func:`units`).
    ``losses`` are closures over ``model`` (one per batch)."""
    groups = {layout.unit_name(g): g for g in layout.weight_groups}
    model.requires_grad_(False)
    modules = dict(model.named_modules())
    weights = {layer: [modules[layer].weight.requires_grad_(True)] for u in searched for layer in groups[u]}
    with timer("search:trace"):
        layer_traces, used, converged = hutchinson(losses, weights, iters, tol, torch.Generator().manual_seed(seed))
    traces = {u: sum(layer_traces[layer] for layer in groups[u]) for u in searched}
    per_param = {u: traces[u] / sum(cost.layers[layer].params for layer in groups[u]) for u in searched}
    with timer("search:delta"):
        delta = {u: {b: sum(perturbation(modules[layer], b, quantizer) for layer in groups[u]) for b in candidates}
                 for u in searched}
    return {"iterations": used, "converged": converged, "trace": traces, "trace_per_param": per_param,
            "layer_trace": layer_traces, "delta": delta,
            "scores": {u: {b: per_param[u] * delta[u][b] for b in candidates} for u in searched}}


class HAWQV3(Method):
    name = "hawq-v3"
    version = "2"
    description = "Hutchinson Hessian trace x quantization perturbation, integer program (Yao et al. 2021)"
    params = {"candidates": (4, 8), "a": None, "iters": 100, "tol": 1e-3, "batch": 200, "batches": 1,
              "perturbation": Choice(*PERTURBATIONS), "share": Choice(*SHARES)}

    def check(self, params) -> None:
        check_bits(self.name, params["candidates"], params["a"])
        if params["iters"] < 1 or not params["tol"] >= 0:
            raise UserError(f"hawq-v3: iters={params['iters']} must be >= 1 and tol={params['tol']} >= 0")
        if params["batch"] < 1 or params["batches"] < 1:
            raise UserError("hawq-v3: batch and batches must be at least 1")

    def units(self, params, layout):
        return unit_layout(layout, params["share"])

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def search(self, run):
        p = run.params
        candidates = check_bits(self.name, p["candidates"], p["a"])
        train = run.data.train
        if p["batch"] < 1 or p["batches"] < 1 or p["batch"] * p["batches"] > len(train):
            raise UserError(f"hawq-v3: {p['batches']} batches of {p['batch']} images do not fit in the "
                            f"{len(train)} training images")
        layout = run.layout  # HAWQ-V3's units (``units``), which the harness checks its policies against
        units = searched_units(layout, run.fixed)
        model = run.fp32_model()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed))
        indices = order[:p["batch"] * p["batches"]]
        losses = [lambda idx=idx: F.cross_entropy(model(to_float(train.x[idx])), train.y[idx])
                  for idx in indices.split(p["batch"])]
        found = sensitivity(model, layout, run.cost, units, losses, candidates, iters=p["iters"], tol=p["tol"],
                            quantizer=p["perturbation"], seed=run.seed, timer=run.measure)
        with run.measure("search:solver"):
            result = allocate(layout, run.cost, run.budget, run.fixed, found.pop("scores"), candidates, p["a"],
                              maximize=False)
        found["delta"] = {u: {str(b): d for b, d in row.items()} for u, row in found["delta"].items()}
        run.extra["hawq-v3"] = {"units": units, "groups": [list(g) for g in layout.weight_groups if len(g) > 1],
                                "batch_indices": indices.tolist(), **found, **result.record()}
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(HAWQV3())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.hawq_v3 import bench

    register(Benchmark("hawq-trace", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
