import pytest

from mpqbench.api import ImageShape
from mpqbench.cost.budget import Budget, parse_budgets
from mpqbench.cost.kinds import BUILTIN
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.models.resnets import resnet18, resnet_layout
from mpqbench.quant.policy import BitPolicy


@pytest.fixture(scope="module")
def r18():
    model = resnet18(ImageShape(3, 224, 1000))
    layout = resnet_layout(model)
    cost = CostModel.measure(model, layout, (3, 224, 224))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    return layout, cost, fixed


def test_resnet18_sizes_match_the_published_convention(r18):
    layout, cost, fixed = r18
    # HAWQ-V3's ImageNet table: FP32 44.6 MB, W8A8 11.1 MB, W4A4 5.8 MB (first/last 8-bit)
    assert cost.size_mb(BitPolicy.uniform(layout, 32, 32)) == pytest.approx(44.6, abs=0.05)
    assert cost.size_mb(BitPolicy.uniform(layout, 8, 8, fixed)) == pytest.approx(11.1, abs=0.05)
    assert cost.size_mb(BitPolicy.uniform(layout, 4, 4, fixed)) == pytest.approx(5.8, abs=0.05)


def test_resnet18_bitops_match_the_published_convention(r18):
    layout, cost, fixed = r18
    assert cost.total_macs == pytest.approx(1.814e9, rel=0.01)
    assert cost.bitops_g(BitPolicy.uniform(layout, 32, 32)) == pytest.approx(1858, rel=0.01)
    assert cost.bitops_g(BitPolicy.uniform(layout, 8, 8, fixed)) == pytest.approx(116.1, rel=0.01)
    assert cost.bitops_g(BitPolicy.uniform(layout, 4, 4, fixed)) == pytest.approx(34.7, rel=0.01)


def test_average_bits_is_parameter_weighted(r18):
    layout, cost, fixed = r18
    policy = BitPolicy.uniform(layout, 4, 4, fixed)
    first_last = cost.layers[layout.first].params + cost.layers[layout.last].params
    expected = (4 * (cost.total_params - first_last) + 8 * first_last) / cost.total_params
    assert cost.avg_bits(policy) == pytest.approx(expected)
    assert cost.mean_bits(policy) == pytest.approx((4 * (len(layout.layers) - 2) + 16) / len(layout.layers))


def test_parse_budgets():
    assert parse_budgets("size_mb=w4,w3") == [Budget(BUILTIN["size_mb"], uniform=(4, 4)),
                                              Budget(BUILTIN["size_mb"], uniform=(3, 3))]
    assert parse_budgets(["avg_bits=3.5", "bitops_g=w4a8"]) == [Budget(BUILTIN["avg_bits"], 3.5),
                                                               Budget(BUILTIN["bitops_g"], uniform=(4, 8))]
    assert Budget(BUILTIN["bitops_g"], uniform=(4, 8)).text == "bitops_g=w4a8"


@pytest.mark.parametrize("text", ["size_mb", "speed=3", "size_mb=-1", "size_mb=abc", "3", "avg_bits=w9"])
def test_malformed_budgets_are_user_errors(text):
    with pytest.raises(UserError):
        parse_budgets(text)


def test_budget_resolution_and_check(r18):
    layout, cost, fixed = r18
    budget = Budget(BUILTIN["size_mb"], uniform=(4, 4)).resolve(cost, fixed)
    assert budget.value == pytest.approx(5.82, abs=0.01)
    assert budget.met(cost, BitPolicy.uniform(layout, 4, 4, fixed))  # exactly at the budget
    assert not budget.met(cost, BitPolicy.uniform(layout, 5, 5, fixed))
    assert budget.met(cost, BitPolicy.uniform(layout, 3, 8, fixed))


def test_infeasible_budget_is_a_user_error(r18):
    layout, cost, fixed = r18
    with pytest.raises(UserError, match="infeasible"):
        Budget(BUILTIN["size_mb"], 1.0).resolve(cost, fixed)  # 2-bit with 8-bit first/last is ~3.3 MB
    with pytest.raises(UserError, match="infeasible"):
        Budget(BUILTIN["avg_bits"], 1.5).resolve(cost, {})
