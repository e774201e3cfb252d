"""The ``cuda`` target: the IntegerModel on PyTorch integer kernels on one device, checked bit for bit.

Every layer is lowered by :mod:`.lowering` to the nearest exact kernel tier (int8 ``torch._int_mm``,
direct int32 depthwise, exact float64) and each row of ``per_layer`` says which ran it: requested
(w, a) bits, tier, effective precision (a 4-bit activation in an int8 GEMM is recorded as 8-bit),
weight bytes (packed, as held on the device) and GEMM operand bytes.

Parameters: ``device`` (``cuda``, ``cuda:N`` or ``cpu``: the same kernels, for machines without a
GPU), ``batch`` (images per call, for the check and the timing), ``warmup`` and ``iters`` (timed calls),
``unpack`` (``load``: packed weights unpacked once on the device; ``call``: before every GEMM),
``layers`` (report every tensor so the harness can name the first diverging layer), ``peak_size``
(side of the int8 GEMM whose rate is the measured peak).

Latency is reported only when measured on a GPU (CUDA events, see :mod:`.timing`), with the FP16/BF16
cuDNN reconstruction of the same network as the baseline and the fraction of the measured int8 peak.
On the CPU the report holds bit-exactness, tiers and counted figures; latency is marked unavailable.
"""

from __future__ import annotations

import time

import torch

from mpqbench.api import Metric, Target, TargetReport, Unavailable, UserError
from mpqbench.integer.model import IntegerModel
from mpqbench.plugins.cuda.lowering import GEMM_TIERS, DeviceModel
from mpqbench.plugins.cuda.profile import device_name, profile

CPU_LATENCY = "unavailable: device=cpu runs the kernels for bit-exactness only; latency is measured only on a GPU"


def parse_device(text) -> torch.device:
    text = str(text).strip()
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise UserError(f"cuda: device={text!r} is not 'cuda', 'cuda:N' or 'cpu'")
    return device


def cuda_unavailable(device: torch.device) -> str | None:
    """One line when ``device`` is a GPU this machine does not have, else None."""
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        return (f"cuda: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use cuda:device=cpu for the bit-exactness check")
    if device.index is not None and device.index >= torch.cuda.device_count():
        return f"cuda: {device} requested, {torch.cuda.device_count()} CUDA device(s) present"
    return None


def _count(params, key: str, minimum: int) -> int:
    try:
        value = int(params[key])
    except (TypeError, ValueError):
        raise UserError(f"cuda: {key}={params[key]!r} is not an integer") from None
    if value < minimum:
        raise UserError(f"cuda: {key} must be at least {minimum}, not {value}")
    return value


class CudaTarget(Target):
    name = "cuda"
    version = "1.0"
    description = ("PyTorch integer kernels on a GPU (torch._int_mm int8 GEMMs, packed 2-8-bit weights), "
                   "bit-exact; per-layer tier and effective precision, latency vs FP16/BF16 on a GPU")
    params = {"device": "cuda", "batch": 256, "warmup": 10, "iters": 50, "unpack": "load", "layers": True,
              "peak_size": 8192}
    headline = ("latency_ms", "speedup_vs_fp16", "int8_mac_fraction")

    def unavailable(self, params=None) -> str | None:
        """The one-line reason when the requested device is absent. Without ``params`` the device is
        unknown (``device=cpu`` runs anywhere), so only the default ``cuda`` is checked in
        :meth:`deploy`, which raises :class:`Unavailable` with the same line."""
        if params is None:
            return None
        return cuda_unavailable(parse_device(params.get("device", self.params["device"])))

    def options(self, params) -> dict:
        p = {**self.params, **dict(params or {})}
        unpack = str(p["unpack"])
        if unpack not in ("load", "call"):
            raise UserError(f"cuda: unpack={unpack!r} is not 'load' or 'call'")
        layers = p["layers"] if isinstance(p["layers"], bool) else str(p["layers"]).lower() in ("1", "true", "yes")
        return {"device": parse_device(p["device"]), "batch": _count(p, "batch", 1),
                "warmup": _count(p, "warmup", 0), "iters": _count(p, "iters", 1), "unpack": unpack,
                "layers": layers, "peak_size": _count(p, "peak_size", 64)}

    def deploy(self, run, imodel: IntegerModel, inputs) -> TargetReport:
        if imodel.has_level_tables:
            raise Unavailable("cuda: learned level tables are not supported")
        opts = self.options(run.params)
        device = opts["device"]
        reason = cuda_unavailable(device)
        if reason:
            raise Unavailable(reason)
        model = DeviceModel(imodel, device, unpack=opts["unpack"])
        start = time.perf_counter()
        if opts["layers"]:
            logits, layers = model.run(inputs, keep=True, batch=opts["batch"])
        else:
            logits, layers = model.run(inputs, batch=opts["batch"]), {}
        check_seconds = time.perf_counter() - start
        rows = model.rows()
        metrics = counted_metrics(rows)
        conditions = {
            "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda, "images": int(len(logits)), "batch": opts["batch"],
            "unpack": opts["unpack"], "tiers": tier_histogram(rows),
            "check_host_seconds": round(check_seconds, 3),
        }
        if device.type == "cuda":
            conditions["cudnn"] = torch.backends.cudnn.version()
            result = profile(model, inputs, batch=opts["batch"], warmup=opts["warmup"], iters=opts["iters"],
                             peak_size=opts["peak_size"])
            metrics += latency_metrics(result, rows)
            for row, timed in zip(rows, result["layers"]):
                row.update({k: v for k, v in timed.items() if k not in ("layer", "tier")})
            conditions["latency"] = (f"median of {opts['iters']} CUDA-event intervals after {opts['warmup']} "
                                     f"warm-up calls, batch {opts['batch']}, {result['rotated_batches']} real "
                                     "input batches rotated, eager PyTorch")
            conditions["int8_peak"] = result["int8_peak"]
        else:
            conditions["latency"] = CPU_LATENCY
        return TargetReport(outputs=logits, metrics=metrics, layers=layers, per_layer=rows, conditions=conditions)


def tier_histogram(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["tier"]] = out.get(row["tier"], 0) + 1
    return out


def counted_metrics(rows: list[dict]) -> list[Metric]:
    """Figures that follow from the lowering itself, on any device."""
    gemm = [r for r in rows if r["tier"] in GEMM_TIERS]
    macs = sum(r["macs"] for r in gemm)
    int8 = sum(r["macs"] for r in gemm if r["tier"] == "int8-mm")
    requested = sum(r["macs"] * r["requested_w_bits"] * r["requested_a_bits"] for r in gemm)
    effective = sum(r["macs"] * r["effective_w_bits"] * r["effective_a_bits"] for r in gemm)
    return [
        Metric("int8_mac_fraction", int8 / macs if macs else float("nan"), "fraction", "counted",
               "MACs run by the int8 torch._int_mm tier"),
        Metric("macs", macs, "MACs/image", "counted", "conv and linear layers, unpadded"),
        Metric("requested_bitops", requested, "BitOPs/image", "counted", "sum(MACs x w x a) of the policy"),
        Metric("effective_bitops", effective, "BitOPs/image", "counted",
               "sum(MACs x w x a) at the precision the kernels compute in (int8 GEMM: 8 x 8)"),
        Metric("weight_bytes", sum(r["weight_bytes"] for r in gemm), "bytes", "counted",
               "packed weights held on the device (their own bit width, GEMM padding included)"),
        Metric("gemm_weight_bytes", sum(r["gemm_weight_bytes"] for r in gemm), "bytes", "counted",
               "weight operands the kernels read after unpacking (int8, int32 or float64)"),
    ]


def latency_metrics(result: dict, rows: list[dict]) -> list[Metric]:
    """GPU timings (``measured``): end to end, the float baselines, the int8 peak and its fraction."""
    batch, how = result["batch"], "measured"
    note = f"median, CUDA events, batch {batch}"
    out = [Metric("latency_ms", result["int_ms"], "ms/batch", how, note),
           Metric("images_per_s", batch / (result["int_ms"] * 1e-3), "images/s", how, note)]
    for name, ms in result["float_ms"].items():
        short = {"float16": "fp16", "bfloat16": "bf16"}.get(name, name)
        out.append(Metric(f"{short}_latency_ms", ms, "ms/batch", how, f"{note}, cuDNN {name} reconstruction"))
    if "float16" in result["float_ms"]:
        out.append(Metric("speedup_vs_fp16", result["float_ms"]["float16"] / result["int_ms"], "x", how,
                          "fp16 latency / integer latency, same network and inputs"))
    peak = result["int8_peak"]
    out.append(Metric("int8_peak_tops", peak["tops"], "TOPS", how, f"torch._int_mm {peak['size']}^3, median"))
    timed = [(r, t) for r, t in zip(rows, result["layers"]) if "fraction_of_int8_peak" in t]
    if timed:
        row, t = max(timed, key=lambda rt: rt[0]["macs"])
        out.append(Metric("largest_layer_peak_fraction", t["fraction_of_int8_peak"], "fraction", how,
                          f"{row['layer']}: whole layer (im2col, GEMM, epilogue) vs the int8 peak"))
        if "gemm_fraction_of_int8_peak" in t:
            out.append(Metric("largest_gemm_peak_fraction", t["gemm_fraction_of_int8_peak"], "fraction", how,
                              f"{row['layer']}: its torch._int_mm call alone vs the int8 peak"))
    return out
