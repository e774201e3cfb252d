"""Export a fine-tuned QuantModel to an IntegerModel.

The exporter reads the QuantModel's traced graph: every activation quantization point becomes a
quantized tensor, and the float operations between two points must form one of the patterns the
integer ops cover (see :mod:`.model`): conv/linear [+ BN] [+ ReLU/ReLU6]; a residual add of two such
branches or of a branch and a quantized tensor [+ ReLU]; global average pooling; max pooling.

Batch norm folds per output channel: ``y = k * conv(x, W) + b'`` with ``k = gamma / sqrt(var + eps)``.
Because weights are quantized per output channel, folding ``k`` into the channel's scale is exactly the
same as folding BN into the weights first and quantizing them with step ``|s_w * k|``: the integer
weights are the ones the fine-tuned model used, and a negative ``k`` rides on the sign of the
requantisation multiplier.

Level tables: a weight quantizer that is not one uniform grid but offers ``level_table()`` (an object with
``bits``, ``levels``: ``2^bits`` integer levels, and ``scale``: the per-channel real value of one level unit)
and ``codes(w)`` (each weight's index into the levels) exports its codes as the packed weights and its levels
as the op's level table (:mod:`.model`); everything downstream is computed from the looked-up levels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from mpqbench.integer.fixedpoint import ExportError, quantize_multipliers
from mpqbench.integer.model import IntegerModel, Op, TensorInfo
from mpqbench.integer.packing import pack
from mpqbench.quant.graph import ADD, BN, INPUT, LAYER, OUTPUT, PASS, POOL, QUANT, RELU, RELU6, node_kind
from mpqbench.quant.model import QuantModel

ADD_FRAC_BITS = 24
"""Fractional bits the two inputs of a residual add keep before the final rounding."""
INT32 = (-(2**31), 2**31 - 1)
MAX_ACC_SHIFT = 16


def export(qmodel: QuantModel, input_shape: tuple[int, ...], meta: dict | None = None) -> IntegerModel:
    """The integer form of ``qmodel`` (evaluated in eval mode, i.e. BN running statistics)."""
    if qmodel.is_float:
        raise ExportError("an FP32 model has no integer form")
    tables = {name for name, layer in qmodel.layers().items() if _exports_table(layer.weight_quantizer)}
    mixed = [name for name in qmodel.mixed_grids() if name not in tables]
    if mixed:
        raise ExportError(f"not one uniform grid per layer (finalize the model first): {', '.join(mixed)}")
    return _Exporter(qmodel, input_shape).build(meta or {})


class _Exporter:
    def __init__(self, qmodel: QuantModel, input_shape: tuple[int, ...]):
        self.qmodel = qmodel.eval()
        self.gm = qmodel.net
        with torch.no_grad():
            ShapeProp(self.gm).propagate(torch.zeros(1, *input_shape))
        self.kinds = {n: node_kind(self.gm, n) for n in self.gm.graph.nodes}
        self.tensors: dict[str, TensorInfo] = {}
        self.ops: list[Op] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.input = ""

    def build(self, meta: dict) -> IntegerModel:
        for node in self.gm.graph.nodes:
            kind = self.kinds[node]
            if kind == QUANT:
                info = self._point(node)
                self.tensors[info.name] = info
                source = node.args[0]
                if self.kinds[source] == INPUT:
                    self.input = info.name
                else:
                    self._emit(self._expr(source), info)
            elif kind == OUTPUT:
                self._logits(self._expr(node.args[0]))
        meta = {**meta, "add_frac_bits": ADD_FRAC_BITS}
        return IntegerModel(self.tensors, self.ops, self.arrays, self.input, "logits", meta)

    # -- reading the graph ---------------------------------------------------------------------------
    def _point(self, node) -> TensorInfo:
        quantizer = self.gm.get_submodule(node.target).quantizer
        shape = tuple(node.meta["tensor_meta"].shape[1:])
        return TensorInfo(name=node.target.removeprefix("actq."), kind="q", shape=shape, bits=quantizer.bits,
                          signed=quantizer.qmin < 0, zero_point=int(quantizer.zero_point().item()),
                          scale=float(quantizer.scale().item()))

    def _expr(self, node):
        kind = self.kinds[node]
        if kind == QUANT:
            return ("t", node.target.removeprefix("actq."))
        if kind == PASS:
            return self._expr(node.all_input_nodes[0])
        if kind in (RELU, RELU6):
            return ("act", kind, self._expr(node.all_input_nodes[0]))
        if kind == BN:
            return ("bn", self.gm.get_submodule(node.target), self._expr(node.all_input_nodes[0]))
        if kind == LAYER:
            inner = self._expr(node.all_input_nodes[0])
            if inner[0] != "t":
                raise ExportError(f"layer {node.target} does not read a quantized tensor")
            return ("layer", str(node.target), inner[1], node)
        if kind == ADD:
            a, b = node.all_input_nodes
            return ("add", self._expr(a), self._expr(b), node)
        if kind == POOL:
            return ("pool", node, self._expr(node.all_input_nodes[0]))
        raise ExportError(f"cannot export {node.op} {node.target}")

    # -- emitting ops --------------------------------------------------------------------------------
    def _clamp(self, out: TensorInfo, act: str | None) -> tuple[int, int]:
        lo, hi = out.qmin, out.qmax
        if act is not None:
            lo = max(lo, out.zero_point)
        if act == RELU6:
            hi = min(hi, out.zero_point + round(6.0 / out.scale))
        return lo, hi

    def _emit(self, expr, out: TensorInfo) -> None:
        act = None
        if expr[0] == "act":
            act, expr = expr[1], expr[2]
        lo, hi = self._clamp(out, act)
        if expr[0] in ("bn", "layer"):
            self._layer(expr, out, lo, hi)
        elif expr[0] == "add":
            self._add(expr, out, lo, hi)
        elif expr[0] == "pool" and act is None:
            self._pool(expr, out, lo, hi)
        else:
            raise ExportError(f"unsupported pattern before quantization point {out.name}")

    def _layer(self, expr, out: TensorInfo | None, lo: int = 0, hi: int = 0):
        """Emit a conv/linear op; ``out=None`` keeps its int32 accumulator for a residual add.
        Returns (output tensor name, per-channel real scale of the accumulator)."""
        bn = None
        if expr[0] == "bn":
            bn, expr = expr[1], expr[2]
        if expr[0] != "layer":
            raise ExportError("batch norm must follow a conv or linear layer")
        _, name, src, node = expr
        layer = self.qmodel.layers()[name]
        quantizer = layer.weight_quantizer
        inp = self.tensors[src]
        codes = levels = None
        if _exports_table(quantizer):
            table = quantizer.level_table()
            if table.bits != quantizer.bits:
                raise ExportError(f"layer {name}: level table of {table.bits} bits for {quantizer.bits}-bit weights")
            levels = table.levels.numpy().astype(np.int64)
            codes = quantizer.codes(layer.weight.detach()).numpy()
            w_int, s_w_real = levels[codes], table.scale
        else:
            w_int, s_w_real = quantizer.integers(layer.weight.detach()).numpy(), quantizer.scale()
        channels = w_int.shape[0]
        s_w = np.broadcast_to(s_w_real.double().numpy(), (channels,)).copy()
        k = np.ones(channels)
        b = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(channels)
        if bn is not None:
            k = (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)).numpy()
            b = bn.bias.detach().double().numpy() + (b - bn.running_mean.double().numpy()) * k
        dead = np.abs(k) < 1e-30  # gamma == 0: the channel is the constant b
        if levels is not None and dead.any():
            raise ExportError(f"layer {name}: a zero batch-norm scale cannot be exported with a level table")
        k[dead] = 1.0
        w_int[dead] = 0
        scale = inp.scale * s_w * k
        acc_shift = _headroom(w_int, inp, np.abs(b / scale).max(initial=0))
        if acc_shift is None:
            raise ExportError(f"layer {name}: bias does not fit in int32")
        scale = scale / 2.0**acc_shift
        bias = np.round(b / scale)
        attrs = {"w_bits": quantizer.bits, "w_shape": list(w_int.shape), "in_zero_point": inp.zero_point,
                 "acc_shift": acc_shift}
        if isinstance(layer, nn.Conv2d):
            kind = "conv"
            attrs.update(stride=list(layer.stride), padding=list(layer.padding), groups=layer.groups)
            if layer.dilation != (1, 1) or layer.padding_mode != "zeros":
                raise ExportError(f"layer {name}: dilated or non-zero-padded convs are not supported")
        else:
            kind = "linear"
        if levels is None:
            self.arrays[f"{name}.weight"] = pack(w_int, quantizer.bits)
        else:
            self.arrays[f"{name}.weight"] = pack(codes - (1 << (quantizer.bits - 1)), quantizer.bits)
            if np.abs(levels).max(initial=0) >= 2**31:
                raise ExportError(f"layer {name}: level table entries do not fit in int32")
            self.arrays[f"{name}.levels"] = levels.astype(np.int32)
        self.arrays[f"{name}.bias"] = bias.astype(np.int32)
        shape = tuple(node.meta["tensor_meta"].shape[1:])
        if out is None:
            acc = TensorInfo(name=f"{name}:acc", kind="acc", shape=shape)
            self.tensors[acc.name] = acc
            self.ops.append(Op(kind, name, [src], acc.name, attrs))
            return acc.name, scale
        mult, shift = quantize_multipliers(scale / out.scale)
        self.arrays[f"{name}.mult"], self.arrays[f"{name}.shift"] = mult, shift
        attrs.update(out_zero_point=out.zero_point, lo=lo, hi=hi)
        self.ops.append(Op(kind, name, [src], out.name, attrs))
        return out.name, scale

    def _add(self, expr, out: TensorInfo, lo: int, hi: int) -> None:
        _, left, right, node = expr
        inputs, zeros = [], []
        for i, side in enumerate((left, right)):
            if side[0] == "t":
                name, scale, zero = side[1], np.array([self.tensors[side[1]].scale]), self.tensors[side[1]].zero_point
            else:
                (name, scale), zero = self._layer(side, None), 0
            mult, shift = quantize_multipliers(scale / out.scale * 2.0**ADD_FRAC_BITS)
            self.arrays[f"{node.name}.mult{i}"], self.arrays[f"{node.name}.shift{i}"] = mult, shift
            inputs.append(name)
            zeros.append(zero)
        attrs = {"frac_bits": ADD_FRAC_BITS, "in_zero_points": zeros, "out_zero_point": out.zero_point,
                 "lo": lo, "hi": hi}
        self.ops.append(Op("add", node.name, inputs, out.name, attrs))

    def _pool(self, expr, out: TensorInfo, lo: int, hi: int) -> None:
        _, node, inner = expr
        if inner[0] != "t":
            raise ExportError(f"pooling at {node.name} must read a quantized tensor")
        inp = self.tensors[inner[1]]
        module = self.gm.get_submodule(node.target) if node.op == "call_module" else None
        attrs = {"in_zero_point": inp.zero_point, "out_zero_point": out.zero_point, "lo": lo, "hi": hi}
        if isinstance(module, nn.MaxPool2d):
            kind, window = "maxpool", 1
            k, s, p = (_pair(getattr(module, a)) for a in ("kernel_size", "stride", "padding"))
            if module.dilation not in (1, (1, 1)) or module.ceil_mode:
                raise ExportError(f"max pool {node.name}: dilation and ceil_mode are not supported")
            attrs.update(kernel=k, stride=s, padding=p)
        elif self._is_global_avgpool(node, module):
            kind, window = "avgpool", math.prod(inp.shape[1:])
        else:
            raise ExportError(f"pooling at {node.name}: only global average pooling and max pooling export")
        mult, shift = quantize_multipliers(np.array([inp.scale / (window * out.scale)]))
        self.arrays[f"{node.name}.mult"], self.arrays[f"{node.name}.shift"] = mult, shift
        self.ops.append(Op(kind, node.name, [inner[1]], out.name, attrs))

    @staticmethod
    def _is_global_avgpool(node, module) -> bool:
        if isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
        elif module is None and node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]
        else:
            return False
        return _pair(size) == [1, 1]

    def _logits(self, expr) -> None:
        """The last linear layer's accumulator, rescaled per class to one common int32 logit scale (the
        finest of its channel scales), so ``argmax`` over the int32 logits is meaningful."""
        if expr[0] != "layer":
            raise ExportError("the network must end with a linear/conv layer")
        name, scale = self._layer(expr, None)
        acc_op = self.ops.pop()
        del self.tensors[name]
        logit_scale = float(np.abs(scale).min())
        out = TensorInfo(name="logits", kind="q", shape=(len(scale),), bits=32, signed=True, zero_point=0,
                         scale=logit_scale)
        self.tensors["logits"] = out
        mult, shift = quantize_multipliers(scale / logit_scale)
        self.arrays[f"{acc_op.name}.mult"], self.arrays[f"{acc_op.name}.shift"] = mult, shift
        acc_op.attrs.update(out_zero_point=0, lo=INT32[0], hi=INT32[1])
        self.ops.append(Op(acc_op.kind, acc_op.name, acc_op.inputs, "logits", acc_op.attrs))


def _exports_table(quantizer) -> bool:
    """A weight quantizer that exports as a level table (module docstring)."""
    return (not quantizer.single_grid and callable(getattr(quantizer, "level_table", None))
            and callable(getattr(quantizer, "codes", None)))


def _headroom(w_int: np.ndarray, inp: TensorInfo, bias_units: float) -> int | None:
    """The accumulator's left shift: the largest ``k <= MAX_ACC_SHIFT`` with ``|sum| * 2^k`` and
    ``|bias|`` (in units of the shifted accumulator) both below 2^30, so their sum fits in int32.

    The bias is rounded to one unit of the shifted accumulator; without the shift (TFLite's choice) that
    unit is a whole product ``s_in * s_w``, which at 2-4 bits is a sizeable fraction of an output step
    and flips a few percent of the requantised values away from what the fine-tuned model computes."""
    x_max = max(abs(inp.qmin - inp.zero_point), abs(inp.qmax - inp.zero_point))
    sum_bound = int(w_int[0].size) * x_max * int(np.abs(w_int).max(initial=0))
    for k in range(MAX_ACC_SHIFT, -1, -1):
        if sum_bound * 2**k < 2**30 and bias_units * 2**k < 2**30:
            return k
    return None


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]
