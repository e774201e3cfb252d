"""Lowering an IntegerModel to integer kernels on a torch device, op by op, bit-exact with the reference
executor.

Storage. Every tensor lives on the device channels-last, (N, H, W, C) of its *natural* shape (the
(C, H, W) its producing op computes; a flatten folded into the producer is undone by permuting the
consuming linear layer's weight columns once). Quantized tensors of up to 8 bits are stored in int8
as ``value - offset``: offset 0 when the range fits int8, else ``qmin + 128`` (unsigned 8-bit tensors
are stored minus 128). Wider tensors (accumulators, 32-bit logits) are int32 with offset 0.

Convolutions and linear layers. With ``u = stored`` and ``c = offset - z_in``, the layer's sum is
``sum(w * (x - z_in)) = sum(w * u) + c * sum(w)``: the int8 operand is the stored tensor itself (the
padding value, ``x = z_in``, is ``z_in - offset``), and ``c * sum(w)`` joins the bias in a per-channel
int64 correction. Each layer runs in one *tier*, chosen per layer and recorded:

* ``int8-mm``: im2col (a copy into a padded int8 buffer, or a view for aligned 1x1 convs) and
  ``torch._int_mm`` per group, int32 results. Needs an int8-stored input and K < 2^17 (so the int32
  sum cannot overflow). Requested 2..8-bit operands all run at 8 bits here: recorded as such.
* ``int32-direct``: convs with one input channel per group (depthwise): kh*kw int32 multiply-adds on
  shifted views; a GEMM with N = 1 per group would waste 7/8 of a padded int8 GEMM.
* ``fp64-exact``: a float64 GEMM where the operands do not fit int8 (inputs wider than 8 bits),
  exact because ``K * max|u| * max|w| < 2^53`` (every partial sum is an integer float64 holds).
* ``int64-mm``: the last resort, on the CPU only (CUDA has no integer matmul beyond int8).

Weights are repacked once, on the host, into the GEMM's (N, K) order and padding with the bit-stream
format of :mod:`mpqbench.integer.packing` at their own bit width; the device holds only those packed
bytes and unpacks them with shifts and masks: once at load (``unpack="load"``, default) or before every
call (``unpack="call"``, what a weight-streaming kernel pays).

The epilogue (accumulator shift, bias and correction, requantisation with per-channel multipliers and
shifts, rounding half up, zero point, clamp), residual adds and pools are int64 tensor arithmetic on the
device. With ``check=True`` every accumulator is checked to fit int32, as the reference does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from mpqbench.integer.model import IntegerModel, Op, TensorInfo
from mpqbench.integer.packing import pack
from mpqbench.plugins.cuda import kernels as K

EXACT_FLOAT64 = 2**53
INT32_LIMIT = 2**31


@dataclass(frozen=True)
class Tier:
    name: str
    arithmetic: str
    effective_bits: tuple[int, int] | None  # (weights, activations) as the arithmetic sees them


TIERS = {
    "int8-mm": Tier("int8-mm", "torch._int_mm int8 x int8 -> int32 (cuBLASLt IMMA on CUDA)", (8, 8)),
    "int32-direct": Tier("int32-direct", "int32 multiply-add, elementwise (CUDA cores)", (32, 32)),
    "fp64-exact": Tier("fp64-exact", "float64 GEMM, exact (every partial sum an integer < 2^53)", (64, 64)),
    "int64-mm": Tier("int64-mm", "int64 matmul (CPU only)", (64, 64)),
    "int64-elementwise": Tier("int64-elementwise", "int64 elementwise (adds, pools, requantisation)", None),
}
GEMM_TIERS = ("int8-mm", "int32-direct", "fp64-exact", "int64-mm")


@dataclass(frozen=True)
class Storage:
    natural: tuple[int, int, int]  # (C, H, W) as computed
    dtype: torch.dtype
    offset: int

    @property
    def int8(self) -> bool:
        return self.dtype == torch.int8


def storage_for(info: TensorInfo, natural: tuple[int, int, int]) -> Storage:
    if info.kind == "q" and info.bits <= 8:
        offset = 0 if info.qmin >= -128 and info.qmax <= 127 else info.qmin + 128
        return Storage(natural, torch.int8, offset)
    if info.kind == "q" and info.bits > 32:
        raise NotImplementedError(f"tensor {info.name}: {info.bits}-bit tensors are not supported")
    return Storage(natural, torch.int32, 0)


def _out_hw(h: int, w: int, kernel, stride, padding) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def natural_shapes(imodel: IntegerModel) -> dict[str, tuple[int, int, int]]:
    """Each tensor's (C, H, W) as its producer computes it, checked against its declared size."""
    def as3(shape):
        return tuple(shape) if len(shape) == 3 else (int(np.prod(shape)), 1, 1)

    nat = {imodel.input: as3(imodel.input_info.shape)}
    for op in imodel.ops:
        c, h, w = nat[op.inputs[0]]
        a = op.attrs
        if op.kind == "conv":
            o, _, kh, kw = a["w_shape"]
            shape = (o, *_out_hw(h, w, (kh, kw), a["stride"], a["padding"]))
        elif op.kind == "linear":
            shape = (a["w_shape"][0], 1, 1)
        elif op.kind == "add":
            shape = (c, h, w)
        elif op.kind == "avgpool":
            shape = (c, 1, 1)
        elif op.kind == "maxpool":
            shape = (c, *_out_hw(h, w, a["kernel"], a["stride"], a["padding"]))
        else:
            raise NotImplementedError(f"op kind {op.kind!r} ({op.name})")
        declared = imodel.tensors[op.output].shape
        if int(np.prod(shape)) != int(np.prod(declared)):
            raise ValueError(f"{op.name}: computes {shape}, its tensor declares {declared}")
        nat[op.output] = shape
    return nat


class PackedWeight:
    """A weight matrix held on the device as packed ``bits``-bit codes, unpacked to ``dtype`` there."""

    def __init__(self, values: np.ndarray, bits: int, device: torch.device, dtype=torch.int8, unpack="load"):
        self.shape, self.bits, self.dtype, self.mode = values.shape, bits, dtype, unpack
        self.count = int(np.prod(values.shape))
        self.packed = torch.from_numpy(pack(values, bits)).to(device)
        self._cached = self._unpack() if unpack == "load" else None

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    @property
    def operand_bytes(self) -> int:
        return self.count * torch.empty((), dtype=self.dtype).element_size()

    def _unpack(self) -> torch.Tensor:
        return K.unpack_bits(self.packed, self.bits, self.count).view(self.shape).to(self.dtype)

    def get(self) -> torch.Tensor:
        return self._cached if self._cached is not None else self._unpack()


class Layer:
    """One op of the IntegerModel lowered for a device; ``__call__`` maps stored inputs to the stored
    output."""

    tier = "int64-elementwise"

    def __init__(self, model: "DeviceModel", op: Op):
        self.op, self.device = op, model.device
        self.imodel = model.imodel
        self.inputs = [model.storage[name] for name in op.inputs]
        self.out_info = model.imodel.tensors[op.output]
        self.out = model.storage[op.output]

    def store(self, acc: torch.Tensor, requant: "K.Requant | None") -> torch.Tensor:
        """The op's int64 result stored: an accumulator as int32, else requantised, clamped, offset."""
        if self.out_info.kind == "acc":
            return acc.to(torch.int32)
        a = self.op.attrs
        return K.clamp_store(requant(acc), a["out_zero_point"], a["lo"], a["hi"], self.out.offset, self.out.dtype)

    def requant(self, suffix: str = "") -> K.Requant | None:
        if self.out_info.kind == "acc" and not suffix:
            return None
        r = K.Requant(self.imodel.array(self.op, f"mult{suffix}"), self.imodel.array(self.op, f"shift{suffix}"),
                      self.device)
        channels = self.inputs[0].natural[0] if suffix else self.out.natural[0]
        if r.channels not in (1, channels):
            raise NotImplementedError(f"{self.op.name}: {r.channels} multipliers for {channels} channels")
        return r

    def row(self) -> dict:
        tier = TIERS[self.tier]
        return {"layer": self.op.name, "op": self.op.kind, "output": self.op.output,
                "input_bits": [self.imodel.tensors[n].bits for n in self.op.inputs],
                "tier": self.tier, "arithmetic": tier.arithmetic,
                "effective_w_bits": tier.effective_bits[0] if tier.effective_bits else None,
                "effective_a_bits": tier.effective_bits[1] if tier.effective_bits else None,
                "macs": 0, "weight_bytes": 0, "gemm_weight_bytes": 0}

    def gemm_only(self, inputs):
        """A callable running only this layer's matrix kernel on prepared operands (None if it has none)."""
        return None


class GemmLayer(Layer):
    """conv or linear: lowered to one GEMM per group (or the direct depthwise kernel)."""

    def __init__(self, model: "DeviceModel", op: Op, force: str | None = None):
        super().__init__(model, op)
        a, imodel = op.attrs, model.imodel
        src, info = self.inputs[0], imodel.tensors[op.inputs[0]]
        w = imodel.weight(op).astype(np.int64)
        self.w_bits = int(a["w_bits"])
        if op.kind == "conv":
            o, cg, kh, kw = w.shape
            self.groups = int(a["groups"])
            self.kernel, self.stride, self.padding = (kh, kw), tuple(a["stride"]), tuple(a["padding"])
            rows = w.transpose(0, 2, 3, 1).reshape(o, kh * kw * cg)  # (O, K) in (kh, kw, c) order
        else:
            c, h, wd = src.natural
            o = w.shape[0]
            self.groups, cg, kh, kw = 1, c * h * wd, 1, 1
            self.kernel = self.stride = (1, 1)
            self.padding = (0, 0)
            rows = w.reshape(o, c, h, wd).transpose(0, 2, 3, 1).reshape(o, -1)  # columns in (h, w, c) order
        self.o, self.cg, self.k = o, cg, rows.shape[1]
        self.og = o // self.groups
        z = int(a["in_zero_point"])
        self.pad_value = z - src.offset
        c_shift = src.offset - z
        shift = 1 << int(a["acc_shift"])
        self.scale = shift
        corr = c_shift * rows.sum(axis=1) * shift + imodel.array(op, "bias").astype(np.int64)
        self.corr = torch.from_numpy(corr).to(self.device)
        self.req = self.requant()
        self.out_hw = self.out.natural[1:]
        umax = max(abs(info.qmin - src.offset), abs(info.qmax - src.offset), abs(self.pad_value))
        self.bound = self.k * umax * int(np.abs(w).max(initial=0))
        self.tier = force or self._choose(src)
        self._check_tier(src)
        self.macs = int(np.prod(self.out_hw)) * o * self.k
        self.model_weight_bytes = int(imodel.array(op, "weight").nbytes)
        self._prepare(rows, model.unpack)

    def _choose(self, src: Storage) -> str:
        depthwise = self.op.kind == "conv" and self.groups > 1 and self.cg == 1
        if depthwise and self.bound < INT32_LIMIT:
            return "int32-direct"
        if src.int8 and -128 <= self.pad_value <= 127 and self.k < K.MAX_INT8_TERMS:
            return "int8-mm"
        if self.bound < EXACT_FLOAT64:
            return "fp64-exact"
        return "int64-mm"

    def _check_tier(self, src: Storage) -> None:
        name = self.op.name
        if self.tier not in GEMM_TIERS:
            raise ValueError(f"{name}: unknown tier {self.tier!r} (known: {', '.join(GEMM_TIERS)})")
        if self.tier == "int8-mm" and not (src.int8 and -128 <= self.pad_value <= 127 and self.k < K.MAX_INT8_TERMS):
            raise ValueError(f"{name}: int8-mm needs an int8 input and K < 2^17")
        if self.tier == "int32-direct" and not (self.op.kind == "conv" and self.cg == 1 and self.bound < INT32_LIMIT):
            raise ValueError(f"{name}: int32-direct needs one input channel per group and a sum below 2^31")
        if self.tier == "fp64-exact" and self.bound >= EXACT_FLOAT64:
            raise ValueError(f"{name}: the sum may exceed 2^53, float64 would not be exact")
        if self.tier == "int64-mm" and self.device.type != "cpu":
            raise NotImplementedError(f"{name}: no exact integer kernel on {self.device} for this layer "
                                      f"(sum bound {self.bound})")

    def _prepare(self, rows: np.ndarray, unpack: str) -> None:
        dev = self.device
        if self.tier == "int8-mm":
            np_, kp = K.round_up(self.og, K.ALIGN), K.round_up(self.k, K.ALIGN)
            self.weights = []
            for g in range(self.groups):
                padded = np.zeros((np_, kp), dtype=np.int64)
                padded[:self.og, :self.k] = rows[g * self.og:(g + 1) * self.og]
                self.weights.append(PackedWeight(padded, self.w_bits, dev, torch.int8, unpack))
        elif self.tier == "int32-direct":
            kh, kw = self.kernel
            taps = rows.reshape(self.o, kh * kw).T.copy()  # (kh*kw, O)
            self.weights = [PackedWeight(taps, self.w_bits, dev, torch.int32, unpack)]
        else:
            dtype = torch.float64 if self.tier == "fp64-exact" else torch.int64
            self.weights = [PackedWeight(rows[g * self.og:(g + 1) * self.og], self.w_bits, dev, dtype, unpack)
                            for g in range(self.groups)]

    # -- operands ------------------------------------------------------------------------------------
    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        if ph == 0 and pw == 0:
            return x
        if x.dtype == torch.int8 and not -128 <= self.pad_value <= 127:  # a zero point outside int8
            x = x.to(torch.int32)
        return F.pad(x, (0, 0, pw, pw, ph, ph), value=self.pad_value)

    def _aligned_view(self, x: torch.Tensor, m: int) -> torch.Tensor | None:
        """The input itself as the GEMM's A operand where no copy is needed (1x1/linear, aligned)."""
        pointwise = self.op.kind == "linear" or (self.kernel == (1, 1) and self.stride == (1, 1)
                                                  and self.padding == (0, 0))
        if self.groups == 1 and pointwise and m >= K.MIN_ROWS and self.k % K.ALIGN == 0 and x.is_contiguous():
            return x.view(m, self.k)
        return None

    def cols(self, x: torch.Tensor, g: int, dtype=None, aligned: bool = True) -> torch.Tensor:
        """Group ``g``'s im2col matrix (M, K) (padded to the int8 GEMM's constraints when ``aligned``)."""
        n = x.shape[0]
        oh, ow = self.out_hw
        m = n * oh * ow
        if aligned:
            view = self._aligned_view(x, m)
            if view is not None:
                return view
        kh, kw = self.kernel
        if self.op.kind == "linear":
            src = x.reshape(n, 1, 1, self.k)
            shape = (n, self.k)
        else:
            xg = x if self.groups == 1 else x[..., g * self.cg:(g + 1) * self.cg]
            src = K.windows(self._padded(xg), self.kernel, self.stride).permute(0, 1, 2, 4, 5, 3)
            shape = (n, oh, ow, kh, kw, self.cg)
        if aligned:
            buf = K.gemm_buffer(m, self.k, x.device, x.dtype)
            buf[:m, :self.k].view(shape).copy_(src.reshape(shape))
            return buf
        return src.reshape(m, self.k).to(dtype)

    # -- execution -----------------------------------------------------------------------------------
    def sums(self, x: torch.Tensor) -> torch.Tensor:
        """``sum(w * u)`` per output pixel and channel: (N, OH, OW, O), int32 or int64."""
        n = x.shape[0]
        oh, ow = self.out_hw
        m = n * oh * ow
        if self.tier == "int32-direct":
            out = K.depthwise_direct(self._padded(x), self.weights[0].get(), self.kernel, self.stride,
                                     self.out_hw, self.og)
            return K.check_device(out, self.device, self.op.name)
        parts = []
        for g, weight in enumerate(self.weights):
            if self.tier == "int8-mm":
                parts.append(K.int8_gemm(self.cols(x, g), weight.get(), m, self.og))
            else:
                wt = weight.get()
                part = self.cols(x, g, wt.dtype, aligned=False) @ wt.t()
                parts.append(K.check_device(part, self.device, self.op.name).round().to(torch.int64)
                             if wt.is_floating_point() else part)
        acc = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return acc.view(n, oh, ow, self.o)

    def __call__(self, inputs: list[torch.Tensor], check: bool = False) -> torch.Tensor:
        acc = torch.add(self.corr, self.sums(inputs[0]), alpha=self.scale)  # (sum << acc_shift) + bias + c*sum(w)
        if check and acc.numel():
            low, high = torch.aminmax(acc)
            if max(-int(low), int(high)) >= INT32_LIMIT:
                raise OverflowError(f"{self.op.name}: accumulator exceeds int32")
        return self.store(acc, self.req)

    def gemm_only(self, inputs):
        """The int8 GEMM alone on this layer's (padded) operands: what the fraction of peak is about."""
        if self.tier != "int8-mm":
            return None
        x = inputs[0]
        m = x.shape[0] * int(np.prod(self.out_hw))
        operands = [(self.cols(x, g), w.get()) for g, w in enumerate(self.weights)]
        return lambda: [K.int8_gemm(a, w, m, self.og) for a, w in operands]

    def row(self) -> dict:
        row = super().row()
        row.update(requested_w_bits=self.w_bits, requested_a_bits=row["input_bits"][0], macs=self.macs, k=self.k,
                   n=self.o, groups=self.groups, m_per_image=int(np.prod(self.out_hw)),
                   weight_bytes=sum(w.nbytes for w in self.weights),
                   gemm_weight_bytes=sum(w.operand_bytes for w in self.weights),
                   model_weight_bytes=self.model_weight_bytes, unpack=self.weights[0].mode)
        if self.tier == "int8-mm":
            row["padded_k"], row["padded_n"] = K.round_up(self.k, K.ALIGN), K.round_up(self.og, K.ALIGN)
            row["min_rows"] = K.MIN_ROWS
        w, a = row["requested_w_bits"], row["requested_a_bits"]
        ew, ea = TIERS[self.tier].effective_bits
        if w < ew or a < ea:
            row["note"] = (f"requested W{w}A{a} runs as W{ew}A{ea} ({self.tier}): the narrower operands save "
                           "storage and transfer, not arithmetic")
        return row


class AddLayer(Layer):
    def __init__(self, model, op):
        super().__init__(model, op)
        zeros = op.attrs["in_zero_points"]
        self.shifts = [s.offset - int(z) for s, z in zip(self.inputs, zeros)]
        self.reqs = [self.requant(str(i)) for i in range(len(op.inputs))]
        self.frac = int(op.attrs["frac_bits"])
        self.final = K.Requant([1], [self.frac], self.device) if self.frac > 0 else None

    def __call__(self, inputs, check: bool = False):
        total = 0
        for x, shift, req in zip(inputs, self.shifts, self.reqs):
            total = total + req(x.to(torch.int64) + shift)
        return self.store(self.final(total) if self.final else total, _identity)


class AvgPoolLayer(Layer):
    def __init__(self, model, op):
        super().__init__(model, op)
        _, h, w = self.inputs[0].natural
        self.correction = h * w * (self.inputs[0].offset - int(op.attrs["in_zero_point"]))
        self.req = self.requant()

    def __call__(self, inputs, check: bool = False):
        total = inputs[0].sum(dim=(1, 2), keepdim=True, dtype=torch.int64) + self.correction
        return self.store(total, self.req)


class MaxPoolLayer(Layer):
    def __init__(self, model, op):
        super().__init__(model, op)
        a = op.attrs
        self.kernel, self.stride, self.padding = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
        if self.padding[0] >= self.kernel[0] or self.padding[1] >= self.kernel[1]:
            raise NotImplementedError(f"{op.name}: padding as wide as the window")
        src = self.inputs[0]
        self.floor = int(torch.iinfo(src.dtype).min)  # equals a real value only when that value is the max
        self.shift = src.offset - int(a["in_zero_point"])
        self.req = self.requant()

    def __call__(self, inputs, check: bool = False):
        ph, pw = self.padding
        x = F.pad(inputs[0], (0, 0, pw, pw, ph, ph), value=self.floor) if ph or pw else inputs[0]
        top = K.windows(x, self.kernel, self.stride).amax(dim=(-2, -1))
        return self.store(top.to(torch.int64) + self.shift, self.req)


def _identity(x):
    return x


LAYERS = {"add": AddLayer, "avgpool": AvgPoolLayer, "maxpool": MaxPoolLayer}


class DeviceModel:
    """An IntegerModel lowered for ``device``; :meth:`run` has the reference executor's contract."""

    def __init__(self, imodel: IntegerModel, device: str | torch.device = "cpu", *, unpack: str = "load",
                 force_tier: str | None = None):
        if unpack not in ("load", "call"):
            raise ValueError(f"unpack must be 'load' or 'call', not {unpack!r}")
        self.imodel, self.device, self.unpack = imodel, torch.device(device), unpack
        natural = natural_shapes(imodel)
        self.storage = {name: storage_for(imodel.tensors[name], shape) for name, shape in natural.items()}
        self.layers: list[Layer] = [
            GemmLayer(self, op, force_tier) if op.kind in ("conv", "linear") else LAYERS[op.kind](self, op)
            for op in imodel.ops]
        self._last_use = {}
        for step, op in enumerate(imodel.ops):
            for name in op.inputs:
                self._last_use[name] = step

    # -- inputs and outputs ----------------------------------------------------------------------------
    def load(self, x) -> torch.Tensor:
        """Integer images (N, C, H, W), host or device, to the input's stored form on the device."""
        info = self.imodel.input_info
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        if t.numel() and (int(t.min()) < info.qmin or int(t.max()) > info.qmax):
            raise ValueError(f"inputs outside the input tensor's range [{info.qmin}, {info.qmax}]")
        return self.prepare(t.to(self.device))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Device-resident images to the stored input (no range check, no host sync: timed end to end)."""
        st = self.storage[self.imodel.input]
        c, h, w = st.natural
        x = x.reshape(len(x), c, h, w).to(torch.int32)
        return (x - st.offset).to(st.dtype).permute(0, 2, 3, 1).contiguous()

    def decode(self, name: str, t: torch.Tensor) -> np.ndarray:
        """A stored tensor as the reference executor holds it: int64 values in the declared shape."""
        st = self.storage[name]
        values = (t.to(torch.int64) + st.offset).permute(0, 3, 1, 2)
        return values.reshape((len(t),) + tuple(self.imodel.tensors[name].shape)).cpu().numpy()

    # -- execution -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep: bool = False, check: bool = False) -> dict[str, torch.Tensor]:
        """Stored input to every stored tensor (``keep``) or just the output."""
        values = {self.imodel.input: x}
        for step, (op, layer) in enumerate(zip(self.imodel.ops, self.layers)):
            values[op.output] = layer([values[i] for i in op.inputs], check=check)
            if not keep:
                for name in op.inputs:
                    if self._last_use[name] == step and name != op.output:
                        values.pop(name, None)
        return values

    def step(self, index: int, inputs: list[torch.Tensor]) -> torch.Tensor:
        """One op on stored inputs (what per-layer timing calls)."""
        return self.layers[index](inputs)

    def run(self, x, keep: bool = False, batch: int = 256):
        """As ``executor.run``: int64 logits, and with ``keep`` every tensor by name (int32)."""
        x = np.asarray(x)
        outs, kept = [], {}
        for i in range(0, len(x), batch):
            values = self.forward(self.load(x[i:i + batch]), keep=keep, check=True)
            outs.append(self.decode(self.imodel.output, values[self.imodel.output]))
            if keep:
                for name, t in values.items():
                    kept.setdefault(name, []).append(self.decode(name, t).astype(np.int32))
        shape = (0,) + tuple(self.imodel.tensors[self.imodel.output].shape)
        logits = np.concatenate(outs) if outs else np.zeros(shape, np.int64)
        if keep:
            return logits, {k: np.concatenate(v) for k, v in kept.items()}
        return logits

    def rows(self) -> list[dict]:
        return [layer.row() for layer in self.layers]
