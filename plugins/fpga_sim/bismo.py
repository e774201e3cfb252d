"""BISMO cycle model: a bit-serial matrix multiplication overlay's execute, fetch and result stages.

A conv/linear layer is a GEMM per group: weights (LHS, M x K, w bits) times im2col activations (RHS,
K x N, a bits), with M = out_channels/groups, K = in_channels/groups * kh * kw, N = output positions x
batch (see :mod:`mpqbench.integer.shapes`).  With tm = ceil(M/Dm), tn = ceil(N/Dn), tk = ceil(K/Dk)
words of Dk bits:

* **Buffers**: each LHS BRAM (one per array row) holds ``lhs_depth`` words in ``regions`` regions (fetch
  fills one while execute reads another); an m-tile needs tk*w words per row, an n-tile tk*a per column.
  K is cut into chunks of kc = min(tk, floor(lhs_depth/regions/w), floor(rhs_depth/regions/a)) words,
  nk = ceil(tk/kc) chunks: a layer that does not fit is tiled, never refused.
* **Execute** (BISMO's ExecInstrGen order: n-tiles outer, m-tiles inner, then bit-plane pairs in
  descending significance): one instruction per (m-tile, n-tile, K-chunk, weight plane, activation
  plane) = tm*tn*nk*w*a instructions, each streaming its chunk's words one per cycle after ``c_ovh``
  cycles.  The shift-accumulate order (all of one significance before the next) cannot span K chunks,
  so each chunk is its own result tile, summed by the host: every (tile, chunk) ends with a sync that
  drains the pipeline and writes the accumulators, ``c_sync`` cycles.
  ``exec = tm*tn*(w*a*(tk + nk*c_ovh) + nk*c_sync)``.
* **Fetch**: bits moved from DRAM at ``rd_bits`` per cycle.  Each RHS (activation) stripe is fetched
  once if K fits in one chunk, else once per m-tile; the LHS (weights, tm*Dm*tk*Dk*w bits) is fetched
  once if it fits in one region (tm*tk*w <= lhs_depth/regions) and K is not chunked, else once per
  n-tile.  Matrices are padded to whole tiles.  ``fetch = ceil(bits / rd_bits)``.
* **Result**: tm*tn*nk tiles of Dm*Dn ``acc_bits`` accumulators at ``wr_bits`` per cycle.
* **Total** per group: ``max(exec, fetch, result) + fill + drain`` (the stages are decoupled by token
  queues, so the slowest one sets the pace; the first chunk's fetch and the last tile's write overlap
  nothing): fill = ceil(Dk*kc*(Dm*w + Dn*a)/rd_bits), drain = ceil(Dm*Dn*acc_bits/wr_bits); times the
  number of groups (run one after another: no depthwise mode).

Peak: 2*Dm*Dk*Dn binary ops per cycle (a w x a-bit MAC is 2*w*a binary ops).  Bit widths are free
(1..16 and beyond: cycles grow with w*a), unlike BitFusion's 2/4/8.  ``c_ovh``/``c_sync`` default to the
values measured on this plugin's Verilog array (``rtl/``); BISMO's own Chisel execute stage has a
deeper pipeline (about 10-11 cycles of latency), which ``c_sync`` can be set to.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from mpqbench.integer.shapes import LayerShape
from mpqbench.plugins.fpga_sim.presets import BismoConfig


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class GemmTiling:
    """How one group's GEMM maps onto the array: tiles, K chunking, and what is re-fetched."""

    m: int
    k: int
    n: int
    tiles_m: int
    tiles_n: int
    tiles_k: int
    k_chunk: int
    k_chunks: int
    lhs_resident: bool
    instructions: int


@dataclass(frozen=True)
class BismoResult:
    """One layer (all groups), cycles per batch."""

    cycles: int
    exec_cycles: int
    fetch_cycles: int
    result_cycles: int
    fill_cycles: int
    instructions: int
    lhs_bits: int
    rhs_bits: int
    result_bits: int
    tiling: GemmTiling
    groups: int
    bound: str  # which stage sets the pace: exec, fetch or result
    binops: int  # useful binary ops (2 w a MACs)

    def row(self) -> dict:
        data = asdict(self)
        data["tiling"] = asdict(self.tiling)
        return data


def tiling(cfg: BismoConfig, m: int, k: int, n: int, w: int, a: int) -> GemmTiling:
    tm, tn, tk = _cdiv(m, cfg.dm), _cdiv(n, cfg.dn), _cdiv(k, cfg.dk)
    lhs_region, rhs_region = cfg.lhs_depth // cfg.regions, cfg.rhs_depth // cfg.regions
    kc = min(tk, lhs_region // w, rhs_region // a)
    if kc == 0:
        raise ValueError(f"bismo: {w}-bit weights / {a}-bit activations need more than {lhs_region}/{rhs_region} "
                         "buffer words per region")
    nk = _cdiv(tk, kc)
    resident = nk == 1 and tm * tk * w <= lhs_region
    return GemmTiling(m, k, n, tm, tn, tk, kc, nk, resident, tm * tn * nk * w * a)


def exec_cycles(cfg: BismoConfig, t: GemmTiling, w: int, a: int) -> int:
    """Execute-stage cycles of one GEMM (what the RTL array runs)."""
    return t.tiles_m * t.tiles_n * (w * a * (t.tiles_k + t.k_chunks * cfg.c_ovh) + t.k_chunks * cfg.c_sync)


@functools.lru_cache(maxsize=65536)
def gemm(cfg: BismoConfig, m: int, k: int, n: int, w: int, a: int) -> BismoResult:
    """One GEMM: M x K weights (w bits) times K x N activations (a bits)."""
    if min(m, k, n, w, a) <= 0:
        raise ValueError(f"bismo: empty GEMM {m}x{k}x{n} or bits {w}/{a}")
    t = tiling(cfg, m, k, n, w, a)
    ex = exec_cycles(cfg, t, w, a)
    lhs_all = t.tiles_m * cfg.dm * t.tiles_k * cfg.dk * w
    rhs_all = t.tiles_n * cfg.dn * t.tiles_k * cfg.dk * a
    lhs = lhs_all if t.lhs_resident else t.tiles_n * lhs_all
    rhs = rhs_all if t.k_chunks == 1 else t.tiles_m * rhs_all
    fetch = _cdiv(lhs + rhs, cfg.rd_bits)
    res_bits = t.tiles_m * t.tiles_n * t.k_chunks * cfg.dm * cfg.dn * cfg.acc_bits
    result = _cdiv(res_bits, cfg.wr_bits)
    fill = _cdiv(cfg.dk * t.k_chunk * (cfg.dm * w + cfg.dn * a), cfg.rd_bits) + _cdiv(
        cfg.dm * cfg.dn * cfg.acc_bits, cfg.wr_bits)
    stages = {"exec": ex, "fetch": fetch, "result": result}
    bound = max(stages, key=stages.get)
    return BismoResult(stages[bound] + fill, ex, fetch, result, fill, t.instructions, lhs, rhs, res_bits, t, 1,
                       bound, 2 * m * k * n * w * a)


def layer(shape: LayerShape, cfg: BismoConfig, batch: int = 1, w_bits: int | None = None,
          a_bits: int | None = None) -> BismoResult:
    """Cycles of one conv/linear layer for a batch of ``batch`` images (groups run one after another)."""
    w = shape.w_bits if w_bits is None else w_bits
    a = shape.a_bits if a_bits is None else a_bits
    if w is None or a is None:
        raise ValueError(f"{shape.name}: weight and activation bits are needed")
    m, k, n = shape.gemm(batch)
    r = gemm(cfg, m, k, n, int(w), int(a))
    g = shape.groups
    if g == 1:
        return r
    return BismoResult(r.cycles * g, r.exec_cycles * g, r.fetch_cycles * g, r.result_cycles * g, r.fill_cycles * g,
                       r.instructions * g, r.lhs_bits * g, r.rhs_bits * g, r.result_bits * g, r.tiling, g, r.bound,
                       r.binops * g)
