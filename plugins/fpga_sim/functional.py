"""Functional simulation: an IntegerModel executed the way the accelerators compute its GEMMs.

Convolutions and linear layers are lowered to GEMMs per group (weights M x K times im2col columns of the
*stored* input values, padded with the input's zero point), and each GEMM is decomposed into the
operand digits the hardware multiplies:

* ``bismo`` (bit-serial): bit planes.  w-bit weights and a-bit activations give w x a binary matrices
  products, each the popcount of an AND per output, shifted by the planes' significance l + r and
  negated when exactly one of the two planes is the MSB of a signed (two's complement) operand.
* ``bitfusion`` (bit-parallel): 2-bit BitBricks.  Operands are sign- or zero-extended to the fusion
  width (2, 4 or 8 bits; wider operands in 8-bit pieces), cut into 2-bit digits (the top one signed for
  a signed operand, as the BitBrick's sign mode does), and the digit products are fused by shifts of
  2(i + j).

The hardware sums ``w * x`` over stored values; the zero point's share ``z * sum(w)`` is a per-output
constant removed afterwards together with the bias and the accumulator shift (where a BISMO/BitFusion
deployment folds it: the host or output stage), then the op requantises exactly as the reference
executor does (:func:`mpqbench.integer.executor._requant_out`); adds and pooling are the executor's own
op functions.  So the outputs are bit-exact with :mod:`mpqbench.integer.executor`, and every GEMM is
computed only from digit products.

Two implementations of a digit-matrix product: ``"blas"`` (all digit pairs in one float32 matrix product,
exact: every entry is a small integer below 2^24) and ``"packed"`` (BISMO only: bit planes packed into
64-bit words, AND, popcount with ``np.bitwise_count``, as the DPUs do it; slower, for checking).  The raw
accumulator of each output must fit the hardware's ``acc_bits`` (32), as the RTL's does.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpqbench.integer import executor
from mpqbench.integer.model import IntegerModel, Op

ARCHS = ("bismo", "bitfusion")


def digits(codes: np.ndarray, bits: int, signed: bool, arch: str) -> tuple[np.ndarray, np.ndarray]:
    """Decompose integers (in ``bits``-bit range) into digit planes: (D, *codes.shape) digit values and
    their (D,) weights, so that ``values == sum_d weight_d * plane_d``.  BISMO planes hold 0/1 with
    weight +-2^l (negative for a signed MSB); BitFusion planes hold 2-bit digits (the top one in [-2, 1]
    when signed) with weight 4^i."""
    codes = np.asarray(codes, dtype=np.int64)
    if arch == "bismo":
        planes = np.stack([(codes >> b) & 1 for b in range(bits)])
        weights = np.array([(-1 if (signed and b == bits - 1) else 1) << b for b in range(bits)], dtype=np.int64)
        return planes, weights
    width = fusion_width(bits)
    n = width // 2
    planes = np.stack([(codes >> (2 * i)) & 3 for i in range(n)])
    if signed:  # the top brick is a signed 2-bit digit: codes are sign-extended to the fusion width
        planes[-1] = ((codes >> (2 * (n - 1))) + 2) % 4 - 2
    return planes, np.array([1 << (2 * i) for i in range(n)], dtype=np.int64)


def fusion_width(bits: int, pmin: int = 2, pmax: int = 8) -> int:
    """The operand width BitFusion runs ``bits`` at: the smallest power of two from pmin to pmax that holds
    it, or whole pmax-bit pieces beyond pmax."""
    if bits > pmax:
        return -(-bits // pmax) * pmax
    width = pmin
    while width < bits:
        width *= 2
    return width


def digit_gemm(w: np.ndarray, x: np.ndarray, w_bits: int, a_bits: int, a_signed: bool, arch: str,
               popcount: str = "blas") -> np.ndarray:
    """Batched GEMM ``w @ x.T`` (w: (G, M, K) signed weights, x: (G, N, K) activations as stored) from digit
    products only: (G, M, N) int64."""
    wp, ww = digits(w, w_bits, True, arch)  # (Dw, G, M, K)
    if popcount == "packed":
        if arch != "bismo":
            raise ValueError("packed popcount is the bit-serial (bismo) datapath")
        xp, xw = digits(x, a_bits, a_signed, arch)
        return _packed_popcount(wp.astype(bool), xp.astype(bool), ww[:, None] * xw[None, :])
    if popcount != "blas":
        raise ValueError(f"popcount={popcount!r} (blas or packed)")
    g, m, k = w.shape
    n = x.shape[1]
    b, xw = _activation_planes(x, a_bits, a_signed, arch)  # (G, K, Da * N) float32
    a = wp.transpose(1, 0, 2, 3).reshape(g, len(ww) * m, k).astype(np.float32)
    prod = np.matmul(a, b).reshape(g, len(ww), m * len(xw) * n)  # every digit pair's dot product
    # shift-and-add: weight digits first, then activation digits; exact in float32 while the partial
    # sums stay below 2^24, else in float64 (below 2^53)
    exact32 = k * 9 * int(np.abs(ww).sum()) < 2**24
    part = np.einsum("i,gix->gx", ww.astype(np.float32 if exact32 else np.float64), prod)
    out = np.einsum("gmjn,j->gmn", part.reshape(g, m, len(xw), n), xw.astype(np.float64))
    return np.rint(out).astype(np.int64)


def _activation_planes(x: np.ndarray, bits: int, signed: bool, arch: str) -> tuple[np.ndarray, np.ndarray]:
    """Digit planes of stored activations (G, N, K), laid out (G, K, D * N) float32 for one matrix
    product, and the digits' weights (D,)."""
    g, n, k = x.shape
    if arch == "bismo":
        count, step, mask = bits, 1, 1
        weights = np.array([(-1 if (signed and d == bits - 1) else 1) << d for d in range(bits)], dtype=np.int64)
    else:
        count, step, mask = fusion_width(bits) // 2, 2, 3
        weights = np.array([1 << (2 * d) for d in range(count)], dtype=np.int64)
    # two's complement codes, (G, K, N) contiguous, in the narrowest unsigned type that holds them
    width = count * step
    codes = np.ascontiguousarray((x & ((1 << width) - 1)).astype(np.uint8 if width <= 8 else np.uint32)
                                 .transpose(0, 2, 1))
    out = np.empty((g, k, count, n), dtype=np.float32)
    for d in range(count):
        plane = (codes >> (step * d)) & mask
        if arch == "bitfusion" and signed and d == count - 1:
            plane = (plane.astype(np.int8) ^ 2) - 2  # the top brick is a signed 2-bit digit
        out[:, :, d, :] = plane
    return out.reshape(g, k, count * n), weights


def _packed_popcount(wp: np.ndarray, xp: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """AND + popcount of 64-bit words: planes (D, G, rows, K) bool packed along K."""
    def pack(p):
        packed = np.packbits(p, axis=-1, bitorder="little")
        pad = -packed.shape[-1] % 8
        packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, pad)])
        return np.ascontiguousarray(packed).view(np.uint64)
    wq, xq = pack(wp), pack(xp)  # (Dw, G, M, words), (Da, G, N, words)
    g, m, n = wq.shape[1], wq.shape[2], xq.shape[2]
    out = np.zeros((g, m, n), dtype=np.int64)
    for i in range(len(wq)):
        for j in range(len(xq)):
            counts = np.bitwise_count(wq[i][:, :, None, :] & xq[j][:, None, :, :]).sum(axis=-1, dtype=np.int64)
            out += coef[i, j] * counts
    return out


def im2col(x: np.ndarray, op: Op, w_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, int]]:
    """Columns (G, N*OH*OW, C/G*kh*kw) of stored input values, padded with the zero point; K ordered as
    (channel, kh, kw) like the weights' flattening."""
    o, cg, kh, kw = w_shape
    (sh, sw), (ph, pw) = op.attrs["stride"], op.attrs["padding"]
    groups = op.attrs.get("groups", 1)
    z = op.attrs["in_zero_point"]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=z)
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # N, C, OH, OW, kh, kw
    n, c, oh, ow = win.shape[:4]
    cols = win.reshape(n, groups, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, n * oh * ow,
                                                                                          cg * kh * kw)
    return cols, (oh, ow)


def gemm_operands(imodel: IntegerModel, op: Op, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(weights (G, M, K), columns (G, N', K), output spatial shape) of a conv/linear op on inputs x."""
    w = imodel.weight(op).astype(np.int64)
    x = x.astype(np.int16 if imodel.tensors[op.inputs[0]].bits <= 15 else np.int32)
    if op.kind == "linear":
        return w[None], x.reshape(len(x), -1)[None], ()
    groups = op.attrs.get("groups", 1)
    cols, hw = im2col(x, op, w.shape)
    return w.reshape(groups, w.shape[0] // groups, -1), cols, hw


def gemm_op(imodel: IntegerModel, op: Op, inputs: list[np.ndarray], arch: str, popcount: str = "blas",
            acc_bits: int = 32) -> np.ndarray:
    """A conv/linear op through the digit datapath, then the executor's requantisation."""
    x = inputs[0]
    inp = imodel.tensors[op.inputs[0]]
    w, cols, hw = gemm_operands(imodel, op, x)
    raw = digit_gemm(w, cols, op.attrs["w_bits"], inp.bits, inp.signed, arch, popcount)  # (G, M, N')
    if raw.size and np.abs(raw).max() >= 2 ** (acc_bits - 1):
        raise OverflowError(f"{op.name}: a raw dot product exceeds the {acc_bits}-bit accumulators")
    n = len(x)
    o = raw.shape[0] * raw.shape[1]
    if op.kind == "linear":
        acc = raw[0].T  # (N, O)
        shape = (1, o)
    else:
        acc = raw.reshape(o, n, *hw).transpose(1, 0, 2, 3)
        shape = (1, o, 1, 1)
    z = op.attrs["in_zero_point"]
    full = imodel.weight(op).astype(np.int64).reshape(o, -1).sum(axis=1)
    acc = (acc - (z * full).reshape(shape)) * (1 << op.attrs["acc_shift"]) + imodel.array(
        op, "bias").astype(np.int64).reshape(shape)
    return executor._requant_out(imodel, op, executor._check_acc(acc, op))


def run(imodel: IntegerModel, x: np.ndarray, arch: str = "bismo", *, keep: bool = False, chunk: int = 64,
        popcount: str = "blas"):
    """Run the network on stored inputs (N, C, H, W): int64 outputs (N, ...), and with ``keep`` every tensor
    by name (int32), as :func:`mpqbench.integer.executor.run` returns them."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} ({' or '.join(ARCHS)})")
    info = imodel.input_info
    x = np.asarray(x)
    if x.size and (x.min() < info.qmin or x.max() > info.qmax):
        raise ValueError(f"inputs outside the input tensor's range [{info.qmin}, {info.qmax}]")
    outs, kept = [], {}
    for start in range(0, len(x), chunk):
        values = {imodel.input: x[start:start + chunk].astype(np.int64)}
        for op in imodel.ops:
            inputs = [values[name] for name in op.inputs]
            if op.kind in ("conv", "linear"):
                out = gemm_op(imodel, op, inputs, arch, popcount)
            else:
                out = executor.OPS[op.kind](imodel, op, inputs)
            values[op.output] = out.reshape((len(out),) + tuple(imodel.tensors[op.output].shape))
        outs.append(values[imodel.output])
        if keep:
            for name, v in values.items():
                kept.setdefault(name, []).append(v.astype(np.int32))
    logits = (np.concatenate(outs) if outs
              else np.zeros((0,) + tuple(imodel.tensors[imodel.output].shape), np.int64))
    if keep:
        return logits, {k: np.concatenate(v) for k, v in kept.items()}
    return logits
