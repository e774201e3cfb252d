"""Accelerator configurations: the two architectures' parameters and the published configurations.

Every parameter a cycle count depends on is a field here and is recorded with each result
(:meth:`BismoConfig.record`, :meth:`BitFusionConfig.record`).  Formulas: ``docs/fpga-sim.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from mpqbench.api import UserError

#: Per-instruction and per-result-tile overheads of the execute stage, in cycles, as measured on this
#: plugin's Verilog bit-serial array (``rtl/bitserial_dpa.v``, checked by ``rtl.py`` and the tests): one
#: cycle decodes an instruction (its words then stream one per cycle); after the last instruction of a result
#: tile the sequencer waits 3 cycles for the pipeline (BRAM read, AND + popcount, accumulate) to drain into the
#: result write.
RTL_C_OVH = 1
RTL_C_SYNC = 3


@dataclass(frozen=True)
class BismoConfig:
    """BISMO (Umuroglu et al., FPL'18 / TRETS'19): a Dm x Dn array of dot-product units, each ANDing two
    Dk-bit words per cycle, popcounting, shifting by the bit-plane significance, negating when exactly
    one plane is a signed MSB, and accumulating.  LHS (weights) and RHS (activations) buffers are one
    BRAM per array row/column, ``lhs_depth``/``rhs_depth`` entries of Dk bits, split into ``regions``
    for fetch/execute overlap; DRAM through a ``rd_bits``-wide read and ``wr_bits``-wide write channel
    per cycle."""

    name: str
    dm: int
    dk: int
    dn: int
    f_mhz: float
    lhs_depth: int = 1024
    rhs_depth: int = 1024
    regions: int = 2
    rd_bits: int = 64
    wr_bits: int = 64
    acc_bits: int = 32
    c_ovh: int = RTL_C_OVH
    c_sync: int = RTL_C_SYNC
    source: str = ""
    arch: str = field(default="bismo", init=False)

    def __post_init__(self):
        for key in ("dm", "dk", "dn", "lhs_depth", "rhs_depth", "regions", "rd_bits", "wr_bits", "acc_bits"):
            if getattr(self, key) <= 0:
                raise UserError(f"bismo: {key} must be positive")
        if self.f_mhz <= 0 or self.c_ovh < 0 or self.c_sync < 0:
            raise UserError("bismo: f_mhz must be positive and the overheads non-negative")

    @property
    def peak_binops_per_cycle(self) -> int:
        """2 Dm Dk Dn: each DPU ANDs and popcounts Dk bit pairs per cycle (AND + add = 2 binary ops)."""
        return 2 * self.dm * self.dk * self.dn

    @property
    def peak_tops(self) -> float:
        """Peak binary tera-operations per second at ``f_mhz``."""
        return self.peak_binops_per_cycle * self.f_mhz * 1e6 / 1e12

    def record(self) -> dict:
        return asdict(self)


#: CACTI 45 nm figures the BitFusion repository ships (``bitfusion/sram/cacti_sweep.csv``): per SRAM bank
#: of (bytes, read-write ports) with 4-byte blocks, the dynamic read and write energy per access in nJ.
CACTI_45NM_NJ = {
    (128, 0): (0.000683701, 0.000925317),
    (512, 1): (0.00106097, 0.00233869),
    (1024, 0): (0.00113324, 0.00329596),
    (2048, 0): (0.00190318, 0.00363853),
    (4096, 0): (0.00342953, 0.00431011),
    (4096, 1): (0.00398324, 0.00505131),
    (8192, 0): (0.00639163, 0.00556268),
    (16384, 0): (0.0099817, 0.0084209),
}
#: Dynamic power of a 4x4 BitFusion array (pmax 8, pmin 2) at 500 MHz, nW, from the repository's
#: ``results/systolic_array_synth.csv``; its simulator scales it by N*M/16 for other array sizes.
CORE_4X4_DYNAMIC_NW = 3673500.0
DRAM_NJ_PER_BIT = 15e-3


@dataclass(frozen=True)
class EnergyCosts:
    """Energy per event in nJ: the array per compute cycle, each SRAM per bit read/written, DRAM per bit."""

    core_per_cycle: float
    wbuf_read: float
    wbuf_write: float
    ibuf_read: float
    ibuf_write: float
    obuf_read: float
    obuf_write: float
    dram: float = DRAM_NJ_PER_BIT
    source: str = ""


@dataclass(frozen=True)
class BitFusionConfig:
    """BitFusion (Sharma et al., ISCA'18): an N x M systolic array of fusion units, each 16 2-bit
    BitBricks fused into pf = floor(pmax/max(a,pmin)) * floor(pmax/max(w,pmin)) MACs per cycle; weight,
    input and output SRAMs (bytes, double-buffered: a tile uses at most half), a DRAM interface of
    ``if_bits`` per cycle.  ``wide``: what operands wider than ``pmax`` do (``"temporal"``: split into
    ``pmax``-bit pieces run one after another; ``"error"``: refused, as the original simulator fails)."""

    name: str
    n: int = 16
    m: int = 32
    f_mhz: float = 500.0
    wbuf_bytes: int = 64 * 1024
    ibuf_bytes: int = 32 * 1024
    obuf_bytes: int = 16 * 1024
    if_bits: int = 192
    pmax: int = 8
    pmin: int = 2
    out_bits: int = 32
    first_layer_im2col: bool = True
    wide: str = "temporal"
    source: str = ""
    arch: str = field(default="bitfusion", init=False)

    def __post_init__(self):
        for key in ("n", "m", "wbuf_bytes", "ibuf_bytes", "obuf_bytes", "if_bits", "pmax", "pmin", "out_bits"):
            if getattr(self, key) <= 0:
                raise UserError(f"bitfusion: {key} must be positive")
        if self.wide not in ("temporal", "error"):
            raise UserError(f"bitfusion: wide={self.wide!r} (temporal or error)")

    def perf_factor(self, a: int, w: int) -> int:
        """Fused MACs per fusion unit per cycle for a-bit inputs and w-bit weights (both <= pmax)."""
        return (self.pmax // max(min(a, self.pmax), self.pmin)) * (self.pmax // max(min(w, self.pmax), self.pmin))

    def peak_macs_per_cycle(self, a: int, w: int) -> int:
        return self.n * self.m * self.perf_factor(a, w)

    def energy_costs(self) -> EnergyCosts | None:
        """Per-access energies the BitFusion simulator derives for this configuration (45 nm CACTI banks of
        pmax*pmax/pmin bits: WBUF N*M banks, IBUF N banks, OBUF M banks of 32 bits with a read-write
        port), or None when a bank size is outside the shipped CACTI table."""
        word = self.pmax * self.pmax // self.pmin
        banks = {"w": (self.wbuf_bytes, self.n * self.m, word, 0), "i": (self.ibuf_bytes, self.n, word, 0),
                 "o": (self.obuf_bytes, self.m, 32, 1)}
        per_bit = {}
        for key, (size, count, bits, port) in banks.items():
            bank_bytes = -(-size * 8 // (count * bits)) * bits // 8
            entry = CACTI_45NM_NJ.get((bank_bytes, port))
            if entry is None or bits != 32:
                return None
            per_bit[key] = (entry[0] / bits, entry[1] / bits)
        core = CORE_4X4_DYNAMIC_NW * self.n * self.m / 16 / (self.f_mhz * 1e6)
        return EnergyCosts(core, *per_bit["w"], *per_bit["i"], *per_bit["o"],
                           source="BitFusion simulator: CACTI 45 nm SRAM banks, 4x4 array synthesis scaled, "
                                  "DRAM 15 pJ/bit")

    def record(self) -> dict:
        data = asdict(self)
        costs = self.energy_costs()
        data["energy_costs_nj"] = asdict(costs) if costs else None
        return data


Config = BismoConfig | BitFusionConfig

PRESETS: dict[str, Config] = {
    "bismo-pynq": BismoConfig("bismo-pynq", 8, 256, 8, 200.0,
                              source="BISMO PYNQ-Z1 (Z7020), 64-bit AXI HP0: 8x256x8 @ 200 MHz, 6.5 binary TOPS"),
    "bismo-ultra96": BismoConfig("bismo-ultra96", 10, 256, 10, 300.0,
                                 source="BISMO Ultra96 (ZU3EG), 64-bit AXI HP0: 10x256x10 @ 300 MHz, 15.4 binary TOPS"),
    "bitfusion-isca18": BitFusionConfig("bitfusion-isca18",
                                        source="BitFusion ISCA'18 (bf_e_conf.ini): 16x32 fusion units @ 500 MHz, "
                                               "WBUF 64 KiB, IBUF 32 KiB, OBUF 16 KiB, 192 bits/cycle, 45 nm"),
}


def preset(name: str, **overrides) -> Config:
    """A preset by name, with fields overridden (e.g. ``preset("bismo-pynq", rd_bits=128)``)."""
    if name not in PRESETS:
        raise UserError(f"fpga-sim: unknown model {name!r} (presets: {', '.join(PRESETS)})")
    base = PRESETS[name]
    if not overrides:
        return base
    unknown = set(overrides) - {f.name for f in fields(base) if f.init and f.name != "name"}
    if unknown:
        raise UserError(f"fpga-sim: {name} has no parameter(s) {', '.join(sorted(unknown))}")
    return replace(base, **overrides)
