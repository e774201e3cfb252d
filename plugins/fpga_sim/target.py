"""The ``fpga-sim`` target: an IntegerModel on a simulated bit-flexible accelerator (BISMO or BitFusion).

* **Outputs**: the functional simulation (:mod:`.functional`): every conv/linear GEMM computed from the
  accelerator's digit products (bit planes or 2-bit bricks), so the harness's bit-exactness check tests the
  bit-serial/bit-fusion arithmetic against the reference executor.  ``functional=false`` returns the
  reference executor's outputs instead (and says so in the conditions).
* **Metrics** (all ``simulated``): ``cycles`` and ``latency_us`` of the conv/linear layers for one batch of
  ``batch`` images at the preset's clock (the cycle models of :mod:`.bismo` / :mod:`.bitfusion`;
  formulas in ``docs/fpga-sim.md``), ``images_per_s``, ``macs``; BitFusion also ``energy_uj`` (its
  simulator's per-access energies) and DRAM traffic; BISMO ``binops_per_cycle`` against its peak.
* **RTL check** (``rtl=true``, BISMO presets): the ``rtl_layers`` smallest layers run on the Verilog array
  under Verilator (:mod:`.rtlsim`) for the first image; its cycle count must equal the model's execute
  cycles and its values the reference executor's, else the deployment fails.
* **Conditions**: every parameter of the preset, the batch, how outputs were obtained.

``overrides`` changes preset fields, ``key=value`` comma-separated (e.g. ``rd_bits=128,c_sync=11``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mpqbench.api import Metric, Target, TargetReport, Unavailable, UserError
from mpqbench.integer import executor
from mpqbench.integer.model import IntegerModel
from mpqbench.integer.shapes import op_shapes
from mpqbench.plugins.fpga_sim import bismo, functional, latency, rtlsim
from mpqbench.plugins.fpga_sim.presets import PRESETS, BismoConfig, Config, preset

VERSION = "1.0"


def parse_overrides(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"fpga-sim: override {item!r} is not key=value")
        for cast in (int, float):
            try:
                out[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = {"true": True, "false": False}.get(value.strip().lower(), value.strip())
    return out


def rtl_check(imodel: IntegerModel, ref_layers: dict[str, np.ndarray], cfg: BismoConfig, count: int,
              cache_dir: Path | str | None = None, params: rtlsim.ArrayParams | None = None) -> list[dict]:
    """Run the ``count`` conv/linear layers (groups = 1) with the fewest execute cycles for one image on the
    RTL array, reading their inputs from the executor's tensors ``ref_layers`` (``executor.run(...,
    keep=True)``); per layer: RTL and model cycles, and whether the values equal the executor's."""
    shapes = op_shapes(imodel)
    ops = {op.name: op for op in imodel.ops}
    candidates = []
    for name, s in shapes.items():
        if s.groups != 1:
            continue
        m, k, n = s.gemm(1)
        t = bismo.tiling(cfg, m, k, n, s.w_bits, s.a_bits)
        candidates.append((bismo.exec_cycles(cfg, t, s.w_bits, s.a_bits), name))
    rows = []
    for model_cycles, name in sorted(candidates)[:count]:
        op, s = ops[name], shapes[name]
        w, cols, hw = functional.gemm_operands(imodel, op, ref_layers[op.inputs[0]][:1].astype(np.int64))
        run = rtlsim.run_gemm(w[0], cols[0], s.w_bits, s.a_bits, bool(s.a_signed), cfg, params=params,
                              cache_dir=cache_dir)
        o = run.result.shape[0]
        full = imodel.weight(op).astype(np.int64).reshape(o, -1).sum(axis=1)
        acc = (run.result - op.attrs["in_zero_point"] * full[:, None]) * (1 << op.attrs["acc_shift"])
        acc = (acc + imodel.array(op, "bias").astype(np.int64)[:, None]).T  # (positions, O)
        acc = acc if op.kind == "linear" else acc.T.reshape(1, o, *hw)
        out = executor._requant_out(imodel, op, acc)
        expected = ref_layers[op.output][:1].astype(np.int64)
        rows.append({"layer": name, "gemm_mkn": [int(v) for v in s.gemm(1)], "w_bits": s.w_bits, "a_bits": s.a_bits,
                     "rtl_cycles": run.cycles, "model_exec_cycles": int(model_cycles),
                     "values_equal": bool(np.array_equal(out.reshape(expected.shape), expected)),
                     "instructions": run.instructions})
    return rows


class FpgaSim(Target):
    name = "fpga-sim"
    version = VERSION
    description = ("simulated bit-flexible FPGA accelerators: BISMO (bit-serial) and BitFusion (bit-parallel) "
                   "cycle models, bit-exact functional simulation, optional Verilator RTL check")
    params = {"model": "bismo-pynq", "batch": 1, "functional": True, "layers": True, "rtl": False, "rtl_layers": 2,
              "overrides": ""}
    headline = ("latency_us", "cycles")

    def unavailable(self, params=None) -> str | None:
        params = dict(self.params, **(params or {}))
        if params.get("rtl"):
            return rtlsim.unavailable()
        return None

    def config(self, params) -> Config:
        return preset(str(params["model"]), **parse_overrides(params.get("overrides", "")))

    def deploy(self, run, imodel: IntegerModel, inputs) -> TargetReport:
        if imodel.has_level_tables:
            raise Unavailable("fpga-sim: learned level tables are not supported")
        params = {**self.params, **run.params}
        cfg = self.config(params)
        batch = int(params["batch"])
        if batch < 1:
            raise UserError(f"fpga-sim: batch={batch} must be at least 1")
        x = np.asarray(inputs)
        start = time.perf_counter()
        layers: dict[str, np.ndarray] = {}
        if params["functional"]:
            result = functional.run(imodel, x, cfg.arch, keep=bool(params["layers"] or params["rtl"]))
            outputs, layers = result if isinstance(result, tuple) else (result, {})
            how_outputs = f"functional simulation ({cfg.arch} digit products)"
        else:
            outputs = executor.run(imodel, x)
            how_outputs = "reference executor (functional simulation off): not a bit-exactness test"
        sim_seconds = time.perf_counter() - start
        rows = latency.network_rows(imodel, cfg, batch)
        cycles = sum(r["cycles"] for r in rows)
        lat = cycles / cfg.f_mhz
        macs = sum(r["macs"] for r in rows)
        note = f"{cfg.name}, batch {batch}, conv/linear layers only"
        metrics = [
            Metric("latency_us", lat, "us/batch", "simulated", f"{note}, {cfg.f_mhz:g} MHz"),
            Metric("cycles", cycles, "cycles/batch", "simulated", note),
            Metric("images_per_s", batch / lat * 1e6 if lat else float("nan"), "images/s", "simulated", note),
            Metric("macs", macs, "MACs/image", "simulated", "from the layer shapes"),
        ]
        if isinstance(cfg, BismoConfig):
            binops = sum(r["bismo.binops"] for r in rows)
            metrics += [
                Metric("binops_per_cycle", binops / cycles if cycles else float("nan"), "binary ops/cycle",
                       "simulated", f"peak {cfg.peak_binops_per_cycle} (2 Dm Dk Dn)"),
                Metric("exec_cycles", sum(r["bismo.exec_cycles"] for r in rows), "cycles/batch", "simulated",
                       "execute stage alone"),
            ]
        else:
            energy = [r["bitfusion.energy_nj"] for r in rows]
            if energy and all(e is not None for e in energy):
                metrics.append(Metric("energy_uj", sum(energy) / 1e3, "uJ/batch", "simulated",
                                      "BitFusion simulator energy model (45 nm CACTI SRAM, 15 pJ/bit DRAM)"))
            metrics += [
                Metric("stall_cycles", sum(r["bitfusion.stall_cycles"] for r in rows), "cycles/batch", "simulated",
                       "memory stalls and initial/final transfers"),
                Metric("dram_bits", sum(r["bitfusion.dram_read_bits"] + r["bitfusion.dram_write_bits"] for r in rows),
                       "bits/batch", "simulated", "DRAM reads + writes"),
            ]
        conditions = {"model": cfg.record(), "batch": batch, "outputs": how_outputs, "images": int(len(x)),
                      "functional_host_seconds": round(sim_seconds, 2), "simulator": f"mpqbench fpga-sim {VERSION}",
                      "presets": sorted(PRESETS)}
        if params["rtl"]:
            if not isinstance(cfg, BismoConfig):
                conditions["rtl"] = "skipped: the RTL array is BISMO's bit-serial datapath"
            else:
                ref_layers = executor.run(imodel, x[:1], keep=True)[1]  # every tensor, the input included
                checks = rtl_check(imodel, ref_layers, cfg, int(params["rtl_layers"]), Path(run.cache) / "fpga-sim")
                conditions["rtl"] = checks
                bad = [c for c in checks if c["rtl_cycles"] != c["model_exec_cycles"] or not c["values_equal"]]
                if bad:
                    raise RuntimeError(f"fpga-sim: RTL check disagrees with the model on {bad}")
        return TargetReport(outputs=outputs, metrics=metrics, layers=layers if params["layers"] else {},
                            per_layer=rows, conditions=conditions)
