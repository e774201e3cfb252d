"""HAWQ-V3: Hutchinson traces against exact ones, perturbations, and a full search on the tiny run."""

import pytest
import torch
from torch import nn

from mpqbench.data.splits import ImageShape
from mpqbench.errors import UserError
from mpqbench.models.builtin import MODELS
from mpqbench.plugins.hawq_v3 import unit_layout
from mpqbench.plugins.hawq_v3.hessian import hutchinson, perturbation
from mpqbench.quant.model import default_weight_quantizer
from mpqbench.quant.policy import BitPolicy


@pytest.fixture
def method_run(mpqbench_run):
    """``mpqbench_run`` for hawq-v3 with a 1-epoch FP32 start on 256 images: the tests need a real run, not a
    good model, and this keeps them seconds-fast on a loaded 2-core machine."""
    return lambda **kwargs: mpqbench_run("hawq-v3", fp32_epochs=1, train_subset=256, **kwargs)


def _quadratic(a: torch.Tensor, split: int):
    """loss = 0.5 w^T A w over w = (w1, w2): the Hessian is A, its diagonal blocks' traces are known."""
    w1 = torch.randn(split, requires_grad=True)
    w2 = torch.randn(a.shape[0] - split, requires_grad=True)
    return (lambda: 0.5 * torch.cat([w1, w2]) @ a @ torch.cat([w1, w2])), {"w1": [w1], "w2": [w2]}


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    a = torch.diag(torch.arange(1.0, 11.0))
    loss, groups = _quadratic(a, 4)
    traces, iters, converged = hutchinson([loss], groups, 3, 1e-3, torch.Generator().manual_seed(0))
    assert traces["w1"] == pytest.approx(10.0) and traces["w2"] == pytest.approx(45.0)
    assert converged and iters == 2  # v_i^2 = 1: every sample is exact, the mean stops moving at once


def test_hutchinson_matches_the_exact_trace_of_a_quadratic():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(12, 12, generator=gen)
    a = m @ m.T / 12 + torch.eye(12)
    loss, groups = _quadratic(a, 5)
    traces, iters, converged = hutchinson([loss], groups, 3000, 0.0, gen)
    assert iters == 3000 and not converged
    assert traces["w1"] == pytest.approx(float(a[:5, :5].trace()), rel=0.05)
    assert traces["w2"] == pytest.approx(float(a[5:, 5:].trace()), rel=0.05)


def test_hutchinson_averages_batches_of_a_linear_regression():
    """Mean-squared error of a linear layer: the Hessian of the mean over batches is X^T X / N."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(64, 6, generator=gen), torch.randn(64, 1, generator=gen)
    layer = nn.Linear(6, 1, bias=False)
    losses = [lambda i=i: 0.5 * (layer(x[i:i + 32]) - y[i:i + 32]).square().mean() for i in (0, 32)]
    traces, _, _ = hutchinson(losses, {"w": [layer.weight]}, 400, 0.0, gen)
    assert traces["w"] == pytest.approx(float(x.square().sum() / 64), rel=0.05)


def test_minmax_perturbation_matches_a_hand_computation():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 0.05], [-1.0, 0.3, 0.7]]))
    # 2 bits: codes -2..1, step max|w| / 1 per row. Row 0, step 0.5: (1, -0.4, 0.1) -> (1, 0, 0), error
    # 0.2^2 + 0.05^2. Row 1, step 1: (-1, 0.3, 0.7) -> (-1, 0, 1), error 0.3^2 + 0.3^2.
    assert perturbation(layer, 2) == pytest.approx(0.04 + 0.0025 + 0.09 + 0.09)
    # 3 bits: codes -4..3, step max|w| / 3. Row 0: (3, -1.2, 0.3) -> (3, -1, 0); row 1: (-3, 0.9, 2.1) -> (-3, 1, 2).
    expected = (0.2 - 0.5 / 3) ** 2 + 0.05 ** 2 + (0.3 - 1 / 3) ** 2 + (0.7 - 2 / 3) ** 2
    assert perturbation(layer, 3) == pytest.approx(expected)


def test_minmax_perturbation_is_the_default_and_finer_than_the_lsq_initial_step_at_8_bits():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    w = conv.weight.detach()
    with torch.no_grad():
        lsq = float((default_weight_quantizer(conv, 8)(w) - w).square().sum())
    assert perturbation(conv, 8, "lsq") == pytest.approx(lsq)
    assert perturbation(conv, 8) == perturbation(conv, 8, "minmax") < lsq / 10
    deltas = [perturbation(conv, b) for b in (2, 4, 8)]
    assert deltas[0] > deltas[1] > deltas[2] > 0


@pytest.fixture(scope="module")
def resnet20_layout():
    entry = {e.name: e for e in MODELS}["resnet20"]
    return entry.layout(entry.build(ImageShape(1, 28, 10)))


def test_shared_bits_tie_the_downsample_to_the_first_conv_or_the_second(resnet20_layout):
    model = resnet20_layout
    hawq = unit_layout(model, "conv1")
    for block in ("layer2.0", "layer3.0"):
        assert (f"{block}.conv1", f"{block}.downsample.0") in hawq.weight_groups
        assert (f"{block}.conv2",) in hawq.weight_groups
        assert (f"{block}.conv2", f"{block}.downsample.0") in unit_layout(model, "conv2").weight_groups
    assert [g for g in hawq.weight_groups if len(g) > 1] == list(hawq.act_groups)
    assert hawq.layers == model.layers and len(hawq.weight_groups) == len(model.weight_groups)
    assert unit_layout(model, "conv2") is model and unit_layout(hawq, "conv1") == hawq


def test_a_policy_is_checked_against_the_ties_it_was_built_with(resnet20_layout):
    """Ties only restrict: a policy that also ties conv1 to conv2 is valid under both layouts, one with
    conv1 != conv2 only under HAWQ-V3's, which is why the run goes on with the method's layout."""
    model, hawq = resnet20_layout, unit_layout(resnet20_layout, "conv1")
    units = [hawq.unit_name(g) for g in hawq.weight_groups]
    same = BitPolicy.from_unit_bits(hawq, {u: 4 for u in units}, 8)
    same.check(hawq)
    same.check(model)
    mixed = BitPolicy.from_unit_bits(hawq, {u: 8 if u == "layer2.0.conv1" else 4 for u in units}, 8)
    mixed.check(hawq)
    assert mixed["layer2.0.downsample.0"].w == 8 and mixed["layer2.0.conv2"].w == 4
    with pytest.raises(ValueError, match="share a weight"):
        mixed.check(model)


def _search(method_run, params, budget, **kwargs):
    run = method_run(params=params, budget=budget, **kwargs)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    return run, policy


def test_search_meets_a_bitops_budget_with_activations_following_weights(method_run):
    run, policy = _search(method_run, "iters=20:batch=64", "bitops_g=w6")
    record = run.extra["hawq-v3"]
    assert record["units"] == ["conv2", "conv3"]
    assert 1 <= record["iterations"] <= 20 and len(record["batch_indices"]) == 64
    assert set(record["delta"]["conv2"]) == {"4", "8"}
    assert {"search:trace", "search:delta", "search:solver"} <= set(run.phases)
    for unit in record["units"]:
        assert policy[unit].w in (4, 8) and policy[unit].a == policy[unit].w
        assert record["trace_per_param"][unit] == pytest.approx(record["trace"][unit] / run.cost.layers[unit].params)


def test_search_with_fixed_activation_bits_and_lsq_perturbations(method_run):
    run, policy = _search(method_run, "iters=5:batch=32:batches=2:a=8:perturbation=lsq:candidates=2/4/8",
                          "size_mb=w3")
    assert all(policy[layer].a == 8 for layer in run.layout.layers)
    assert len(run.extra["hawq-v3"]["batch_indices"]) == 64


def test_residual_downsample_shares_the_first_convs_bits_by_default(method_run):
    run, policy = _search(method_run, "iters=3:batch=32", "bitops_g=w6", model="resnet20")
    assert policy["layer2.0.downsample.0"].w == policy["layer2.0.conv1"].w
    assert policy["layer2.0.conv1"].a == policy["layer2.0.downsample.0"].a == policy["layer2.0.conv1"].w
    record = run.extra["hawq-v3"]
    assert ["layer2.0.conv1", "layer2.0.downsample.0"] in record["groups"]
    layer = record["layer_trace"]
    assert record["trace"]["layer2.0.conv1"] == pytest.approx(layer["layer2.0.conv1"] + layer["layer2.0.downsample.0"])
    assert record["trace"]["layer2.0.conv2"] == pytest.approx(layer["layer2.0.conv2"])
    params = run.cost.layers["layer2.0.conv1"].params + run.cost.layers["layer2.0.downsample.0"].params
    assert record["trace_per_param"]["layer2.0.conv1"] == pytest.approx(record["trace"]["layer2.0.conv1"] / params)


def test_residual_downsample_with_the_second_conv_reads_the_max_of_two_units(method_run):
    run, policy = _search(method_run, "iters=3:batch=32:share=conv2", "bitops_g=w6", model="resnet20")
    assert policy["layer2.0.downsample.0"].w == policy["layer2.0.conv2"].w
    shared = max(policy["layer2.0.conv1"].w, policy["layer2.0.conv2"].w)
    assert policy["layer2.0.conv1"].a == policy["layer2.0.downsample.0"].a == shared
    record = run.extra["hawq-v3"]
    layer = record["layer_trace"]
    assert record["trace"]["layer2.0.conv2"] == pytest.approx(layer["layer2.0.conv2"] + layer["layer2.0.downsample.0"])


@pytest.mark.parametrize("params", ["candidates=4/9", "a=1", "perturbation=max", "share=conv3", "iters=0",
                                    "batch=5000", "batches=0"])
def test_bad_parameters_are_user_errors(method_run, params):
    with pytest.raises(UserError):
        run = method_run(params=params, budget="size_mb=w4")
        run.method.search(run)
