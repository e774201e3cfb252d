"""The arm-qemu target (issue #4): every kernel of the C runtime against the reference executor, bit for
bit, and the counted deployment.

Two kinds of models: exported QuantModels (the patterns the exporter really emits: residual adds with
downsample, depthwise blocks, signed tensors, affine activations with zero points, mixed W2..W8 x
A2..A8 policies) and random chains of single ops built directly as IntegerModels, which reach what
exported models rarely do: signed tensors with zero points, odd channel counts on every kernel,
negative multipliers, both requantisation paths, grouped convs.  Skipped without qemu-aarch64 and the
cross compiler (the layout tests run anyway).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_integer import TinyMobile
from torch import nn

from mpqbench.api import ImageShape
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.fixedpoint import quantize_multipliers
from mpqbench.integer.model import IntegerModel, Op, TensorInfo
from mpqbench.integer.packing import pack
from mpqbench.models.resnets import ResNetCifar
from mpqbench.pipeline.deploy import DeployContext, deploy_target
from mpqbench.plugins.arm_qemu import layout as lay
from mpqbench.plugins.arm_qemu import toolchain as tc
from mpqbench.plugins.arm_qemu.target import ArmQemu, RuntimeRun
from mpqbench.quant.layout import make_layout
from mpqbench.quant.model import QuantModel, affine_activation, lsq_activation
from mpqbench.quant.policy import BitPolicy

KERNELS = {name: kernel for kernel, name in lay.KERNEL_NAMES.items()}
ACT = {"lsq": lsq_activation, "affine": affine_activation}


def check_run(imodel: IntegerModel, x: np.ndarray, arm_cache) -> RuntimeRun:
    """Run on the runtime; every tensor must equal the executor's, and the counts must add up."""
    run = RuntimeRun(imodel, x, cache_dir=arm_cache)
    logits, ref = executor.run(imodel, x, keep=True)
    for op in imodel.ops:
        assert np.array_equal(run.layers[op.output], ref[op.output]), f"{op.name} ({op.kind}) differs"
    assert np.array_equal(run.outputs, logits)
    counted = run.counted
    for k in tc.CLASSES:
        assert sum(row[k] for row in counted.layers) + counted.other[k] == counted.counts[k]
    return run


# ---- layer regions of the counter ------------------------------------------------------------------

MARKED_LOOP_S = r"""
    .global _start
_start:
    mov     x0, #N
1:  hint    #0x7c               // MARK_LAYER: starts layer 0
    add     x1, x1, #1
    add     x1, x1, #1
    hint    #0x7c               // starts layer 1
    add     x2, x2, #1
    hint    #0x7d               // MARK_END: the rest is "other", the next MARK_LAYER is layer 0 again
    subs    x0, x0, #1
    b.ne    1b
    mov     x0, #0
    mov     x8, #93
    svc     #0
"""


@pytest.mark.parametrize("n", [1, 1000])
def test_markers_split_the_counts_exactly_inside_one_block(arm_cache, n):
    """The loop body is one translated block with three markers in it; each marker counts in the
    region it ends."""
    src = arm_cache / "marked.S"
    src.write_text(MARKED_LOOP_S)
    binary = tc.cross_compile(src, flags=["-nostdlib", "-static", f"-DN={n}"], cache_dir=arm_cache)
    run = tc.run_counted(binary, cache_dir=arm_cache)
    assert run.total == 8 * n + 4 and run.marks == (2 * n, n)
    assert [row["total"] for row in run.layers] == [3 * n, 2 * n]
    assert run.layers[0]["scalar_alu"] == 2 * n and run.layers[0]["branch_sys"] == n
    assert run.other["total"] == 3 * n + 4
    assert tc.run_counted(binary, cache_dir=arm_cache) == run


# ---- exported models -----------------------------------------------------------------------------


class OddNet(nn.Module):
    """Odd channel counts: im2col below 16 input channels, direct conv above (17/18 channels padded to
    32), stride 2, max pooling, a grouped conv (the scalar fallback) and a linear layer on a spatial
    (C, H, W) input (the runtime permutes its weights to NHWC)."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, k=3, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = block(1, 5)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.body = nn.Sequential(block(5, 18), block(18, 17, stride=2), block(17, 12, groups=1),
                                  block(12, 6, groups=3), block(6, 19, k=1))
        self.fc = nn.Linear(19 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(self.pool(self.stem(x))), 1))


def mixed_policy(layout, seed: int, fixed_first: bool = True) -> BitPolicy:
    """Random weight and activation bits in 2..8 per layer, consistent with the layout's sharing."""
    rng = np.random.default_rng(seed)
    weights = {layout.unit_name(g): int(rng.integers(2, 9)) for g in layout.weight_groups}
    acts = {layer: int(rng.integers(2, 9)) for layer in layout.layers}
    return BitPolicy.from_unit_bits(layout, weights, acts, {layout.first: (8, 8)} if fixed_first else None)


def exported(model: nn.Module, size: int, seed: int, act_quantizer: str = "lsq", bits: int | None = None):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial BN, negative gammas included
            m.weight.data = torch.randn(m.num_features, generator=gen)
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.2
    layout = make_layout(model)
    policy = BitPolicy.uniform(layout, bits, bits, {layout.first: (8, 8)}) if bits else mixed_policy(layout, seed)
    q = QuantModel(model, layout, policy, act_quantizer=ACT[act_quantizer]).train()
    with torch.no_grad():
        for _ in range(4):
            q(torch.rand(32, 1, size, size, generator=gen))
    return export(q.eval(), (1, size, size))


EXPORTED = {
    "resnet-w8": (lambda: ResNetCifar(8, ImageShape(1, 8, 10)), 8, "lsq", 8),
    "resnet-w2": (lambda: ResNetCifar(8, ImageShape(1, 8, 10)), 8, "lsq", 2),
    "resnet-mixed": (lambda: ResNetCifar(8, ImageShape(1, 8, 10)), 8, "lsq", None),
    "resnet-affine-mixed": (lambda: ResNetCifar(8, ImageShape(1, 8, 10)), 8, "affine", None),
    "mobile-mixed": (TinyMobile, 8, "lsq", None),
    "mobile-affine-w3": (TinyMobile, 8, "affine", 3),
    "odd-mixed": (OddNet, 12, "lsq", None),
    "odd-affine-mixed": (OddNet, 12, "affine", None),
}


@pytest.mark.parametrize("case", list(EXPORTED))
def test_exported_models_run_bit_exact(arm_cache, case):
    make, size, act_quantizer, bits = EXPORTED[case]
    imodel = exported(make(), size, seed=sorted(EXPORTED).index(case), act_quantizer=act_quantizer, bits=bits)
    x = np.random.default_rng(0).integers(0, 256, (3, 1, size, size))
    run = check_run(imodel, x, arm_cache)
    used = {KERNELS[row["kernel"]] for row in run.per_op()}
    assert lay.CONV_DIRECT in used and lay.CONV_IM2COL in used
    if case.startswith("resnet"):
        assert lay.ADD in used and any(o.kind == "add" and len({imodel.tensors[i].kind for i in o.inputs}) == 1
                                       for o in imodel.ops)  # acc + acc (downsample)
    if case.startswith("mobile"):
        assert lay.CONV_DEPTHWISE in used
        if act_quantizer == "affine":  # its linear bottlenecks (no ReLU) get zero points
            assert any(t.zero_point != 0 for t in imodel.tensors.values() if t.kind == "q")
    if case.startswith("odd"):
        assert {lay.CONV_SCALAR, lay.MAXPOOL} <= used
    if bits is None:
        assert len({o.attrs["w_bits"] for o in imodel.ops if "w_bits" in o.attrs}) > 2


# ---- random single-op chains -----------------------------------------------------------------------


class Chain:
    """A random IntegerModel: a chain of ops with random shapes, bit widths, signedness, zero points,
    multipliers (negative ones included) and accumulator shifts, within the executor's int32 bounds."""

    def __init__(self, seed: int, channels: int, size: int):
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, TensorInfo] = {}
        self.ops: list[Op] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.spread: dict[str, float] = {}  # typical magnitude of an accumulator tensor
        self.cur = self.q("x", (channels, size, size), bits=8, signed=False, zero_point=0)

    def q(self, name, shape, bits=None, signed=None, zero_point=None) -> str:
        rng = self.rng
        bits = int(rng.integers(2, 9)) if bits is None else bits
        signed = bool(rng.integers(2)) if signed is None else signed
        info = TensorInfo(name, "q", tuple(shape), bits=bits, signed=signed)
        if zero_point is None:
            zero_point = int(rng.integers(info.qmin, info.qmax + 1)) if rng.random() < 0.6 else max(info.qmin, 0)
        info.zero_point = zero_point
        self.tensors[name] = info
        return name

    def _span(self, name) -> int:
        t = self.tensors[name]
        return max(abs(t.qmin - t.zero_point), abs(t.qmax - t.zero_point))

    def _mults(self, reals, prefix, key=""):
        reals = np.asarray(reals) * np.where(self.rng.random(np.size(reals)) < 0.3, -1, 1)
        mult, shift = quantize_multipliers(reals)
        self.arrays[f"{prefix}.mult{key}"], self.arrays[f"{prefix}.shift{key}"] = mult, shift

    def _out_attrs(self, out, attrs):
        t = self.tensors[out]
        lo = max(t.qmin, t.zero_point) if self.rng.random() < 0.5 else t.qmin
        attrs.update(out_zero_point=t.zero_point, lo=lo, hi=t.qmax)

    def layer(self, kind, cout, k=3, stride=1, groups=1, out="q", gain=1.0):
        """conv / linear from the current tensor; ``out``: "q", "acc" or "logits"."""
        rng, src = self.rng, self.cur
        c, h, w = (self.tensors[src].shape + (1, 1))[:3]
        name = f"op{len(self.ops)}"
        wb = int(rng.integers(2, 9))
        pad = k // 2
        if kind == "conv":
            shape = (cout, c // groups, k, k)
            oshape = (cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        else:
            shape, oshape = (cout, c * h * w), (cout,)
        weights = rng.integers(-(1 << (wb - 1)), 1 << (wb - 1), shape)
        terms = int(np.prod(shape[1:]))
        bound = terms * self._span(src) * (1 << (wb - 1))
        acc_shift = int(min(rng.integers(0, 5), max(0, np.floor(np.log2(2**29 / bound)))))
        spread = np.sqrt(terms) * (1 << (wb - 1)) * self._span(src) * 2**acc_shift / 2
        bias_max = int(max(2, min(spread, 2**30 - bound * 2**acc_shift)))
        attrs = {"w_bits": wb, "w_shape": list(shape), "in_zero_point": self.tensors[src].zero_point,
                 "acc_shift": acc_shift}
        if kind == "conv":
            attrs.update(stride=[stride, stride], padding=[pad, pad], groups=groups)
        self.arrays[f"{name}.weight"] = pack(weights, wb)
        self.arrays[f"{name}.bias"] = rng.integers(-bias_max, bias_max, cout).astype(np.int32)
        if out == "acc":
            dst = f"{name}:acc"
            self.tensors[dst] = TensorInfo(dst, "acc", oshape)
            self.spread[dst] = spread
        else:
            dst = "logits" if out == "logits" else self.q(f"t{len(self.ops)}", oshape)
            if out == "logits":
                self.tensors[dst] = TensorInfo(dst, "q", oshape, bits=32, signed=True)
                attrs.update(out_zero_point=0, lo=-(2**31), hi=2**31 - 1)
                levels = 2.0**20
            else:
                self._out_attrs(dst, attrs)
                levels = 2.0 ** self.tensors[dst].bits
            self._mults(gain * levels / spread * rng.uniform(0.5, 2, cout), name)
        self.ops.append(Op(kind, name, [src], dst, attrs))
        return dst

    def add(self, other: str):
        """The current tensor plus ``other``: a q tensor or an accumulator of the same shape."""
        rng = self.rng
        inputs = [self.cur, other]
        rng.shuffle(inputs)
        name = f"op{len(self.ops)}"
        out_name = self.q(f"t{len(self.ops)}", self.tensors[self.cur].shape)
        frac = 24
        zeros = []
        for i, t in enumerate(inputs):
            info = self.tensors[t]
            scale = (self._span(t) if info.kind == "q" else self.spread[t]) / 2.0 ** self.tensors[out_name].bits
            n = 1 if info.kind == "q" else info.shape[0]
            self._mults(2.0**frac / scale * rng.uniform(0.5, 2, n), name, str(i))
            zeros.append(info.zero_point if info.kind == "q" else 0)
        attrs = {"frac_bits": frac, "in_zero_points": zeros}
        self._out_attrs(out_name, attrs)
        self.ops.append(Op("add", name, inputs, out_name, attrs))
        return out_name

    def pool(self, kind):
        src = self.cur
        c, h, w = self.tensors[src].shape
        name = f"op{len(self.ops)}"
        attrs = {"in_zero_point": self.tensors[src].zero_point}
        if kind == "maxpool":
            attrs.update(kernel=[3, 3], stride=[2, 2], padding=[1, 1])
            shape, window = (c, (h - 1) // 2 + 1, (w - 1) // 2 + 1), 1
        else:
            shape, window = (c,), h * w
        out = self.q(f"t{len(self.ops)}", shape)
        self._out_attrs(out, attrs)
        self._mults([2.0 ** self.tensors[out].bits / (window * self._span(src)) * self.rng.uniform(0.5, 2)], name)
        self.ops.append(Op(kind, name, [src], out, attrs))
        return out

    def build(self) -> IntegerModel:
        return IntegerModel(self.tensors, self.ops, self.arrays, "x", "logits")


def random_chain(seed: int) -> IntegerModel:
    """stem, stride-2 conv, depthwise, grouped conv, residual adds (q + acc and q + q), max pool, and a
    linear layer to int32 logits on a spatial tensor or after global average pooling."""
    ch = Chain(seed, channels=int(np.random.default_rng(seed).choice([1, 3, 5])), size=9)
    rng = ch.rng
    odd = lambda: int(rng.choice([3, 5, 7, 16, 17, 20, 33]))  # noqa: E731
    ch.cur = ch.layer("conv", odd(), k=3, gain=rng.choice([1.0, 2.0**12]))  # 2^12: the int64 requant path
    ch.cur = ch.layer("conv", odd(), k=int(rng.choice([1, 3])), stride=2)
    c = ch.tensors[ch.cur].shape[0]
    ch.cur = ch.layer("conv", c, k=3, groups=c)  # depthwise
    skip = ch.cur
    ch.cur = ch.layer("conv", c, k=3)
    ch.cur = ch.add(skip)
    acc = ch.layer("conv", c, k=int(rng.choice([1, 3])), out="acc")
    ch.cur = ch.add(acc)
    g = next(d for d in (3, 2, 1) if c % d == 0 and d > 1) if c % 2 == 0 or c % 3 == 0 else 1
    ch.cur = ch.layer("conv", 6 if g > 1 else odd(), k=3, groups=g)
    if rng.random() < 0.5:
        ch.cur = ch.pool("maxpool")
        ch.cur = ch.pool("avgpool")
    ch.layer("linear", 10, out="logits")
    return ch.build()


@pytest.mark.parametrize("seed", range(8))
def test_random_chains_run_bit_exact(arm_cache, seed):
    imodel = random_chain(seed)
    x = np.random.default_rng(seed).integers(0, 256, (2,) + imodel.input_info.shape)
    check_run(imodel, x, arm_cache)


def test_random_chains_cover_every_kernel_and_both_requant_paths():
    """The cases above reach every kernel, signed tensors with zero points, odd channel counts and
    both requantisation paths (all shifts >= 32, and not)."""
    kernels, short, long_, signed_zp, w_bits = set(), False, False, False, set()
    for seed in range(8):
        imodel = random_chain(seed)
        plan = lay.plan(imodel)
        kernels |= {ol.kernel for ol in plan.ops}
        for op in imodel.ops:
            if op.kind == "conv" and imodel.tensors[op.output].kind == "q":
                shifts = imodel.array(op, "shift")
                short |= bool(shifts.min() >= 32)
                long_ |= bool(shifts.min() < 32)
            w_bits.add(op.attrs.get("w_bits"))
        signed_zp |= any(t.signed and t.zero_point != 0 for t in imodel.tensors.values() if t.kind == "q")
    assert kernels == set(lay.KERNEL_NAMES) and short and long_ and signed_zp
    assert set(range(2, 9)) <= w_bits


# ---- layout (no toolchain needed) ----------------------------------------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
def test_sdot_packing_keeps_every_weight_at_its_bit_width(bits):
    """Decode pack_sdot's planes the way the kernel does and get the weights back, in sdot order."""
    rng = np.random.default_rng(bits)
    o, taps, k = 21, 3, 32
    w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (o, taps, k))
    packed = lay.pack_sdot(w, bits)
    assert packed.nbytes == 2 * taps * (k // 16) * 2 * 16 * bits  # 2 blocks of 16 outputs, b bits each
    planes = packed.reshape(-1, bits, 16)  # (super-block, plane, lane)
    stream = np.unpackbits(planes.transpose(0, 2, 1), axis=-1, bitorder="little")  # (sb, lane, 8 b bits)
    codes = np.packbits(stream.reshape(len(planes), 16, 8, bits), axis=-1, bitorder="little")[..., 0].transpose(0, 2, 1)
    values = ((codes.astype(np.int16) ^ (1 << (bits - 1))) - (1 << (bits - 1))) if bits < 8 else codes.view(np.int8)
    # (ob, tap, cb, sb, g, j, out, ch) -> (out, tap, k)
    blocks = values.reshape(2, taps, k // 16, 2, 2, 4, 4, 4).transpose(0, 5, 6, 1, 2, 3, 4, 7)
    assert np.array_equal(blocks.reshape(32, taps, k)[:o], w)


# ---- the target ----------------------------------------------------------------------------------


def test_deploy_is_bit_exact_with_per_layer_counts_that_add_up_and_repeat(arm_cache, mpqbench_registry, tmp_path):
    imodel = exported(ResNetCifar(8, ImageShape(1, 8, 10)), 8, seed=3, bits=4)
    x = np.random.default_rng(1).integers(0, 256, (4, 1, 8, 8))
    reference = executor.run(imodel, x, keep=True)
    sections = []
    for _ in range(2):
        ctx = DeployContext("test", {}, tmp_path, mpqbench_registry.pm.hook)
        sections.append(deploy_target(ctx, ArmQemu(), imodel, x, reference))
    section = sections[0]
    assert section["status"] == "done", section
    assert section["check"]["bit_exact"] and section["check"]["images"] == 4
    metrics = section["metrics"]
    assert {m["how"] for m in metrics.values()} == {"counted"}
    rows = section["per_layer"]
    assert [r["layer"] for r in rows] == [op.name for op in imodel.ops]
    assert sum(r["instructions"] for r in rows) == pytest.approx(metrics["instructions"]["value"])
    assert sum(r["macs"] for r in rows) == metrics["macs"]["value"]
    per_mac = metrics["instructions"]["value"] / metrics["macs"]["value"]
    assert metrics["instr_per_mac"]["value"] == pytest.approx(per_mac)
    assert metrics["instr_dot"]["value"] > 0 and metrics["weight_bytes"]["value"] > 0
    cond = section["conditions"]
    assert cond["cpu"] == "max" and cond["environment"] == "empty" and cond["guest_threads"] == 1
    assert cond["compiler_flags"][:3] == list(tc.DEFAULT_CROSS_FLAGS) and len(cond["runtime_sources_sha256"]) == 16
    assert sections[1]["metrics"] == metrics and sections[1]["per_layer"] == rows  # counts repeat exactly


def test_missing_toolchain_makes_the_target_unavailable_in_one_line(monkeypatch, mpqbench_registry, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "qemu-aarch64" else "/bin/x")
    ctx = DeployContext("test", {}, tmp_path, mpqbench_registry.pm.hook)
    section = deploy_target(ctx, ArmQemu(), None, np.zeros((1, 1, 8, 8)), None)
    reason = "arm-qemu: qemu-aarch64 not found (apt-get install qemu-user)"
    assert section == {"status": "unavailable", "reason": reason, "params": dict(ArmQemu.params)}


def test_optional_cycle_estimate_is_labelled_modelled(arm_cache, mpqbench_registry, tmp_path):
    if shutil.which(tc.MCA) is None:
        pytest.skip(f"{tc.MCA} not installed")
    imodel = exported(ResNetCifar(8, ImageShape(1, 8, 10)), 8, seed=4, bits=8)
    x = np.random.default_rng(2).integers(0, 256, (2, 1, 8, 8))
    ctx = DeployContext("test", {"mca_core": "neoverse-n1", "layers": False}, tmp_path, mpqbench_registry.pm.hook)
    section = deploy_target(ctx, ArmQemu(), imodel, x, executor.run(imodel, x, keep=True))
    cycles = section["metrics"]["est_cycles"]
    assert cycles["how"] == "modelled" and "llvm-mca" in cycles["note"] and "neoverse-n1" in cycles["note"]
    assert sum(r["est_cycles"] for r in section["per_layer"]) == pytest.approx(cycles["value"])
    # sdot: at most 2 per cycle on this model's N1, so at most 32 MACs per cycle
    assert 0 < section["metrics"]["macs"]["value"] / cycles["value"] < 32
    assert section["check"]["bit_exact"] and section["check"]["first_divergent_layer"] is None
