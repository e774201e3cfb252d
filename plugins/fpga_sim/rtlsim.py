"""The RTL cross-check: ``rtl/bitserial_dpa.v`` (a BISMO-style bit-serial dot-product array and its
instruction sequencer) compiled with Verilator and run on a GEMM.

:func:`run_gemm` lays the bit planes of the weights (LHS) and activations (RHS) out in the array's
memories, generates the execute-stage instruction stream in BISMO's ExecInstrGen order (n-tiles, m-tiles,
K chunks as in :mod:`.bismo`, then bit-plane pairs from the highest significance down: clear on a tile's
first instruction, shift the accumulators left by one when the significance drops, negate when exactly
one plane is a signed MSB), runs it, and returns the cycles the array counted and the result matrix
(K chunks are separate result tiles, summed here as BISMO's host would).  The cycle count is what pins
the model's ``c_ovh`` and ``c_sync`` (:mod:`.presets`): the tests require it to equal
:func:`.bismo.exec_cycles` exactly.  Fetch and result stages (DRAM) are not in the RTL.

Builds are cached by content (sources, array parameters, Verilator and g++ versions) under
``$MPQBENCH_CACHE/fpga-sim`` (default ``~/.cache/mpqbench/fpga-sim``) and published with ``os.replace``,
so concurrent workers never see half a binary.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpqbench.plugins.fpga_sim.bismo import GemmTiling, tiling
from mpqbench.plugins.fpga_sim.presets import BismoConfig

HERE = Path(__file__).parent / "rtl"
SOURCES = (HERE / "bitserial_dpa.v", HERE / "harness.cpp")
TOOLS = {"verilator": "apt-get install verilator", "g++": "apt-get install g++", "make": "apt-get install make"}
MAGIC, VERSION = 0x4D505144, 1


class RtlError(RuntimeError):
    """A build or a simulation failed, or a GEMM does not fit the array's memories."""


def unavailable() -> str | None:
    """None when Verilator, g++ and make are installed, else one line saying what is missing."""
    for tool, hint in TOOLS.items():
        if shutil.which(tool) is None:
            return f"fpga-sim RTL check: {tool} not found ({hint})"
    return None


@functools.lru_cache(maxsize=None)
def _version(tool: str) -> str:
    return subprocess.run([tool, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def default_cache_dir() -> Path:
    root = os.environ.get("MPQBENCH_CACHE") or Path.home() / ".cache" / "mpqbench"
    return Path(root) / "fpga-sim"


@dataclass(frozen=True)
class ArrayParams:
    """Compile-time parameters of one RTL build: the array, and memory capacities (words per bank,
    instructions, result tiles)."""

    dm: int
    dn: int
    dk: int
    ldepth: int = 4096
    rdepth: int = 4096
    idepth: int = 65536
    resdepth: int = 1024

    def __post_init__(self):
        if self.dk % 32 or min(self.dm, self.dn, self.dk) <= 0:
            raise ValueError(f"RTL array {self.dm}x{self.dk}x{self.dn}: Dk must be a positive multiple of 32")

    def defines(self) -> dict[str, int]:
        return {"DM": self.dm, "DN": self.dn, "DK": self.dk, "LDEPTH": self.ldepth, "RDEPTH": self.rdepth,
                "IDEPTH": self.idepth, "RESDEPTH": self.resdepth}


def build(params: ArrayParams, cache_dir: Path | str | None = None) -> Path:
    """The simulator executable for ``params`` (Verilator --build), cached by content."""
    reason = unavailable()
    if reason:
        raise RtlError(reason)
    key = hashlib.sha256()
    for part in (_version("verilator"), _version("g++"), repr(sorted(params.defines().items()))):
        key.update(part.encode() + b"\0\0")
    for path in SOURCES:
        key.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0\0")
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"bitserial_dpa-{params.dm}x{params.dk}x{params.dn}-{key.hexdigest()[:20]}"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as tmp:
        defines = params.defines()
        # Verilator's runtime library and the model's cold code at -O0: they dominate the build time and
        # not the simulation's (the model's per-cycle code stays at -O2)
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style",
               "--top-module", "bitserial_dpa", *(f"-G{k}={v}" for k, v in defines.items()),
               "-MAKEFLAGS", "OPT_GLOBAL=-O0 OPT_SLOW=-O0 OPT_FAST=-O2",
               "-CFLAGS", " ".join(f"-DDPA_{k}={v}" for k, v in defines.items()),
               "--Mdir", str(Path(tmp) / "obj"), "-o", "prog", *(str(s) for s in SOURCES)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RtlError(f"verilator build failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        staged = Path(tmp) / "prog"
        shutil.copy2(Path(tmp) / "obj" / "prog", staged)
        os.replace(staged, target)
    return target


@dataclass(frozen=True)
class RtlRun:
    cycles: int          #: execute-stage cycles the array counted, start to done
    result: np.ndarray   #: (M, N) int64 dot products of the stored values
    instructions: int
    tiling: GemmTiling
    params: ArrayParams


def _slices(values: np.ndarray, bits: int, rows_pad: int, words: int, dk: int) -> np.ndarray:
    """Bit planes of (rows, K) integers as 32-bit slices: (bits, rows_pad, words * dk / 32) uint32, plane l
    of row r holding bit l of each value at bit position k of the row's K-bit string."""
    rows, k = values.shape
    codes = np.zeros((rows_pad, words * dk), dtype=np.int64)
    codes[:rows, :k] = values & ((1 << bits) - 1)
    planes = ((codes[None] >> np.arange(bits)[:, None, None]) & 1).astype(np.uint8)
    packed = np.packbits(planes, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4")


def _writes(slices: np.ndarray, tiles: int, per_tile: int, bits: int, tk: int, depth: int, dk: int) -> np.ndarray:
    """(address, data) pairs for one memory: bank b = row within a tile, word (tile*bits + plane)*tk + kw."""
    s = dk // 32
    plane, tile, bank, kw, sl = np.meshgrid(np.arange(bits), np.arange(tiles), np.arange(per_tile), np.arange(tk),
                                            np.arange(s), indexing="ij")
    word = (tile * bits + plane) * tk + kw
    addr = (bank * depth + word) * s + sl
    data = slices[plane, tile * per_tile + bank, kw * s + sl]
    return np.stack([addr.ravel(), data.ravel()], axis=1).astype("<u4")


def program(t: GemmTiling, w_bits: int, a_bits: int, w_signed: bool, a_signed: bool) -> np.ndarray:
    """The execute instructions (uint64 words, see the Verilog header) of one GEMM."""
    top = w_bits + a_bits - 2
    pairs = []  # (weight plane, activation plane, shift, clear) in descending significance
    for sig in range(top, -1, -1):
        for j, lp in enumerate(range(min(w_bits - 1, sig), max(0, sig - a_bits + 1) - 1, -1)):
            pairs.append((lp, sig - lp, j == 0 and sig != top, j == 0 and sig == top))
    lp, rp, shift, clear = (np.array(v, dtype=np.int64) for v in zip(*pairs))
    neg = ((lp == w_bits - 1) & w_signed) ^ ((rp == a_bits - 1) & a_signed)
    wen = np.zeros(len(pairs), dtype=np.int64)
    wen[-1] = 1
    n, m, c = (v.ravel()[:, None] for v in np.meshgrid(np.arange(t.tiles_n), np.arange(t.tiles_m),
                                                         np.arange(t.k_chunks), indexing="ij"))
    lhs = (m * w_bits + lp) * t.tiles_k + c * t.k_chunk
    rhs = (n * a_bits + rp) * t.tiles_k + c * t.k_chunk
    length = np.minimum(t.k_chunk, t.tiles_k - c * t.k_chunk) + 0 * lp
    addr = ((n * t.tiles_m + m) * t.k_chunks + c) + 0 * lp
    for name, v, bits in (("LHS offset", lhs, 16), ("RHS offset", rhs, 16), ("length", length, 12),
                          ("result address", addr, 16)):
        if v.max() >= 1 << bits:
            raise RtlError(f"RTL program: {name} {int(v.max())} exceeds {bits} bits")
    word = (lhs | rhs << 16 | length << 32 | shift << 44 | neg.astype(np.int64) << 45 | clear << 46 | wen << 47
            | addr << 48)
    return word.ravel().astype(np.uint64)


def run_gemm(w: np.ndarray, x: np.ndarray, w_bits: int, a_bits: int, a_signed: bool, cfg: BismoConfig, *,
             params: ArrayParams | None = None, cache_dir: Path | str | None = None) -> RtlRun:
    """``w @ x.T`` on the RTL array: w (M, K) signed ``w_bits`` weights, x (N, K) stored activations; the
    array is ``cfg``'s (Dm x Dk x Dn) and the K chunking is the model's for ``cfg``'s buffers."""
    w = np.asarray(w, dtype=np.int64)
    x = np.asarray(x, dtype=np.int64)
    (m_, k_), n_ = w.shape, len(x)
    p = params or ArrayParams(cfg.dm, cfg.dn, cfg.dk)
    if (p.dm, p.dn, p.dk) != (cfg.dm, cfg.dn, cfg.dk):
        raise RtlError("RTL array parameters differ from the model's")
    t = tiling(cfg, m_, k_, n_, w_bits, a_bits)
    if t.tiles_m * w_bits * t.tiles_k > p.ldepth or t.tiles_n * a_bits * t.tiles_k > p.rdepth:
        raise RtlError(f"RTL: a {m_}x{k_}x{n_} GEMM at {w_bits}/{a_bits} bits exceeds the array's memories")
    if t.instructions > p.idepth or t.tiles_m * t.tiles_n * t.k_chunks > p.resdepth:
        raise RtlError(f"RTL: {t.instructions} instructions / {t.tiles_m * t.tiles_n * t.k_chunks} result tiles "
                       "exceed the array's memories")
    lhs = _writes(_slices(w, w_bits, t.tiles_m * p.dm, t.tiles_k, p.dk), t.tiles_m, p.dm, w_bits, t.tiles_k,
                  p.ldepth, p.dk)
    rhs = _writes(_slices(x, a_bits, t.tiles_n * p.dn, t.tiles_k, p.dk), t.tiles_n, p.dn, a_bits, t.tiles_k,
                  p.rdepth, p.dk)
    ins = program(t, w_bits, a_bits, True, a_signed)
    tiles = t.tiles_m * t.tiles_n * t.k_chunks
    n_res = tiles * p.dm * p.dn
    exe = build(p, cache_dir)
    with tempfile.TemporaryDirectory(prefix="mpqbench-rtl-") as tmp:
        inp, out = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        head = struct.pack("<13I", MAGIC, VERSION, p.dm, p.dn, p.dk, p.ldepth, p.rdepth, p.idepth, p.resdepth,
                           len(lhs), len(rhs), len(ins), n_res)
        inp.write_bytes(head + lhs.tobytes() + rhs.tobytes() + ins.astype("<u8").tobytes())
        proc = subprocess.run([str(exe), str(inp), str(out)], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise RtlError(f"RTL simulation failed: {proc.stderr.strip()}")
        data = np.fromfile(out, dtype="<u4")
    cycles = int(data[0])
    res = data[2:].view("<i4").astype(np.int64).reshape(t.tiles_n, t.tiles_m, t.k_chunks, p.dm, p.dn).sum(axis=2)
    result = res.transpose(1, 2, 0, 3).reshape(t.tiles_m * p.dm, t.tiles_n * p.dn)[:m_, :n_]
    return RtlRun(cycles, result, len(ins), t, p)
