"""The float reconstruction of an IntegerModel: the same network in FP16/BF16 (cuDNN convolutions), the
baseline the integer kernels' latency is compared with.

Each quantized tensor's real value is ``r = s * (x - z)`` with its scale ``s`` (the exporter's; a
tensor without one gets ``8 / 2^bits``, and 32-bit logits ``2^-20``: any positive choice gives the same
network in other units). An accumulator feeding a residual add gets the per-channel scale that add gives
it, ``s_out * m / 2^(shift + frac_bits)``. Then with ``M = m / 2^shift`` per output channel:

* conv / linear: weights ``w * 2^acc_shift * M * s_out / s_in`` and bias ``b * M * s_out`` (for an
  accumulator output, ``s_acc`` in place of ``M * s_out``), then ``clamp`` to the output's real range
  (ReLU/ReLU6 and the quantizer's saturation), skipped for 32-bit outputs;
* add: ``sum_i f_i * r_i`` with ``f_i = s_out * M_i / (2^frac s_i)``, ``f = 1`` skipped where it is 1
  to 1e-4 (always so for exported models), then clamp;
* avgpool / maxpool: PyTorch's pools (padding never wins), times ``s_out * M * window / s_in`` where
  that is not 1, then clamp.

Only rounding differs from the integer network, so its float64 logits agree with the integer model's
to within the accumulated rounding; that is what makes it *the same network* for a latency baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from mpqbench.integer.model import IntegerModel, Op, TensorInfo

UNIT_TOLERANCE = 1e-4


def _real(m: np.ndarray, s: np.ndarray) -> np.ndarray:
    return np.asarray(m, dtype=np.float64) * np.exp2(-np.asarray(s, dtype=np.float64))


def default_scale(info: TensorInfo) -> float:
    if info.scale:
        return float(info.scale)
    return 2.0**-20 if info.bits > 16 else 8.0 / 2**info.bits


def tensor_scales(imodel: IntegerModel) -> dict[str, np.ndarray]:
    """Real scale per tensor: a scalar array for q tensors, per channel for accumulators."""
    scales = {name: np.array(default_scale(t)) for name, t in imodel.tensors.items() if t.kind == "q"}
    for op in imodel.ops:
        if op.kind != "add":
            continue
        s_out = scales[op.output]
        for i, name in enumerate(op.inputs):
            if imodel.tensors[name].kind == "acc" and name not in scales:
                m = _real(imodel.array(op, f"mult{i}"), imodel.array(op, f"shift{i}"))
                scales[name] = s_out * m / 2.0 ** op.attrs["frac_bits"]
    for name in imodel.tensors:
        scales.setdefault(name, np.array(2.0**-16))  # an accumulator no add reads
    return scales


class FloatNetwork:
    """``forward(x)`` on integer images; :meth:`step` runs one op (for per-layer timing)."""

    def __init__(self, imodel: IntegerModel, dtype: torch.dtype = torch.float16, device="cpu",
                 channels_last: bool = True):
        self.imodel, self.dtype, self.device = imodel, dtype, torch.device(device)
        self.channels_last = channels_last
        self.scales = tensor_scales(imodel)
        self.steps = [self._build(op) for op in imodel.ops]
        info = imodel.input_info
        self.in_scale, self.in_zero = float(self.scales[imodel.input]), info.zero_point

    def _t(self, values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(self.device, self.dtype)

    def _clamp(self, op: Op):
        out = self.imodel.tensors[op.output]
        if out.kind != "q" or out.bits > 16:
            return None
        s, z = float(self.scales[op.output]), op.attrs["out_zero_point"]
        return (op.attrs["lo"] - z) * s, (op.attrs["hi"] - z) * s

    def _factor(self, f: np.ndarray) -> torch.Tensor | None:
        f = np.asarray(f, dtype=np.float64).reshape(-1)
        if np.all(np.abs(f - 1) <= UNIT_TOLERANCE):
            return None
        return self._t(f).reshape(1, -1, 1, 1)

    def _build(self, op: Op):
        im, a = self.imodel, op.attrs
        s_in = self.scales[op.inputs[0]]  # a scalar for every op but an add reading an accumulator
        bounds = self._clamp(op)
        if op.kind in ("conv", "linear"):
            w = im.weight(op).astype(np.float64)
            if im.tensors[op.output].kind == "acc":
                out_scale = np.broadcast_to(self.scales[op.output], (w.shape[0],))
            else:
                out_scale = np.broadcast_to(_real(im.array(op, "mult"), im.array(op, "shift")), (w.shape[0],)) * float(
                    self.scales[op.output])
            per = out_scale.reshape((-1,) + (1,) * (w.ndim - 1))
            weight = self._t(w * 2.0 ** a["acc_shift"] * per / float(s_in))
            bias = self._t(im.array(op, "bias").astype(np.float64) * out_scale)
            if op.kind == "conv":
                if self.channels_last:
                    weight = weight.contiguous(memory_format=torch.channels_last)
                stride, padding, groups = tuple(a["stride"]), tuple(a["padding"]), a["groups"]

                def conv(xs):
                    y = F.conv2d(xs[0], weight, bias, stride, padding, 1, groups)
                    return y.clamp_(*bounds) if bounds else y
                return conv

            def linear(xs):
                y = F.linear(torch.flatten(xs[0], 1), weight, bias)
                y = y.clamp_(*bounds) if bounds else y
                return y.reshape(len(y), -1, 1, 1)
            return linear
        if op.kind == "add":
            s_out = float(self.scales[op.output])
            factors = [self._factor(s_out * _real(im.array(op, f"mult{i}"), im.array(op, f"shift{i}"))
                                    / 2.0 ** a["frac_bits"] / self.scales[name])
                       for i, name in enumerate(op.inputs)]

            def add(xs):
                y = None
                for x, f in zip(xs, factors):
                    term = x if f is None else x * f
                    y = term if y is None else y + term
                return y.clamp_(*bounds) if bounds else y
            return add
        m = _real(im.array(op, "mult"), im.array(op, "shift"))
        s_out = float(self.scales[op.output])
        if op.kind == "avgpool":
            c, h, w = (tuple(im.tensors[op.inputs[0]].shape) + (1, 1))[:3]
            factor = self._factor(s_out * m * h * w / float(s_in))

            def avgpool(xs):
                y = F.adaptive_avg_pool2d(xs[0], 1)
                y = y if factor is None else y * factor
                return y.clamp_(*bounds) if bounds else y
            return avgpool
        if op.kind == "maxpool":
            factor = self._factor(s_out * m / float(s_in))
            kernel, stride, padding = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])

            def maxpool(xs):
                y = F.max_pool2d(xs[0], kernel, stride, padding)
                y = y if factor is None else y * factor
                return y.clamp_(*bounds) if bounds else y
            return maxpool
        raise NotImplementedError(f"op kind {op.kind!r}")

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Device-resident integer images (N, C, H, W) to real-valued input in this network's dtype."""
        c, h, w = (tuple(self.imodel.input_info.shape) + (1, 1))[:3]
        x = ((x.reshape(len(x), c, h, w).to(self.dtype) - self.in_zero) * self.in_scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def step(self, index: int, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.steps[index](inputs)

    def forward(self, x: torch.Tensor, keep: bool = False) -> dict[str, torch.Tensor]:
        values = {self.imodel.input: x}
        for i, op in enumerate(self.imodel.ops):
            values[op.output] = self.steps[i]([values[n] for n in op.inputs])
        return values

    @torch.no_grad()
    def logits(self, x) -> np.ndarray:
        """Real-valued logits (N, classes) for integer images."""
        x = self.prepare(torch.as_tensor(np.asarray(x)).to(self.device))
        out = self.forward(x)[self.imodel.output]
        return out.reshape(len(out), -1).double().cpu().numpy()
