"""The integer kernels of the ``cuda`` target, as PyTorch tensor operations on one device.

Every function here runs unchanged on ``cuda`` and on ``cpu``, so the code path that the GPU times is
the one CI checks bit for bit against the reference executor.

* :func:`int8_gemm`: ``torch._int_mm`` (int8 x int8 -> int32; cuBLASLt IMMA on CUDA). Its CUDA
  constraints (M > 16, K and N multiples of 8) are met by padding on every device, with zero columns
  in both operands (they add nothing) and extra rows or weight rows that are sliced off; the result's
  device is checked, because some wrappers fall back to the CPU silently.
* :func:`unpack_bits`: the bit stream of :mod:`mpqbench.integer.packing` (b-bit two's complement, LSB
  first) decoded on the device with shifts and masks.
* :func:`requantize` / :func:`rounding_shift`: the fixed-point rules of
  :mod:`mpqbench.integer.fixedpoint` (one rounding, half toward +infinity) on int64 tensors.
"""

from __future__ import annotations

import torch

#: ``torch._int_mm`` on CUDA needs M > 16 rows and K, N multiples of 8.
MIN_ROWS = 17
ALIGN = 8
#: int8 x int8 products summed in int32 cannot overflow below this many terms (2^14 * K < 2^31).
MAX_INT8_TERMS = 1 << 17


class DeviceMismatch(RuntimeError):
    """A kernel's result is not on the device that was asked for (a silent fallback)."""


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_rows(m: int) -> int:
    return max(m, MIN_ROWS)


def check_device(t: torch.Tensor, device: torch.device, what: str) -> torch.Tensor:
    if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
        raise DeviceMismatch(f"{what} ran on {t.device}, not on {device}")
    return t


def int8_gemm(cols: torch.Tensor, weight: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """``cols[:m] @ weight[:n].T`` in int32 through ``torch._int_mm``.

    ``cols`` is (Mp, Kp) int8 row-major, ``weight`` (Np, Kp) int8 row-major (passed transposed, i.e.
    column-major, the layout cuBLASLt's int8 kernels take), both already padded to the constraints."""
    out = torch._int_mm(cols, weight.t())
    check_device(out, cols.device, "torch._int_mm")
    if out.dtype != torch.int32:
        raise DeviceMismatch(f"torch._int_mm returned {out.dtype}, not int32")
    return out[:m, :n]


def gemm_buffer(m: int, k: int, device: torch.device, dtype=torch.int8) -> torch.Tensor:
    """An (Mp, Kp) operand buffer whose padding rows and columns are zero; the caller fills [:m, :k]."""
    mp, kp = padded_rows(m), round_up(k, ALIGN)
    buf = torch.empty((mp, kp), dtype=dtype, device=device)
    if kp > k:
        buf[:, k:].zero_()
    if mp > m:
        buf[m:, :k].zero_()
    return buf


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Decode ``count`` signed ``bits``-bit values from a uint8 bit stream on its device (int8)."""
    if bits == 8:
        return packed[:count].view(torch.int8)
    lanes = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(1) >> lanes) & 1).reshape(-1)[: count * bits].view(count, bits)
    weights = torch.tensor([1 << j for j in range(bits)], dtype=torch.int16, device=packed.device)
    codes = (stream.to(torch.int16) * weights).sum(dim=1, dtype=torch.int16)
    sign = 1 << (bits - 1)
    return ((codes ^ sign) - sign).to(torch.int8)


def rounding_shift(p: torch.Tensor, shift: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """``floor((p + 2^(s-1)) / 2^s)`` on int64, ``half`` = ``1 << (s - 1)`` precomputed."""
    return (p + half) >> shift


class Requant:
    """Per-channel (or per-tensor) ``(m, s)`` pairs as int64 device tensors, broadcast along the last
    (channel) axis of a channels-last tensor."""

    def __init__(self, mult, shift, device: torch.device):
        mult = torch.as_tensor(mult, dtype=torch.int64).reshape(-1)
        shift = torch.as_tensor(shift, dtype=torch.int64).reshape(-1)
        if mult.numel() != shift.numel():
            raise ValueError("multiplier and shift vectors differ in length")
        if int(shift.min()) < 1 or int(shift.max()) > 62:
            raise ValueError("requantisation shift outside [1, 62]")
        self.channels = mult.numel()
        self.mult = mult.to(device)
        self.shift = shift.to(device)
        self.half = (torch.ones_like(shift) << (shift - 1)).to(device)

    def __call__(self, acc: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.half, acc, self.mult)  # acc * m + 2^(s-1), one pass
        out >>= self.shift
        return out


def clamp_store(y: torch.Tensor, zero_point: int, lo: int, hi: int, offset: int, dtype) -> torch.Tensor:
    """``clamp(y + z, lo, hi)`` stored as ``value - offset`` in ``dtype`` (see ``lowering.Storage``); ``y``
    is a fresh int64 tensor and is overwritten."""
    return y.clamp_(lo - zero_point, hi - zero_point).add_(zero_point - offset).to(dtype)


def depthwise_direct(xp: torch.Tensor, weight: torch.Tensor, kernel, stride, out_hw, multiplier: int) -> torch.Tensor:
    """A conv with one input channel per group, as kh*kw int32 multiply-adds over shifted views of the
    padded channels-last input ``xp`` (N, Hp, Wp, C); ``weight`` (kh*kw, O) int32 with O = C *
    ``multiplier`` (output o reads input channel o // multiplier). Returns (N, OH, OW, O) int32."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out_hw
    x = xp.to(torch.int32)
    if multiplier > 1:
        x = x.repeat_interleave(multiplier, dim=-1)
    acc = None
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] * weight[i * kw + j]
            acc = tap if acc is None else acc.add_(tap)
    return acc


def windows(xp: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Sliding windows of a padded channels-last tensor: (N, OH, OW, C, kh, kw), a view."""
    (kh, kw), (sh, sw) = kernel, stride
    return xp.unfold(1, kh, sh).unfold(2, kw, sw)
