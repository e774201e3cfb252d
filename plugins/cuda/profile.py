"""Per-layer and end-to-end timing of the lowered integer network against its float reconstruction.

On a GPU this is the target's latency report (CUDA events); on the CPU the benchmark uses the same
code and labels every figure CPU wall time. The integer network's fraction of peak is its rate
(2 x MACs of the real, unpadded layer per call) over the rate of a large ``torch._int_mm`` measured
in the same process: per whole layer (im2col, GEMM, epilogue) and for its GEMM call alone.
"""

from __future__ import annotations

import numpy as np
import torch

from mpqbench.plugins.cuda import timing
from mpqbench.plugins.cuda.baseline import FloatNetwork
from mpqbench.plugins.cuda.lowering import DeviceModel

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def real_batches(inputs, batch: int, count: int, device: torch.device) -> list[torch.Tensor]:
    """``count`` batches of ``batch`` consecutive real images (cycling through ``inputs`` when there are
    fewer), on the device: distinct batches to rotate between calls, never zeros."""
    x = np.asarray(inputs)
    if len(x) == 0:
        raise ValueError("no inputs to time on")
    count = max(1, min(count, -(-len(x) // batch)))
    index = np.arange(batch * count) % len(x)
    return [torch.from_numpy(np.ascontiguousarray(x[index[i * batch:(i + 1) * batch]])).to(device)
            for i in range(count)]


def profile(model: DeviceModel, inputs, *, batch: int, warmup: int, iters: int, rotate: int = 4,
            peak_size: int = 8192, baselines: tuple[str, ...] = ("float16", "bfloat16")) -> dict:
    """Timings of ``model`` and of its float reconstruction in each ``baselines`` dtype."""
    device = model.device
    batches = real_batches(inputs, batch, rotate, device)
    if device.type == "cuda":
        old_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # cuDNN picks its fastest algorithm for the float baseline
    try:
        ints = timing.layerwise(model, batches, device, warmup, iters)
        floats = {}
        for name in baselines:
            net = FloatNetwork(model.imodel, DTYPES[name], device)
            floats[name] = timing.layerwise(net, batches, device, warmup, iters)
        peak = timing.int8_peak(device, peak_size)
        with torch.no_grad():
            kept = model.forward(model.prepare(batches[0]), keep=True)
            gemm = {}
            for layer in model.layers:
                fn = layer.gemm_only([kept[n] for n in layer.op.inputs])
                if fn is not None:
                    gemm[layer.op.name] = timing.median_ms(lambda i, fn=fn: fn(), device, warmup, iters)
    finally:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = old_benchmark
    peak_ops = peak["tops"] * 1e12
    layers = []
    for index, row in enumerate(model.rows()):
        ms = ints["ops"][index].median_ms
        entry = {"layer": row["layer"], "tier": row["tier"], "int_ms": ms}
        for name, result in floats.items():
            entry[f"{name}_ms"] = result["ops"][index].median_ms
        if "float16" in floats:
            entry["speedup_vs_fp16"] = entry["float16_ms"] / ms
        if row["macs"]:
            rate = 2 * row["macs"] * batch / (ms * 1e-3)
            entry.update(tops=rate / 1e12, fraction_of_int8_peak=rate / peak_ops)
            if row["layer"] in gemm:
                g = gemm[row["layer"]].median_ms
                entry.update(gemm_ms=g, gemm_fraction_of_int8_peak=2 * row["macs"] * batch / (g * 1e-3) / peak_ops)
        layers.append(entry)
    return {
        "clock": ints["total"].clock, "batch": batch, "warmup": warmup, "iters": iters, "rotated_batches": len(batches),
        "int_ms": ints["total"].median_ms,
        "float_ms": {name: r["total"].median_ms for name, r in floats.items()},
        "int8_peak": peak,
        "layers": layers,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
