"""DFQ-diff: the softmax mixture, collapse, the temperature schedule, the expected cost's gradient, argmax repaired
to the budget, and a 50-step search on the small CNN."""

import itertools

import pytest
import torch
from torch.nn import functional as F

from mpqbench.api import ImageShape
from mpqbench.cost.allocation import unit_policy
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.kinds import KINDS
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout
from mpqbench.plugins.dfq.cost import CostPenalty, expected_bits, expected_cost, fixed_cost, layer_cost_fns
from mpqbench.plugins.dfq.discretise import apply, discretise
from mpqbench.plugins.dfq.quantizer import Anneal, BitLogits, DFQQuantizer, attach, layer_choices, set_temperature
from mpqbench.quant.model import QuantModel
from mpqbench.quant.quantizers import LSQQuantizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is several times faster than two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quantizer(candidates=(2, 4, 8), init=None, temperature=1.0):
    torch.manual_seed(0)
    choice = BitLogits(candidates, init=init, temperature=temperature)
    return DFQQuantizer(choice, channels=4), torch.randn(4, 3, 3, 3)


def test_forward_is_the_softmax_mixture_and_fixing_bits_gives_one_grid():
    q, w = _quantizer(init=[0.5, -1.0, 2.0], temperature=2.0)
    p = torch.softmax(torch.tensor([0.5, -1.0, 2.0]) / 2.0, 0)
    mixture = q(w)
    expected = sum(p[k] * q.grid(b)(w) for k, b in enumerate((2, 4, 8)))
    assert torch.allclose(mixture, expected, atol=1e-6)
    assert q.bits == 8 and q.choice.expected_bits().item() == pytest.approx((p * torch.tensor([2., 4., 8.])).sum())
    q.choice.temperature = 1e-3  # the mixture tends to its argmax
    assert torch.allclose(q(w), q.grid(8)(w), atol=1e-6)
    q.set_bits(4)
    assert q.choice.fixed and q.bits == 4 and q.qmax == 7 and torch.equal(q(w), q.grid(4)(w))
    q.choice.release()
    assert q.bits == 8


def test_collapse_keeps_the_bits_and_their_step():
    q, w = _quantizer()
    q(w)  # initialises every candidate's step
    q.grid(4).set_step(torch.full((4,), 0.3))
    q.set_bits(4)
    collapsed = q.collapse()
    assert type(collapsed) is LSQQuantizer and collapsed.bits == 4 and collapsed.channels == 4
    assert torch.allclose(collapsed.step, torch.full((4,), 0.3))
    assert torch.equal(collapsed.eval()(w), q.eval()(w)) and DFQQuantizer.single_grid is False


def test_temperature_schedules():
    exp = Anneal(1.0, 0.1)
    assert exp(0, 10) == pytest.approx(1.0) and exp(9, 10) == pytest.approx(0.1)
    assert exp(3, 10) > exp(4, 10) and exp(4, 10) == pytest.approx(0.1 ** (4 / 9))
    assert Anneal(2.0, 1.0, "linear")(5, 11) == pytest.approx(1.5)
    assert Anneal(3.0, 0.1, "constant")(7, 10) == 3.0
    with pytest.raises(UserError, match="schedule"):
        Anneal(kind="cosine")
    with pytest.raises(UserError, match="temperature"):
        BitLogits((2, 4), temperature=0.0)


def test_task_gradient_prefers_more_bits_and_cost_gradient_fewer():
    q, w = _quantizer(candidates=(2, 8))
    x = torch.randn(64, 27, generator=torch.Generator().manual_seed(1))
    target = x @ w.reshape(4, -1).T
    F.mse_loss(x @ q(w).reshape(4, -1).T, target).backward()
    grad = q.choice.logits.grad
    assert grad[1] < 0 < grad[0]  # descent raises the 8-bit logit
    q.choice.logits.grad = None
    costs = {"conv": lambda b: b * w.numel()}
    CostPenalty({"conv": q.choice}, costs, budget=3 * w.numel(), form="hinge")().backward()
    grad = q.choice.logits.grad
    assert grad[1] > 0 > grad[0]  # descent lowers the 8-bit logit
    q.choice.logits.grad = None
    CostPenalty({"conv": q.choice}, costs, budget=8 * w.numel(), form="hinge")().backward()
    assert torch.count_nonzero(q.choice.logits.grad) == 0  # hinge: nothing once the budget is met
    q.choice.logits.grad = None
    CostPenalty({"conv": q.choice}, costs, budget=8 * w.numel())().backward()
    assert q.choice.logits.grad[1] < 0  # the default, two-sided: under the budget, pulled up to it


def test_expected_cost_is_exact_and_its_gradient_matches_finite_differences():
    a, b = BitLogits((2, 4, 8), init=[0.1, 0.7, -0.4]), BitLogits((2, 4, 8), init=[1.0, 0.0, 0.2])
    choices = {"l1": a, "l2": a, "l3": b}  # l1 and l2 share one unit's logits
    params = {"l1": 100, "l2": 50, "l3": 1000}
    costs = {layer: (lambda bits, n=n: n * bits) for layer, n in params.items()}
    value = expected_cost(choices, costs, constant=7.0)
    ea, eb = a.expected_bits().item(), b.expected_bits().item()
    assert value.item() == pytest.approx(7.0 + 150 * ea + 1000 * eb, rel=1e-6)
    assert expected_bits(choices, params).item() == pytest.approx((150 * ea + 1000 * eb) / 1150, rel=1e-6)
    value.backward()
    analytic = b.logits.grad.clone()
    for k in range(3):
        with torch.no_grad():
            b.logits[k] += 1e-3
            up = expected_cost(choices, costs, constant=7.0).item()
            b.logits[k] -= 2e-3
            down = expected_cost(choices, costs, constant=7.0).item()
            b.logits[k] += 1e-3
        assert analytic[k].item() == pytest.approx((up - down) / 2e-3, rel=1e-2)


def _budget(text, cost, fixed):
    return parse_budgets(text, {k.name: k for k in KINDS})[0].resolve(cost, fixed)


def _tiny():
    shape = ImageShape(1, 16, 10)
    torch.manual_seed(0)
    fp32 = small_cnn(shape)
    layout = small_cnn_layout(fp32)
    cost = CostModel.measure(fp32, layout, (1, 16, 16))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    return fp32, layout, cost, fixed


def test_argmax_is_repaired_to_the_most_likely_policy_within_budget():
    fp32, layout, cost, fixed = _tiny()
    cands = (2, 3, 4, 8)
    gen = torch.Generator().manual_seed(4)
    choices = {u: BitLogits(cands, init=torch.randn(4, generator=gen).tolist()) for u in ("conv2", "conv3")}
    for choice in choices.values():
        with torch.no_grad():
            choice.logits[3] = 5.0  # argmax 8 bits everywhere: over a 3-bit size budget
    budget = _budget("size_mb=w3", cost, fixed)
    result = discretise(layout, cost, budget, fixed, choices, act_bits=8)
    assert result.argmax_bits == {"conv2": 8, "conv3": 8} and result.repaired
    assert budget.met(cost, result.policy)
    best = max((combo for combo in itertools.product(cands, repeat=2)
                if budget.met(cost, unit_policy(layout, fixed, dict(zip(("conv2", "conv3"), combo)), 8))),
               key=lambda combo: sum(choices[u].logits[cands.index(b)].item()
                                     for u, b in zip(("conv2", "conv3"), combo)))
    assert (result.bits["conv2"], result.bits["conv3"]) == best
    easy = _budget("size_mb=w8", cost, fixed)
    assert not discretise(layout, cost, easy, fixed, choices, act_bits=8).repaired


def test_fifty_adam_steps_on_the_logits_reach_the_budget():
    """Small CNN, random data: CE plus the expected-size penalty, Adam on the logits, temperature annealed."""
    fp32, layout, cost, fixed = _tiny()
    qmodel = QuantModel(fp32, layout).train()
    choices = attach(qmodel, fixed, (2, 3, 4, 6, 8))
    budget = _budget("size_mb=w3", cost, fixed)
    size = lambda layer, w, a: budget.layer_cost(cost, layer, w, a)  # noqa: E731
    searched = layer_choices(qmodel)
    assert set(searched) == {"conv2", "conv3"}
    reg = CostPenalty(searched, layer_cost_fns(size, searched, 8), budget.value, constant=fixed_cost(size, fixed))
    start = reg.expected().item()
    optimizer = torch.optim.Adam([c.logits for c in choices.values()], lr=0.1)
    anneal = Anneal(1.0, 0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    for step in range(50):
        set_temperature(choices, anneal(step, 50))
        loss = F.cross_entropy(qmodel(x), y) + 10 * reg()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = reg.expected().item()
    assert start > 1.4 * budget.value and 0.95 * budget.value < end < 1.02 * budget.value
    result = discretise(layout, cost, budget, fixed, choices, act_bits=8)
    assert budget.met(cost, result.policy)
    apply(choices, result.bits)
    for name in searched:
        qmodel.set_weight_quantizer(name, qmodel.layers()[name].weight_quantizer.collapse())
    assert {n: qmodel.layers()[n].weight_quantizer.bits for n in searched} == result.bits


# The method in the harness: the whole pipeline on the tiny model (1-epoch FP32 start on 256 images).

FAST = dict(fp32_epochs=1, train_subset=256)


def _integer_w_bits(artifacts):
    import io

    from mpqbench.integer.model import IntegerModel

    imodel = IntegerModel.load(io.BytesIO(artifacts["integer_model.npz"]))
    return {op.name: op.attrs["w_bits"] for op in imodel.ops if "w_bits" in op.attrs}


def test_dfq_bilevel_reaches_the_budget_through_the_pipeline_with_logits_on_val(mpqbench_cell):
    record, artifacts = mpqbench_cell("dfq-diff", params="search_epochs=2:finetune_epochs=1:logit_lr=0.3",
                                      budget="size_mb=w3", **FAST)
    assert record.status == "done", record.error
    assert record.budget["met"] and record.budget["measured"] <= record.budget["value"]
    assert _integer_w_bits(artifacts) == {layer: w for layer, (w, a) in record.policy.items()}
    assert all(a == 8 for _, a in record.policy.values())
    search = record.training["search"]
    assert len(search) == 2 and set(search[0]) == {"ce", "cost", "loss", "val:ce", "val:cost"}
    assert set(record.training["finetune"][0]) == {"ce", "loss"}
    dfq = record.extra["dfq-diff"]
    assert dfq["temperature_end"] == pytest.approx(0.1) and dfq["expected_end"] < dfq["expected_start"]
    assert dfq["discretise"]["bits"] == {u: record.policy[u][0] for u in dfq["units"]}
    assert "train:search" in record.phases


def test_dfq_joint_steps_the_logits_on_train_only(mpqbench_cell):
    record, _ = mpqbench_cell("dfq-diff", params="search_epochs=1:finetune_epochs=0:update=joint:anneal=constant",
                              budget="avg_bits=3.5", **FAST)
    assert record.status == "done", record.error
    assert record.budget["met"] and set(record.training["search"][0]) == {"ce", "cost", "loss"}
    assert record.extra["dfq-diff"]["temperature_end"] == 1.0 and record.training["finetune"] == []


@pytest.mark.parametrize("budget, params", [("size_mb=w3", ""), ("bitops_g=w3a3", "a=3")])
def test_the_penalty_is_the_harness_measure_in_the_budget_unit(mpqbench_run, budget, params):
    from mpqbench.plugins.dfq.method import cost_term

    run = mpqbench_run("dfq-diff", params=params, budget=budget, **FAST)
    policy = run.method.search(run)
    model = run.quant_model(policy)
    choices = attach(model, run.fixed, run.params["candidates"])
    for choice in choices.values():
        with torch.no_grad():
            choice.logits[-1] = 50.0  # all mass on the top candidate: the search's starting policy
    term = cost_term(run, model, layer_choices(model), "abs")
    assert term.expected().item() == pytest.approx(run.budget.measure(run.cost, policy), rel=1e-6)


def test_dfq_is_registered_apart_from_data_free_quantization(mpqbench_registry):
    from mpqbench.pipeline.spec import Component

    method = mpqbench_registry.method("dfq-diff")
    assert "Cheng" in method.description and "not Nagel" in method.description
    for text, match in (("dfq-diff:candidates=4", "two bitwidths"), ("dfq-diff:t_end=0", "temperature"),
                        ("dfq-diff:every=0", "every"), ("dfq-diff:update=unrolled", "update")):
        with pytest.raises(UserError, match=match):
            method.check(Component.parse(text, mpqbench_registry.method).kwargs)
