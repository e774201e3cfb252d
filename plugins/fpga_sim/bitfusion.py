"""BitFusion cycle and energy model: a re-implementation of the ISCA'18 simulator's tiling search.

The original (``hsharma35/bitfusion``, Python 2, needs dnnweaver2 and a CACTI binary) evaluates each
conv/fully-connected layer as follows; this module does the same, vectorised over all tilings and loop
orders (NumPy), and ``mpqbench bench fpga-validate`` compares it with the repository's per-layer sweep.

* **Problem**: kernel K (kh x kw), output O (oh x ow), stride S, input/output channels IC/OC, batch B,
  input and weight bits a/w.  No padding is modelled (the input tile is ``K + (o - 1) S``).  The layer
  reading the network input uses im2col (``first_layer_im2col``), every other conv runs channel-wise.  A
  fully-connected layer is a 1x1 conv on a 1x1 output.  Grouped convs run group by group (the array has
  no depthwise mode); a linear layer with several output positions per image folds them into B.
* **Compute cycles of one tile** (b, oh, ow, ic, oc), pf = floor(pmax/max(a,pmin)) * floor(pmax/max(w,pmin)):
  im2col ``b*oh*ow * ceil(oc/M) * ceil(kh*kw*ic/(N*pf))``, else ``b*ceil(oc/M) * oh*ow*kh*kw *
  ceil(ic/(N*pf))``; times the number of tiles.
* **Tile sizes (bits)**: weights ``ceil(kh*kw*ic/(N*pf))*N*pf * oc * w``; inputs ``ow*oh*kh*kw*ic*b*a``
  (im2col) or ``(kw+(ow-1)sw)(kh+(oh-1)sh)*ic*b*a``; outputs ``ow*oh*ceil(oc/M)*M*b*32``.  A tiling is
  feasible when each fits half its SRAM (double buffering).
* **DRAM traffic** for a loop order (5 tile loops, outermost first): walking from the innermost loop out,
  a tensor's transfer grows by a loop's trip count if the tensor depends on that loop (inputs: B, OH, OW,
  IC; weights: IC, OC; outputs: B, OH, OW, OC) while the grown block still fits half its SRAM (it is then
  reused across the loops it does not depend on); once it no longer fits, every outer loop multiplies
  it.  Outputs are read and written.  ``initial`` = the largest resident block of each tensor, ``final``
  = that of the outputs; ``latency = ceil(initial/if) + ceil(final/if)``; ``mem = ceil((traffic -
  initial - final)/if)``.
* **Cycles** = compute + max(0, mem - compute) + latency (the last two: memory stall cycles), minimised
  over power-of-two tile sizes in B, O (oh = ow edge), IC and OC (OC in multiples of M unless im2col) and
  all 5! loop orders; ties go to lower energy, then to the first tiling (B, O, IC, OC ascending) and loop
  order (``itertools.permutations`` order; the original iterates a set).
* **Energy (nJ)**: compute cycles x the array's energy per cycle, SRAM bits read/written x per-bit
  energies (the inner loop is the cheapest of input-, output- and weight-stationary), DRAM bits x
  15 pJ/bit; the per-access figures are the simulator's CACTI 45 nm table (:mod:`.presets`).
* **Operands wider than pmax** (the original has none: floor(8/16) = 0 divides by zero): with
  ``wide="temporal"`` each operand is cut into ceil(bits/pmax) pmax-bit pieces computed one after
  another, so compute cycles multiply by ceil(a/pmax) * ceil(w/pmax) at pf = 1 while tiles and traffic
  keep the real bit widths; ``wide="error"`` refuses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from mpqbench.integer.shapes import LayerShape
from mpqbench.plugins.fpga_sim.presets import BitFusionConfig

LOOPS = ("B", "OW", "OH", "IC", "OC")
#: which tensors (act, wgt, out) each tile loop indexes
DEPS = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=bool)
ORDERS = np.array(list(permutations(range(5))))  # (120, 5), outermost loop first
ACT, WGT, OUT = 0, 1, 2


@dataclass(frozen=True)
class ConvProblem:
    kh: int
    kw: int
    oh: int
    ow: int
    sh: int
    sw: int
    ic: int
    oc: int
    batch: int
    a_bits: int
    w_bits: int
    im2col: bool


@dataclass(frozen=True)
class BitFusionResult:
    """One layer (all groups): cycles, their split, DRAM/SRAM traffic in bits, energy, and the tiling."""

    cycles: int
    compute_cycles: int
    stall_cycles: int
    dram_read_bits: int
    dram_write_bits: int
    sram_bits: dict
    energy_nj: float | None
    tiling: dict
    order: tuple[str, ...]
    passes: int
    groups: int
    macs: int

    def row(self) -> dict:
        return {"cycles": self.cycles, "compute_cycles": self.compute_cycles, "stall_cycles": self.stall_cycles,
                "dram_read_bits": self.dram_read_bits, "dram_write_bits": self.dram_write_bits,
                "sram_bits": dict(self.sram_bits), "energy_nj": self.energy_nj, "tiling": dict(self.tiling),
                "loop_order": list(self.order), "passes": self.passes, "groups": self.groups}


def _clog2(x: int) -> int:
    return (int(x) - 1).bit_length()


def _cdiv(a, b):
    return -(-a // b)


def problem(shape: LayerShape, cfg: BitFusionConfig, batch: int, w_bits: int | None = None,
            a_bits: int | None = None) -> tuple[ConvProblem, int]:
    """The per-group convolution problem of a layer and its number of groups."""
    w = shape.w_bits if w_bits is None else w_bits
    a = shape.a_bits if a_bits is None else a_bits
    if w is None or a is None:
        raise ValueError(f"{shape.name}: weight and activation bits are needed")
    if max(w, a) > cfg.pmax and cfg.wide == "error":
        raise ValueError(f"{shape.name}: {w}-bit weights / {a}-bit inputs exceed BitFusion's {cfg.pmax} bits")
    if shape.kind == "linear":
        return ConvProblem(1, 1, 1, 1, 1, 1, shape.in_channels, shape.out_channels, batch * shape.positions,
                           a, w, False), 1
    g = shape.groups
    return ConvProblem(shape.kernel[0], shape.kernel[1], shape.out_hw[0], shape.out_hw[1], shape.stride[0],
                       shape.stride[1], shape.in_channels // g, shape.out_channels // g, batch, a, w,
                       bool(cfg.first_layer_im2col and shape.reads_input)), g


def layer(shape: LayerShape, cfg: BitFusionConfig, batch: int = 1, w_bits: int | None = None,
          a_bits: int | None = None) -> BitFusionResult:
    """Cycles, traffic and energy of one conv/linear layer for a batch of ``batch`` images."""
    p, groups = problem(shape, cfg, batch, w_bits, a_bits)
    r = search(cfg, p)
    if groups == 1:
        return r
    scale = lambda v: v * groups  # noqa: E731
    return BitFusionResult(scale(r.cycles), scale(r.compute_cycles), scale(r.stall_cycles), scale(r.dram_read_bits),
                           scale(r.dram_write_bits), {k: scale(v) for k, v in r.sram_bits.items()},
                           None if r.energy_nj is None else scale(r.energy_nj), r.tiling, r.order, r.passes,
                           groups, scale(r.macs))


def _tilings(cfg: BitFusionConfig, p: ConvProblem) -> dict[str, np.ndarray]:
    """Every candidate tiling: tile size and trip count per loop, flattened in search order."""
    bs = [min(1 << i, p.batch) for i in range(_clog2(p.batch) + 1)]
    os_ = [1 << i for i in range(_clog2(max(p.oh, p.ow)) + 1)]
    ics = [min(1 << i, p.ic) for i in range(_clog2(p.ic) + 1)]
    if p.im2col:
        ocs = [min(1 << i, p.oc) for i in range(_clog2(p.oc) + 1)]
    else:
        ocs = [min((1 << i) * cfg.m, p.oc) for i in range(_clog2(_cdiv(p.oc, cfg.m)) + 1)]
    grid = np.meshgrid(bs, os_, ics, ocs, indexing="ij")
    b, o, ic, oc = (g.ravel().astype(np.int64) for g in grid)
    oh, ow = np.minimum(o, p.oh), np.minimum(o, p.ow)
    return {"b": b, "oh": oh, "ow": ow, "ic": ic, "oc": oc,
            "num": np.stack([_cdiv(p.batch, b), _cdiv(p.ow, ow), _cdiv(p.oh, oh), _cdiv(p.ic, ic), _cdiv(p.oc, oc)])}


def _tile_bits(cfg: BitFusionConfig, p: ConvProblem, t: dict[str, np.ndarray]):
    """Per tiling: bits of one tile of (act, wgt, out) (3, T), compute cycles of the whole layer (T,),
    pf and the number of temporal passes."""
    pf = cfg.perf_factor(min(p.a_bits, cfg.pmax), min(p.w_bits, cfg.pmax))
    passes = _cdiv(p.a_bits, cfg.pmax) * _cdiv(p.w_bits, cfg.pmax)
    b, oh, ow, ic, oc = t["b"], t["oh"], t["ow"], t["ic"], t["oc"]
    np_ = cfg.n * pf
    ni = p.kh * p.kw * ic
    tile = np.empty((3, len(b)), dtype=np.int64)
    tile[WGT] = _cdiv(ni, np_) * np_ * oc * p.w_bits
    if p.im2col:
        tile[ACT] = ow * oh * ni * b * p.a_bits
        compute = b * oh * ow * _cdiv(oc, cfg.m) * _cdiv(ni, np_)
    else:
        tile[ACT] = (p.kw + (ow - 1) * p.sw) * (p.kh + (oh - 1) * p.sh) * ic * b * p.a_bits
        compute = b * _cdiv(oc, cfg.m) * ow * oh * p.kw * p.kh * _cdiv(ic, np_)
    tile[OUT] = ow * oh * _cdiv(oc, cfg.m) * cfg.m * b * cfg.out_bits
    return tile, t["num"].prod(axis=0) * compute * passes, pf, passes


def _half(cfg: BitFusionConfig) -> np.ndarray:
    """Half of each SRAM in bits (double buffering), indexed (act, wgt, out)."""
    return np.array([cfg.ibuf_bytes, cfg.wbuf_bytes, cfg.obuf_bytes], dtype=np.int64)[:, None] * 8 // 2


def evaluate(cfg: BitFusionConfig, p: ConvProblem, t: dict[str, np.ndarray], orders: np.ndarray = ORDERS) -> dict:
    """Cycles and traffic of tilings ``t`` (arrays of length T) under ``orders`` (R x 5 loop indices,
    outermost first): arrays of shape (R, T); infeasible tilings (a tile over half its SRAM) are
    marked in ``feasible`` (T,)."""
    tile, compute_total, pf, passes = _tile_bits(cfg, p, t)
    b = t["b"]
    half = _half(cfg)
    feasible = (tile <= half).all(axis=0)
    num = t["num"]
    num_tiles = num.prod(axis=0)

    r = len(orders)
    sizes, resident = [], []
    for ns in (ACT, WGT, OUT):
        size = np.broadcast_to(tile[ns], (r, len(b))).copy()
        best = size.copy()
        promote = np.ones_like(size, dtype=bool)
        for pos in range(4, -1, -1):
            loop = orders[:, pos]
            dep = DEPS[loop, ns][:, None]
            size = size * np.where(dep | ~promote, num[loop], 1)
            fits = size <= half[ns]
            best = np.where(promote & dep & fits, size, best)
            promote &= ~(dep & ~fits)
        sizes.append(size)
        resident.append(best)
    dram_read = sizes[ACT] + sizes[WGT] + sizes[OUT]
    dram_write = sizes[OUT]
    initial = resident[ACT] + resident[WGT] + resident[OUT]
    final = resident[OUT]
    latency = _cdiv(initial, cfg.if_bits) + _cdiv(final, cfg.if_bits)
    mem = _cdiv(dram_read + dram_write - initial - final, cfg.if_bits)
    stall = np.maximum(0, mem - compute_total) + latency
    return {"cycles": compute_total + stall, "stall": stall, "compute": np.broadcast_to(compute_total, stall.shape),
            "dram_read": dram_read, "dram_write": dram_write, "writes": sizes, "feasible": feasible,
            "num_tiles": num_tiles, "passes": passes, "pf": pf}


def _sram_reads(cfg: BitFusionConfig, p: ConvProblem, t: dict[str, np.ndarray], num_tiles, pf: int):
    """SRAM bits read (act, wgt, out) and written (out) by the inner loops, for the cheapest of input-,
    output- and weight-stationary (the simulator's choice), per tiling."""
    b, oh, ow, ic, oc = t["b"], t["oh"], t["ow"], t["ic"], t["oc"]
    a, w, o = p.a_bits, p.w_bits, cfg.out_bits
    np_ = cfg.n * pf
    is_loop = _cdiv(oc, cfg.m) * cfg.m
    os_loop = _cdiv(ic * p.kh * p.kw, np_) * np_ if p.im2col else _cdiv(ic, np_) * np_ * p.kh * p.kw
    ws_loop = b * oh * ow
    energies = np.stack([(os_loop * ws_loop) * (a + is_loop * (w + o)),   # input stationary
                         (is_loop * ws_loop) * (o + os_loop * (a + w)),   # output stationary
                         (os_loop * is_loop) * (w + ws_loop * (a + o))])  # weight stationary
    kind = np.argmin(energies, axis=0)  # ties: input, then output stationary (the simulator's if/elif)
    kk = p.kh * p.kw * ic
    inner = np.stack([kk * oh * ow * b, oc * oh * ow * b, kk * oc])  # iterations of the outer part
    n = num_tiles * np.choose(kind, inner)
    act = n * np.choose(kind, [np.ones_like(b), kk, b * ow * oh]) * a
    out = n * np.choose(kind, [oc, np.ones_like(b), b * ow * oh]) * o
    wgt = n * np.choose(kind, [oc, kk, np.ones_like(b)]) * w
    return act, wgt, out


@functools.lru_cache(maxsize=65536)
def search(cfg: BitFusionConfig, p: ConvProblem) -> BitFusionResult:
    """The best tiling and loop order of one problem (see the module docstring)."""
    t = _tilings(cfg, p)
    keep = np.flatnonzero((_tile_bits(cfg, p, t)[0] <= _half(cfg)).all(axis=0))
    if keep.size == 0:
        raise ValueError(f"bitfusion: no tiling of {p} fits the buffers")
    t = {k: (v[:, keep] if k == "num" else v[keep]) for k, v in t.items()}
    ev = evaluate(cfg, p, t)
    cycles = ev["cycles"]
    act_r, wgt_r, out_r = _sram_reads(cfg, p, t, ev["num_tiles"], ev["pf"])
    costs = cfg.energy_costs()
    w = ev["writes"]
    energy = None
    if costs is not None:
        energy = (ev["compute"] * costs.core_per_cycle
                  + wgt_r * costs.wbuf_read + w[WGT] * costs.wbuf_write
                  + act_r * costs.ibuf_read + w[ACT] * costs.ibuf_write
                  + (w[OUT] + out_r) * costs.obuf_read + (w[OUT] + out_r) * costs.obuf_write
                  + (ev["dram_read"] + ev["dram_write"]) * costs.dram)
    # best per (order, tiling): fewest cycles, then least energy, then first tiling, then first order
    rank_energy = energy if energy is not None else np.zeros(cycles.shape)
    flat = np.lexsort((np.arange(cycles.size), rank_energy.ravel(), cycles.ravel()))[0]
    oi, ti = np.unravel_index(flat, cycles.shape)
    tiling = {"B/b": (int(t["num"][0, ti]), int(t["b"][ti])), "OW/ow": (int(t["num"][1, ti]), int(t["ow"][ti])),
              "OH/oh": (int(t["num"][2, ti]), int(t["oh"][ti])), "IC/ic": (int(t["num"][3, ti]), int(t["ic"][ti])),
              "OC/oc": (int(t["num"][4, ti]), int(t["oc"][ti]))}
    sram = {"ibuf_read": int(act_r[ti]), "ibuf_write": int(w[ACT][oi, ti]), "wbuf_read": int(wgt_r[ti]),
            "wbuf_write": int(w[WGT][oi, ti]), "obuf_read": int(w[OUT][oi, ti] + out_r[ti]),
            "obuf_write": int(w[OUT][oi, ti] + out_r[ti])}
    macs = p.batch * p.oh * p.ow * p.kh * p.kw * p.ic * p.oc
    return BitFusionResult(int(cycles[oi, ti]), int(ev["compute"][oi, ti]), int(ev["stall"][oi, ti]),
                           int(ev["dram_read"][oi, ti]), int(ev["dram_write"][oi, ti]), sram,
                           None if energy is None else float(energy[oi, ti]), tiling,
                           tuple(LOOPS[k] for k in ORDERS[oi]), int(ev["passes"]), 1, macs)
