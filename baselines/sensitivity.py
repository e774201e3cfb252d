"""Per-layer sensitivity scores and an integer program: the mixed-precision recipe current toolkits ship.

Quantize one unit at a time, measure how much the network suffers, and spend the budget where it hurts most:

1. **Images**: the first ``images`` images of the validation split (all of them when the split is smaller),
   never the test split; one fixed set, so every (unit, bits) pair is judged on the same data.
2. **Scores**: for every searched unit (the layout's weight groups) and every bitwidth in ``candidates``
   (default 2-8, as OMPQ), the unit's weights alone are quantized with the min-max symmetric per-channel
   quantizer (:func:`mpqbench.quant.quantizers.minmax_quantize`: data-free, the one such analyses use), and
   the FP32 model is compared with itself unquantized. Every other layer and every activation stays in FP32,
   pinned layers included: their error is the same whatever the search chooses, and leaving it out keeps each
   score the damage of its unit alone. ``metric``:

   - ``loss`` (default): increase of the mean cross-entropy;
   - ``acc``: drop of top-1 accuracy (coarse: a fraction of ``images``, often 0 at high bits);
   - ``snr``: noise-to-signal ratio of the logits, ||z_q - z||^2 / ||z||^2 (the inverse of the SNR, linear,
     not in dB, so that the noises of several units add up as the program assumes).

   Scores are assumed additive over units, as in every such toolkit; interactions are ignored.
3. **Program**: minimise the summed scores over one bitwidth per unit within the run's budget, solved exactly
   by :func:`mpqbench.cost.allocation.allocate` (the program OMPQ and HAWQ-V3 use).
4. **Activations**: every searched layer's input at ``a`` bits (8 by default, as OMPQ); fine-tuning is the
   shared recipe.

``run.extra["sensitivity"]`` keeps the metric, the number of images, the FP32 reference (loss, top-1), the
score table and the program's answer; search time splits into ``search:scores`` and ``search:solver``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench import hookimpl
from mpqbench.api import AllocationMethod
from mpqbench.cost.allocation import allocate
from mpqbench.data.loader import to_float
from mpqbench.errors import UserError
from mpqbench.plugin.params import Choice
from mpqbench.quant.quantizers import minmax_quantize

METRICS = ("loss", "acc", "snr")
Scores = dict[str, dict[int, float]]
EVAL_BATCH = 256
"""Images per forward pass while scoring (memory only: scores do not depend on it beyond rounding)."""


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def damage(metric: str, logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    """How much worse ``logits`` are than the FP32 ``reference`` under ``metric`` (0 when equal)."""
    if metric == "loss":
        return float(F.cross_entropy(logits, labels) - F.cross_entropy(reference, labels))
    if metric == "acc":
        return _top1(reference, labels) - _top1(logits, labels)
    return float((logits - reference).square().sum() / reference.square().sum().clamp_min(1e-12))


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.cat([model(to_float(x.to(device))).float().cpu() for x in images.split(EVAL_BATCH)])


@torch.no_grad()
def unit_scores(model: nn.Module, groups: Mapping[str, Sequence[str]], images: torch.Tensor, labels: torch.Tensor,
                candidates: Sequence[int], metric: str, device: torch.device) -> tuple[Scores, torch.Tensor]:
    """``scores[unit][bits]``: the damage of quantizing the layers of ``groups[unit]`` alone to ``bits``
    (min-max per channel) in the FP32 ``model`` (eval mode), on uint8 ``images``; and the FP32 logits. The
    model's weights are restored after each unit."""
    modules = dict(model.named_modules())
    reference = _logits(model, images, device)
    scores: Scores = {}
    for unit, layers in groups.items():
        saved = {layer: modules[layer].weight.detach().clone() for layer in layers}
        scores[unit] = {}
        for bits in candidates:
            for layer in layers:
                modules[layer].weight.copy_(minmax_quantize(saved[layer], bits))
            scores[unit][bits] = damage(metric, _logits(model, images, device), reference, labels)
        for layer in layers:
            modules[layer].weight.copy_(saved[layer])
    return scores, reference


class Sensitivity(AllocationMethod):
    name = "sensitivity"
    version = "1"
    description = "per-unit quantization damage on validation images (loss, accuracy or SNR), integer program"
    params = {"metric": Choice(*METRICS), "candidates": (2, 3, 4, 5, 6, 7, 8), "a": 8, "images": 512}

    def check(self, params) -> None:
        super().check(params)
        if params["images"] < 1:
            raise UserError(f"sensitivity: images={params['images']} must be at least 1")

    def search(self, run):
        p = run.params
        candidates, units = self.candidates_and_units(run)
        groups = {run.layout.unit_name(g): g for g in run.layout.weight_groups}
        val = run.data.val
        images, labels = val.x[:p["images"]], val.y[:p["images"]]
        model = run.fp32_model().to(run.device)
        with run.measure("search:scores"):
            scores, reference = unit_scores(model, {u: groups[u] for u in units}, images, labels, candidates,
                                            p["metric"], run.device)
        with run.measure("search:solver"):
            result = allocate(run.layout, run.cost, run.budget, run.fixed, scores, candidates, p["a"],
                              maximize=False)
        run.extra["sensitivity"] = {
            "metric": p["metric"], "images": len(labels), "units": units,
            "reference": {"loss": float(F.cross_entropy(reference, labels)),
                          "top1": _top1(reference, labels)},
            "scores": {u: {str(b): s for b, s in row.items()} for u, row in scores.items()}, **result.record()}
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(Sensitivity())
