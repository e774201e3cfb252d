"""Integer deployment: the exported model, the reference executor, the verify gate (issue #3)."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F
from torchvision.models.mobilenetv2 import InvertedResidual

from mpqbench.api import ImageShape, Target, TargetReport
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.fixedpoint import quantize_multiplier, rounding_shift
from mpqbench.integer.model import IntegerModel
from mpqbench.integer.packing import pack, unpack
from mpqbench.models.resnets import ResNetCifar
from mpqbench.pipeline.deploy import DeployContext, compare, deploy_target
from mpqbench.quant.layout import make_layout
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_packed_weights_unpack_exactly(bits, data):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=0, max_size=300)), dtype=np.int64)
    packed = pack(values, bits)
    assert packed.size == (values.size * bits + 7) // 8
    assert np.array_equal(unpack(packed, bits, values.size), values)


@settings(max_examples=300, deadline=None)
@given(real=st.floats(1e-7, 2e4).flatmap(lambda r: st.sampled_from([r, -r])),
       acc=st.integers(-(2**31) + 1, 2**31 - 1))
def test_requantisation_matches_exact_rational_arithmetic(real, acc):
    m, s = quantize_multiplier(real)
    assert 1 <= s <= 62 and abs(m) < 2**31
    assert abs(Fraction(m, 2**s) - Fraction(real)) <= abs(Fraction(real)) * Fraction(1, 2**30)
    got = int(rounding_shift(np.array([acc], dtype=np.int64) * np.int64(m), s)[0])
    exact = Fraction(acc * m, 2**s)
    assert got == int(np.floor(exact + Fraction(1, 2)))  # round half toward +infinity


class TinyMobile(nn.Module):
    """A stem, an inverted residual block with its residual add (signed tensors), a strided one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block1 = InvertedResidual(8, 8, 1, 2)
        self.block2 = InvertedResidual(8, 16, 2, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


def _calibrated(model: nn.Module, bits: int, seed: int = 0) -> QuantModel:
    """A QuantModel with non-trivial BN (negative gammas included) and initialised quantizers."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.randn(m.num_features, generator=gen)
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.2
    layout = make_layout(model)
    q = QuantModel(model, layout, BitPolicy.uniform(layout, bits, bits, {layout.first: (8, 8)}))
    q.train()
    with torch.no_grad():
        for _ in range(4):
            q(torch.rand(32, 1, 8, 8, generator=gen))
    return q.eval()


def _float64_reference(imodel: IntegerModel, x: np.ndarray) -> np.ndarray:
    """The integer formulas of :mod:`mpqbench.integer.model` evaluated independently in float64 with
    torch's convolution (exact for these small integers) and floor-based rounding."""

    def scaled(v, op, key):
        mult = imodel.array(op, f"mult{key}").astype(np.float64)
        shift = imodel.array(op, f"shift{key}").astype(np.float64)
        factor = torch.from_numpy(mult / 2.0**shift)
        return torch.floor(v * (factor.reshape(1, -1, *([1] * (v.dim() - 2))) if factor.numel() > 1 else factor) + 0.5)

    def out(y, op):
        return torch.clamp(y + op.attrs["out_zero_point"], op.attrs["lo"], op.attrs["hi"])

    vals = {imodel.input: torch.from_numpy(x.astype(np.float64))}
    for op in imodel.ops:
        ins = [vals[i] for i in op.inputs]
        if op.kind in ("conv", "linear"):
            w = torch.from_numpy(imodel.weight(op).astype(np.float64))
            bias = torch.from_numpy(imodel.array(op, "bias").astype(np.float64))
            xin = ins[0] - op.attrs["in_zero_point"]
            if op.kind == "conv":
                acc = F.conv2d(xin, w, None, op.attrs["stride"], op.attrs["padding"], 1, op.attrs["groups"])
                acc = acc * 2.0 ** op.attrs["acc_shift"] + bias[None, :, None, None]
            else:
                acc = F.linear(xin.flatten(1), w) * 2.0 ** op.attrs["acc_shift"] + bias
            y = acc if imodel.tensors[op.output].kind == "acc" else out(scaled(acc, op, ""), op)
        elif op.kind == "add":
            t = sum(scaled(v - z, op, i) for i, (v, z) in enumerate(zip(ins, op.attrs["in_zero_points"])))
            y = out(torch.floor(t / 2.0 ** op.attrs["frac_bits"] + 0.5), op)
        elif op.kind == "avgpool":
            y = out(scaled((ins[0] - op.attrs["in_zero_point"]).sum(dim=(2, 3), keepdim=True), op, ""), op)
        else:
            raise AssertionError(op.kind)
        vals[op.output] = y.reshape((len(y),) + tuple(imodel.tensors[op.output].shape))
    return vals[imodel.output].numpy().astype(np.int64)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("make", [lambda: ResNetCifar(8, ImageShape(1, 8, 10)), TinyMobile],
                         ids=["residual", "depthwise"])
def test_executor_equals_a_float64_evaluation_of_the_integer_formulas(make, bits):
    torch.manual_seed(bits)
    imodel = export(_calibrated(make(), bits), (1, 8, 8))
    kinds = {op.kind for op in imodel.ops}
    assert {"conv", "add", "avgpool", "linear"} <= kinds
    if make is TinyMobile:
        assert any(op.attrs.get("groups", 1) > 1 for op in imodel.ops)
    x = np.random.default_rng(bits).integers(0, 256, (16, 1, 8, 8))
    assert np.array_equal(executor.run(imodel, x), _float64_reference(imodel, x))


def test_the_network_input_stays_8_bit_when_the_first_layer_is_searched():
    """A policy giving the first layer 3-bit activations is read back with 8: the images are 8-bit pixels and
    the integer model takes them as they are (before, the export declared a 3-bit input and the executor
    refused the pixels)."""
    model = ResNetCifar(8, ImageShape(1, 8, 10))
    layout = make_layout(model)
    q = QuantModel(model, layout, BitPolicy.uniform(layout, 3, 3))
    assert q.policy()[layout.first].a == 8 and q.policy()[layout.last].a == 3
    q.train()
    with torch.no_grad():
        q(torch.rand(32, 1, 8, 8))
    x = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8))
    assert executor.run(export(q.eval(), (1, 8, 8)), x).shape == (4, 10)


def test_export_load_round_trip_is_lossless(tmp_path):
    imodel = export(_calibrated(ResNetCifar(8, ImageShape(1, 8, 10)), 3), (1, 8, 8), {"note": "x"})
    imodel.save(tmp_path / "m.npz")
    back = IntegerModel.load(tmp_path / "m.npz")
    assert back.tensors == imodel.tensors and back.ops == imodel.ops and back.meta == imodel.meta
    assert set(back.arrays) == set(imodel.arrays)
    assert all(np.array_equal(back.arrays[k], v) and back.arrays[k].dtype == v.dtype for k, v in imodel.arrays.items())
    x = np.random.default_rng(0).integers(0, 256, (8, 1, 8, 8))
    assert np.array_equal(executor.run(back, x), executor.run(imodel, x))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:  # no pickle anywhere in the file
        assert all(npz[k].dtype != object for k in npz.files)


def test_exported_weights_are_the_fine_tuned_integers():
    q = _calibrated(TinyMobile(), 4)
    imodel = export(q, (1, 8, 8))
    for op in imodel.ops:
        if op.kind in ("conv", "linear"):
            layer = q.layers()[op.name]
            expected = layer.weight_quantizer.integers(layer.weight.detach()).numpy()
            assert np.array_equal(imodel.weight(op), expected)
            assert op.attrs["w_bits"] == (8 if op.name == "stem.0" else 4)


def test_negative_batchnorm_scale_rides_on_the_multiplier():
    imodel = export(_calibrated(TinyMobile(), 8, seed=3), (1, 8, 8))
    mults = np.concatenate([imodel.arrays[k] for k in imodel.arrays if k.endswith(".mult")])
    assert (mults < 0).any() and (mults > 0).any()


class PerturbingTarget(Target):
    """A deliberately wrong target: the reference computation with one value of one layer changed."""

    name = "wrong"

    def __init__(self, layer: str):
        self.layer = layer

    def deploy(self, run, imodel, inputs):
        values = {imodel.input: inputs.astype(np.int64)}
        for op in imodel.ops:
            out = executor.OPS[op.kind](imodel, op, [values[i] for i in op.inputs])
            out = out.reshape((len(out),) + tuple(imodel.tensors[op.output].shape)).copy()
            if op.name == self.layer:
                out.flat[3] = imodel.tensors[op.output].qmax
            values[op.output] = out
        return TargetReport(outputs=values[imodel.output], metrics=[], layers=values)


def test_a_wrong_target_is_caught_with_the_layer_named(mpqbench_registry, tmp_path):
    model = ResNetCifar(8, ImageShape(1, 8, 10))
    imodel = export(_calibrated(model, 4), (1, 8, 8))
    x = np.random.default_rng(1).integers(0, 256, (32, 1, 8, 8))
    reference = executor.run(imodel, x, keep=True)
    ctx = DeployContext("test", {}, tmp_path, mpqbench_registry.pm.hook)
    section = deploy_target(ctx, PerturbingTarget("layer2.0.conv1"), imodel, x, reference)
    assert section["status"] == "done"
    check = section["check"]
    assert not check["bit_exact"] and check["max_abs_diff"] > 0
    assert check["first_divergent_layer"] == "layer2.0.conv1"
    honest = compare(imodel, reference, TargetReport(outputs=reference[0], metrics=[], layers=reference[1]))
    assert honest["bit_exact"] and honest["first_divergent_layer"] is None


@pytest.mark.parametrize("w", [8, 4])
def test_integer_model_agrees_with_the_fine_tuned_fake_quant_model(mpqbench_run, w):
    run = mpqbench_run("uniform", params=f"w={w}")
    model = run.method.train(run, run.method.search(run))
    imodel = export(model, (1, 8, 8))
    test = run.data.test
    with torch.no_grad():
        fq = model(test.x.float() / 255).argmax(1).numpy()
    integer = executor.run(imodel, test.x.numpy()).argmax(1)
    assert (fq == integer).mean() >= 0.97
