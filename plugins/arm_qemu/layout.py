"""The arm-qemu runtime's binary files: an IntegerModel laid out for the C kernels, a batch of inputs,
and the outputs read back.  Little-endian, versioned, no pickle; ``runtime.h`` is the C side.

Storage decisions (why the runtime is fast and exact, see ``kernels.c``):

* Activations are NHWC, one image at a time, with a channel stride rounded up to 16 (one NEON
  register per 16 channels).  A ``q`` tensor of at most 8 bits is stored as int8 ``x - offset`` with
  ``offset`` 128 for unsigned 8-bit tensors and 0 otherwise, so every stored value is a valid ``sdot``
  operand.  A tensor read by a padded conv carries a border of its zero point (stored as
  ``zero_point - offset``), so the kernels never test bounds.  Accumulators and 32-bit ``q`` tensors
  (the logits) are int32.
* ``sum w * (x - z) = sum w * (x - offset) + (offset - z) * sum w``: the second term is a per-channel
  constant, folded here with the bias and the accumulator shift into one int32 ``bias2``
  (mod 2^32: the executor guarantees the final accumulator fits in int32, so wrapping is exact).
* Conv/linear weights for the ``sdot`` kernels are re-packed into blocks of 16 output channels x 8
  input channels (two ``sdot`` groups of 4) and kept at their bit width in memory: within a block each
  of the 16 byte lanes holds a little-endian stream of the 8 register values of that lane at ``b`` bits
  each, stored as ``b`` planes of 16 bytes, so the kernel unpacks a register with a shift or a mask
  (both, plus an insert, where a value straddles two bytes) into the top bits of each byte, i.e. the
  weight times 2^(8-b), a scale the epilogue removes exactly.  8-bit weights are the plain registers.
  Depthwise and scalar-fallback weights are int8 (they are a small part of any model's bytes).
* A linear layer is a conv whose kernel covers its whole input (the (C, H, W) flatten order of the
  executor becomes the runtime's (H, W, C) order by permuting the weights); a tensor that a flatten
  made 1-D stays (C, H, W) in memory.

Files: ``model.bin`` = 64-byte header (magic ``MPQARMRT``, version, header size, tensor and op counts,
input and output tensor, field counts of the records, blob offset and size), the tensor records
(:data:`TENSOR_FIELDS`, int32), the op records (:data:`OP_FIELDS`, int32; arrays as byte offsets into
the blob), the blob (arrays aligned to 64 bytes).  ``inputs.bin`` = 64-byte header (magic
``MPQARMIN``, version, header size, images, H, W, channel stride, per-layer dump flag), then the
images as stored.  The runtime writes ``outputs.bin`` (the output tensor per image) and, on
request, ``layers.bin`` (every op's output per image), tensors as stored without their border.

The Python side only reorders and folds constants; every rounding happens in the C runtime.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mpqbench.integer.model import IntegerModel, Op, TensorInfo
from mpqbench.integer.shapes import op_shape

VERSION = 1
MODEL_MAGIC = b"MPQARMRT"
INPUT_MAGIC = b"MPQARMIN"
HEADER_BYTES = 64
ALIGN = 64
LANES = 16  # channels per NEON register and per output block

# tensor kinds (int8 q, int32 accumulator, int32 q)
Q8, ACC, Q32 = 0, 1, 2
# op kernels
CONV_DIRECT, CONV_IM2COL, CONV_DEPTHWISE, CONV_SCALAR, ADD, AVGPOOL, MAXPOOL = range(1, 8)
KERNEL_NAMES = {CONV_DIRECT: "sdot-direct", CONV_IM2COL: "sdot-im2col", CONV_DEPTHWISE: "neon-depthwise",
                CONV_SCALAR: "scalar", ADD: "neon-add", AVGPOOL: "neon-avgpool", MAXPOOL: "neon-maxpool"}

#: int32 fields of a tensor record, in the order of ``struct tensor_rec`` in runtime.h
TENSOR_FIELDS = ("kind", "h", "w", "c", "stride", "border_h", "border_w", "offset", "pad")
#: int32 fields of an op record (``struct op_rec``); array fields are byte offsets into the blob, -1 if none
OP_FIELDS = ("kernel", "in0", "in1", "out", "kh", "kw", "sh", "sw", "ph", "pw", "groups", "cin", "cout", "w_bits",
             "acc_shift", "zo", "lo", "hi", "frac_bits", "corr0", "corr1", "kp",
             "weight", "bias", "mult0", "shift0", "mult1", "shift1", "shift32")


class LayoutError(ValueError):
    """The IntegerModel has a feature the runtime does not implement."""


def _round16(n: int) -> int:
    return -(-n // LANES) * LANES


@dataclass
class TensorLayout:
    name: str
    kind: int
    c: int
    h: int
    w: int
    stride: int
    offset: int = 0
    border: list[int] = field(default_factory=lambda: [0, 0])

    @property
    def dtype(self):
        return np.int8 if self.kind == Q8 else np.int32

    @property
    def interior_bytes(self) -> int:
        return self.h * self.w * self.stride * np.dtype(self.dtype).itemsize

    @property
    def real_bytes(self) -> int:
        """Bytes of the tensor's real elements in the runtime's storage type."""
        return self.h * self.w * self.c * np.dtype(self.dtype).itemsize


@dataclass
class OpLayout:
    op: Op
    kernel: int
    weight_bytes: int = 0  #: bytes of the weights as the runtime keeps them in memory
    macs: int = 0          #: multiply-accumulates per image, from the shapes


@dataclass
class RuntimeLayout:
    """What Python needs to read the runtime's outputs and to label its counts."""

    tensors: dict[str, TensorLayout]
    ops: list[OpLayout]
    input: str
    output: str


def plan(imodel: IntegerModel) -> RuntimeLayout:
    """Storage of every tensor and the kernel of every op (no arrays yet)."""
    tensors = {name: _tensor(info) for name, info in imodel.tensors.items()}
    ops = []
    for op in imodel.ops:
        inp, out = tensors[op.inputs[0]], tensors[op.output]
        _set_dims(out, _output_dims(op, inp), imodel)
        for name in op.inputs:
            if tensors[name].kind == Q32 or (tensors[name].kind == ACC and op.kind != "add"):
                raise LayoutError(f"arm-qemu: {op.name} ({op.kind}) reads the int32 tensor {name}")
        if op.kind in ("conv", "linear"):
            ops.append(_conv_layout(imodel, op, inp, out))
            if op.kind == "conv":  # the input carries a border of its zero point as wide as the padding
                inp.border = [max(b, p) for b, p in zip(inp.border, op.attrs["padding"])]
        elif op.kind in ("add", "avgpool", "maxpool"):
            if out.kind != Q8:
                raise LayoutError(f"arm-qemu: {op.name} writes a {imodel.tensors[op.output].bits}-bit tensor")
            ops.append(OpLayout(op, {"add": ADD, "avgpool": AVGPOOL, "maxpool": MAXPOOL}[op.kind]))
        else:
            raise LayoutError(f"arm-qemu: op kind {op.kind!r} is not implemented")
    return RuntimeLayout(tensors, ops, imodel.input, imodel.output)


def _output_dims(op: Op, inp: TensorLayout) -> tuple[int, int, int]:
    """(C, H, W) an op produces, whatever shape its output tensor was given."""
    if op.kind == "conv":
        o, _, kh, kw = op.attrs["w_shape"]
        (sh, sw), (ph, pw) = op.attrs["stride"], op.attrs["padding"]
        return o, (inp.h + 2 * ph - kh) // sh + 1, (inp.w + 2 * pw - kw) // sw + 1
    if op.kind == "maxpool":
        (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
        return inp.c, (inp.h + 2 * ph - kh) // sh + 1, (inp.w + 2 * pw - kw) // sw + 1
    if op.kind == "linear":
        return op.attrs["w_shape"][0], 1, 1
    if op.kind == "avgpool":
        return inp.c, 1, 1
    return inp.c, inp.h, inp.w


def _set_dims(t: TensorLayout, dims: tuple[int, int, int], imodel: IntegerModel) -> None:
    """Store a tensor the way its op produces it: a tensor that a flatten turned into (C*H*W,) stays
    NHWC (C, H, W) in memory; it is read back, and read by a linear layer, in the (C, H, W) flatten
    order of the executor."""
    if (t.c, t.h, t.w) == dims:
        return
    if len(imodel.tensors[t.name].shape) != 1 or int(np.prod(dims)) != t.c:
        raise LayoutError(f"arm-qemu: tensor {t.name} of shape {imodel.tensors[t.name].shape} cannot hold "
                          f"an op output of shape {dims}")
    t.c, t.h, t.w = dims
    t.stride = _round16(t.c)


def _tensor(info: TensorInfo) -> TensorLayout:
    c, h, w = (tuple(info.shape) + (1, 1))[:3]
    if info.kind == "acc":
        return TensorLayout(info.name, ACC, c, h, w, _round16(c))
    if info.bits > 8:
        if not info.signed or info.bits > 32:
            raise LayoutError(f"arm-qemu: tensor {info.name}: {info.bits}-bit unsigned/wide q tensors")
        return TensorLayout(info.name, Q32, c, h, w, _round16(c))
    if not info.qmin <= info.zero_point <= info.qmax:
        raise LayoutError(f"arm-qemu: tensor {info.name}: zero point {info.zero_point} outside its range")
    offset = 128 if (not info.signed and info.bits == 8) else 0
    return TensorLayout(info.name, Q8, c, h, w, _round16(c), offset)


#: the sdot kernels' sums carry a 2^(8 - w_bits) scale (kernels.c, unpack): |sum| <= K * 2^14 < 2^31
MAX_SDOT_K = 2**17 - 1


def _conv_layout(imodel: IntegerModel, op: Op, inp: TensorLayout, out: TensorLayout) -> OpLayout:
    """The kernel of a conv/linear op: sdot (direct from >= 16 input channels, else im2col) for
    groups = 1, the depthwise kernel, or the scalar fallback for other grouped convs."""
    o, cg, kh, kw = _conv_shape(imodel, op, inp)
    macs = op_shape(imodel, op).macs
    groups = op.attrs.get("groups", 1)
    if groups == 1:
        if cg * kh * kw > MAX_SDOT_K:
            raise LayoutError(f"arm-qemu: {op.name}: {cg * kh * kw} inputs per output exceed the sdot "
                              f"kernels' {MAX_SDOT_K}")
        return OpLayout(op, CONV_DIRECT if inp.c >= LANES else CONV_IM2COL, macs=macs)
    if groups == inp.c == o and cg == 1:
        return OpLayout(op, CONV_DEPTHWISE, macs=macs)
    return OpLayout(op, CONV_SCALAR, macs=macs)


def _conv_shape(imodel: IntegerModel, op: Op, inp: TensorLayout) -> tuple[int, int, int, int]:
    """(O, I/groups, kh, kw); a linear layer is a conv whose kernel is its whole (C, H, W) input."""
    if op.kind == "conv":
        return tuple(op.attrs["w_shape"])
    o, i = op.attrs["w_shape"]
    if i != inp.c * inp.h * inp.w:
        raise LayoutError(f"arm-qemu: {op.name}: {i} inputs for a {inp.c}x{inp.h}x{inp.w} tensor")
    return o, inp.c, inp.h, inp.w


# ---- the model file ----------------------------------------------------------------------------


class _Blob:
    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        at = self.size
        pad = -len(data) % ALIGN
        self.parts.append(data + bytes(pad))
        self.size += len(data) + pad
        return at


def write_model(imodel: IntegerModel, path: Path | str) -> RuntimeLayout:
    """Write ``imodel`` in the runtime's format; returns its layout."""
    layout = plan(imodel)
    names = list(layout.tensors)
    index = {n: i for i, n in enumerate(names)}
    blob = _Blob()
    records = []
    for ol in layout.ops:
        rec = dict.fromkeys(OP_FIELDS, 0)
        rec.update(kernel=ol.kernel, in0=index[ol.op.inputs[0]], out=index[ol.op.output], in1=-1,
                   weight=-1, bias=-1, mult0=-1, shift0=-1, mult1=-1, shift1=-1, shift32=-1)
        if len(ol.op.inputs) > 1:
            rec["in1"] = index[ol.op.inputs[1]]
        _fill(imodel, layout, ol, rec, blob)
        records.append([rec[f] for f in OP_FIELDS])
    trecs = [[t.kind, t.h, t.w, t.c, t.stride, t.border[0], t.border[1], t.offset, _pad_value(imodel, t)]
             for t in layout.tensors.values()]
    tensor_bytes = np.array(trecs, dtype="<i4").tobytes()
    if any(not -2**31 <= v < 2**31 for r in records for v in r):
        raise LayoutError("arm-qemu: a field of the model file exceeds int32")
    op_bytes = np.array(records, dtype="<i4").tobytes()
    blob_offset = HEADER_BYTES + len(tensor_bytes) + len(op_bytes)
    blob_offset += -blob_offset % ALIGN
    header = struct.pack("<8s8I2Q", MODEL_MAGIC, VERSION, HEADER_BYTES, len(names), len(layout.ops),
                         index[layout.input], index[layout.output], len(TENSOR_FIELDS), len(OP_FIELDS),
                         blob_offset, blob.size)
    with open(path, "wb") as fh:
        fh.write(header.ljust(HEADER_BYTES, b"\0"))
        fh.write(tensor_bytes)
        fh.write(op_bytes)
        fh.write(bytes(blob_offset - HEADER_BYTES - len(tensor_bytes) - len(op_bytes)))
        for part in blob.parts:
            fh.write(part)
    return layout


def _pad_value(imodel: IntegerModel, t: TensorLayout) -> int:
    """The stored value of the zero point (what padding reads)."""
    return imodel.tensors[t.name].zero_point - t.offset if t.kind == Q8 else 0


def _per_channel(values: np.ndarray, n: int, fill: int) -> np.ndarray:
    """Per-channel values padded with ``fill`` to ``n`` channels, or one value for all ``n``."""
    values = np.ravel(values).astype(np.int64)
    if values.size == 1:
        return np.full(n, values[0])
    return np.concatenate([values, np.full(n - values.size, fill)])


def _requant_arrays(rec: dict, blob: _Blob, mult, shift, n: int, which: str = "0") -> None:
    """Multipliers (int32) and negated shifts (int64: what ``srshl`` takes) for ``n`` channels;
    padding channels get multiplier 0.  When every shift is >= 32 (the conv/pool outputs of real
    models), also ``-(shift - 31)`` as int32 for the kernels' short path (``requant16`` in kernels.c)."""
    rec[f"mult{which}"] = blob.add(_per_channel(mult, n, 0).astype(np.int32))
    rec[f"shift{which}"] = blob.add(-_per_channel(shift, n, 1))
    if which == "0" and np.min(shift) >= 32:
        rec["shift32"] = blob.add((31 - _per_channel(shift, n, 32)).astype(np.int32))


def _fill(imodel: IntegerModel, layout: RuntimeLayout, ol: OpLayout, rec: dict, blob: _Blob) -> None:
    op = ol.op
    inp = layout.tensors[op.inputs[0]]
    out = layout.tensors[op.output]
    if out.kind != ACC:  # output zero point and clamp in stored units
        rec.update(zo=op.attrs["out_zero_point"] - out.offset, lo=op.attrs["lo"] - out.offset,
                   hi=op.attrs["hi"] - out.offset)
    if op.kind in ("conv", "linear"):
        o, cg, kh, kw = _conv_shape(imodel, op, inp)
        w = imodel.weight(op).astype(np.int64).reshape(o, cg, kh, kw)
        stride = op.attrs.get("stride", [1, 1])
        padding = op.attrs.get("padding", [0, 0])
        rec.update(kh=kh, kw=kw, sh=stride[0], sw=stride[1], ph=padding[0], pw=padding[1], cin=inp.c, cout=o,
                   groups=op.attrs.get("groups", 1), w_bits=op.attrs["w_bits"], acc_shift=op.attrs["acc_shift"])
        weights = _conv_weights(ol.kernel, w, inp, op.attrs["w_bits"], rec)
        rec["weight"] = blob.add(weights)
        ol.weight_bytes = weights.nbytes
        corr = (inp.offset - op.attrs["in_zero_point"]) * w.sum(axis=(1, 2, 3))
        bias2 = (corr << op.attrs["acc_shift"]) + imodel.array(op, "bias").astype(np.int64)
        bias2 = ((bias2 + 2**31) % 2**32 - 2**31).astype(np.int32)  # wrap: exact, see module docstring
        rec["bias"] = blob.add(_per_channel(bias2, out.stride, 0).astype(np.int32))
        if out.kind != ACC:
            _requant_arrays(rec, blob, imodel.array(op, "mult"), imodel.array(op, "shift"), out.stride)
    elif op.kind == "add":
        rec["frac_bits"] = op.attrs["frac_bits"]
        for i, (name, z) in enumerate(zip(op.inputs, op.attrs["in_zero_points"])):
            rec[f"corr{i}"] = layout.tensors[name].offset - z
            _requant_arrays(rec, blob, imodel.array(op, f"mult{i}"), imodel.array(op, f"shift{i}"), out.stride,
                            str(i))
    else:
        rec["corr0"] = inp.offset - op.attrs["in_zero_point"]
        if op.kind == "maxpool":
            (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs["stride"], op.attrs["padding"]
            rec.update(kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
        _requant_arrays(rec, blob, imodel.array(op, "mult"), imodel.array(op, "shift"), out.stride)


def _conv_weights(kernel: int, w: np.ndarray, inp: TensorLayout, bits: int, rec: dict) -> np.ndarray:
    o, cg, kh, kw = w.shape
    if kernel == CONV_SCALAR:
        return w.astype(np.int8)
    if kernel == CONV_DEPTHWISE:  # [channel block][tap][16 lanes], int8
        dw = np.zeros((inp.stride, kh * kw), dtype=np.int8)
        dw[:o] = w.reshape(o, kh * kw)
        return dw.reshape(-1, LANES, kh * kw).transpose(0, 2, 1).copy()
    if kernel == CONV_DIRECT:  # reduction order (tap, channel) with the input's padded channel stride
        taps = np.zeros((o, kh * kw, inp.stride), dtype=np.int64)
        taps[:, :, :cg] = w.transpose(0, 2, 3, 1).reshape(o, kh * kw, cg)
    else:  # im2col: one tap of K = kh*kw*C real values (tap-major, channel-minor), padded to 16
        k = kh * kw * cg
        rec["kp"] = _round16(k)
        taps = np.zeros((o, 1, rec["kp"]), dtype=np.int64)
        taps[:, 0, :k] = w.transpose(0, 2, 3, 1).reshape(o, k)
    return pack_sdot(taps, bits)


def pack_sdot(w: np.ndarray, bits: int) -> np.ndarray:
    """(O, taps, K) integer weights (K a multiple of 16) -> the sdot kernels' packed uint8 blocks.

    Order: output block of 16, tap, 16-channel block, super-block of 8 channels; each super-block is
    ``bits`` planes x 16 lanes.  Register r = 4 g + j of a super-block (g: group of 4 channels, j: group
    of 4 outputs) has lane L = 4 (output within j) + (channel within g), i.e. the operand layout of
    ``sdot vd.4s, vn.16b, vm.4b[g]`` with vd = outputs 4j..4j+3; lane L's stream holds register r's
    value at bits [r*bits, (r+1)*bits).
    """
    o, taps, k = w.shape
    ob = -(-o // LANES)
    wp = np.zeros((ob * LANES, taps, k), dtype=np.int64)
    wp[:o] = w
    # (ob, j, out-in-j, tap, cb, sb, g, ch-in-g) -> (ob, tap, cb, sb, g, j, out-in-j, ch-in-g)
    blocks = wp.reshape(ob, 4, 4, taps, k // LANES, 2, 2, 4).transpose(0, 3, 4, 5, 6, 1, 2, 7)
    regs = blocks.reshape(-1, 8, LANES)  # (super-block, register r = 4g + j, lane)
    codes = (regs & ((1 << bits) - 1)).astype(np.uint8)
    bitplanes = np.unpackbits(codes[..., None], axis=-1, bitorder="little")[..., :bits]  # (sb, r, L, bit)
    stream = bitplanes.transpose(0, 2, 1, 3).reshape(len(regs), LANES, 8 * bits)  # lane streams
    lane_bytes = np.packbits(stream, axis=-1, bitorder="little")  # (sb, L, bits bytes)
    return lane_bytes.transpose(0, 2, 1).reshape(-1).copy()  # (sb, plane, L)


# ---- inputs and outputs ------------------------------------------------------------------------


def write_inputs(path: Path | str, layout: RuntimeLayout, imodel: IntegerModel, x: np.ndarray,
                 layers: bool) -> None:
    """Images (N, C, H, W) as the input tensor's storage (N, H, W, stride) int8; ``layers`` asks the
    runtime to write every op's output too."""
    t = layout.tensors[layout.input]
    info = imodel.input_info
    x = np.asarray(x, dtype=np.int64)
    if x.shape[1:] != tuple(info.shape):
        raise LayoutError(f"arm-qemu: inputs of shape {x.shape[1:]}, the model takes {tuple(info.shape)}")
    if x.size and (x.min() < info.qmin or x.max() > info.qmax):
        raise LayoutError(f"arm-qemu: inputs outside [{info.qmin}, {info.qmax}]")
    stored = np.zeros((len(x), t.h, t.w, t.stride), dtype=np.int8)
    stored[..., :t.c] = (x.reshape(len(x), t.c, t.h, t.w) - t.offset).transpose(0, 2, 3, 1)
    header = struct.pack("<8s7I", INPUT_MAGIC, VERSION, HEADER_BYTES, len(x), t.h, t.w, t.stride, int(layers))
    with open(path, "wb") as fh:
        fh.write(header.ljust(HEADER_BYTES, b"\0"))
        fh.write(stored.tobytes())


def _from_storage(t: TensorLayout, raw: np.ndarray, n: int, shape: tuple[int, ...]) -> np.ndarray:
    values = raw.reshape(n, t.h, t.w, t.stride)[..., :t.c].astype(np.int64) + t.offset
    return values.transpose(0, 3, 1, 2).reshape((n,) + tuple(shape))


def read_outputs(path: Path | str, layout: RuntimeLayout, imodel: IntegerModel, n: int) -> np.ndarray:
    """The network's output (N, *shape) (the logits) from the runtime's ``outputs.bin``."""
    return _read_tensors(path, [layout.tensors[layout.output]], imodel, n)[layout.output]


def read_layers(path: Path | str, layout: RuntimeLayout, imodel: IntegerModel, n: int) -> dict[str, np.ndarray]:
    """Every op's output (N, *shape) as the executor keeps it, from the runtime's per-image dump."""
    return _read_tensors(path, [layout.tensors[ol.op.output] for ol in layout.ops], imodel, n)


def _read_tensors(path: Path | str, outs: list[TensorLayout], imodel: IntegerModel, n: int) -> dict[str, np.ndarray]:
    """Tensors dumped image by image, each as stored (h x w x stride, no border)."""
    per_image = sum(t.interior_bytes for t in outs)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size != n * per_image:
        raise LayoutError(f"arm-qemu: {path} has {data.size} bytes, expected {n * per_image}")
    data = data.reshape(n, per_image)
    result, at = {}, 0
    for t in outs:
        raw = np.ascontiguousarray(data[:, at:at + t.interior_bytes]).view("<i1" if t.kind == Q8 else "<i4")
        result[t.name] = _from_storage(t, raw, n, imodel.tensors[t.name].shape)
        at += t.interior_bytes
    return result
