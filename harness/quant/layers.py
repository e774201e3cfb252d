"""Quantized Conv2d/Linear and the activation quantization point.

Each holds a replaceable quantizer slot, so a method can supply its own quantizer (a stochastic
bit-switcher, a mixture of candidate bitwidths, learned gates, ...) without rebuilding the model.
An empty slot (``None``) leaves the tensor in floating point.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench.quant.quantizers import Quantizer


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight passes through ``weight_quantizer`` (per output channel by default)."""

    weight_quantizer: Quantizer | None

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> "QuantConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
        q.load_state_dict(conv.state_dict())
        q.weight_quantizer = None
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return self._conv_forward(x, w, self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight passes through ``weight_quantizer``."""

    weight_quantizer: Quantizer | None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.load_state_dict(linear.state_dict())
        q.weight_quantizer = None
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)
        return F.linear(x, w, self.bias)


class ActQuant(nn.Module):
    """A point in the graph where an activation tensor is quantized once for all of its consumers."""

    def __init__(self, quantizer: Quantizer | None = None):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.quantizer is None else self.quantizer(x)
