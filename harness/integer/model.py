"""IntegerModel: the deployable, framework-free form of a fine-tuned QuantModel.

A list of ops over named tensors, with NumPy arrays for weights and requantisation constants and plain
metadata; one ``.npz`` file (no pickle: metadata is a JSON string stored as bytes). Tensors are either
quantized activations (``q``: ``bits``, ``signed``, ``zero_point``; ``scale`` is informational) or int32
accumulators (``acc``) that flow from a conv straight into a residual add.
A tensor's ``shape`` (per image) is what its consumers read: where the network flattens between an op
and the next quantization point, the flatten is folded into the producing op, whose output (e.g.
``(C, H, W)``) is then laid out as the declared ``(C*H*W,)`` in C order.

Ops (``attrs`` / arrays):

* ``conv``: ``stride``, ``padding``, ``groups``, ``w_bits``, ``w_shape`` (O, I/groups, kh, kw),
  ``acc_shift``; ``weight`` (packed, see :mod:`.packing`), ``bias`` int32.
  ``acc = (sum(w * (x - z_in)) << acc_shift) + bias``, an int32, with the input padded by its zero
  point; the left shift gives the bias sub-unit resolution where the sum leaves headroom. For a ``q``
  output: ``y = clamp(rounding_shift(acc * mult, shift) + z_out, lo, hi)`` with per-channel int32
  ``mult``/``shift`` (ReLU/ReLU6 are the clamp bounds).
* ``linear``: the same with ``w_shape`` (O, I) on the flattened input.
* **Level tables** (optional, per conv/linear op): an array ``levels`` of ``2^w_bits`` integers makes the
  weights non-uniform. The packed ``weight`` values are then codes, not weights: the signed ``w_bits``-bit
  value ``v`` stored for an element selects ``levels[v + 2^(w_bits - 1)]``, and that integer level is the
  weight in the sum above (everything after it, including ``acc_shift`` and the requantisation, is
  unchanged; the per-channel weight scale folded into ``mult`` is the real value of one level unit). A
  method with learned, non-uniform levels (DDQ) exports them this way, the levels being fixed-point
  numbers at a scale the method chooses. :meth:`IntegerModel.mac_weight` applies the table; a target that
  cannot must refuse the model (``has_level_tables``) rather than run the codes as weights.
* ``add``: ``t_i = rounding_shift((v_i) * mult_i, shift_i)`` for both inputs, ``v`` an accumulator or
  ``x - z``, each rescaled to the output scale times ``2^frac_bits``; then ``y = clamp(rounding_shift(
  t_a + t_b, frac_bits) + z_out, lo, hi)``.
* ``avgpool`` (global): ``y = clamp(rounding_shift(sum_hw(x - z_in) * mult, shift) + z_out, lo, hi)``.
* ``maxpool``: ``kernel``, ``stride``, ``padding``; max over the window (padding never wins), then the
  same requantisation from ``x - z_in`` as avgpool with window size 1.

The rounding rules are those of :mod:`.fixedpoint`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpqbench.integer.packing import unpack

FORMAT_VERSION = 1


@dataclass
class TensorInfo:
    name: str
    kind: str  # "q" or "acc"
    shape: tuple[int, ...]  # per image: (C, H, W) or (C,)
    bits: int = 32
    signed: bool = True
    zero_point: int = 0
    scale: float | None = None  # real value of one step (q tensors); informational

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1


@dataclass
class Op:
    kind: str
    name: str  # the layer or node it comes from
    inputs: list[str]
    output: str
    attrs: dict[str, Any] = field(default_factory=dict)


class IntegerModel:
    def __init__(self, tensors: dict[str, TensorInfo], ops: list[Op], arrays: dict[str, np.ndarray],
                 input: str, output: str, meta: dict[str, Any] | None = None):
        self.tensors = tensors
        self.ops = ops
        self.arrays = arrays
        self.input = input
        self.output = output
        self.meta = meta or {}
        self._weights: dict[str, np.ndarray] = {}
        self._mac_weights: dict[str, np.ndarray] = {}

    def array(self, op: Op, key: str) -> np.ndarray:
        return self.arrays[f"{op.name}.{key}"]

    def weight(self, op: Op) -> np.ndarray:
        """Unpacked int8 weights of a conv/linear op (cached)."""
        if op.name not in self._weights:
            shape = tuple(op.attrs["w_shape"])
            values = unpack(self.array(op, "weight"), op.attrs["w_bits"], int(np.prod(shape)))
            self._weights[op.name] = values.reshape(shape)
        return self._weights[op.name]

    def levels(self, op: Op) -> np.ndarray | None:
        """The op's level table (``2^w_bits`` integers), or None for plain uniform integer weights."""
        return self.arrays.get(f"{op.name}.levels")

    @property
    def has_level_tables(self) -> bool:
        """Whether any op's weights are codes into a level table (see the module docstring)."""
        return any(k.endswith(".levels") for k in self.arrays)

    def mac_weight(self, op: Op) -> np.ndarray:
        """The integer weights the MAC uses: :meth:`weight`, looked up in the op's level table if it has one
        (int64 then; cached)."""
        table = self.levels(op)
        if table is None:
            return self.weight(op)
        if op.name not in self._mac_weights:
            bits = op.attrs["w_bits"]
            if table.shape != (1 << bits,):
                raise ValueError(f"{op.name}: level table has {table.shape} entries, not 2^{bits}")
            codes = self.weight(op).astype(np.int64) + (1 << (bits - 1))
            self._mac_weights[op.name] = table.astype(np.int64)[codes]
        return self._mac_weights[op.name]

    @property
    def input_info(self) -> TensorInfo:
        return self.tensors[self.input]

    def weight_bytes(self) -> int:
        return sum(a.nbytes for k, a in self.arrays.items() if k.endswith(".weight"))

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes (what :meth:`save` writes)."""
        header = {
            "format": FORMAT_VERSION,
            "tensors": [asdict(t) for t in self.tensors.values()],
            "ops": [asdict(o) for o in self.ops],
            "input": self.input,
            "output": self.output,
            "meta": self.meta,
        }
        blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        np.savez(buf, __header__=blob, **self.arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | Path | io.BytesIO) -> "IntegerModel":
        """Read a saved model (a path or a file-like object); ValueError when it is not a readable one."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(npz["__header__"].tobytes().decode())
                arrays = {k: npz[k] for k in npz.files if k != "__header__"}
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable integer model ({type(exc).__name__}: {exc})") from None
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: integer model format {header.get('format')} is not {FORMAT_VERSION}")
        tensors = {}
        for t in header["tensors"]:
            t["shape"] = tuple(t["shape"])
            tensors[t["name"]] = TensorInfo(**t)
        ops = [Op(**o) for o in header["ops"]]
        return cls(tensors, ops, arrays, header["input"], header["output"], header["meta"])
