"""Fake quantizers: the shared building blocks every method composes or extends.

All quantizers map a float tensor to the grid ``scale * (q - zero_point)`` with integer ``q`` in
``[qmin, qmax]`` and pass gradients straight through the rounding (STE). Every forward rounds half to even on
``x * (1 / scale)`` (as PyTorch's fused fake-quantize operators do); :meth:`Quantizer.integers` reproduces
that exactly, so exported integers are the ones the fine-tuned model saw.

``bits`` can be changed at any time (``set_bits``) without rebuilding the model, and learned state is kept
per bitwidth: methods that learn bitwidths while training (SDQ, DDQ, ...) switch back and forth and rely
on it. ``bits >= 32`` means "leave in floating point".

A quantizer is a *single grid* when its output is one uniform grid at ``bits`` (the export needs that).
Method-specific quantizers that are not (a mixture of bitwidths, a stochastic switch, gated levels) set
``single_grid = False`` and implement ``collapse()``, which returns the single-grid quantizer they end as.
"""

from __future__ import annotations

import functools
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


@torch.no_grad()
def minmax_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """``w`` rounded to the symmetric per-output-channel (dim 0) grid of step max|w_c| / (2^(b-1) - 1), codes
    clamped to the signed range: no clipping and no data beyond the weights themselves, the quantizer
    HAWQ-V3 measures its perturbations with and sensitivity analyses score layers with. Rounds half to even
    on ``w * (1 / step)``, as the fake-quant forward does."""
    qmin, qmax = int_range(bits, signed=True)
    step = w.abs().flatten(1).amax(1).clamp_min(1e-8) / qmax
    step = step.reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.round(w * (1.0 / step)).clamp_(qmin, qmax) * step


LSQ_GRADIENTS = ("paper", "torch")
FAKE_QUANT_MODES = ("eager", "compiled")


class _LSQFunction(torch.autograd.Function):
    """``round(clamp(x / s, qmin, qmax)) * s`` with the LSQ paper's gradients (Esser et al., eq. 3).

    Inside the grid (``qmin < x/s < qmax``, strict as in the paper) the gradient to ``x`` is 1 and to the
    step ``round(x/s) - x/s``; outside it is 0 to ``x`` and the clipped bound (``qmin`` or ``qmax``) to the
    step. PyTorch's fused learnable fake-quantize decides clipping on ``round(x/s)`` instead, so in the band
    ``qmax < x/s < qmax + 0.5`` it passes gradient 1 to ``x`` and ``round(x/s) - x/s`` to the step (wide at 2
    bits); ``gradient="torch"`` selects that operator. The forward values are identical either way. The
    step gradient is summed to the step's shape (one per tensor or channel); LSQ's gradient scale is applied
    outside (:func:`_scale_grad`), so the compiled form does not specialise on it.
    """

    @staticmethod
    def forward(ctx, x, step, qmin: int, qmax: int):
        v = x * (1.0 / step)
        ctx.save_for_backward(v, step)
        ctx.bounds = (qmin, qmax)
        return torch.round(v).clamp_(qmin, qmax) * step

    @staticmethod
    def backward(ctx, grad):
        v, step = ctx.saved_tensors
        qmin, qmax = ctx.bounds
        inside = (v > qmin) & (v < qmax)
        q = torch.round(v).clamp_(qmin, qmax)
        return grad * inside, (grad * (q - v * inside)).sum_to_size(step.shape), None, None


def _scale_grad(t: torch.Tensor, scale: float) -> torch.Tensor:
    """``t`` in the forward, its gradient multiplied by ``scale`` in the backward."""
    return t * scale + (t - t * scale).detach()


def _lsq_paper(x, step, qmin: int, qmax: int):
    return _LSQFunction.apply(x, step, qmin, qmax)


@functools.cache
def _lsq_compiled():
    """``_lsq_paper`` under ``torch.compile`` (one fused kernel forward and one backward; compiled once per
    process, about 10-15 s, with dynamic shapes so batch sizes and bitwidths do not recompile). Rank, memory
    layout and grad mode (train or eval) each compile a variant: a network has a dozen or so, over dynamo's
    default limit of 8 (past which it would silently run the rest eager), so the limit is raised to 64."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_lsq_paper, dynamic=True)


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

    ``gradient`` is ``"paper"`` (the paper's clipping, see ``_LSQFunction``) or ``"torch"`` (PyTorch's fused
    operator); ``compiled`` runs the paper's form under ``torch.compile`` for activations (a QAT step then
    costs about 1.2-1.3x an FP32 step instead of 1.5-1.6x: ``mpqbench bench qat-step``; weights stay eager:
    they are small, and as parameters each shape would compile again). Both are set per run from the
    recipe (:func:`configure_lsq`).
    """

    gradient = "paper"
    compiled = False

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
        per_step = x.numel() / x.shape[0] if self.channels or x.dim() > 1 else x.numel()
        grad = 1.0 / math.sqrt(per_step * self.qmax)
        if self.gradient == "torch":
            zero = torch.zeros_like(step)
            if self.channels:
                return torch._fake_quantize_learnable_per_channel_affine(
                    x, step, zero, 0, self.qmin, self.qmax, grad)
            return torch._fake_quantize_learnable_per_tensor_affine(x, step, zero, self.qmin, self.qmax, grad)
        step = _scale_grad(step, grad)
        if self.channels:
            step = step.reshape((-1,) + (1,) * (x.dim() - 1))
        fake = _lsq_compiled() if self.compiled and not self.channels else _lsq_paper
        return fake(x, step, self.qmin, self.qmax)

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


def configure_lsq(model: nn.Module, gradient: str = "paper", mode: str = "eager") -> None:
    """Set the gradient form and the eager/compiled path of every LSQ quantizer in ``model``."""
    for module in model.modules():
        if isinstance(module, LSQQuantizer):
            module.gradient = gradient
            module.compiled = mode == "compiled"
