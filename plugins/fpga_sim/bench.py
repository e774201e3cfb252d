"""``mpqbench bench fpga-validate``: the fpga-sim models next to published figures.

1. BISMO peak binary TOPS of both presets (2 Dm Dk Dn f) against the papers' rounded figures.
2. BitFusion peak MACs per cycle at 2, 4, 8 (and 16, temporal) bits against the paper's.
3. BitFusion per-layer cycles, memory-wait cycles and SRAM/DRAM traffic against the 305 rows of the
   BitFusion simulator's published sweep (eight networks, M = 32..256, 192 and 4096 bits/cycle); every
   differing figure is listed.
4. The RTL cross-check (Verilator, when installed): GEMMs on the Verilog bit-serial array with the PYNQ
   preset's 8x256x8 geometry; its cycle counts against the model's execute cycles, its values against NumPy.
5. The HAQ-style latency table (layers x w-bits x a-bits) of torchvision's MobileNetV2 at 224x224 on the
   BISMO presets, batch 16 (HAQ's), with the scaling regimes HAQ's own table shows.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from mpqbench.plugins.fpga_sim import bitfusion, rtlsim
from mpqbench.plugins.fpga_sim.bismo import exec_cycles, tiling
from mpqbench.plugins.fpga_sim.latency import latency_table
from mpqbench.plugins.fpga_sim.presets import PRESETS, BismoConfig
from mpqbench.plugins.fpga_sim.published import (
    BISMO_PUBLISHED_TOPS,
    BITFUSION_PUBLISHED_MACS,
    HAQ_MOBILENETV2,
    bitfusion_networks,
    bitfusion_sweep,
)

SWEEP_FIELDS = {"cycles": "cycles", "memory_wait_cycles": "stall", "dram_read": "dram_read",
                "dram_write": "dram_write", "wbuf_read": "wbuf_read", "wbuf_write": "wbuf_write",
                "ibuf_read": "ibuf_read", "ibuf_write": "ibuf_write", "obuf_read": "obuf_read",
                "obuf_write": "obuf_write"}


def peaks() -> None:
    print("1. BISMO peak binary TOPS = 2 Dm Dk Dn f  (simulated = exact arithmetic on the preset)")
    for name, published in BISMO_PUBLISHED_TOPS.items():
        cfg = PRESETS[name]
        print(f"   {name:15s} {cfg.dm}x{cfg.dk}x{cfg.dn} @ {cfg.f_mhz:g} MHz: "
              f"{cfg.peak_binops_per_cycle:6d} binops/cycle = {cfg.peak_tops:.4f} TOPS   published {published}  "
              f"({'agrees to the published digit' if abs(cfg.peak_tops - published) < 0.1 else 'DIFFERS'})")
    cfg = PRESETS["bitfusion-isca18"]
    print(f"\n2. BitFusion peak MACs/cycle = N M floor(8/max(a,2)) floor(8/max(w,2)), {cfg.n}x{cfg.m} fusion units")
    for bits, published in sorted(BITFUSION_PUBLISHED_MACS.items()):
        got = cfg.peak_macs_per_cycle(bits, bits)
        print(f"   {bits}-bit: {got:5d}  published {published:5d}  {'exact' if got == published else 'DIFFERS'}"
              f"  ({got * cfg.f_mhz / 1e3:.0f} GMAC/s)")
    passes = (-(-16 // cfg.pmax)) ** 2
    print(f"   16-bit: the original simulator divides by floor(8/16) = 0; here (wide=temporal) 16-bit operands run "
          f"as 8-bit pieces, {passes} passes: {cfg.peak_macs_per_cycle(8, 8) / passes:.0f} MACs/cycle")


def sweep(show_all: bool) -> int:
    rows = bitfusion_sweep()
    nets = bitfusion_networks()
    base = PRESETS["bitfusion-isca18"]
    print(f"\n3. BitFusion per layer vs the published simulator sweep ({len(rows)} rows, batch 16; "
          "SRAM sizes scale with M as in the sweep)")
    start = time.perf_counter()
    differ, per_net = [], {}
    for r in rows:
        s = r.m // 32
        cfg = replace(base, m=r.m, if_bits=r.bandwidth, wbuf_bytes=base.wbuf_bytes * s,
                      ibuf_bytes=base.ibuf_bytes * s, obuf_bytes=base.obuf_bytes * s)
        res = bitfusion.layer(nets[r.network][r.layer], cfg, batch=16)
        got = {"cycles": res.cycles, "memory_wait_cycles": res.stall_cycles, "dram_read": res.dram_read_bits,
               "dram_write": res.dram_write_bits, **res.sram_bits}
        bad = {k: (got[k], r.values[k]) for k in SWEEP_FIELDS if got[k] != r.values[k]}
        if bad:
            differ.append((r, bad))
        key = (r.network, r.m, r.bandwidth)
        tot = per_net.setdefault(key, [0, 0, 0])
        tot[0] += res.cycles
        tot[1] += r.values["cycles"]
        tot[2] += 1
        if show_all or (r.m == 32 and r.bandwidth == 192 and r.network == "AlexNet"):
            print(f"   {r.network:9s} {r.layer:36s} M={r.m:3d} bw={r.bandwidth:4d}: {res.cycles:>11,d} cycles "
                  f"({res.stall_cycles:>9,d} waiting)  published {r.values['cycles']:>11,d} "
                  f"({r.values['memory_wait_cycles']:>9,d})")
    print("   per network, N=16 M=32:")
    for (net, m, bw), (ours, theirs, n) in sorted(per_net.items()):
        if m == 32:
            print(f"   {net:9s} bw={bw:4d} {n:2d} layers: {ours:>12,d} cycles  published {theirs:>12,d}  "
                  f"{'equal' if ours == theirs else 'DIFFER'}")
    same = len(rows) - len(differ)
    print(f"   {same}/{len(rows)} rows equal in all {len(SWEEP_FIELDS)} figures (cycles, memory wait, DRAM "
          f"read/write, W/I/OBUF read/write); {time.perf_counter() - start:.1f} s")
    for r, bad in differ:
        print(f"   DIFFERS {r.network} {r.layer} M={r.m} bw={r.bandwidth}: {bad}")
    fc3 = nets["AlexNet"]["fc3/MatMul"]
    print(f"   note: AlexNet fc3 reads fc2's FXP8 output ({fc3.a_bits}-bit inputs, {fc3.w_bits}-bit weights): compute "
          f"16 x ceil(1000/32) x ceil(8192/16) = {16 * 32 * 512:,d} cycles (131,072 would be 4-bit inputs)")
    return len(differ)


def rtl(cache_dir) -> int:
    reason = rtlsim.unavailable()
    print("\n4. RTL cross-check: Verilog bit-serial array under Verilator, PYNQ geometry 8x256x8")
    if reason:
        print(f"   skipped: {reason}")
        return 0
    cfg: BismoConfig = PRESETS["bismo-pynq"]
    rng = np.random.default_rng(0)
    cases = [(16, 9, 784, 8, 8, False), (16, 144, 196, 4, 4, False), (32, 288, 49, 2, 3, True),
             (10, 64, 1, 8, 8, False), (64, 2304, 16, 3, 5, False), (8, 300, 40, 1, 2, True)]
    start = time.perf_counter()
    failures = 0
    for m, k, n, wb, ab, signed in cases:
        w = rng.integers(-(1 << (wb - 1)), 1 << (wb - 1), (m, k)) if wb > 1 else rng.integers(-1, 1, (m, k))
        x = (rng.integers(-(1 << (ab - 1)), 1 << (ab - 1), (n, k)) if signed else rng.integers(0, 1 << ab, (n, k)))
        run = rtlsim.run_gemm(w, x, wb, ab, signed, cfg, cache_dir=cache_dir)
        model = exec_cycles(cfg, tiling(cfg, m, k, n, wb, ab), wb, ab)
        ok = run.cycles == model and np.array_equal(run.result, w @ x.T)
        failures += not ok
        print(f"   GEMM {m:3d}x{k:4d}x{n:3d} w{wb}a{ab}{' signed' if signed else ''}: RTL {run.cycles:7,d} cycles, "
              f"model {model:7,d}, {run.instructions:5d} instructions, values {'equal' if ok else 'DIFFER'}")
    print(f"   c_ovh = {cfg.c_ovh}, c_sync = {cfg.c_sync} (pinned by this RTL); {time.perf_counter() - start:.1f} s "
          "including the build")
    return failures


def haq_table(batch: int, classes: int, save: str | None) -> None:
    import torchvision

    from mpqbench.integer.shapes import layer_shapes

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=classes)
    shapes = layer_shapes(model, (3, 224, 224))
    bits = list(range(1, 9))
    print(f"\n5. HAQ-style latency table: torchvision MobileNetV2, 224x224, {classes} classes, {len(shapes)} layers, "
          f"batch {batch}; latency in us (simulated), w and a bits 1..8")
    h = HAQ_MOBILENETV2
    for name in ("bismo-pynq", "bismo-ultra96"):
        table = latency_table(shapes, name, batch, bits, bits)
        stack = np.stack(list(table.values()))  # (layers, w, a)
        first, last = stack[0], stack[-1]
        ratio = stack[:, 7, 7] / stack[:, 0, 0]
        print(f"   {name}: total w8a8 {stack[:, 7, 7].sum():,.0f} us, w4a4 {stack[:, 3, 3].sum():,.0f}, "
              f"w2a2 {stack[:, 1, 1].sum():,.0f}, w1a1 {stack[:, 0, 0].sum():,.0f}")
        totals = {b: stack[:, b - 1, b - 1].sum() for b in (1, 2, 4, 8)}
        print(f"     total ratios 8/8 : 4/4 : 2/2 : 1/1 = {totals[8] / totals[2]:.2f} : {totals[4] / totals[2]:.2f}"
              f" : 1 : {totals[1] / totals[2]:.2f}"
              f"   HAQ {h['total'][8] / h['total'][2]:.2f} : {h['total'][4] / h['total'][2]:.2f} : 1 : "
              f"{h['total'][1] / h['total'][2]:.2f}")
        print(f"     first layer w8a1/w1a1 {first[7, 0] / first[0, 0]:.2f} (HAQ {h['first_w8a1_over_w1a1']:.2f}), "
              f"w1a8/w1a1 {first[0, 7] / first[0, 0]:.2f} (HAQ {h['first_w1a8_over_w1a1']:.2f}); last layer "
              f"w8a1/w1a1 {last[7, 0] / last[0, 0]:.2f} (HAQ {h['last_w8a1_over_w1a1']:.2f}), w1a8/w1a1 "
              f"{last[0, 7] / last[0, 0]:.2f} (HAQ {h['last_w1a8_over_w1a1']:.2f})")
        print(f"     per-layer w8a8/w1a1 from {ratio.min():.1f} to {ratio.max():.1f} "
              f"(HAQ {h['per_layer_w8a8_over_w1a1'][0]:.1f} to {h['per_layer_w8a8_over_w1a1'][1]:.1f})")
        if name == "bismo-pynq":
            print(f"   {'layer':34s} {'GEMM M x K x N':>22s} {'w1a1':>9s} {'w2a2':>9s} {'w4a4':>9s} {'w8a8':>9s} "
                  f"{'w8a1':>9s} {'w1a8':>9s}")
            for (lname, s), t in zip(shapes.items(), stack):
                m, k, n = s.gemm(batch)
                cells = " ".join(f"{t[w - 1, a - 1]:9.1f}" for w, a in ((1, 1), (2, 2), (4, 4), (8, 8), (8, 1), (1, 8)))
                print(f"   {lname:34s} {f'{m}x{k}x{n}' + (f' g{s.groups}' if s.groups > 1 else ''):>22s} {cells}")
        if save:
            path = save.replace("{preset}", name) if "{preset}" in save else f"{save}.{name}.npy"
            np.save(path, stack)
            print(f"   saved the ({len(shapes)}, 8, 8) table [layer, w-1, a-1] to {path}")
    print("   HAQ's table is for its cloud BISMO configuration (not published) on ImageNet-100: compare regimes "
          "and ratios, not absolute values.")


def main(args: list[str], registry) -> int:
    """fpga-sim models vs published figures: BISMO/BitFusion peaks, BitFusion's per-layer sweep, RTL, HAQ table."""
    parser = argparse.ArgumentParser(prog="mpqbench bench fpga-validate")
    parser.add_argument("--all-rows", action="store_true", help="print every row of the BitFusion sweep")
    parser.add_argument("--no-rtl", action="store_true", help="skip the Verilator cross-check")
    parser.add_argument("--batch", type=int, default=16, help="batch of the HAQ-style table (HAQ's: 16)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--save", default=None, help="write each preset's table as .npy (PATH.{preset}.npy)")
    parser.add_argument("--cache-dir", default=None, help="RTL build cache (default $MPQBENCH_CACHE/fpga-sim)")
    opts = parser.parse_args(args)
    print("fpga-sim validation: every figure of this plugin is SIMULATED (analytical cycle models, deterministic)\n")
    peaks()
    failures = sweep(opts.all_rows)
    if not opts.no_rtl:
        failures += rtl(opts.cache_dir)
    haq_table(opts.batch, opts.classes, opts.save)
    return 1 if failures else 0
