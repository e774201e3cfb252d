"""The shared integer program: exact optimum under the budget, checked against brute force."""

import itertools

import numpy as np
import pytest

from mpqbench.api import ImageShape
from mpqbench.cost.allocation import allocate, check_bits, searched_units, unit_policy
from mpqbench.cost.budget import Budget
from mpqbench.cost.kinds import BUILTIN
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.models.resnets import resnet20, resnet_layout
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout


def _structure(build, layout_fn):
    model = build(ImageShape(1, 8, 10))
    layout = layout_fn(model)
    return layout, CostModel.measure(model, layout, (1, 8, 8))


@pytest.fixture(scope="module")
def cnn():
    return _structure(small_cnn, small_cnn_layout)


@pytest.fixture(scope="module")
def r20():
    """ResNet-20 with four units free: a block with a downsample conv (its conv1 and conv2+downsample read
    one tensor), a unit feeding it and one after it; every other layer pinned at W4A4."""
    layout, cost = _structure(resnet20, resnet_layout)
    free = {"layer1.2.conv2", "layer2.0.conv1", "layer2.0.conv2", "layer2.1.conv1"}
    fixed = {layer: (4, 4) for g in layout.weight_groups if layout.unit_name(g) not in free for layer in g}
    assert ("layer2.0.conv1", "layer2.0.downsample.0") in layout.act_groups
    return layout, cost, fixed


def _enumerate(layout, cost, kind, fixed, cands, act_bits):
    units = searched_units(layout, fixed)
    policies = [dict(zip(units, combo)) for combo in itertools.product(cands, repeat=len(units))]
    measure = Budget(BUILTIN[kind], 1.0).measure
    return units, [(bits, measure(cost, unit_policy(layout, fixed, bits, act_bits))) for bits in policies]


def _check_against_brute_force(layout, cost, kind, fixed, cands, act_bits, trials, seed):
    rng = np.random.default_rng(seed)
    units, table = _enumerate(layout, cost, kind, fixed, cands, act_bits)
    costs = np.array([c for _, c in table])
    for trial in range(trials):
        budget = Budget(BUILTIN[kind], float(np.quantile(costs, rng.uniform(0.05, 0.95))))
        scores = {u: {b: float(rng.normal()) for b in cands} for u in units}
        maximize = bool(trial % 2)
        result = allocate(layout, cost, budget, fixed, scores, cands, act_bits, maximize=maximize)
        assert budget.met(cost, result.policy)
        result.policy.check(layout, fixed)
        feasible = [sum(scores[u][b] for u, b in bits.items()) for bits, c in table if c <= budget.value * (1 + 1e-9)]
        best = max(feasible) if maximize else min(feasible)
        assert result.objective == pytest.approx(best, abs=1e-5), f"trial {trial}"


def test_size_budget_optimum_matches_brute_force(cnn):
    layout, cost = cnn
    _check_against_brute_force(layout, cost, "size_mb", {}, (2, 3, 5, 8), 8, trials=12, seed=0)


def test_bitops_budget_with_fixed_activations_matches_brute_force(r20):
    layout, cost, fixed = r20
    _check_against_brute_force(layout, cost, "bitops_g", fixed, (2, 4, 8), 6, trials=10, seed=1)


def test_bitops_budget_with_activations_following_weights_matches_brute_force(r20):
    """The downsample conv costs w(conv2) * max(w(conv1), w(conv2)): a product of two units' choices."""
    layout, cost, fixed = r20
    _check_against_brute_force(layout, cost, "bitops_g", fixed, (2, 4, 8), None, trials=30, seed=2)


def test_policy_exactly_at_the_budget_is_accepted(cnn):
    layout, cost = cnn
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    budget = Budget(BUILTIN["size_mb"], uniform=(4, 4)).resolve(cost, fixed)
    scores = {u: {4: 0.0, 8: 1.0} for u in searched_units(layout, fixed)}
    result = allocate(layout, cost, budget, fixed, scores, (4, 8), 8, maximize=True)
    assert result.bits == {"conv2": 4, "conv3": 4}
    assert budget.met(cost, result.policy)


def test_activation_bits_follow_weights_and_share_the_max(r20):
    layout, _, fixed = r20
    policy = unit_policy(layout, fixed, {"layer1.2.conv2": 2, "layer2.0.conv1": 8, "layer2.0.conv2": 4,
                                         "layer2.1.conv1": 2}, None)
    assert policy["layer2.0.conv2"].a == 4 and policy["layer2.0.downsample.0"].w == 4
    assert policy["layer2.0.conv1"].a == policy["layer2.0.downsample.0"].a == 8
    policy.check(layout, fixed)


def test_unreachable_budget_is_a_user_error(cnn):
    layout, cost = cnn
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    budget = Budget(BUILTIN["size_mb"], uniform=(4, 4)).resolve(cost, fixed)
    scores = {u: {8: 1.0} for u in searched_units(layout, fixed)}
    with pytest.raises(UserError, match="no policy"):
        allocate(layout, cost, budget, fixed, scores, (8,), 8, maximize=True)
    with pytest.raises(UserError, match="budget"):
        allocate(layout, cost, None, fixed, scores, (8,), 8, maximize=True)


def test_check_bits():
    assert check_bits("m", (8, 4, 4), None) == (4, 8)
    for cands, a in (((1, 4), 8), ((4, 9), 8), ((), 8), ((4, 8), 3.5), ((4, 8), 12)):
        with pytest.raises(UserError):
            check_bits("m", cands, a)


def test_a_searched_first_layer_reads_8_bit_input_in_every_policy_and_in_the_program(cnn):
    """The network input is 8-bit pixels: a uniform W3A3 policy, a unit policy with activations following
    weights, and the program's cost model all charge the first layer's input at 8 bits, so the policy a method
    returns is the one the quantized model reads back and the budget it meets is the one measured."""
    from mpqbench.api import BitPolicy
    from mpqbench.quant.model import QuantModel

    layout, cost = cnn
    assert BitPolicy.uniform(layout, 3, 3)[layout.first].a == 8 and BitPolicy.uniform(layout, 3, 3)["conv2"].a == 3
    assert BitPolicy.uniform(layout, 32, 32)[layout.first].a == 32  # the float row stays float
    bits = {u: 2 for u in searched_units(layout, {})}
    assert unit_policy(layout, {}, bits, None)[layout.first] == unit_policy(layout, {}, bits, 2)[layout.first]
    budget = Budget(BUILTIN["bitops_g"], Budget(BUILTIN["bitops_g"], 1.0).measure(cost, BitPolicy.uniform(
        layout, 3, 3)))
    result = allocate(layout, cost, budget, {}, {u: {b: -b for b in (2, 3, 4)} for u in bits}, (2, 3, 4), None,
                      maximize=False)
    assert result.policy[layout.first].a == 8 and budget.met(cost, result.policy)
    model = small_cnn(ImageShape(1, 8, 10))
    assert QuantModel(model, layout, result.policy).policy() == result.policy
