"""DDQ: the gated quantizer against its matrix form, gate gradients, the expected-cost penalty, the repairs, and
the `ddq` method end to end (budget, bit maps, level-table export, targets)."""

import io
import itertools
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpqbench.api import BitPolicy, ImageShape
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.kinds import KINDS
from mpqbench.cost.model import CostModel
from mpqbench.errors import Unavailable, UserError
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.model import IntegerModel
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout
from mpqbench.pipeline.deploy import DeployContext
from mpqbench.plugin.params import resolve_defaults
from mpqbench.plugins.arm_qemu import toolchain
from mpqbench.plugins.arm_qemu.target import ArmQemu
from mpqbench.plugins.ddq import DDQ, CostTerm, DDQQuantizer, ResourcePenalty, gate_scores, repair, repair_acts
from mpqbench.quant.model import QuantModel
from mpqbench.quant.quantizers import LSQQuantizer


def _descend(params, loss_fn, steps: int, lr: float) -> None:
    """Sign-gradient descent with a linearly decaying step (Adam's behaviour without torch.optim's import)."""
    for t in range(steps):
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p -= lr * (1 - t / steps) * g.sign()


def _set_raw(q: DDQQuantizer, pattern) -> None:
    with torch.no_grad():
        q.gate_logit.copy_(torch.tensor([1.0 if g else -1.0 for g in pattern]))


def _random_levels(q: DDQQuantizer, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q.levels.copy_(q.uniform_levels() + 0.3 * torch.rand(q.levels.shape, generator=gen) / q.levels.numel())


def _matrix_form(q: DDQQuantizer, x: torch.Tensor, gates: torch.Tensor, binary: bool,
                 levels: torch.Tensor | None = None) -> torch.Tensor:
    """``a * q^T Z U x_o`` with U and Z built explicitly: binary factors (I or all-ones) and Z the block
    normalisation, or (``binary=False``) the gate-interpolated factors g I + (1 - g) 11^T / 2."""
    n = 1 << q.max_bits
    u_mat = torch.ones(1, 1)
    for g in gates:
        factor = (torch.eye(2) if g > 0.5 else torch.ones(2, 2)) if binary else \
            g * torch.eye(2) + (1 - g) * torch.ones(2, 2) / 2
        u_mat = torch.kron(u_mat, factor)
    z_mat = torch.diag(1 / u_mat.sum(dim=1)) if binary else torch.eye(n)
    a = q.range.detach().abs()
    u = torch.clamp(x / a, q.lo, q.hi)
    k = torch.round((u - q.lo) / (q.hi - q.lo) * (n - 1)).long()
    x_o = torch.nn.functional.one_hot(k, n).T.to(torch.float32)
    return a * ((q.levels if levels is None else levels) @ z_mat @ u_mat @ x_o)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("k", [2, 3])
def test_merged_quantizer_equals_the_explicit_matrix_form(k, signed):
    x = torch.linspace(-1.3, 1.3, 301)
    for pattern in itertools.product([1, 0], repeat=k - 1):  # position 0 is always open (min_bits=1)
        q = DDQQuantizer(signed, max_bits=k, min_bits=1, monotone=False, gate_estimator="identity",
                         range_grad="exact")
        q.init_range(torch.tensor([1.1]))
        _random_levels(q, seed=sum(pattern))
        _set_raw(q, (1, *pattern))
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        out = q(x)
        (out * w).sum().backward()
        gates = torch.tensor([1.0, *pattern], requires_grad=True)
        levels = q.levels.detach().clone().requires_grad_(True)
        assert torch.allclose(out, _matrix_form(q, x, gates.detach(), binary=True), atol=1e-6)
        ref = _matrix_form(q, x, gates, binary=False, levels=levels)
        assert torch.allclose(out, ref, atol=1e-6)
        (ref * w).sum().backward()
        assert torch.allclose(q.levels.grad, levels.grad, atol=1e-5)  # exact level gradients
        # gate gradients: the derivative of the gate-interpolated form (= output open minus closed)
        assert torch.allclose(q.gate_logit.grad[1:], gates.grad[1:], atol=1e-5)
        assert q.bits == 1 + sum(pattern)


def test_all_gates_open_is_the_k_bit_quantizer_of_its_levels():
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 2
    q = DDQQuantizer(True, 4, max_bits=5)
    out_uniform = q(x)
    a = q.range.detach().reshape(-1, 1)
    step = 2 * a / 31
    k = torch.round((torch.clamp(x / a, -1, 1) + 1) / 2 * 31)
    assert torch.allclose(out_uniform, -a + k * step, atol=1e-5)  # uniform levels: the uniform 5-bit grid
    _random_levels(q)
    assert torch.allclose(q(x), a * q.levels.detach()[k.long()], atol=1e-6)


@pytest.mark.parametrize("signed", [True, False])
def test_closing_gates_halves_the_distinct_outputs(signed):
    x = torch.linspace(-1.5, 1.5, 4001)
    q = DDQQuantizer(signed, max_bits=5, min_bits=1)
    _random_levels(q, seed=3)
    counts = []
    for bits in range(5, 0, -1):
        q.set_bits(bits)
        assert q.bits == bits
        counts.append(q(x).unique().numel())
    assert counts == [32, 16, 8, 4, 2]


def test_input_gradient_is_straight_through_and_the_slope_correction_follows_learned_levels():
    x = torch.linspace(-0.505, 1.495, 201, requires_grad=True)  # no point on the range's ends
    q = DDQQuantizer(False, max_bits=3, min_bits=1)
    q.init_range(torch.tensor([1.0]))
    q(x).sum().backward()
    inside = (x.detach() >= 0) & (x.detach() <= 1)
    assert torch.equal(x.grad, inside.float())

    slope_q = DDQQuantizer(False, max_bits=3, min_bits=1, grad_correction="slope")
    slope_q.init_range(torch.tensor([1.0]))
    x.grad = None
    slope_q(x).sum().backward()
    assert torch.allclose(x.grad, inside.float())  # uniform levels: slope 1
    with torch.no_grad():
        slope_q.levels.copy_(slope_q.uniform_levels() ** 2)
    x2 = torch.tensor([3 / 7], requires_grad=True)  # bin 3 of 0..7
    slope_q(x2).sum().backward()
    assert x2.grad.item() == pytest.approx(((4 / 7) ** 2 - (2 / 7) ** 2) / (2 / 7), rel=1e-5)


def test_block_correction_scales_the_level_gradient_by_the_block_size():
    x = torch.linspace(-1, 1, 97)
    grads = {}
    for corr in ("none", "block"):
        q = DDQQuantizer(True, max_bits=4, min_bits=1, grad_correction=corr)
        q.set_bits(2)
        q(x).pow(2).sum().backward()
        grads[corr] = q.levels.grad
    assert torch.allclose(grads["block"], 4 * grads["none"])
    assert grads["none"].abs().sum() > 0


def test_gate_gradients_open_for_resolution_and_close_for_the_penalty():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2 - 1
    q = DDQQuantizer(True, max_bits=4, min_bits=1)
    q.init_range(torch.tensor([1.0]))
    q.set_bits(2)
    torch.mean((q(x) - x) ** 2).backward()
    # descent opens the first closed gate (the open gate 1 gets a weak signal of either sign: its levels are
    # close to the centroids of their bins, so the loss is nearly flat to first order in an open gate)
    assert q.gate_logit.grad[2] < -1e-3
    q.gate_logit.grad = None
    penalty = ResourcePenalty([CostTerm("toy", q, 8, lambda w, a: float(w))], budget=1.0)
    penalty().backward()
    assert (q.gate_logit.grad[1:] > 0).all()  # descent closes every learnable gate

    _descend([q.gate_logit], lambda: torch.mean((q(x) - x) ** 2), steps=40, lr=0.5)
    assert q.bits == 4
    _descend([q.gate_logit], penalty, steps=40, lr=0.5)
    assert q.bits == 1


def _enumerate(q: DDQQuantizer) -> dict[int, float]:
    """P(bits) by brute force: every raw setting of independent gates, or (monotone) the ordinal model
    P(bits > i) = min_{j <= i} p_j integrated over its threshold."""
    p = [1.0] * q.min_bits + torch.sigmoid(q.gate_logit.detach() / q.temperature).tolist()[q.min_bits:]
    dist: dict[int, float] = {}
    if q.monotone:
        m = [1.0, *itertools.accumulate(p, min), 0.0]
        for b in range(q.max_bits + 1):
            dist[b] = m[b] - m[b + 1]
        return dist
    for raw in itertools.product([0, 1], repeat=q.max_bits):
        prob = 1.0
        for g, pi in zip(raw, p):
            prob *= pi if g else 1 - pi
        dist[sum(raw)] = dist.get(sum(raw), 0.0) + prob
    return dist


@pytest.mark.parametrize("monotone", [True, False])
def test_bit_distribution_and_expected_cost_match_enumeration(monotone):
    qw = DDQQuantizer(True, max_bits=4, min_bits=1, monotone=monotone, temperature=0.7)
    qa = DDQQuantizer(False, max_bits=3, min_bits=2, monotone=monotone)
    with torch.no_grad():
        qw.gate_logit.copy_(torch.tensor([0.0, 0.4, -0.8, 1.5]))
        qa.gate_logit.copy_(torch.tensor([0.0, 0.0, -0.3]))
    for q in (qw, qa):
        probs = q.bit_probs()
        ref = _enumerate(q)
        assert torch.allclose(probs, torch.tensor([ref.get(b, 0.0) for b in range(q.max_bits + 1)]), atol=1e-6)
        assert q.expected_bits().item() == pytest.approx(sum(b * p for b, p in ref.items()), rel=1e-5)
    penalty = ResourcePenalty([CostTerm("l", qw, qa, lambda w, a: 3.0 * w * a), CostTerm("m", qw, 8, lambda w, a: w)],
                              budget=10.0)
    dw, da = _enumerate(qw), _enumerate(qa)
    ref = sum(pw * pa * 3.0 * w * a for w, pw in dw.items() for a, pa in da.items()) + sum(p * w for w, p in dw.items())
    assert penalty.expected().item() == pytest.approx(ref, rel=1e-5)


def _budget(text, cost):
    return parse_budgets(text, {k.name: k for k in KINDS})[0].resolve(cost, {})


@pytest.fixture(scope="module")
def cnn():
    model = small_cnn(ImageShape(1, 28, 10))
    layout = small_cnn_layout(model)
    return model, layout, CostModel.measure(model, layout, (1, 28, 28))


@pytest.mark.parametrize("form", ["square", "hinge"])
def test_penalty_pulls_the_small_cnn_to_its_budget(cnn, form):
    model, layout, cost = cnn
    modules = dict(model.named_modules())
    budget = _budget("size_mb=w3", cost)
    weights = {layer: DDQQuantizer.for_weight(modules[layer]) for layer in layout.layers}
    penalty = ResourcePenalty.from_layer_cost(layout.layers, lambda lay, w, a: budget.layer_cost(cost, lay, w, a),
                                              weights, {layer: 8 for layer in layout.layers}, budget.value, form=form)
    assert penalty.hard() == pytest.approx(cost.size_mb(BitPolicy.uniform(layout, 8, 8)))
    _descend([q.gate_logit for q in weights.values()], penalty, steps=100, lr=0.2)
    ratio = penalty.expected().item() / budget.value
    # square settles on the budget from both sides; hinge stops pushing once the budget is met
    assert (abs(ratio - 1) < 0.01) if form == "square" else (0.95 < ratio <= 1.0)

    fixed = {}
    allocation = repair(layout, cost, budget, fixed, weights, candidates=range(2, 9), act_bits=8)
    assert budget.met(cost, allocation.policy)
    assert allocation.measured <= budget.value * (1 + 1e-9)


def test_repair_keeps_trained_bits_that_fit_and_otherwise_flips_the_fewest_gates(cnn):
    model, layout, cost = cnn
    modules = dict(model.named_modules())
    budget = _budget("size_mb=w4", cost)
    weights = {layer: DDQQuantizer.for_weight(modules[layer]) for layer in layout.layers}
    trained = {"conv1": 8, "conv2": 4, "conv3": 3, "fc": 6}
    for layer, bits in trained.items():
        weights[layer].set_bits(bits)
    allocation = repair(layout, cost, budget, {}, weights, candidates=range(2, 9), act_bits=8)
    assert allocation.bits == trained and allocation.objective == 0

    for q in weights.values():
        q.set_bits(8)
    # From all-8: closing one gate per unit costs gate_init = 3 whatever the new bitwidth; the largest unit
    # alone cannot fit the budget, two can.
    allocation = repair(layout, cost, budget, {}, weights, candidates=range(2, 9), act_bits=8)
    assert budget.met(cost, allocation.policy)
    assert allocation.objective == pytest.approx(-6.0)
    assert sum(b < 8 for b in allocation.bits.values()) == 2
    with pytest.raises(UserError):
        gate_scores(weights, candidates=[1, 2])


def test_collapse_gives_lsq_with_the_merged_step_and_freeze_pins_the_gates():
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    for q, x in ((DDQQuantizer(True, 6), w), (DDQQuantizer(False), w.relu())):
        q(x)
        q.set_bits(3)
        lsq = q.collapse()
        assert isinstance(lsq, LSQQuantizer) and lsq.single_grid and not q.single_grid
        assert (lsq.bits, lsq.signed, lsq.channels) == (3, q.signed, q.channels)
        assert torch.allclose(lsq.scale(), q.scale())
        step = q.scale().reshape(-1, 1)
        merged = q.merged_levels() * q.range.detach().abs().reshape(-1, 1)
        lsq_grid = torch.arange(lsq.qmin, lsq.qmax + 1) * step
        offset = merged - lsq_grid  # the same grid, shifted to put 0 on it
        fine = q.range.detach().abs().reshape(-1, 1) * (q.hi - q.lo) / 255
        assert torch.allclose(offset, (step - fine * (not q.signed)) / 2 * torch.ones_like(offset), atol=1e-6)
        assert torch.equal(lsq.integers(x), q.integers(x))

    q = DDQQuantizer(True, 6)
    q.freeze(4)
    assert q.bits == 4 and not q.gate_logit.requires_grad and q.expected_bits().item() == 4
    q(w).sum().backward()
    assert q.gate_logit.grad is None and q.range.grad is not None
    q.unfreeze()
    assert q.gate_logit.requires_grad and 3.5 < q.expected_bits().item() < 4.5


@pytest.mark.parametrize("monotone", [True, False])
def test_level_table_reproduces_the_forward_with_integer_levels(monotone):
    w = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    q = DDQQuantizer(True, 5, max_bits=5, min_bits=1, monotone=monotone)
    q(w)
    _random_levels(q, seed=4)
    _set_raw(q, (1, 1, 1, 0, 0) if monotone else (1, 0, 1, 1, 0))
    table = q.level_table(frac_bits=12)
    assert table.bits == q.bits == 3 and table.levels.dtype == torch.int64 and table.levels.shape == (8,)
    err = (table.real(q.codes(w)) - q(w).detach()).abs()
    assert (err <= table.scale.reshape(-1, 1) / 2 + 1e-6).all()
    if monotone:
        u = w / q.range.detach().abs().reshape(-1, 1)
        assert torch.equal(torch.bucketize(u, table.edges, right=True), q.codes(w))
    else:
        assert table.edges is None and not q.contiguous()


def test_plugs_into_the_quant_model_slots_and_collapses(cnn):
    model, layout, _ = cnn
    qmodel = QuantModel(model, layout, BitPolicy.uniform(layout, 8, 8))
    ddq = {}
    for name, layer in qmodel.layers().items():
        ddq[name] = DDQQuantizer.for_weight(layer)
        qmodel.set_weight_quantizer(name, ddq[name])
    for name in qmodel.points():
        if name != qmodel.info.input_point:
            ddq[name] = DDQQuantizer.for_activation(qmodel.info.points[name].signed)
            qmodel.set_act_quantizer(name, ddq[name])
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qmodel(x).logsumexp(dim=1).mean().backward()
    for q in ddq.values():
        assert q.gate_logit.grad is not None and torch.isfinite(q.gate_logit.grad).all()
        assert q.range.grad is not None and q.levels.grad is not None
    ddq["conv2"].set_bits(3)
    for name, layer in qmodel.layers().items():
        qmodel.set_weight_quantizer(name, layer.weight_quantizer.collapse())
    assert qmodel.layers()["conv2"].weight_quantizer.bits == 3
    assert torch.isfinite(qmodel(x)).all()


def test_penalty_forms_and_warmup():
    q = DDQQuantizer(True, max_bits=4, min_bits=2)
    q.set_bits(4)
    over = ResourcePenalty([CostTerm("l", q, 8, lambda w, a: float(w))], budget=2.0, warmup=10)
    r = q.expected_bits().item() / 2.0 - 1
    assert over().item() == pytest.approx(r, rel=1e-5)
    assert over(SimpleNamespace(step=5)).item() == pytest.approx(r / 2, rel=1e-5)
    under = ResourcePenalty([CostTerm("l", q, 8, lambda w, a: float(w))], budget=8.0)
    assert under().item() == 0.0
    square = ResourcePenalty([CostTerm("l", q, 8, lambda w, a: float(w))], budget=8.0, form="square")
    assert square().item() == pytest.approx((q.expected_bits().item() / 8 - 1) ** 2, rel=1e-5)
    assert over.hard() == 4.0


def test_bad_settings_are_one_line_user_errors():
    with pytest.raises(UserError):
        DDQQuantizer(True, max_bits=4, min_bits=5)
    with pytest.raises(UserError):
        DDQQuantizer(True, gate_estimator="gumbel")
    with pytest.raises(UserError):
        DDQQuantizer(True, max_bits=4).set_bits(6)
    with pytest.raises(UserError):
        ResourcePenalty([CostTerm("l", 4, 8, lambda w, a: w)], budget=1.0, form="cubic")


# ----- the method, end to end on the tiny model (phase 2) ------------------------------------------------------

SEARCHED = ("conv2", "conv3")  # small-cnn with its first and last layers pinned at W8A8


def _imodel(artifacts) -> IntegerModel:
    return IntegerModel.load(io.BytesIO(artifacts["integer_model.npz"]))


def _exported_bits(imodel: IntegerModel) -> dict[str, list[int]]:
    return {op.name: [op.attrs["w_bits"], imodel.tensors[op.inputs[0]].bits]
            for op in imodel.ops if op.kind in ("conv", "linear")}


def _check_done(record, budget_bits: int) -> None:
    assert record.status == "done", record.error
    assert record.budget["met"] and record.budget["measured"] <= record.budget["value"] * (1 + 1e-9)
    assert record.searched_policy == {"conv1": [8, 8], "conv2": [8, budget_bits], "conv3": [8, budget_bits],
                                      "fc": [8, 8]} or record.extra["ddq"]["variant"] == "fixed"


def test_pipeline_uniform_levels_meets_the_budget_and_runs_bit_exact(mpqbench_cell):
    missing = toolchain.unavailable()
    record, artifacts = mpqbench_cell("ddq", budget="size_mb=w3", targets=("arm-qemu",))
    _check_done(record, 3)
    imodel = _imodel(artifacts)
    assert _exported_bits(imodel) == record.policy and not imodel.has_level_tables
    extra = record.extra["ddq"]
    # the expected cost starts at all-8-bit weights (over twice the w3 size), and the repair meets the budget
    assert extra["cost_trained_ratio"] > 1 and {k: record.policy[k][0] for k in SEARCHED} == extra["repaired_bits"]
    assert set(record.training) == {"search", "finetune"} and "cost" in record.training["search"][0]
    assert record.metrics["int_agreement"] >= 99
    arm = record.targets["arm-qemu"]
    if missing:
        assert arm["status"] == "unavailable" and arm["reason"] == missing
    else:
        assert arm["status"] == "done" and arm["check"]["bit_exact"], arm


def test_learned_levels_export_level_tables_the_reference_executor_runs(mpqbench_cell):
    record, artifacts = mpqbench_cell("ddq", params="levels=learned", budget="size_mb=w3")
    _check_done(record, 3)
    assert record.label == "ddq(levels=learned)"
    imodel = _imodel(artifacts)
    assert _exported_bits(imodel) == record.policy
    tables = {op.name: imodel.levels(op) for op in imodel.ops if imodel.levels(op) is not None}
    assert set(tables) == set(SEARCHED)
    for name, table in tables.items():
        assert table.shape == (1 << record.policy[name][0],) and np.abs(table).max() <= 1 << 8  # frac_bits=8
        assert table.tolist() == record.extra["ddq"]["level_tables"][name]["levels"]
    # integer accuracy beside fake-quant accuracy, and the two agree
    assert {"top1", "int_top1"} <= set(record.metrics) and record.metrics["int_agreement"] >= 99
    with pytest.raises(Unavailable, match="^arm-qemu: learned level tables are not supported$"):
        ArmQemu().deploy(DeployContext("r", {}, Path("/nonexistent")), imodel, np.zeros((1, 1, 8, 8), np.uint8))


def test_fixed_variant_keeps_one_bitwidth(mpqbench_cell):
    record, _ = mpqbench_cell("ddq", params="variant=fixed", budget="size_mb=w3")
    _check_done(record, 3)
    assert {k: record.policy[k] for k in SEARCHED} == {"conv2": [3, 3], "conv3": [3, 3]}
    assert "cost" not in record.training["search"][0] and "repair" not in record.extra["ddq"]


def test_learned_activation_bits_meet_their_average(mpqbench_cell):
    record, _ = mpqbench_cell("ddq", params="act=learned:a=4", budget="size_mb=w3")
    _check_done(record, 8)
    acts = [record.policy[k][1] for k in SEARCHED]
    assert sum(acts) <= 4 * len(acts) and "act_bits" in record.training["search"][0]
    failed, _ = mpqbench_cell("ddq", params="act=learned:search_epochs=0", budget="bitops_g=w4")
    assert failed.status == "failed" and "act=learned needs a budget" in failed.error


def test_the_penalty_pulls_the_expected_cost_down_during_the_search(mpqbench_run):
    run = mpqbench_run("ddq", params="gate_lr=0.3:search_epochs=2:lam=5:levels=learned", budget="size_mb=w3",
                       qat_epochs=0)
    DDQ().train(run, run.method.search(run))
    extra = run.extra["ddq"]
    # all gates start open at ~2.5x the budget; the gates close under the penalty, one at a time
    assert extra["cost_expected_ratio"] < 1.5 and extra["cost_trained_ratio"] < 1.25
    assert extra["bits_per_epoch"][0] == {"conv2": 8, "conv3": 8} and max(extra["trained_bits"].values()) < 8


def test_level_table_export_matches_the_fake_quant_model(cnn):
    model, layout, _ = cnn
    qmodel = QuantModel(model, layout, BitPolicy.uniform(layout, 8, 8))
    layer = qmodel.layers()["conv2"]
    q = DDQQuantizer.for_weight(layer, bits=3)
    qmodel.set_weight_quantizer("conv2", q)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    qmodel.train()
    qmodel(x)  # calibrate ranges and steps
    _random_levels(q, seed=5)
    with torch.no_grad():
        q.levels.mul_(torch.linspace(0.6, 1.0, q.levels.numel()).abs())  # clearly non-uniform
    q.freeze()
    q.snap_levels(10)
    assert q.nonuniformity() > 0.1
    qmodel.eval()
    imodel = IntegerModel.load(io.BytesIO(export(qmodel, (1, 28, 28)).to_bytes()))
    op = next(o for o in imodel.ops if o.name == "conv2")
    table = q.level_table()
    assert np.array_equal(imodel.levels(op), table.levels.numpy()) and imodel.has_level_tables
    codes = q.codes(layer.weight.detach()).numpy()
    assert np.array_equal(imodel.mac_weight(op), table.levels.numpy()[codes])
    # the looked-up levels times the level unit are the fake-quant weights
    fake = q(layer.weight.detach()).detach().numpy()
    assert np.allclose(imodel.mac_weight(op) * table.scale.numpy().reshape(-1, 1, 1, 1), fake, atol=1e-6)
    pixels = (x * 255).round().to(torch.uint8)
    logits = executor.run(imodel, pixels.numpy())
    with torch.no_grad():
        ref = qmodel(pixels.float() / 255).argmax(1).numpy()
    assert (logits.argmax(1) == ref).mean() >= 0.95


def test_activation_repair_is_the_exact_knapsack():
    qs = {}
    for name, pattern in (("p", (3.0, 3.0, 3.0, -1.0)), ("q", (3.0, 3.0, 0.5, 0.2)), ("r", (3.0, 3.0, 3.0, 3.0))):
        q = DDQQuantizer(False, max_bits=6, min_bits=2)
        with torch.no_grad():
            q.gate_logit.copy_(torch.tensor([1.0, 1.0, *pattern]))
        qs[name] = q
    groups = {"p": (qs["p"], 1), "q": (qs["q"], 2), "r": (qs["r"], 1)}
    bits = repair_acts(groups, target=4.5, candidates=range(2, 7))
    assert bits["p"] * 1 + bits["q"] * 2 + bits["r"] * 1 <= 4.5 * 4
    brute = max(itertools.product(range(2, 7), repeat=3),
                key=lambda b: (sum(float(groups[g][0].bit_scores()[v]) for g, v in zip("pqr", b))
                               if b[0] + 2 * b[1] + b[2] <= 18 else -math.inf))
    assert sum(float(qs[g].bit_scores()[bits[g]]) for g in "pqr") == pytest.approx(
        sum(float(qs[g].bit_scores()[v]) for g, v in zip("pqr", brute)))
    with pytest.raises(UserError):
        repair_acts(groups, target=1.5, candidates=range(2, 7))


@pytest.mark.parametrize("params", ["variant=fixed:act=learned", "a=9", "min_bits=1", "frac_bits=20", "warmup=2"])
def test_bad_method_parameters_are_user_errors(params):
    values = resolve_defaults(DDQ.params)
    for pair in params.split(":"):
        key, value = pair.split("=")
        values[key] = type(values[key])(value) if values[key] is not None else int(value)
    with pytest.raises(UserError):
        DDQ().check(values)


def test_hard_penalty_has_the_hard_value_and_the_expected_gradient():
    q = DDQQuantizer(True, max_bits=6, min_bits=2)
    q.open_graded()
    assert q.bits == 6 and (q.gate_logit[2:].diff() < 0).all()
    terms = [CostTerm("l", q, 8, lambda w, a: float(w))]
    hard, expected = (ResourcePenalty(terms, budget=4.0, cost=c) for c in ("hard", "expected"))
    assert hard().item() == pytest.approx(6 / 4 - 1) and expected().item() < hard().item()
    g_hard = torch.autograd.grad(hard(), q.gate_logit)[0]
    g_expected = torch.autograd.grad(expected(), q.gate_logit)[0]
    assert torch.allclose(g_hard, g_expected) and (g_hard[2:] > 0).all()
