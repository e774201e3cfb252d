"""``mpqbench bench cuda``: the cuda target's integer kernels on stored integer models.

Three parts, on the device asked for (``--device``, default ``cuda`` when present, else ``cpu``):

1. kernels: the measured int8 peak (a large ``torch._int_mm``) and the float GEMM peak, the GEMM
   shapes of the first model's layers at the batch size (int8 against the float baseline), and the
   cost of unpacking 2..8-bit weights on the device;
2. runs: the target deployed on every ``integer_model.npz`` under ``--artifacts`` with the first
   ``--images`` test images of the data set, checked bit for bit against the reference executor,
   with kernel tiers, the MAC share of the int8 tier and (on a GPU) latency against FP16/BF16;
3. layers: the first model's per-layer table (tier, requested and effective bits, time against the
   float reconstruction, fraction of the int8 peak).

On a GPU the times are CUDA-event medians (latency). On the CPU they are host wall time, labelled so,
and the float baseline is float32: CPU figures are never GPU latency.
``--write DIR`` saves ``cuda-<device>.json`` and ``.md`` there; ``--save-images`` / ``--images-npy`` carry
the test images to a machine without the data set.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from mpqbench.api import UserError
from mpqbench.integer import executor
from mpqbench.integer.model import IntegerModel
from mpqbench.integer.packing import pack
from mpqbench.plugins.cuda import kernels as K
from mpqbench.plugins.cuda import timing
from mpqbench.plugins.cuda.lowering import DeviceModel
from mpqbench.plugins.cuda.profile import DTYPES, device_name, profile
from mpqbench.plugins.cuda.target import CudaTarget, cuda_unavailable, parse_device

DEFAULT_ARTIFACTS = "results/fashion-mnist-resnet20/artifacts"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def load_images(registry, dataset: str, data_root: str | None, images: int) -> np.ndarray:
    """The first ``images`` test images of the data set, as every target deploy sees them (the built-in
    data sets are found without the registry too, for a source tree that is not installed)."""
    from mpqbench.system.paths import cache_dir

    try:
        entry = registry.dataset(dataset)
    except UserError:
        from mpqbench.data.builtin import DATASETS

        entry = next((d for d in DATASETS if d.name == dataset), None)
        if entry is None:
            raise
    return entry.load(data_root, cache_dir() / "data").test.x[:images].numpy()


def first_divergence(imodel: IntegerModel, got: dict, ref: dict) -> str | None:
    for op in imodel.ops:
        if op.output in got and not np.array_equal(got[op.output], ref[op.output]):
            return op.name
    return None


def bench_kernels(model: DeviceModel, device: torch.device, batch: int, baselines, peak_size: int,
                  warmup: int, iters: int) -> dict:
    """Peaks, the model's int8 GEMM shapes against the float baseline, and device unpacking per width."""
    peak = timing.int8_peak(device, peak_size, warmup, iters)
    floats = {b: timing.float_peak(device, peak_size, DTYPES[b], warmup, iters) for b in baselines}
    gen = torch.Generator().manual_seed(1)
    shapes = []
    for row in model.rows():
        if row["tier"] != "int8-mm":
            continue
        m, k, n = batch * row["m_per_image"], row["k"], row["n"] // row["groups"]
        if (m, k, n) in [(s["m"], s["k"], s["n"]) for s in shapes]:
            continue
        a = torch.randint(-128, 128, (K.padded_rows(m), K.round_up(k, K.ALIGN)), dtype=torch.int8, generator=gen)
        w = torch.randint(-128, 128, (K.round_up(n, K.ALIGN), a.shape[1]), dtype=torch.int8, generator=gen)
        a, w = a.to(device), w.to(device)
        t = timing.median_ms(lambda i, a=a, w=w, m=m, n=n: K.int8_gemm(a, w, m, n), device, warmup, iters)
        entry = {"layer": row["layer"], "m": m, "k": k, "n": n, "int8_ms": t.median_ms,
                 "int8_tops": 2 * m * k * n / (t.median_ms * 1e-3) / 1e12}
        entry["fraction_of_int8_peak"] = entry["int8_tops"] / peak["tops"]
        for b in baselines:
            af, wf = a[:m, :k].to(DTYPES[b]), w[:n, :k].to(DTYPES[b])
            entry[f"{b}_ms"] = timing.median_ms(lambda i, af=af, wf=wf: af @ wf.t(), device, warmup, iters).median_ms
        shapes.append(entry)
    largest = max((r for r in model.rows() if r["tier"] == "int8-mm"), key=lambda r: r["k"] * r["n"])
    unpack = []
    count = K.round_up(largest["n"], K.ALIGN) * K.round_up(largest["k"], K.ALIGN)
    for bits in range(2, 9):
        values = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (count,), generator=gen).numpy()
        packed = torch.from_numpy(pack(values, bits)).to(device)
        t = timing.median_ms(lambda i, p=packed, b=bits: K.unpack_bits(p, b, count), device, warmup, iters)
        unpack.append({"bits": bits, "weights": count, "packed_bytes": packed.numel(), "ms": t.median_ms})
    return {"int8_peak": peak, "float_peaks": floats, "gemms": shapes, "unpack": unpack,
            "unpack_layer": largest["layer"]}


def bench_runs(paths: list[Path], x: np.ndarray, device: torch.device, opts) -> list[dict]:
    """Deploy the target on every model: bit-exactness, tiers, and the target's own metrics."""
    target = CudaTarget()
    params = {"device": str(device), "batch": opts.batch, "warmup": opts.warmup, "iters": opts.iters,
              "peak_size": opts.peak_size, "layers": True}
    out = []
    for path in paths:
        imodel = IntegerModel.load(path)
        start = time.perf_counter()
        ref_logits, ref = executor.run(imodel, x, keep=True)
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        report = target.deploy(SimpleNamespace(params=params, cache=None), imodel, x)
        deploy_s = time.perf_counter() - start
        policy = imodel.meta.get("policy") or {}
        bits = [tuple(v) for v in policy.values()] if isinstance(policy, dict) else []
        out.append({
            "run": path.parent.name,
            "policy_wa": sorted({f"W{w}A{a}" for w, a in bits}),
            "bit_exact": bool(np.array_equal(report.outputs, ref_logits)),
            "first_divergent_layer": first_divergence(imodel, report.layers, ref),
            "images": int(len(x)),
            "tiers": report.conditions["tiers"],
            "metrics": {m.name: {"value": m.value, "unit": m.unit, "how": m.how} for m in report.metrics},
            "reference_host_s": ref_s,
            "target_host_s": deploy_s,
            "per_layer": report.per_layer,
        })
    return out


def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def render(result: dict) -> str:
    gpu, base = result["clock"] == "cuda-events", result["baselines"]
    unit = "ms (CUDA events, median)" if gpu else "ms CPU wall time (host clock, median; not GPU latency)"
    lines = [f"# cuda target benchmark: {result['device_name']}", "",
             f"device {result['device']}, torch {result['torch']}, CUDA {result['cuda']}, batch {result['batch']}, "
             f"times in {unit}, float baseline: {', '.join(base)}", ""]
    k = result.get("kernels")
    if k:
        p = k["int8_peak"]
        lines += ["## Kernels", "",
                  f"int8 peak: torch._int_mm {p['size']}^3: {_fmt(p['tops'])} TOPS ({_fmt(p['ms'])} ms)"]
        for name, fp in k["float_peaks"].items():
            lines.append(f"{name} peak: {fp['size']}^3 matmul: {_fmt(fp['tflops'])} TFLOP/s ({_fmt(fp['ms'])} ms)")
        if not gpu:
            lines.append("(CPU: the 'peak' is the rate of that one product, not a ceiling: other shapes can exceed it)")
        lines += ["", "| layer | M | K | N | int8 ms | int8 TOPS | of int8 peak | "
                  + " | ".join(f"{b} ms" for b in base) + " |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(base)]
        for g in k["gemms"]:
            lines.append(f"| {g['layer']} | {g['m']} | {g['k']} | {g['n']} | {_fmt(g['int8_ms'])} | "
                         f"{_fmt(g['int8_tops'])} | {_fmt(g['fraction_of_int8_peak'])} | "
                         + " | ".join(_fmt(g[f'{b}_ms']) for b in base) + " |")
        lines += ["", f"device unpacking of {k['unpack_layer']}'s weights (padded GEMM operand):", "",
                  "| bits | weights | packed bytes | ms |", "|---|---|---|---|"]
        lines += [f"| {u['bits']} | {u['weights']} | {u['packed_bytes']} | {_fmt(u['ms'])} |" for u in k["unpack"]]
        lines.append("")
    runs = result.get("runs", [])
    if runs:
        exact = sum(r["bit_exact"] for r in runs)
        lines += ["## Runs", "", f"{exact}/{len(runs)} bit-exact on {runs[0]['images']} images", "",
                  "| run | policy | bit-exact | tiers | int8 MAC share | effective/requested BitOPs | "
                  + ("latency ms | fp16 ms | bf16 ms | speedup vs fp16 |" if gpu else
                     "reference host s | target host s |"),
                  "|---|---|---|---|---|---|" + ("---|" * 4 if gpu else "---|" * 2)]
        for r in runs:
            m = r["metrics"]
            ratio = m["effective_bitops"]["value"] / m["requested_bitops"]["value"]
            tiers = ", ".join(f"{t} {n}" for t, n in sorted(r["tiers"].items()))
            head = (f"| {r['run']} | {' '.join(r['policy_wa'][:3])}{' ...' if len(r['policy_wa']) > 3 else ''} | "
                    f"{r['bit_exact']} | {tiers} | {_fmt(m['int8_mac_fraction']['value'])} | {_fmt(ratio)} |")
            if gpu:
                tail = " ".join(f"{_fmt(m[n]['value'])} |" if n in m else "- |" for n in
                                ("latency_ms", "fp16_latency_ms", "bf16_latency_ms", "speedup_vs_fp16"))
            else:
                tail = f"{_fmt(r['reference_host_s'])} | {_fmt(r['target_host_s'])} |"
            lines.append(f"{head} {tail}")
        lines.append("")
    layers = result.get("layers")
    if layers:
        lines += [f"## Layers of {layers['run']}", "",
                  "| layer | op | W/A requested | tier | W/A effective | weight bytes | int ms | "
                  + " | ".join(f"{b} ms" for b in base) + " | of int8 peak | GEMM of int8 peak |",
                  "|---|---|---|---|---|---|---|" + "---|" * len(base) + "---|---|"]
        for row, t in zip(layers["rows"], layers["timing"]["layers"]):
            req = f"{row['requested_w_bits']}/{row['requested_a_bits']}" if "requested_w_bits" in row else "-"
            eff = f"{row['effective_w_bits']}/{row['effective_a_bits']}" if row["effective_w_bits"] else "-"
            lines.append(f"| {row['layer']} | {row['op']} | {req} | {row['tier']} | {eff} | {row['weight_bytes']} | "
                         f"{_fmt(t['int_ms'])} | " + " | ".join(_fmt(t.get(f'{b}_ms')) for b in base)
                         + f" | {_fmt(t.get('fraction_of_int8_peak'))} | {_fmt(t.get('gemm_fraction_of_int8_peak'))} |")
        tt = layers["timing"]
        lines += ["", f"end to end: int {_fmt(tt['int_ms'])} ms, "
                  + ", ".join(f"{b} {_fmt(ms)} ms" for b, ms in tt["float_ms"].items())
                  + f" ({'latency' if gpu else 'CPU wall time'}, batch {tt['batch']})", ""]
    return "\n".join(lines)


def main(args: list[str], registry) -> int:
    """cuda target kernels: bit-exactness and tiers on stored runs; GPU latency vs FP16 and fraction of int8 peak."""
    parser = argparse.ArgumentParser(prog="mpqbench bench cuda")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument("--artifacts", default=DEFAULT_ARTIFACTS,
                        help="folder of <run_id>/integer_model.npz (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=None, help="only the first N models (sorted by run id)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=None, help="default 10 on a GPU, 1 on the CPU")
    parser.add_argument("--iters", type=int, default=None, help="default 50 on a GPU, 3 on the CPU")
    parser.add_argument("--peak-size", type=int, default=None, help="default 8192 on a GPU, 1024 on the CPU")
    parser.add_argument("--images-npy", default=None,
                        help="read the images from this .npy (uint8, N x C x H x W) instead of the data set")
    parser.add_argument("--save-images", default=None,
                        help="only write the data set's first --images test images to this .npy, and exit")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: kernels, runs, layers")
    parser.add_argument("--write", default=None, help="folder for cuda-<device>.json and .md")
    opts = parser.parse_args(args)
    if opts.save_images:
        np.save(opts.save_images, load_images(registry, opts.dataset, opts.data_root, opts.images))
        print(f"wrote {opts.save_images}")
        return 0
    device = parse_device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reason = cuda_unavailable(device)
    if reason:
        raise UserError(reason)
    gpu = device.type == "cuda"
    opts.warmup = opts.warmup if opts.warmup is not None else (10 if gpu else 1)
    opts.iters = opts.iters if opts.iters is not None else (50 if gpu else 3)
    opts.peak_size = opts.peak_size or (8192 if gpu else 1024)
    if min(opts.images, opts.batch, opts.iters) < 1 or opts.warmup < 0:
        raise UserError("--images, --batch and --iters must be at least 1, --warmup at least 0")
    skip = {s.strip() for s in opts.skip.split(",") if s.strip()}
    paths = sorted(Path(opts.artifacts).glob("*/integer_model.npz"))[: opts.runs]
    if not paths:
        raise UserError(f"no */integer_model.npz under {opts.artifacts}")
    if opts.images_npy:
        x = np.load(opts.images_npy, allow_pickle=False)[: opts.images]
    else:
        x = load_images(registry, opts.dataset, opts.data_root, opts.images)
    baselines = ("float16", "bfloat16") if gpu else ("float32",)
    result = {"device": str(device), "device_name": device_name(device), "torch": torch.__version__,
              "cuda": torch.version.cuda, "clock": timing.clock_name(device), "batch": opts.batch,
              "baselines": list(baselines), "warmup": opts.warmup, "iters": opts.iters,
              "artifacts": str(opts.artifacts), "images": int(len(x))}
    first = DeviceModel(IntegerModel.load(paths[0]), device)
    if "kernels" not in skip:
        result["kernels"] = bench_kernels(first, device, opts.batch, baselines, opts.peak_size, opts.warmup,
                                          opts.iters)
    if "runs" not in skip:
        result["runs"] = bench_runs(paths, x, device, opts)
    if "layers" not in skip:
        result["layers"] = {"run": paths[0].parent.name, "rows": first.rows(),
                            "timing": profile(first, x, batch=opts.batch, warmup=opts.warmup, iters=opts.iters,
                                              peak_size=opts.peak_size, baselines=baselines)}
    text = render(result)
    print(text)
    if opts.write:
        out = Path(opts.write)
        out.mkdir(parents=True, exist_ok=True)
        name = f"cuda-{slug(result['device_name'] if gpu else 'cpu')}"
        (out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
        (out / f"{name}.md").write_text(text + "\n")
        print(f"wrote {out / name}.json and .md")
    runs = result.get("runs", [])
    return 0 if all(r["bit_exact"] for r in runs) else 1


if __name__ == "__main__":  # usable before the benchmark is registered: python -m mpqbench.plugins.cuda.bench
    import sys

    from mpqbench.plugin.registry import load_registry

    try:
        sys.exit(main(sys.argv[1:], load_registry()))
    except UserError as exc:
        sys.exit(f"mpqbench: error: {exc}")
