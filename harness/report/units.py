"""Numbers as people read them: ``3.92 M``, ``68.7 KB``, ``94.29 ± 0.09``.

Sizes follow the cost model (:mod:`mpqbench.cost.model`): ``size_mb`` counts 2^20 bytes, so a KB here is
1024 bytes. Counts take SI prefixes (k, M, G, T) at three significant digits.
"""

from __future__ import annotations

import math

UNIT_ABBREVIATIONS = {"instructions": "instr", "image": "img", "cycles": "cyc", "seconds": "s"}


def missing(value) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def sig(value: float, digits: int = 3) -> str:
    """``value`` at ``digits`` significant digits, without an exponent (0.126, 3.92, 68.7, 271)."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(value)))))
    text = f"{value:.{decimals}f}"
    return text


def si(value: float, unit: str = "") -> str:
    """A count with an SI prefix: ``si(3919000, 'instr/img') == '3.92 M instr/img'``."""
    if missing(value):
        return ""
    prefixes = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
    for scale, prefix in prefixes:
        if abs(value) >= scale:
            return f"{sig(value / scale)} {prefix} {unit}".rstrip()
    return f"{sig(value)} {unit}".rstrip()


def size(n_bytes: float) -> str:
    """Bytes in binary units: ``size(70348) == '68.7 KB'`` (1 KB = 1024 bytes)."""
    if missing(n_bytes):
        return ""
    for scale, unit in ((2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if abs(n_bytes) >= scale:
            return f"{sig(n_bytes / scale)} {unit}"
    return f"{n_bytes:.0f} B"


def mean_std(mean, std, digits: int = 2, pm: str = " ± ") -> str:
    """``94.29 ± 0.09``; the mean alone when there is no spread to show (one seed)."""
    if missing(mean):
        return ""
    text = f"{mean:.{digits}f}"
    return text + (f"{pm}{std:.{digits}f}" if not missing(std) else "")


def short_unit(unit: str) -> str:
    """``instructions/image`` -> ``instr/img`` (column headers are narrow)."""
    return "/".join(UNIT_ABBREVIATIONS.get(part, part) for part in unit.split("/"))


def metric(value, unit: str) -> str:
    """A target metric in its own unit, humanised: bytes as KB/MB, counts with SI prefixes."""
    if missing(value):
        return ""
    base = unit.split(",")[0].strip()
    if base.split("/")[0] == "bytes":
        return size(value)
    return si(value)
