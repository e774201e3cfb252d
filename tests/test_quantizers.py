import math

import numpy as np
import pytest
import torch

from mpqbench.quant.quantizers import AffineQuantizer, LSQQuantizer, Quantizer, configure_lsq, int_range, round_ste


@pytest.mark.parametrize("bits,signed,expected", [(2, True, (-2, 1)), (4, False, (0, 15)), (8, True, (-128, 127))])
def test_int_range(bits, signed, expected):
    assert int_range(bits, signed) == expected


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_lsq_values_lie_on_the_grid_within_range(bits, signed):
    torch.manual_seed(bits)
    q = LSQQuantizer(bits, signed=signed)
    x = torch.randn(4, 3, 5, 5) * 3
    y = q(x)
    step = q.scale().item()
    codes = y / step
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= q.qmin - 1e-4 and codes.max() <= q.qmax + 1e-4
    assert torch.equal(q.integers(x), codes.round().long())


def test_lsq_init_follows_the_paper():
    x = torch.randn(2, 8, 4, 4)
    q = LSQQuantizer(4, signed=True)
    q(x)
    assert q.scale().item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(7), rel=1e-6)


def test_lsq_per_channel_steps_and_gradients():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    q = LSQQuantizer(3, signed=True, channels=6)
    y = q(w)
    assert q.step.shape == (6,)
    y.sum().backward()
    v = w / q.scale()[:, None, None, None]
    inside = (v > -4) & (v < 3)
    # straight-through estimator: gradient 1 inside the clipping range, 0 outside
    assert torch.equal(w.grad[inside], torch.ones_like(w.grad[inside]))
    assert torch.equal(w.grad[~inside], torch.zeros_like(w.grad[~inside]))
    assert q.step.grad is not None and q.step.grad.abs().sum() > 0


def test_lsq_step_gradient_matches_the_formula():
    q = LSQQuantizer(2, signed=False)
    q.step.data.fill_(1.0)
    q.initialized.fill_(True)
    x = torch.tensor([[0.3, 1.6, 5.0, -1.0]])
    q(x).sum().backward()
    g = 1 / math.sqrt(4 * 3)  # N = 4 features per sample, Q_P = 3
    expected = ((-0.3 + 0) + (-1.6 + 2) + 3 + 0) * g  # -v/s + round(v/s) inside, Q_P above, -Q_N (=0) below
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-5)


def _band_grads(gradient: str, mode: str = "eager"):
    """Gradients of a 2-bit unsigned LSQ (Q_P = 3, step 1) at codes inside, in the band (3, 3.5), beyond."""
    q = LSQQuantizer(2, signed=False)
    configure_lsq(q, gradient, mode)
    q.step.data.fill_(1.0)
    q.initialized.fill_(True)
    x = torch.tensor([[0.3, 1.6, 3.2, 3.4, 5.0]], requires_grad=True)
    y = q(x)
    y.sum().backward()
    return y.detach(), x.grad, q.step.grad.item()


def test_lsq_paper_gradient_clips_on_x_over_s_in_the_band():
    y, x_grad, step_grad = _band_grads("paper")
    g = 1 / math.sqrt(5 * 3)
    assert x_grad.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]  # the paper: 0 once v/s >= Q_P
    assert step_grad == pytest.approx(((-0.3 + 0) + (-1.6 + 2) + 3 + 3 + 3) * g, rel=1e-5)
    torch_y, torch_x_grad, torch_step_grad = _band_grads("torch")
    assert torch.equal(y, torch_y)  # the same values; only the gradients differ
    assert torch_x_grad.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]  # PyTorch's op: clips on round(v/s)
    assert torch_step_grad == pytest.approx(((-0.3 + 0) + (-1.6 + 2) + (3 - 3.2) + (3 - 3.4) + 3) * g, rel=1e-5)


def test_compiled_lsq_equals_eager():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 6, 6).relu().contiguous(memory_format=torch.channels_last)
    out = {}
    for mode in ("eager", "compiled"):
        q = LSQQuantizer(3, signed=False)
        configure_lsq(q, "paper", mode)
        xin = x.clone().requires_grad_()
        y = q(xin)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        out[mode] = (y.detach(), xin.grad, q.step.grad)
    for eager, compiled in zip(out["eager"], out["compiled"]):
        assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-6)


def test_bitwidth_changes_without_rebuilding():
    q = LSQQuantizer(8, signed=True)
    x = torch.randn(3, 10)
    q(x)
    q.set_bits(2)
    y = q(x)
    assert q.bits == 2 and len(torch.unique(y)) <= 4
    q.set_bits(32)
    assert torch.equal(q(x), x)


def test_affine_quantizer_zero_point_and_range():
    q = AffineQuantizer(8)
    x = torch.linspace(-1.0, 3.0, 101)
    q.train()
    y = q(x)
    scale, zero = q.scale().item(), q.zero_point().item()
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert zero == round(1.0 / scale)
    assert (y - x).abs().max() <= scale / 2 + 1e-6
    assert q(torch.zeros(1)).item() == 0.0  # real zero is exact


def test_fixed_input_quantizer_keeps_raw_pixels():
    q = AffineQuantizer(8, fixed_range=(0.0, 1.0))
    pixels = torch.arange(256).float()
    assert torch.equal(q.integers(pixels / 255), pixels.long())


class FixedStep(Quantizer):
    """A method's own quantizer, built from the core's pieces (round_ste, the Quantizer base)."""

    def __init__(self, bits: int, step: float):
        super().__init__(bits, signed=True)
        self.step = step

    def _fake(self, x):
        return round_ste(x / self.step).clamp(self.qmin, self.qmax) * self.step

    def scale(self):
        return torch.tensor([self.step])


def test_a_method_supplies_its_own_quantizers():
    from mpqbench.api import ImageShape
    from mpqbench.integer.export import export
    from mpqbench.models.small_cnn import small_cnn, small_cnn_layout
    from mpqbench.quant.model import QuantModel
    from mpqbench.quant.policy import BitPolicy

    model = small_cnn(ImageShape(1, 8, 10))
    layout = small_cnn_layout(model)
    q = QuantModel(model, layout, BitPolicy.uniform(layout, 4, 4))
    q.set_weight_quantizer("conv2", FixedStep(3, 0.05))
    point = q.input_point("conv3")
    q.set_act_quantizer(point, FixedStep(4, 0.1))
    seen = {}
    q.points()[point].register_forward_hook(lambda m, i, o: seen.update(act=o.detach()))
    q(torch.rand(4, 1, 8, 8)).sum().backward()
    layer = q.layers()["conv2"]
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0  # STE reaches the weights
    codes = seen["act"] / 0.1
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.abs().max() <= 8
    imodel = export(q.eval(), (1, 8, 8))
    op = next(o for o in imodel.ops if o.name == "conv2")
    assert op.attrs["w_bits"] == 3 and imodel.tensors[point].bits == 4
    assert np.array_equal(imodel.weight(op), FixedStep(3, 0.05).integers(layer.weight.detach()).numpy())
