"""The reference integer executor: the oracle every hardware target is compared with, bit for bit.

Integer arithmetic only, on int64 NumPy arrays, with the rounding rules of :mod:`.fixedpoint` (one
rounding per requantisation, half toward +infinity) and the op semantics of :mod:`.model` (including
level tables: weight codes looked up before the MAC).
Convolution sums may go through float32 or float64 matrix multiplication for speed, but only where a
bound checked per op from the static ranges (``K * max|x - z| * max|w|`` below 2^24 or 2^53) proves
that every partial sum is an integer the float type holds exactly; otherwise they run in int64. Every
accumulator is checked to fit in int32, as a target's would have to.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpqbench.integer.fixedpoint import requantize, rounding_shift
from mpqbench.integer.model import IntegerModel, Op

EXACT_FLOAT32, EXACT_FLOAT64 = 2**24, 2**53
BATCH = 16  # images per pass: each op is a few memory-bound int64 passes, and at 16 images a layer's tensors
# stay in cache (MobileNetV2 on 28x28 inputs: 2x faster than 256 images per pass; `mpqbench bench executor`)


def run(imodel: IntegerModel, x: np.ndarray, keep: bool = False, batch: int = BATCH):
    """Run on uint8/int inputs (N, C, H, W). Returns int64 logits (N, classes), and with ``keep`` also
    every tensor by name (for locating the first layer where a target diverges)."""
    info = imodel.input_info
    x = np.asarray(x)
    if x.size and (x.min() < info.qmin or x.max() > info.qmax):
        raise ValueError(f"inputs outside the input tensor's range [{info.qmin}, {info.qmax}]")
    outs, kept = [], {}
    for i in range(0, len(x), batch):
        values = _forward(imodel, x[i:i + batch].astype(np.int64), keep)
        outs.append(values[imodel.output])
        if keep:  # every tensor fits in int32 (accumulators are checked): half the memory of int64
            for k, v in values.items():
                kept.setdefault(k, []).append(v.astype(np.int32))
    logits = np.concatenate(outs) if outs else np.zeros((0,) + imodel.tensors[imodel.output].shape, np.int64)
    if keep:
        return logits, {k: np.concatenate(v) for k, v in kept.items()}
    return logits


def _forward(imodel: IntegerModel, x: np.ndarray, keep: bool) -> dict[str, np.ndarray]:
    values = {imodel.input: x}
    remaining = _last_use(imodel)
    for step, op in enumerate(imodel.ops):
        out = OPS[op.kind](imodel, op, [values[i] for i in op.inputs])
        values[op.output] = out.reshape((len(out),) + tuple(imodel.tensors[op.output].shape))
        if not keep:
            for name in op.inputs:
                if remaining[name] == step:
                    del values[name]
    return values


def _last_use(imodel: IntegerModel) -> dict[str, int]:
    last = {}
    for step, op in enumerate(imodel.ops):
        for name in op.inputs:
            last[name] = step
    return last


def _clamp_out(y: np.ndarray, op: Op) -> np.ndarray:
    return np.clip(y + op.attrs["out_zero_point"], op.attrs["lo"], op.attrs["hi"])


def _requant_out(imodel: IntegerModel, op: Op, acc: np.ndarray) -> np.ndarray:
    if imodel.tensors[op.output].kind == "acc":
        return acc
    return _clamp_out(requantize(acc, imodel.array(op, "mult"), imodel.array(op, "shift")), op)


def _check_acc(acc: np.ndarray, op: Op) -> np.ndarray:
    if acc.size and np.abs(acc).max() >= 2**31:
        raise OverflowError(f"{op.name}: accumulator exceeds int32")
    return acc


def _float_type(imodel: IntegerModel, op: Op, k: int, w: np.ndarray):
    inp = imodel.tensors[op.inputs[0]]
    z = op.attrs["in_zero_point"]
    bound = k * max(abs(inp.qmin - z), abs(inp.qmax - z)) * int(np.abs(w).max(initial=0))
    if bound < EXACT_FLOAT32:
        return np.float32
    return np.float64 if bound < EXACT_FLOAT64 else np.int64


def conv(imodel: IntegerModel, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
    x = inputs[0] - op.attrs["in_zero_point"]
    w = imodel.mac_weight(op)  # the weights, or their level-table lookup (see mpqbench.integer.model)
    groups = op.attrs["groups"]
    (sh, sw), (ph, pw) = op.attrs["stride"], op.attrs["padding"]
    o, cg, kh, kw = w.shape
    dtype = _float_type(imodel, op, cg * kh * kw, w)
    wf = w.astype(dtype)
    if groups == 1:
        # im2col on channels-last data, so each copied run is a pixel's contiguous channel vector
        xh = np.pad(x.astype(dtype).transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
        win = sliding_window_view(xh, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]  # N, OH, OW, C, kh, kw
        n, oh, ow, c = win.shape[:4]
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, kh * kw * c)
        acc = (cols @ wf.transpose(0, 2, 3, 1).reshape(o, -1).T).reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    else:
        x = np.pad(x.astype(dtype), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # N, C, OH, OW, kh, kw
        c, oh, ow = win.shape[1:4]
        if groups == c == o:  # depthwise: one multiply-add of a strided slice per tap (an einsum over the
            acc = np.zeros((len(x), c, oh, ow), dtype)  # window view is several times slower)
            for i in range(kh):
                for j in range(kw):
                    acc += x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] * wf[None, :, 0, i, j,
                                                                                               None, None]
        else:
            og = o // groups
            acc = np.concatenate([
                np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg], wf[g * og:(g + 1) * og])
                for g in range(groups)], axis=1)
    acc = _shifted(_to_int(acc), op) + imodel.array(op, "bias").astype(np.int64)[None, :, None, None]
    return _requant_out(imodel, op, _check_acc(acc, op))


def linear(imodel: IntegerModel, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
    x = inputs[0].reshape(len(inputs[0]), -1) - op.attrs["in_zero_point"]
    w = imodel.mac_weight(op)
    dtype = _float_type(imodel, op, w.shape[1], w)
    acc = _shifted(_to_int(x.astype(dtype) @ w.astype(dtype).T), op) + imodel.array(op, "bias").astype(np.int64)
    return _requant_out(imodel, op, _check_acc(acc, op))


def _to_int(a: np.ndarray) -> np.ndarray:
    """int64 from a float sum that the bound check proved to be an exact integer (so no rounding is needed)."""
    return a if a.dtype == np.int64 else a.astype(np.int64)


def _shifted(acc: np.ndarray, op: Op) -> np.ndarray:
    shift = op.attrs["acc_shift"]
    return acc << shift if shift else acc


def add(imodel: IntegerModel, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
    total = 0
    for i, (v, z) in enumerate(zip(inputs, op.attrs["in_zero_points"])):
        total = total + requantize(v - z, imodel.array(op, f"mult{i}"), imodel.array(op, f"shift{i}"))
    return _clamp_out(rounding_shift(total, op.attrs["frac_bits"]), op)


def avgpool(imodel: IntegerModel, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
    x = inputs[0] - op.attrs["in_zero_point"]
    total = x.reshape(x.shape[0], x.shape[1], -1).sum(axis=2)[:, :, None, None]
    return _requant_out(imodel, op, total)


def maxpool(imodel: IntegerModel, op: Op, inputs: list[np.ndarray]) -> np.ndarray:
    (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
    x = inputs[0] - op.attrs["in_zero_point"]
    floor = np.iinfo(np.int64).min
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=floor)
    win = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return _requant_out(imodel, op, win.max(axis=(4, 5)))


OPS = {"conv": conv, "linear": linear, "add": add, "avgpool": avgpool, "maxpool": maxpool}
