"""Fixed-point requantisation: a real multiplier as an integer and a right shift, applied with one
rounding. These two functions are the rounding rules every target must reproduce bit for bit.

* ``quantize_multiplier(M)`` -> ``(m, s)`` with ``M ~= m * 2^-s``, ``m`` a signed int32 with
  ``2^30 <= |m| < 2^31`` (31 significant bits, as gemmlowp's Q31 multipliers) and ``1 <= s <= 62``.
  Multipliers may be negative: a batch-norm scale ``gamma < 0`` folds into the sign of ``m``, so the
  weights keep their full two's-complement range.
* ``rounding_shift(p, s)`` = ``floor((p + 2^(s-1)) / 2^s)``: round half toward +infinity, computed on
  int64 as ``(p + (1 << (s - 1))) >> s`` (arithmetic shift). With ``|acc| < 2^31`` and ``|m| < 2^31``
  the product fits in int64, so ``rounding_shift(acc * m, s)`` never overflows.
"""

from __future__ import annotations

import math

import numpy as np

MAX_SHIFT = 62


class ExportError(ValueError):
    """The model cannot be represented in integer form (a multiplier or bias out of range)."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    if real == 0.0:
        return 0, 1
    frac, exp = math.frexp(abs(real))  # abs(real) = frac * 2^exp, 0.5 <= frac < 1
    m = round(frac * (1 << 31))
    if m == 1 << 31:
        m, exp = m // 2, exp + 1
    shift = 31 - exp
    if shift < 1:
        raise ExportError(f"requantisation multiplier {real:g} is too large for a 31-bit fixed-point form")
    if shift > MAX_SHIFT:
        m = round(abs(real) * 2.0**MAX_SHIFT)
        shift = MAX_SHIFT
    return (m if real > 0 else -m), shift


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """Vector form of :func:`quantize_multiplier`: (int32 multipliers, int32 shifts)."""
    pairs = [quantize_multiplier(float(r)) for r in np.ravel(reals)]
    return (np.array([p[0] for p in pairs], dtype=np.int32), np.array([p[1] for p in pairs], dtype=np.int32))


def rounding_shift(p: np.ndarray, shift) -> np.ndarray:
    shift = np.asarray(shift, dtype=np.int64)
    return (p + (np.int64(1) << (shift - 1))) >> shift


def requantize(acc: np.ndarray, mult, shift) -> np.ndarray:
    """``rounding_shift(acc * m, s)`` with per-channel ``m``/``s`` broadcast along axis 1."""
    mult, shift = _channel(acc, mult), _channel(acc, shift)
    return rounding_shift(acc.astype(np.int64, copy=False) * mult.astype(np.int64), shift)


def _channel(x: np.ndarray, values) -> np.ndarray:
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape(())
    return values.reshape((1, -1) + (1,) * (x.ndim - 2))
