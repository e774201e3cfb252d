"""``ema-max``: an activation quantizer selectable by a recipe (``--set act_quantizer=ema-max``).

Per tensor, symmetric about zero (unsigned where the tensor is non-negative, after a ReLU): the step is
``m / qmax`` with ``m`` an exponential moving average (``momentum``) of the batch's max |x| while training,
frozen in evaluation: the max calibration of post-training quantizers, kept up to date during fine-tuning.
Nothing is learned, so the gradient is the straight-through estimator of the rounding. Export needs only
``scale()`` and the zero point (0): a quantizer is exportable when it is one uniform grid.
"""

from __future__ import annotations

import torch

from mpqbench import hookimpl
from mpqbench.api import QuantizerEntry
from mpqbench.quant.quantizers import Quantizer, round_ste


class EMAMax(Quantizer):
    def __init__(self, bits: int, signed: bool, momentum: float = 0.9):
        super().__init__(bits, signed)
        self.momentum = momentum
        self.register_buffer("running_max", torch.zeros(1))
        self.register_buffer("seen", torch.zeros(1, dtype=torch.bool))

    def _fake(self, x):
        if self.training:
            with torch.no_grad():
                m = x.detach().abs().max().reshape(1).float()
                if bool(self.seen):
                    m = self.momentum * self.running_max + (1 - self.momentum) * m
                self.running_max.copy_(m)
                self.seen.fill_(True)
        s = self.scale()
        return torch.clamp(round_ste(x / s), self.qmin, self.qmax) * s

    def scale(self):
        return (self.running_max.clamp_min(1e-8) / self.qmax).to(torch.float32)


def build(point, bits: int) -> Quantizer:
    return EMAMax(bits, signed=point.signed)


@hookimpl
def mpqbench_register_quantizers(register):
    register(QuantizerEntry("ema-max", build, "per-tensor max-abs with an EMA, frozen in evaluation"))
