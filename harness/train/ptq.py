"""Post-training calibration: the quantizer steps of a fine-tune with zero epochs, set from the calibration split.

LSQ initialises a step lazily, on the first batch it quantizes. With training that batch is a training batch;
without it, it would be the first *test* batch of the evaluation, so reported accuracy would depend on the test
set. :func:`calibrate` therefore sets every step still pending at its bitwidth before the model is evaluated,
from the head of ``data.calib`` (``CALIB_IMAGES`` images, a subset of the training split), by the recipe's rule:

* ``mse`` (default): the step minimising the squared quantization error ``||Q_s(x) - x||^2`` over a grid of
  clipping ratios, ``s = r * max|x| / qmax`` for r in 0.01, 0.02, ..., 1.00 (the usual PTQ step search, as in
  e.g. Banner et al. 2019 and Nagel et al.'s white paper 2021). Weights: per output channel, on the weights.
  Activations: per tensor, on the point's input over the calibration batch (at most ``MAX_SAMPLES`` values,
  a fixed seeded sample), point by point in network order, so each point sees the outputs of the already
  calibrated, quantized layers before it.
* ``lsq``: LSQ's own rule (``2 mean|x| / sqrt(qmax)``) applied on the calibration batch.

Either way the one calibration forward pass (eval mode: BN keeps its running statistics) also initialises any
other data-dependent quantizer still waiting for its first batch (the affine activation quantizer's range,
a method's own quantizers). Steps a method already set (``set_step``) are kept. Rounding is to nearest; the recipe's
``ptq_reconstruct`` then learns it layer by layer (AdaRound, :mod:`mpqbench.train.reconstruct`).
"""

from __future__ import annotations

import torch
from torch import nn

from mpqbench.data.loader import to_float
from mpqbench.data.splits import Split
from mpqbench.quant.quantizers import LSQQuantizer, Quantizer

PTQ_INITS = ("mse", "lsq")
CLIP_RATIOS = tuple(i / 100 for i in range(1, 101))
CALIB_IMAGES = 512
"""Calibration images in the one forward pass (the head of the calibration split)."""
MAX_SAMPLES = 1 << 20
"""Activation values an MSE search looks at, per point: a fixed random sample keeps the search cheap."""


def _pending(q: Quantizer | None) -> bool:
    """An LSQ quantizer whose step at its current bitwidth has never been set."""
    return isinstance(q, LSQQuantizer) and not q.is_float and not bool(q.initialized[q.bits])


@torch.no_grad()
def mse_step(x: torch.Tensor, qmin: int, qmax: int, per_channel: bool) -> torch.Tensor:
    """The step (one per row of dim 0 if ``per_channel``, else shape (1,)) with the least squared error of
    round-to-nearest quantization on ``[qmin, qmax]``, over the clipping ratios ``CLIP_RATIOS`` of max|x|."""
    rows = x.detach().float().reshape(x.shape[0] if per_channel else 1, -1)
    if not per_channel and rows.shape[1] > MAX_SAMPLES:
        pick = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:MAX_SAMPLES]
        rows = rows[:, pick.to(rows.device)]
    peak = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
    best_err = torch.full_like(peak, float("inf"))
    best = peak / qmax
    for ratio in CLIP_RATIOS:
        step = peak * (ratio / qmax)
        err = (torch.round(rows * (1.0 / step)).clamp_(qmin, qmax) * step - rows).square_().sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, step, best)
    return best.flatten()


def _act_hook(module: nn.Module, args) -> None:
    q = module.quantizer
    if _pending(q):
        q.set_step(mse_step(args[0], q.qmin, q.qmax, per_channel=False))


def calibration_batch(model: nn.Module, calib: Split) -> torch.Tensor:
    """The head of the calibration split (``CALIB_IMAGES`` images) as float input on ``model``'s device."""
    device = next(model.parameters()).device
    return to_float(calib.x[:CALIB_IMAGES]).to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def calibrate(model, calib: Split, rule: str) -> None:
    """Set the pending steps of ``model`` (a QuantModel) from the calibration split by ``rule`` (``mse`` or
    ``lsq``, the recipe's ``ptq_init``)."""
    hooks = []
    if rule == "mse":
        for layer in model.layers().values():
            q = layer.weight_quantizer
            if _pending(q):
                q.set_step(mse_step(layer.weight, q.qmin, q.qmax, per_channel=bool(q.channels)))
        hooks = [act.register_forward_pre_hook(_act_hook) for act in model.points().values()]
    x = calibration_batch(model, calib)
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
