"""Packing b-bit two's-complement integers (b = 2..8) into bytes, LSB first.

Element i occupies bits ``[i*b, (i+1)*b)`` of the little-endian bit stream, so a 4-bit tensor stores
element 2k in the low nibble of byte k. 3-, 5-, 6- and 7-bit values straddle byte boundaries; the
stream is padded with zero bits to a whole byte.
"""

from __future__ import annotations

import numpy as np


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    flat = np.asarray(values, dtype=np.int64).ravel()
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise ValueError(f"values outside the signed {bits}-bit range")
    codes = (flat & ((1 << bits) - 1)).astype(np.uint8)
    stream = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.ravel(), bitorder="little")


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: count * bits]
    codes = np.packbits(stream.reshape(count, bits), axis=1, bitorder="little").ravel().astype(np.int16)
    sign = 1 << (bits - 1)
    return ((codes ^ sign) - sign).astype(np.int8)
