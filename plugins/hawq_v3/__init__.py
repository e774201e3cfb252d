"""HAWQ-V3: Hessian-aware mixed precision by integer programming (Yao et al., ICML 2021, arXiv 2011.10680).

The Hessian-aware reference for OMPQ:

1. **Sensitivity**: per unit (the layout's weight groups), the trace of the Hessian of the training loss with
   respect to all the unit's weights, by Hutchinson's estimator (Rademacher vectors, Hessian-vector products
   through autograd; at most ``iters`` iterations, stopping at relative tolerance ``tol`` as PyHessian
   does), on ``batches`` batches of ``batch`` training images drawn by the run's seed, divided by the unit's
   parameter count. FP32 model with batch norm in eval mode: the Hessian of the deterministic network that
   is fine-tuned and deployed (HAWQ-V3 folds BN and fine-tunes with fixed BN), and no coupling between the
   images of a batch through batch statistics. The official notebook keeps one trace per *layer* and ties a
   downsample conv's bits to its main-path conv by an equality; here the tied layers are one unit whose
   trace covers all their weights (per-layer traces are recorded as well). A negative estimate (possible
   away from a minimum) is kept as is, as in the official ILP: that unit then prefers fewer bits.
2. **Perturbation**: Delta_u(b) = ||Q_b(W_u) - W_u||^2 with the shared symmetric per-channel quantizer the
   fine-tune uses; ``step`` picks its initial per-channel step (``lsq``: the fine-tune's own initialisation,
   default; ``minmax``: HAWQ-V3's quantizer; ``mse``: the min-squared-error clipping).
3. **Program**: minimise sum_u trace_u * Delta_u(b_u) over b_u in ``candidates`` (default {4, 8}, the
   paper's hardware-supported set) within the run's budget, solved exactly by
   :func:`mpqbench.cost.allocation.allocate`.
4. **Activations**: with ``a=None`` (default) each searched layer's input takes that layer's weight bits, as
   in the official ``bit_config.py``; layers reading one tensor take the largest, and the BitOPs of a
   downsample conv, a product of two units' choices, is modelled exactly. An integer ``a`` fixes them.
5. Fine-tuning is the shared recipe.

``run.extra["hawq-v3"]`` keeps the traces (total and per parameter, per unit and per layer), the Delta
table, iterations used, convergence, the Hessian batch and the program's answer; search time splits into
``search:trace``, ``search:delta`` and ``search:solver``.
"""

from __future__ import annotations

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
from mpqbench.plugins.hawq_v3.hessian import STEP_INITS, hutchinson, perturbation


def sensitivity(model: nn.Module, cost: CostModel, units: Sequence[str], losses: Sequence[Callable[[], torch.Tensor]],
                candidates: Sequence[int], *, iters: int, tol: float, step: str, seed: int,
                timer: Callable[[str], ContextManager]) -> dict:
    """Per-unit traces (phase ``search:trace``), perturbations (``search:delta``) and the program's scores
    trace_u / n_u * Delta_u(b). ``losses`` are closures over ``model`` (one per batch)."""
    layout = cost.layout
    groups = {layout.unit_name(g): g for g in layout.weight_groups}
    model.requires_grad_(False)
    modules = dict(model.named_modules())
    weights = {layer: [modules[layer].weight.requires_grad_(True)] for u in units for layer in groups[u]}
    with timer("search:trace"):
        layer_traces, used, converged = hutchinson(losses, weights, iters, tol, torch.Generator().manual_seed(seed))
    params = cost.unit_params()
    traces = {u: sum(layer_traces[layer] for layer in groups[u]) for u in units}
    per_param = {u: traces[u] / params[u] for u in units}
    with timer("search:delta"):
        delta = {u: {b: sum(perturbation(modules[layer], b, step) for layer in groups[u]) for b in candidates}
                 for u in units}
    return {"iterations": used, "converged": converged, "trace": traces, "trace_per_param": per_param,
            "layer_trace": layer_traces, "delta": delta,
            "scores": {u: {b: per_param[u] * delta[u][b] for b in candidates} for u in units}}


class HAWQV3(Method):
    name = "hawq-v3"
    version = "1"
    description = "Hutchinson Hessian trace x quantization perturbation, integer program (Yao et al. 2021)"
    params = {"candidates": (4, 8), "a": None, "iters": 100, "tol": 1e-3, "batch": 200, "batches": 1,
              "step": Choice(*STEP_INITS)}

    def check(self, params) -> None:
        check_bits(self.name, params["candidates"], params["a"])
        if params["iters"] < 1 or not params["tol"] >= 0:
            raise UserError(f"hawq-v3: iters={params['iters']} must be >= 1 and tol={params['tol']} >= 0")
        if params["batch"] < 1 or params["batches"] < 1:
            raise UserError("hawq-v3: batch and batches must be at least 1")

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def search(self, run):
        p = run.params
        candidates = check_bits(self.name, p["candidates"], p["a"])
        train = run.data.train
        if p["batch"] < 1 or p["batches"] < 1 or p["batch"] * p["batches"] > len(train):
            raise UserError(f"hawq-v3: {p['batches']} batches of {p['batch']} images do not fit in the "
                            f"{len(train)} training images")
        units = searched_units(run.layout, run.fixed)
        model = run.fp32_model()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed))
        indices = order[:p["batch"] * p["batches"]]
        losses = [lambda idx=idx: F.cross_entropy(model(to_float(train.x[idx])), train.y[idx])
                  for idx in indices.split(p["batch"])]
        found = sensitivity(model, run.cost, units, losses, candidates, iters=p["iters"], tol=p["tol"],
                            step=p["step"], seed=run.seed, timer=run.measure)
        with run.measure("search:solver"):
            result = allocate(run.layout, run.cost, run.budget, run.fixed, found.pop("scores"), candidates, p["a"],
                              maximize=False)
        found["delta"] = {u: {str(b): d for b, d in row.items()} for u, row in found["delta"].items()}
        run.extra["hawq-v3"] = {"units": units, "batch_indices": indices.tolist(), **found, **result.record()}
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(HAWQV3())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.hawq_v3 import bench

    register(Benchmark("hawq-trace", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
