import math

import pytest
import torch

from mpqbench.quant.quantizers import AffineQuantizer, LSQQuantizer, int_range


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
    inside = (w / q.scale()[:, None, None, None]).abs() < 3.5
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
