"""The sensitivity baseline: scores, the budget, and a unit made sensitive on purpose, on the tiny run."""

import copy

import pytest
import torch

from mpqbench.baselines.sensitivity import damage
from mpqbench.errors import UserError


@pytest.fixture
def method_run(mpqbench_run):
    """``mpqbench_run`` for sensitivity on the tiny recipe's FP32 model (trained once per session): the scores
    measure damage to a working network, which a model at chance level does not have."""
    return lambda **kwargs: mpqbench_run("sensitivity", **kwargs)


def _search(run):
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    return policy


def test_damage_is_zero_for_the_reference_and_positive_for_noise():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 10, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    noisy = logits + 0.5 * torch.randn(64, 10, generator=gen)
    for metric in ("loss", "acc", "snr"):
        assert damage(metric, logits, logits, labels) == 0
    assert damage("snr", noisy, logits, labels) == pytest.approx(float(0.5 ** 2 * 640 / logits.square().sum()), rel=0.2)


@pytest.mark.parametrize("metric", ["snr", "loss"])
def test_scores_grow_as_bits_shrink(method_run, metric):
    run = method_run(params=f"metric={metric}:candidates=2/4/8", budget="size_mb=w4")
    _search(run)
    for unit, row in run.extra["sensitivity"]["scores"].items():
        if metric == "snr":  # noise powers: strictly ordered
            assert row["2"] > row["4"] > row["8"] > 0, unit
        else:  # a loss change can be noise near 8 bits
            assert row["2"] > max(row["4"], row["8"]), unit


@pytest.mark.parametrize("metric", ["loss", "acc", "snr"])
def test_policy_meets_the_budget_with_activations_at_a(method_run, metric):
    run = method_run(params=f"metric={metric}", budget="size_mb=w3")
    policy = _search(run)
    record = run.extra["sensitivity"]
    assert record["metric"] == metric and record["units"] == ["conv2", "conv3"]
    assert record["images"] == len(run.data.val) < 512  # the tiny split is smaller than the default: all of it
    assert set(record["scores"]["conv2"]) == {str(b) for b in range(2, 9)}
    assert record["bits"] == {u: policy[u].w for u in record["units"]}
    assert all(policy[layer].a == 8 for layer in run.layout.layers)
    assert {"search:scores", "search:solver"} <= set(run.phases)


@pytest.mark.parametrize("unit, before", [("conv2", "bn1"), ("conv3", "bn2")])
def test_a_unit_made_sensitive_gets_the_bits(method_run, unit, before):
    """Input channel 0 of ``unit`` is made dead (its BN bias sends the ReLU to 0), and the weights reading it
    set to 10x the largest weight: the FP32 network ignores them, but they set every output channel's min-max
    step, so at 4 bits the unit's other weights nearly all round to 0. The budget (candidates 4/8, the size of
    uniform W7) lets exactly one of the two units have 8 bits, whichever the model alone would prefer."""
    run = method_run(params="candidates=4/8", budget="size_mb=w7")
    model = copy.deepcopy(run.fp32)
    with torch.no_grad():
        getattr(model, before).bias[0] = -1e4
        weight = getattr(model, unit).weight
        weight[:, 0] = 10 * weight.abs().max()
    run.fp32 = model
    policy = _search(run)
    other = {"conv2", "conv3"} - {unit}
    assert policy[unit].w == 8 and policy[other.pop()].w == 4


@pytest.mark.parametrize("params", ["metric=mse", "images=0", "candidates=1/8", "a=9"])
def test_bad_parameters_are_user_errors(method_run, params):
    with pytest.raises(UserError):
        run = method_run(params=params, budget="size_mb=w4")
        run.method.search(run)
