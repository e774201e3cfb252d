"""HAWQ-V3's two ingredients: per-unit Hessian traces (Hutchinson) and quantization perturbations."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mpqbench.quant.model import default_weight_quantizer
from mpqbench.quant.quantizers import minmax_quantize

PERTURBATIONS = ("minmax", "lsq")
"""Quantizers the perturbation can be measured with; the first is the default."""


def hutchinson(losses: Sequence[Callable[[], torch.Tensor]], groups: Mapping[str, Sequence[torch.Tensor]],
               max_iters: int, tol: float, generator: torch.Generator) -> tuple[dict[str, float], int, bool]:
    """Traces tr(H_gg) of the Hessian of the mean of ``losses`` (one closure per batch) with respect to each
    group of parameters, as PyHessian estimates them: E[v^T H v] over Rademacher v, with Hessian-vector
    products by double backpropagation. One v over all groups serves every group at once (the blocks of v
    are independent). Stops when every group's running mean moves by less than ``tol`` relative (PyHessian's
    criterion, |m_k - m_(k-1)| / (|m_(k-1)| + 1e-6)), or after ``max_iters``.

    Returns the traces, the iterations used and whether the tolerance was met. The first-order graphs of
    all batches are kept for the whole estimate (memory grows with the number of batches)."""
    names = list(groups)
    params = [p for g in names for p in groups[g]]
    owner = [g for g in names for _ in groups[g]]
    grads = [torch.autograd.grad(loss(), params, create_graph=True) for loss in losses]
    sums = dict.fromkeys(names, 0.0)
    means: dict[str, float] = {}
    for it in range(1, max_iters + 1):
        v = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype).mul_(2).sub_(1) for p in params]
        hv = [torch.zeros_like(p) for p in params]
        for g in grads:
            for acc, h in zip(hv, torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)):
                acc.add_(h, alpha=1.0 / len(grads))
        for name, vi, hi in zip(owner, v, hv):
            sums[name] += float((vi * hi).sum())
        previous, means = means, {g: sums[g] / it for g in names}
        if previous and all(abs(means[g] - previous[g]) / (abs(previous[g]) + 1e-6) < tol for g in names):
            return means, it, True
    return means, max_iters, False


@torch.no_grad()
def perturbation(layer: nn.Module, bits: int, quantizer: str = "minmax") -> float:
    """||Q_b(W) - W||^2 of ``layer``'s weights.

    ``minmax``: HAWQ-V3's own symmetric per-channel quantizer, step max|w| / qmax (:func:`minmax_quantize`).
    ``lsq``: the fine-tune's weight quantizer (``default_weight_quantizer``) at its initial step,
    2 mean|w| / sqrt(qmax) per channel; at 8 bits that step is several times the min-max one (it is set for
    training, not for measuring rounding error), so Delta(8) comes out one to two orders of
    magnitude larger."""
    w = layer.weight.detach()
    q = minmax_quantize(w, bits) if quantizer == "minmax" else default_weight_quantizer(layer, bits)(w)
    return float((q - w).square().sum())
