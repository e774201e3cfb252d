"""Fake quantizers: the shared building blocks every method composes or extends.

All quantizers map a float tensor to the grid ``scale * (q - zero_point)`` with integer ``q`` in
``[qmin, qmax]`` and pass gradients straight through the rounding (STE). They use PyTorch's fused
fake-quantize operators, which round half to even on ``x * (1 / scale)``; :meth:`Quantizer.integers`
reproduces that exactly, so exported integers are the ones the fine-tuned model saw.

``bits`` can be changed at any time (``set_bits``) without rebuilding the model, and learned state is kept
per bitwidth: methods that learn bitwidths while training (SDQ, DDQ, ...) switch back and forth and rely
on it. ``bits >= 32`` means "leave in floating point".

A quantizer is a *single grid* when its output is one uniform grid at ``bits`` (the export needs that).
Method-specific quantizers that are not (a mixture of bitwidths, a stochastic switch, gated levels) set
``single_grid = False`` and implement ``collapse()``, which returns the single-grid quantizer they end as.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpqbench.quant.policy import FLOAT_BITS


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient, for methods that build their own quantizers."""
    return x + (torch.round(x) - x).detach()


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Two's-complement range for signed tensors, ``[0, 2^b - 1]`` for unsigned ones."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


class Quantizer(nn.Module):
    """Base class. Subclasses implement ``_fake`` and ``scale``; zero point is 0 unless overridden."""

    single_grid = True

    def __init__(self, bits: int, signed: bool):
        super().__init__()
        self.bits = int(bits)
        self.signed = bool(signed)

    @property
    def qmin(self) -> int:
        return int_range(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_range(self.bits, self.signed)[1]

    @property
    def is_float(self) -> bool:
        return self.bits >= FLOAT_BITS

    def set_bits(self, bits: int) -> None:
        self.bits = int(bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_float:
            return x
        return self._fake(x)

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scale(self) -> torch.Tensor:
        """Positive step size: one value per channel for per-channel quantizers, else shape ``(1,)``."""
        raise NotImplementedError

    def zero_point(self) -> torch.Tensor:
        return torch.zeros_like(self.scale(), dtype=torch.int64)

    @torch.no_grad()
    def integers(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes ``q`` the fake-quant forward uses for ``x`` (int64)."""
        s = self.scale().to(torch.float32)
        z = self.zero_point()
        shape = (-1,) + (1,) * (x.dim() - 1) if s.numel() > 1 else (1,)
        inv = (1.0 / s).reshape(shape)
        q = torch.round(x.to(torch.float32) * inv).to(torch.int64) + z.reshape(shape)
        return q.clamp(self.qmin, self.qmax)

    def collapse(self) -> "Quantizer":
        """The single-grid quantizer this one ends as (itself, for a single grid)."""
        return self

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"


class LSQQuantizer(Quantizer):
    """Learned Step Size Quantization (Esser et al., ICLR 2020).

    Symmetric (zero point 0), one learnable step per tensor or per output channel (``channels``), kept **per
    bitwidth**: ``steps["4"]`` is the 4-bit step, created on first use and kept, so switching 4 -> 3 -> 4
    bits returns exactly the 4-bit step learned before. A step is initialised on the first batch it sees as
    ``2 * mean(|v|) / sqrt(qmax)`` (per channel for weights), and its gradient is scaled by
    ``1 / sqrt(N * qmax)`` with N the elements per step (per sample for activations), as in the paper.
    A step created during training joins an optimizer only if it existed when the optimizer was built:
    methods that switch bits call :meth:`ensure` for every bitwidth they may use before training.
    """

    def __init__(self, bits: int, signed: bool, channels: int | None = None):
        super().__init__(bits, signed)
        self.channels = channels
        self.steps = nn.ParameterDict()
        self.register_buffer("initialized", torch.zeros(FLOAT_BITS + 1, dtype=torch.bool))
        self.ensure(self.bits)

    def ensure(self, *bits: int) -> None:
        """Create the step of each bitwidth in ``bits`` that does not exist yet (uninitialised)."""
        for b in bits:
            if str(int(b)) not in self.steps and int(b) < FLOAT_BITS:
                self.steps[str(int(b))] = nn.Parameter(torch.ones(self.channels or 1,
                                                                  device=self.initialized.device))

    @property
    def step(self) -> nn.Parameter:
        """The learnable step of the current bitwidth."""
        return self.steps[str(self.bits)]

    def set_bits(self, bits: int) -> None:
        super().set_bits(bits)
        self.ensure(self.bits)

    @torch.no_grad()
    def set_step(self, step: torch.Tensor) -> None:
        """Set the current bitwidth's step(s) explicitly (e.g. a method's own initialisation); skips the LSQ
        init."""
        self.step.copy_(torch.as_tensor(step, dtype=self.step.dtype).expand_as(self.step))
        self.initialized[self.bits] = True

    @torch.no_grad()
    def _init_step(self, x: torch.Tensor) -> None:
        if self.channels:
            mean_abs = x.detach().abs().reshape(x.shape[0], -1).mean(dim=1)
        else:
            mean_abs = x.detach().abs().mean().reshape(1)
        self.step.copy_((2 * mean_abs / math.sqrt(self.qmax)).clamp_min(1e-8))
        self.initialized[self.bits] = True

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized[self.bits]):
            self._init_step(x)
        step = self.step.abs().clamp_min(1e-8)
        zero = torch.zeros_like(step)
        if self.channels:
            per_step = x.numel() / x.shape[0]
            grad = 1.0 / math.sqrt(per_step * self.qmax)
            return torch._fake_quantize_learnable_per_channel_affine(
                x, step, zero, 0, self.qmin, self.qmax, grad)
        per_step = x[0].numel() if x.dim() > 1 else x.numel()
        grad = 1.0 / math.sqrt(per_step * self.qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(x, step, zero, self.qmin, self.qmax, grad)

    def scale(self) -> torch.Tensor:
        return self.step.detach().abs().clamp_min(1e-8)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in state_dict:  # steps of bitwidths this instance has not used yet
            if key.startswith(prefix + "steps."):
                self.ensure(int(key[len(prefix + "steps."):]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", channels={self.channels}" if self.channels else "")


class AffineQuantizer(Quantizer):
    """Uniform affine (asymmetric) per-tensor quantizer with a straight-through estimator.

    The range is an exponential moving average of the batch min/max seen in training (``momentum``,
    0.99 as in HAWQ-V3), or fixed with ``fixed_range=(lo, hi)``. Codes are unsigned ``[0, 2^b - 1]``
    with an integer zero point, so the real value 0 is exactly representable (padding stays exact).
    """

    def __init__(self, bits: int, momentum: float = 0.99, fixed_range: tuple[float, float] | None = None):
        super().__init__(bits, signed=False)
        self.momentum = momentum
        self.fixed = fixed_range is not None
        lo, hi = fixed_range if fixed_range else (0.0, 0.0)
        self.register_buffer("lo", torch.tensor(float(min(lo, 0.0))))
        self.register_buffer("hi", torch.tensor(float(max(hi, 0.0))))
        self.register_buffer("initialized", torch.tensor(self.fixed))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
        if not bool(self.initialized):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.initialized.fill_(True)
        else:
            self.lo.mul_(self.momentum).add_((1 - self.momentum) * lo)
            self.hi.mul_(self.momentum).add_((1 - self.momentum) * hi)

    def _params(self) -> tuple[float, int]:
        scale = max(float(self.hi - self.lo) / (self.qmax - self.qmin), 1e-8)
        zero = int(min(max(round(self.qmin - float(self.lo) / scale), self.qmin), self.qmax))
        return scale, zero

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and not self.fixed) or not bool(self.initialized):
            self._observe(x)
        scale, zero = self._params()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.qmin, self.qmax)

    def scale(self) -> torch.Tensor:
        return torch.tensor([self._params()[0]])

    def zero_point(self) -> torch.Tensor:
        return torch.tensor([self._params()[1]], dtype=torch.int64)
