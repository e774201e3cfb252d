"""AdaRound: a short layer-wise reconstruction of the weights' rounding after PTQ calibration (recipe field
``ptq_reconstruct``, the iterations per layer; 0 = off, plain round-to-nearest).

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020). Round-to-nearest
minimises each weight's own error, not the layer's output error; AdaRound learns, per weight, whether to round
down or up so that the layer's output on calibration data stays close to the FP32 layer's:

* per layer in network order, ``W~ = s * clamp(floor(W / s) + h(V), qmin, qmax)`` with the calibrated step
  ``s`` (kept), ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` (rectified sigmoid, zeta = 1.1,
  gamma = -0.1) and V initialised so that ``h(V)`` is the fractional part of ``W / s`` (``W~ = W`` at the start);
* loss ``||layer(x~; W~) - layer_fp32(x)||^2`` (mean over elements) ``+ lam * sum(1 - |2 h(V) - 1|^beta)``:
  the FP32 layer on the FP32 network's input ``x``, the quantized layer on the quantized network's input
  ``x~`` (the paper's asymmetric form, so a layer also corrects the error of the layers before it, which
  are already rounded); the regulariser, off for the first 20% of the iterations, then with ``beta`` annealed
  from 20 to 2, drives every ``h`` to 0 or 1;
* Adam (lr 1e-3) on V alone, batches of 32 of the calibration images that calibrated the steps
  (:func:`mpqbench.train.ptq.calibration_batch`); then ``W <- s * clamp(floor(W / s) + [h(V) >= 0.5])``: the
  weight sits on its grid, so the model's own round-to-nearest reproduces the learned rounding and every
  target runs it unchanged.

Choices where the paper differs: it runs 10k-20k iterations per layer and ``lam`` = 0.01 on ImageNet; here the
count is the recipe's (a few hundred keep a ResNet-20 PTQ row in minutes on a CPU) and ``lam`` scales with
the layer's output size as its MSE does. BRECQ's block-wise form (a residual block reconstructed as a whole)
is not done: the traced network keeps layers, not blocks; activation steps stay as calibrated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mpqbench.data.splits import Split
from mpqbench.quant.layers import QuantConv2d
from mpqbench.quant.quantizers import LSQQuantizer
from mpqbench.train.ptq import calibration_batch

ZETA, GAMMA = 1.1, -0.1
LAM = 0.01
WARMUP = 0.2
BETA = (20.0, 2.0)
BATCH = 32
LR = 1e-3


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has been reached."""


def _capture(model: nn.Module, module: nn.Module, images: torch.Tensor, output: bool) -> torch.Tensor:
    """``module``'s input (or output) when ``model`` runs on ``images``, stopping the pass there."""
    seen = []

    def hook(mod, args, result=None):
        seen.append((result if output else args[0]).detach())
        raise _Stop

    handle = module.register_forward_hook(hook) if output else module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for start in range(0, len(images), 128):
                try:
                    model(images[start:start + 128])
                except _Stop:
                    pass
    finally:
        handle.remove()
    return torch.cat(seen)


def soft_rounding(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def initial_v(fraction: torch.Tensor) -> torch.Tensor:
    """V with ``soft_rounding(V) = fraction`` (fractions in [0, 1))."""
    p = ((fraction - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(x, w, bias)
    return F.linear(x, w, bias)


def adaround_layer(layer: nn.Module, x_q: torch.Tensor, target: torch.Tensor, iters: int,
                   generator: torch.Generator) -> dict:
    """Learn the rounding of ``layer``'s weights (its LSQ step kept) and write the rounded weights back; returns
    the output MSE before and after, and the fraction of weights rounded differently from nearest."""
    q: LSQQuantizer = layer.weight_quantizer
    w = layer.weight.detach()
    step = q.scale().reshape((-1,) + (1,) * (w.dim() - 1)) if q.channels else q.scale()
    floor = torch.floor(w / step)
    v = nn.Parameter(initial_v(w / step - floor))
    opt = torch.optim.Adam([v], lr=LR)

    def weights(h: torch.Tensor) -> torch.Tensor:
        return step * torch.clamp(floor + h, q.qmin, q.qmax)

    def mse(h: torch.Tensor) -> float:
        with torch.no_grad():
            return float(F.mse_loss(_apply(layer, x_q, weights(h)), target))

    nearest = (w / step - floor >= 0.5).float()
    before = mse(nearest)
    for i in range(iters):
        pick = torch.randint(len(x_q), (min(BATCH, len(x_q)),), generator=generator)
        h = soft_rounding(v)
        loss = F.mse_loss(_apply(layer, x_q[pick], weights(h)), target[pick])
        progress = (i - WARMUP * iters) / max(1.0, (1 - WARMUP) * iters)
        if progress >= 0:
            beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - progress)
            loss = loss + LAM * (1 - (2 * h - 1).abs().pow(beta)).sum() / target[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    hard = (soft_rounding(v.detach()) >= 0.5).float()
    with torch.no_grad():
        layer.weight.copy_(weights(hard))
    return {"mse_nearest": before, "mse": mse(hard), "flipped": float((hard != nearest).float().mean())}


def reconstruct(model, fp32: nn.Module, calib: Split, iters: int, seed: int = 0) -> dict[str, dict]:
    """AdaRound every quantized layer of ``model`` (a calibrated QuantModel) against ``fp32``, in network order;
    returns per layer what :func:`adaround_layer` reports. Layers at float precision or with a quantizer other
    than LSQ are left as they are."""
    images = calibration_batch(model, calib)
    fp32 = fp32.to(images.device).eval()
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    report = {}
    for name, layer in model.layers().items():
        q = layer.weight_quantizer
        if not isinstance(q, LSQQuantizer) or q.is_float:
            continue
        x_q = _capture(model, layer, images, output=False)
        target = _capture(fp32, fp32.get_submodule(name), images, output=True)
        with torch.enable_grad():
            report[name] = {k: round(v, 6) if math.isfinite(v) else v
                            for k, v in adaround_layer(layer, x_q, target, iters, generator).items()}
    return report
