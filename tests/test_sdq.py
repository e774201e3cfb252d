"""SDQ: the stochastic quantizer against its interpolation, DBP gradients, bit decay, collapse, EBR, the budget
regulariser and repair, and a 50-step search on the small CNN."""

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from mpqbench.api import ImageShape
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.kinds import KINDS
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout
from mpqbench.plugins.sdq.losses import (
    BudgetRegularizer,
    bin_regularization,
    budget_penalty,
    ebr,
    ebr_term,
    expected_cost,
    fixed_cost,
    layer_cost_fns,
)
from mpqbench.plugins.sdq.quantizer import DBPGate, SDQQuantizer, attach, layer_gates, step_all
from mpqbench.plugins.sdq.repair import apply, dbp_scores, final_policy
from mpqbench.quant.model import QuantModel
from mpqbench.quant.quantizers import LSQQuantizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


QUADRATURE = [(k + 0.5) / 400 for k in range(400)]
"""Midpoints of 400 bins of U(0, 1): the expectation over a draw's uniform noise, without Monte Carlo noise."""


def _quantizer(candidates=(2, 3, 4), beta=0.3, **options):
    torch.manual_seed(0)
    gate = DBPGate(candidates, **options)
    with torch.no_grad():
        gate.dbp[-1] = beta
    q = SDQQuantizer(gate, channels=4)
    w = torch.randn(4, 3, 3, 3)
    for b in candidates:
        q.grid(b)(w)  # initialise every step by LSQ's first-batch rule
    return q.train(), w


@pytest.mark.parametrize("estimator", ["gumbel", "straight"])
def test_expectation_of_the_switch_is_the_interpolation(estimator):
    q, w = _quantizer(beta=0.3, estimator=estimator)
    q.gate.resample(0.9)  # u > 1 - beta: the upper bitwidth
    upper = q(w)
    q.gate.resample(0.1)
    lower = q(w)
    assert torch.equal(upper, q.grid(4)(w)) and torch.equal(lower, q.grid(3)(w))
    q.gate.mode = "interpolate"
    interpolated = q(w)
    assert torch.allclose(0.3 * upper + 0.7 * lower, interpolated, atol=1e-6)
    q.gate.mode = "stochastic"
    torch.manual_seed(1)
    draws, n = [], 1000
    for _ in range(n):
        q.gate.resample()  # not step(): beta = 0.3 is below the decay threshold
        draws.append(q(w).detach())
    mean = torch.stack(draws).mean(0)
    spread = (upper - lower).abs().max().item() * (0.3 * 0.7 / n) ** 0.5
    assert (mean - interpolated).abs().max().item() < 5 * spread


def _dbp_grad(q, w, loss_fn, u):
    q.gate.dbp.grad = None
    q.gate.resample(u)
    loss_fn(q(w)).backward()
    return q.gate.dbp.grad[-1].item()


def test_gumbel_factor_is_bounded_by_the_clip_at_a_fresh_pair():
    """At beta = 1 (a new pair) the Gumbel gradient is the straight one times at most 1 / (4 clip (1 - clip))."""
    q, w = _quantizer(beta=1.0, estimator="straight", clip=0.01)
    c = torch.randn_like(w)
    linear = lambda wq: (c * wq).sum()  # noqa: E731
    straight = _dbp_grad(q, w, linear, 0.5)
    q.gate.estimator = "gumbel"
    factors = [_dbp_grad(q, w, linear, u) / straight for u in (1e-6, 1e-4, 1e-2, 0.5, 0.99)]
    assert all(0 <= f <= 1 / (4 * 0.01 * 0.99) + 1e-3 for f in factors) and max(factors) > 20


def test_straight_estimator_is_unbiased_for_a_linear_loss_and_gumbel_has_its_sign():
    q, w = _quantizer(beta=0.3, estimator="straight")
    c = torch.randn_like(w)
    exact = (c * (q.grid(4)(w) - q.grid(3)(w))).sum().item()
    linear = lambda wq: (c * wq).sum()  # noqa: E731
    grads = [_dbp_grad(q, w, linear, u) for u in QUADRATURE]
    assert sum(grads) / len(grads) == pytest.approx(exact, rel=1e-5)
    q.gate.estimator = "gumbel"
    grads = [_dbp_grad(q, w, linear, u) for u in QUADRATURE]
    assert sum(grads) / len(grads) * exact > 0


@pytest.mark.parametrize("estimator", ["gumbel", "straight"])
def test_dbp_gradient_sign_on_a_toy_regression(estimator):
    """A regression on the quantized weights prefers more bits: descent raises beta; a budget penalty lowers it."""
    q, w = _quantizer(beta=0.5, estimator=estimator)
    x = torch.randn(64, 27, generator=torch.Generator().manual_seed(2))
    target = x @ w.reshape(4, -1).T

    def task(wq):
        return F.mse_loss(x @ wq.reshape(4, -1).T, target)

    grads = [_dbp_grad(q, w, task, u) for u in QUADRATURE]
    assert sum(grads) / len(grads) < 0
    reg = BudgetRegularizer({"conv": q.gate}, {"conv": lambda b: b * w.numel()}, budget=3.2 * w.numel())
    q.gate.dbp.grad = None
    reg().backward()
    assert q.gate.dbp.grad[-1].item() > 0
    q.gate.dbp.grad = None
    BudgetRegularizer({"conv": q.gate}, {"conv": lambda b: b * w.numel()}, budget=4 * w.numel())().backward()
    assert q.gate.dbp.grad[-1].item() == 0  # hinge: nothing once the budget is met


def test_bit_decay_at_the_threshold_activates_the_next_pair():
    gate = DBPGate((8, 2, 6, 4), threshold=0.5, init=1.0)
    q1, q2 = SDQQuantizer(gate, channels=2), SDQQuantizer(gate, channels=3)
    assert gate.candidates == (2, 4, 6, 8) and gate.pair == (6, 8) and q1.bits == q2.bits == 8
    with torch.no_grad():
        gate.dbp[2] = 0.5
    assert not gate.step() and gate.bits == 8  # at the threshold: kept
    with torch.no_grad():
        gate.dbp[2] = 0.49
    assert gate.step()
    assert gate.bits == 6 and gate.pair == (4, 6) and q1.bits == q2.bits == 6 and q1.qmax == 31
    assert gate.beta().item() == 1.0 and set(gate.probs()) == {4, 6}
    assert not gate.step() and gate.bits == 6  # the new pair starts at init
    with torch.no_grad():
        gate.dbp[1] = 1.7  # an optimizer overshoot is projected, not frozen
    gate.step()
    assert gate.dbp[1].item() == 1.0
    with torch.no_grad():
        gate.dbp[1] = -0.2
    assert gate.step() and gate.bits == 4 and gate.dbp[1].item() == 0.0
    with torch.no_grad():
        gate.dbp[0] = 0.1
    assert gate.step() and gate.bits == 2 and not gate.active and gate.pair is None
    assert not gate.step() and gate.bits == 2  # nowhere left to go
    assert {b: float(p) for b, p in gate.probs().items()} == {2: 1.0}


def test_a_unit_switches_together_and_eval_uses_the_level():
    torch.manual_seed(0)
    gate = DBPGate((3, 4))
    with torch.no_grad():
        gate.dbp[0] = 0.5
    qa, qb = SDQQuantizer(gate, channels=2), SDQQuantizer(gate, channels=2)
    wa, wb = torch.randn(2, 5), torch.randn(2, 5)
    for _ in range(20):
        gate.step()
        upper_a = torch.equal(qa(wa), qa.grid(4)(wa))
        assert upper_a == torch.equal(qb(wb), qb.grid(4)(wb))
        assert upper_a != torch.equal(qa(wa), qa.grid(3)(wa))
    qa.eval()
    assert torch.equal(qa(wa), qa.grid(4)(wa))
    with pytest.raises(RuntimeError, match="step"):
        SDQQuantizer(DBPGate((3, 4)))(wa)


def test_steps_are_kept_per_bitwidth_and_collapse_keeps_them():
    q, w = _quantizer(candidates=(2, 3, 4), beta=0.3)
    q.grid(4).set_step(torch.full((4,), 0.11))
    q.grid(3).set_step(torch.full((4,), 0.23))
    q.gate.step()  # 0.3 < 0.5: down to 3 bits
    assert q.bits == 3 and torch.allclose(q.scale(), torch.full((4,), 0.23))
    q.set_bits(4)
    assert torch.allclose(q.scale(), torch.full((4,), 0.11))
    q.set_bits(3)
    collapsed = q.collapse()
    assert type(collapsed) is LSQQuantizer and collapsed.bits == 3 and collapsed.channels == 4
    assert torch.allclose(collapsed.step, torch.full((4,), 0.23))
    assert torch.equal(collapsed.eval()(w), q.eval()(w))
    assert SDQQuantizer.single_grid is False


def test_gate_rejects_bad_options():
    with pytest.raises(UserError, match="mode"):
        DBPGate((2, 4), mode="fractional")
    with pytest.raises(UserError, match="threshold"):
        DBPGate((2, 4), threshold=0.9, init=0.5)
    with pytest.raises(UserError, match="form"):
        budget_penalty(torch.tensor(1.0), 1.0, "cubic")


def _on_levels(steps, codes):
    return steps.reshape(-1, 1) * codes


def test_ebr_is_zero_on_the_levels_and_positive_off_them():
    q = LSQQuantizer(3, signed=True, channels=4)
    steps = torch.tensor([0.25, 0.125, 0.5, 0.0625])
    q.set_step(steps)
    codes = torch.randint(-4, 4, (4, 50), generator=torch.Generator().manual_seed(0)).float()
    w = _on_levels(steps, codes)
    for weighting in ("entropy", "surprisal", "none"):
        assert bin_regularization(w, q, weighting).item() == 0.0
    noisy = (w + 0.02 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    value = bin_regularization(noisy, q)
    assert value.item() > 0
    value.backward()
    with torch.no_grad():
        moved = noisy - 0.05 * noisy.grad / noisy.grad.abs().max() * steps.reshape(-1, 1)
    assert bin_regularization(moved, q).item() < value.item()


def test_ebr_is_bin_regularization_per_bin():
    """Per-tensor step: sum over bins of (mean - level)^2 + population variance, in code units, over K bins; the
    entropy weighting equals plain BR when bins are evenly used."""
    q = LSQQuantizer(2, signed=True)
    q.set_step(torch.tensor([0.5]))
    gen = torch.Generator().manual_seed(3)
    w = (torch.randint(-2, 2, (40,), generator=gen) + 0.4 * (torch.rand(40, generator=gen) - 0.5)) * 0.5
    v, codes = w / 0.5, q.integers(w)
    expected = 0.0
    for level in range(-2, 2):
        members = v[codes == level]
        if len(members):
            expected += (members.mean() - level) ** 2 + members.var(unbiased=False)
    assert bin_regularization(w, q, "none").item() == pytest.approx(expected.item() / 4, rel=1e-5)
    even = torch.arange(-2, 2).repeat(10) * 0.5 + 0.05
    assert bin_regularization(even, q, "entropy").item() == pytest.approx(
        bin_regularization(even, q, "none").item(), rel=1e-6)


def _budget(text, cost, fixed):
    return parse_budgets(text, {k.name: k for k in KINDS})[0].resolve(cost, fixed)


def _layer_cost(budget, cost):
    return lambda layer, w, a: budget.layer_cost(cost, layer, w, a)


def _tiny():
    shape = ImageShape(1, 16, 10)
    torch.manual_seed(0)
    fp32 = small_cnn(shape)
    layout = small_cnn_layout(fp32)
    cost = CostModel.measure(fp32, layout, (1, 16, 16))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    return fp32, layout, cost, fixed


def test_ebr_over_a_quant_model_and_the_expected_cost_in_the_budget_unit():
    fp32, layout, cost, fixed = _tiny()
    qmodel = QuantModel(fp32, layout)
    qmodel(torch.rand(2, 1, 16, 16))
    assert ebr(qmodel).item() > 0 and ebr_term("none")(SimpleNamespace(model=qmodel)).item() > 0
    gates = attach(qmodel, fixed, (2, 3, 4))
    searched = layer_gates(qmodel)
    assert set(searched) == {"conv2", "conv3"} and set(gates) == {"conv2", "conv3"}
    size = _layer_cost(_budget("size_mb=w3", cost, fixed), cost)
    costs = layer_cost_fns(size, searched, 8)
    constant = fixed_cost(size, fixed)
    with torch.no_grad():
        gates["conv2"].dbp[-1] = 0.25
    exact = constant + cost.layer_cost("size_mb", "conv2", 3.25, 8) + cost.layer_cost("size_mb", "conv3", 4, 8)
    assert expected_cost(searched, costs, constant).item() == pytest.approx(exact, rel=1e-6)


def test_repair_meets_the_budget_from_the_dbps():
    fp32, layout, cost, fixed = _tiny()
    gates = {u: DBPGate((2, 3, 4, 5, 6)) for u in ("conv2", "conv3")}
    budget = _budget("size_mb=w3", cost, fixed)
    for gate, level, beta in ((gates["conv2"], 3, 0.9), (gates["conv3"], 3, 0.6)):
        gate.set_bits(level)
        with torch.no_grad():
            gate.dbp[gate.candidates.index(level) - 1] = beta
    result = final_policy(layout, cost, budget, fixed, gates, act_bits=8)
    assert not result.repaired and result.bits == {"conv2": 3, "conv3": 3}
    gates["conv3"].set_bits(4)  # levels over the budget: conv3 (beta 0.6 on (3, 4), E[b] = 3.6) is cut
    with torch.no_grad():
        gates["conv3"].dbp[2] = 0.6
    scores = dbp_scores(gates)
    assert max(scores["conv3"], key=scores["conv3"].get) == 4
    result = final_policy(layout, cost, budget, fixed, gates, act_bits=8)
    assert result.repaired and budget.met(cost, result.policy) and result.search_bits["conv3"] == 4
    assert result.bits == {"conv2": 3, "conv3": 3}
    apply(gates, result.bits)
    assert gates["conv3"].bits == 3


def test_fifty_adam_steps_on_the_dbps_reach_the_budget():
    """Small CNN, random data: CE plus the budget penalty, Adam on the DBPs only, from 8 bits to the 3-bit size."""
    fp32, layout, cost, fixed = _tiny()
    qmodel = QuantModel(fp32, layout).train()
    gates = attach(qmodel, fixed, range(2, 9))
    budget = _budget("size_mb=w3", cost, fixed)
    searched = layer_gates(qmodel)
    size = _layer_cost(budget, cost)
    reg = BudgetRegularizer(searched, layer_cost_fns(size, searched, 8), budget.value,
                            constant=fixed_cost(size, fixed))
    start = reg.expected().item()
    optimizer = torch.optim.Adam([g.dbp for g in gates.values()], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 16, 16, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    for _ in range(50):
        step_all(gates)
        loss = F.cross_entropy(qmodel(x), y) + 10 * reg()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = reg.expected().item()
    assert start > 2 * budget.value and 0.85 * budget.value < end < 1.02 * budget.value
    result = final_policy(layout, cost, budget, fixed, gates, act_bits=8)
    assert budget.met(cost, result.policy)
    apply(gates, result.bits)
    for name, layer in qmodel.layers().items():
        if name in searched:
            layer.weight_quantizer = layer.weight_quantizer.collapse()
    assert {n: qmodel.layers()[n].weight_quantizer.bits for n in searched} == result.bits


# The method in the harness: the whole pipeline on the tiny model (1-epoch FP32 start on 256 images).

FAST = dict(fp32_epochs=1, train_subset=256)


def _integer_w_bits(artifacts):
    import io

    from mpqbench.integer.model import IntegerModel

    imodel = IntegerModel.load(io.BytesIO(artifacts["integer_model.npz"]))
    return {op.name: op.attrs["w_bits"] for op in imodel.ops if "w_bits" in op.attrs}


def test_sdq_reaches_the_budget_through_the_pipeline(mpqbench_cell):
    record, artifacts = mpqbench_cell("sdq", params="search_epochs=2:finetune_epochs=1:dbp_lr=0.2",
                                      budget="size_mb=w3", **FAST)
    assert record.status == "done", record.error
    assert record.budget["met"] and record.budget["measured"] <= record.budget["value"]
    assert {layer: w for layer, (w, a) in record.searched_policy.items() if layer in ("conv2", "conv3")} == {
        "conv2": 8, "conv3": 8}
    assert _integer_w_bits(artifacts) == {layer: w for layer, (w, a) in record.policy.items()}
    assert all(a == 8 for _, a in record.policy.values())
    search, finetune = record.training["search"], record.training["finetune"]
    assert len(search) == 2 and set(search[0]) == {"ce", "budget", "loss"}
    assert set(finetune[0]) == {"ce", "kd", "ebr", "loss"} and finetune[0]["kd"] > 0 and finetune[0]["ebr"] > 0
    sdq = record.extra["sdq"]
    assert sdq["decays"] and sdq["expected_end"] < sdq["expected_start"]  # the DBPs moved the expected cost
    assert sdq["repair"]["bits"] == {u: record.policy[u][0] for u in sdq["units"]}
    assert "train:search" in record.phases


def test_sdq_kd_and_ebr_switch_off(mpqbench_cell):
    record, _ = mpqbench_cell("sdq", params="search_epochs=1:finetune_epochs=1:kd=0:ebr=0:mode=interpolate",
                              budget="size_mb=w3", **FAST)
    assert record.status == "done", record.error
    assert record.budget["met"] and set(record.training["finetune"][0]) == {"ce", "loss"}


def test_kd_is_zero_for_the_teacher_and_ebr_for_weights_on_their_levels(mpqbench_run):
    run = mpqbench_run("sdq", params="search_epochs=1", budget="size_mb=w3", **FAST)
    x = torch.rand(8, 1, 8, 8)  # digits are 8x8
    teacher = run.fp32_model()
    kd = run.kd(4.0)
    assert kd(SimpleNamespace(x=x, logits=teacher(x))).item() == pytest.approx(0.0, abs=1e-6)
    model = run.method.stage1(run, run.method.search(run))
    assert kd(SimpleNamespace(x=x, logits=model.train()(x))).item() > 0
    assert ebr(model).item() > 0
    with torch.no_grad():
        for layer in model.layers().values():
            layer.weight.copy_(layer.weight_quantizer(layer.weight))
    assert ebr(model).item() < 1e-10


@pytest.mark.parametrize("budget, params", [("size_mb=w3", ""), ("bitops_g=w3a3", "a=3")])
def test_the_regulariser_is_the_harness_measure_in_the_budget_unit(mpqbench_run, budget, params):
    from mpqbench.plugins.sdq.method import expected_cost_term

    run = mpqbench_run("sdq", params=params, budget=budget, **FAST)
    policy = run.method.search(run)
    model = run.quant_model(policy)
    attach(model, run.fixed, run.params["candidates"])
    term = expected_cost_term(run, model, layer_gates(model), "hinge")
    assert term.expected().item() == pytest.approx(run.budget.measure(run.cost, policy), rel=1e-6)
    assert term().item() > 0  # 8-bit weights are over a 3-bit budget


def test_sdq_refuses_bad_parameters(mpqbench_registry):
    from mpqbench.pipeline.spec import Component

    method = mpqbench_registry.method("sdq")
    for text, match in (("sdq:candidates=4", "two bitwidths"), ("sdq:candidates=2/9", "bitwidth 9"),
                        ("sdq:threshold=0.9:init=0.5", "threshold"), ("sdq:ce=0:kd=0", "task loss"),
                        ("sdq:dbp_lr=0", "dbp_lr"), ("sdq:mode=fractional", "mode")):
        with pytest.raises(UserError, match=match):
            method.check(Component.parse(text, mpqbench_registry.method).kwargs)
