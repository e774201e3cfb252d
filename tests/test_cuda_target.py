"""The cuda target (issue #14) on the CPU: the same integer kernels the GPU runs (``torch._int_mm``,
device-side unpacking, integer epilogues), bit for bit against the reference executor, with the
per-layer tiers and no latency figures off a GPU.

Models: exported QuantModels (uniform 2..8 bits, mixed and affine policies, residual blocks,
depthwise blocks, odd shapes) and the random single-op chains of the ARM target's tests (signed
tensors with zero points, odd channel counts, negative multipliers, grouped convs, acc + q adds).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_arm_target import EXPORTED, Chain, exported, random_chain

from mpqbench.api import ImageShape, UserError
from mpqbench.integer import executor
from mpqbench.integer.model import IntegerModel, TensorInfo
from mpqbench.integer.packing import pack
from mpqbench.models.resnets import ResNetCifar
from mpqbench.pipeline.deploy import DeployContext, deploy_target
from mpqbench.plugins import cuda as cuda_plugin
from mpqbench.plugins.cuda import kernels as K
from mpqbench.plugins.cuda.baseline import FloatNetwork
from mpqbench.plugins.cuda.lowering import DeviceModel
from mpqbench.plugins.cuda.profile import profile
from mpqbench.plugins.cuda.target import CudaTarget

#: The bit-exactness tests also run on the GPU where there is one (scripts/gpu_check.sh).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def check(imodel: IntegerModel, x: np.ndarray, device: str = "cpu", **kwargs) -> DeviceModel:
    """Every tensor and the logits equal the reference executor's."""
    model = DeviceModel(imodel, device, **kwargs)
    logits, layers = model.run(x, keep=True, batch=3)
    ref_logits, ref = executor.run(imodel, x, keep=True)
    for op in imodel.ops:
        assert np.array_equal(layers[op.output], ref[op.output]), f"{op.name} ({op.kind}) differs"
    assert np.array_equal(logits, ref_logits)
    return model


# ---- kernels --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
def test_device_unpacking_decodes_the_packed_bit_stream(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), 37)  # 37 * b bits: a partial last byte
    got = K.unpack_bits(torch.from_numpy(pack(values, bits)), bits, values.size)
    assert got.dtype == torch.int8 and np.array_equal(got.numpy(), values)


@pytest.mark.parametrize("m,k,n", [(1, 9, 5), (16, 8, 8), (17, 7, 3), (40, 147, 10)])
def test_int8_gemm_pads_to_the_cuda_constraints_and_stays_exact(m, k, n):
    rng = np.random.default_rng(m + k + n)
    a, w = rng.integers(-128, 128, (m, k)), rng.integers(-128, 128, (n, k))
    buf = K.gemm_buffer(m, k, torch.device("cpu"))
    assert buf.shape[0] > 16 and buf.shape[1] % 8 == 0
    buf[:m, :k] = torch.from_numpy(a)
    wp = torch.zeros((K.round_up(n, 8), buf.shape[1]), dtype=torch.int8)
    wp[:n, :k] = torch.from_numpy(w)
    got = K.int8_gemm(buf, wp, m, n)
    assert got.dtype == torch.int32 and np.array_equal(got.numpy(), a @ w.T)


def test_a_result_on_another_device_or_dtype_is_refused(monkeypatch):
    with pytest.raises(K.DeviceMismatch, match="not on cuda"):
        K.check_device(torch.zeros(2), torch.device("cuda"), "kernel")
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.long() @ b.long()))  # a silent int64 fallback
    with pytest.raises(K.DeviceMismatch, match="int64"):
        K.int8_gemm(torch.zeros((17, 8), dtype=torch.int8), torch.zeros((8, 8), dtype=torch.int8), 17, 8)


# ---- bit-exactness --------------------------------------------------------------------------------


MIXED = ["resnet-mixed", "resnet-affine-mixed", "mobile-mixed", "mobile-affine-w3", "odd-affine-mixed"]


@functools.lru_cache(maxsize=None)
def model_for(case: str) -> IntegerModel:
    """Exported models, built once per module (an export takes about a second)."""
    if case.startswith("resnet-w"):
        bits = int(case.removeprefix("resnet-w"))
        return exported(ResNetCifar(8, ImageShape(1, 8, 10)), 8, seed=bits, bits=bits)
    make, size, act_quantizer, bits = EXPORTED[case]
    return exported(make(), size, seed=sorted(EXPORTED).index(case), act_quantizer=act_quantizer, bits=bits)


def images(imodel: IntegerModel, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n,) + imodel.input_info.shape)


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_uniform_resnet_is_bit_exact(bits):
    imodel = model_for(f"resnet-w{bits}")
    model = check(imodel, images(imodel, 5, bits))
    rows = [r for r in model.rows() if r["op"] in ("conv", "linear")]
    assert all(r["tier"] == "int8-mm" and (r["effective_w_bits"], r["effective_a_bits"]) == (8, 8) for r in rows)
    inner = rows[1:-1]  # first and last layers are fixed at W8A8
    assert {(r["requested_w_bits"], r["requested_a_bits"]) for r in inner} == {(bits, bits)}
    if bits < 8:  # packed at their own width on the device, the narrower precision recorded, not hidden
        assert all("note" in r and r["weight_bytes"] < r["gemm_weight_bytes"] for r in inner)
    assert any(r["op"] == "add" for r in model.rows())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", MIXED)
def test_exported_mixed_models_are_bit_exact(case, device):
    imodel = model_for(case)
    model = check(imodel, images(imodel, 4), device)
    tiers = {r["tier"] for r in model.rows()}
    if case.startswith("mobile"):
        assert "int32-direct" in tiers  # depthwise convs
    if EXPORTED[case][3] is None:
        assert len({r["requested_w_bits"] for r in model.rows() if r.get("requested_w_bits")}) > 2


def test_mixed_cases_cover_every_width_from_2_to_8():
    """Between them the mixed policies put every width 2..8 on weights and on activations."""
    rows = [r for case in MIXED for r in DeviceModel(model_for(case), "cpu").rows() if "requested_w_bits" in r]
    assert {r["requested_w_bits"] for r in rows} == set(range(2, 9))
    assert {r["requested_a_bits"] for r in rows} == set(range(2, 9))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(8))
def test_random_chains_are_bit_exact(seed, device):
    imodel = random_chain(seed)
    x = np.random.default_rng(seed).integers(0, 256, (2,) + imodel.input_info.shape)
    check(imodel, x, device)


def test_random_chains_reach_padding_grouped_convs_and_both_conv_tiers():
    rows = [r for seed in range(8) for r in DeviceModel(random_chain(seed), "cpu").rows()]
    gemm = [r for r in rows if r["tier"] == "int8-mm"]
    assert any(r["padded_k"] > r["k"] for r in gemm) and any(r["padded_n"] > r["n"] // r["groups"] for r in gemm)
    assert any(r["groups"] > 1 for r in gemm)  # grouped (not depthwise) convs: one GEMM per group
    assert any(r["tier"] == "int32-direct" for r in rows)
    assert any(r["op"] == "linear" and r["m_per_image"] == 1 for r in gemm)  # M = batch rows: padded to 17


@pytest.mark.parametrize("tier,device", [("fp64-exact", d) for d in DEVICES] + [("int64-mm", "cpu")])
def test_forced_fallback_tiers_are_bit_exact_and_recorded(tier, device):
    imodel = random_chain(3)
    x = np.random.default_rng(3).integers(0, 256, (2,) + imodel.input_info.shape)
    model = check(imodel, x, device, force_tier=tier)
    assert {r["tier"] for r in model.rows() if r["op"] in ("conv", "linear")} == {tier}


def test_off_the_cpu_there_is_no_int64_matmul_to_fall_back_on():
    with pytest.raises(NotImplementedError, match="no exact integer kernel on meta"):
        DeviceModel(random_chain(0), "meta", force_tier="int64-mm")


def test_a_wide_input_falls_back_to_exact_float64():
    """A 12-bit input does not fit int8: the layer runs in float64, exactly, and says so."""
    ch = Chain(5, channels=3, size=7)
    ch.tensors["x"] = TensorInfo("x", "q", (3, 7, 7), bits=12, signed=False, zero_point=100)
    ch.cur = ch.layer("conv", 9, k=3)
    ch.layer("linear", 10, out="logits")
    imodel = ch.build()
    x = np.random.default_rng(5).integers(0, 4096, (3, 3, 7, 7))
    rows = check(imodel, x).rows()
    assert rows[0]["tier"] == "fp64-exact" and rows[0]["effective_a_bits"] == 64 and rows[1]["tier"] == "int8-mm"


def test_unpacking_before_every_call_gives_the_same_outputs():
    imodel = model_for("resnet-w3")
    model = check(imodel, images(imodel, 3, 1), unpack="call")
    assert {r["unpack"] for r in model.rows() if "unpack" in r} == {"call"}


def test_an_accumulator_beyond_int32_is_refused_like_the_reference():
    imodel = random_chain(2)
    first = imodel.ops[0]
    imodel.arrays[f"{first.name}.bias"] = np.full_like(imodel.array(first, "bias"), 2**31 - 1)
    x = np.full((1,) + imodel.input_info.shape, 255)
    with pytest.raises(OverflowError):
        executor.run(imodel, x)
    with pytest.raises(OverflowError, match=first.name):
        DeviceModel(imodel, "cpu").run(x)


def test_inputs_outside_the_input_range_are_refused_like_the_reference():
    imodel = random_chain(0)
    with pytest.raises(ValueError, match="outside"):
        DeviceModel(imodel, "cpu").run(np.full((1,) + imodel.input_info.shape, 256))


# ---- the float reconstruction ---------------------------------------------------------------------


def test_the_float_reconstruction_is_the_same_network():
    """In float64 it differs from the integer model by rounding only: the same class almost always."""
    imodel = model_for("resnet-w8")
    x = images(imodel, 64, 2)
    ints = executor.run(imodel, x)
    real = FloatNetwork(imodel, torch.float64).logits(x)
    scale = imodel.tensors["logits"].scale
    assert np.mean(real.argmax(1) == ints.argmax(1)) >= 0.9
    assert np.median(np.abs(real / scale - ints)) < 0.05 * np.abs(ints).max()


# ---- the target -----------------------------------------------------------------------------------


def _deploy(params, imodel, x, registry, tmp_path):
    reference = executor.run(imodel, x, keep=True)
    ctx = DeployContext("test", dict(params), tmp_path, registry.pm.hook)
    return deploy_target(ctx, CudaTarget(), imodel, x, reference)


def test_deploy_on_cpu_is_bit_exact_with_tiers_and_no_latency(mpqbench_registry, tmp_path):
    imodel = model_for("resnet-mixed")
    x = images(imodel, 5, 4)
    section = _deploy({"device": "cpu", "batch": 2}, imodel, x, mpqbench_registry, tmp_path)
    assert section["status"] == "done", section
    assert section["check"]["bit_exact"] and section["check"]["images"] == 5
    metrics = section["metrics"]
    assert {m["how"] for m in metrics.values()} == {"counted"}
    assert not any("latency" in name or "peak" in name or "speedup" in name for name in metrics)
    assert section["conditions"]["latency"].startswith("unavailable")
    rows = section["per_layer"]
    assert [r["layer"] for r in rows] == [op.name for op in imodel.ops]
    assert all(r["tier"] and "arithmetic" in r and not any("_ms" in k for k in r) for r in rows)
    assert metrics["int8_mac_fraction"]["value"] == 1.0
    assert metrics["effective_bitops"]["value"] >= metrics["requested_bitops"]["value"]
    assert metrics["weight_bytes"]["value"] == sum(r["weight_bytes"] for r in rows)


def test_without_cuda_the_default_device_is_unavailable_in_one_line(monkeypatch, mpqbench_registry, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    target = CudaTarget()
    reason = target.unavailable({"device": "cuda"})
    assert reason.startswith("cuda: no CUDA device") and "\n" not in reason
    assert target.unavailable({"device": "cpu"}) is None and target.unavailable() is None
    imodel = random_chain(1)
    x = np.random.default_rng(1).integers(0, 256, (1,) + imodel.input_info.shape)
    section = _deploy({}, imodel, x, mpqbench_registry, tmp_path)
    assert section["status"] == "unavailable" and section["reason"] == reason


@pytest.mark.parametrize("params,match", [({"device": "tpu"}, "device"), ({"device": "cpu", "batch": 0}, "batch"),
                                          ({"device": "cpu", "unpack": "never"}, "unpack")])
def test_bad_parameters_are_user_errors(params, match):
    run = type("Run", (), {"params": params})()
    with pytest.raises(UserError, match=match):
        CudaTarget().deploy(run, random_chain(0), np.zeros((1, 5, 9, 9)))


def test_the_plugin_registers_the_target():
    got = []
    cuda_plugin.mpqbench_register_targets(got.append)
    assert [t.name for t in got] == ["cuda"] and "device" in got[0].params


def test_cpu_profile_labels_its_clock_and_times_every_layer():
    """The benchmark's CPU figures: host wall time, per layer, against a float32 reconstruction."""
    imodel = model_for("resnet-w3")
    x = images(imodel, 8, 5)
    result = profile(DeviceModel(imodel, "cpu"), x, batch=4, warmup=0, iters=1, peak_size=64,
                     baselines=("float32",))
    assert result["clock"] == "cpu-wall" and result["rotated_batches"] == 2
    assert len(result["layers"]) == len(imodel.ops)
    assert all(e["int_ms"] > 0 and e["float32_ms"] > 0 for e in result["layers"])
    assert any("gemm_fraction_of_int8_peak" in e for e in result["layers"])
