"""OMPQ: the ORM (linear CKA), importance, a full search, its controls and solvers on the tiny run."""

import contextlib
import itertools
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpqbench.cost.allocation import searched_units, unit_policy
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.model import CostModel
from mpqbench.data.splits import ImageShape
from mpqbench.errors import UserError
from mpqbench.plugins.ompq import linear_budget, log_coefficients, normalised, orm_signal, slsqp_round, solve
from mpqbench.plugins.ompq.knapsack import integer_coefficients, solve_exact
from mpqbench.plugins.ompq.orm import importance, orm_matrix, suffix_log_mean

NO_TIMER = lambda phase: contextlib.nullcontext()  # noqa: E731


@pytest.fixture
def method_run(mpqbench_run):
    """``mpqbench_run`` for ompq with a 1-epoch FP32 start on 256 images: the tests need a real run, not a
    good model, and this keeps them seconds-fast on a loaded 2-core machine."""
    return lambda **kwargs: mpqbench_run("ompq", fp32_epochs=1, train_subset=256, **kwargs)


def _cka_by_definition(x, y):
    """ORM as the paper writes it: centred N x N Grams, K~ = H K H."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return (kx * ky).sum() / (np.linalg.norm(kx) * np.linalg.norm(ky))


@pytest.fixture(scope="module")
def features():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(16, 24, generator=gen)
    return [torch.randn(16, 5, generator=gen),  # D < N: feature-space form
            base,  # D >= N: Gram form
            torch.randn(16, 40, generator=gen) + base.repeat(1, 2)[:, :40],
            base.clone()]  # a duplicated layer


def test_orm_is_symmetric_with_unit_diagonal_and_matches_the_definition(features):
    orm = orm_matrix(features)
    assert np.allclose(orm, orm.T)
    assert np.allclose(np.diag(orm), 1.0)
    assert ((orm >= 0) & (orm <= 1 + 1e-12)).all()
    x = [f.double().numpy() for f in features]
    assert orm[0, 2] == pytest.approx(_cka_by_definition(x[0], x[2]), rel=1e-10)
    assert orm[1, 2] == pytest.approx(_cka_by_definition(x[1], x[2]), rel=1e-10)


def test_feature_space_and_gram_forms_agree(features):
    auto = orm_matrix(features)
    assert np.allclose(orm_matrix(features, form="gram"), auto, atol=1e-12)
    assert np.allclose(orm_matrix(features, form="features"), auto, atol=1e-12)


def test_orm_is_invariant_to_isotropic_scaling_and_shift(features):
    moved = [f * s + 3.0 for f, s in zip(features, (0.01, 7.0, 2.0, 1e3))]
    assert np.allclose(orm_matrix(moved), orm_matrix(features), atol=1e-10)


def test_a_duplicated_layer_has_orm_one_with_its_copy(features):
    orm = orm_matrix(features)
    assert orm[1, 3] == pytest.approx(1.0)
    assert orm[0, 1] < 0.9


def test_importance_follows_the_formulas():
    orm = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 1.0]])
    gamma, log_theta, log_c = importance(orm, beta=2.0)
    assert np.allclose(gamma, [0.6, 0.8, 0.4])
    assert np.allclose(log_theta, -2.0 * gamma)
    theta = np.exp(log_theta)
    assert np.allclose(np.exp(log_c), [theta.mean(), theta[1:].mean(), theta[2]])
    assert np.allclose(importance(orm, beta=0.0)[2], 0.0)


@pytest.mark.parametrize("beta", [0.5, 1.0, 10.0])
def test_log_space_coefficients_equal_the_direct_ones(beta):
    """Where theta does not underflow, log space changes nothing: exp(log c) is the official suffix mean
    computed from theta directly, and the normalised c is that divided by its maximum."""
    rng = np.random.default_rng(0)
    orm = rng.uniform(0.1, 0.5, size=(9, 9))
    orm = (orm + orm.T) / 2
    np.fill_diagonal(orm, 1.0)
    gamma, _, log_c = importance(orm, beta)
    theta = np.exp(-beta * gamma)
    direct = np.array([theta[i:].mean() for i in range(9)])
    assert np.allclose(np.exp(log_c), direct, rtol=1e-12, atol=0)
    assert np.allclose(normalised(log_c), direct / direct.max(), rtol=1e-12, atol=0)


@pytest.fixture(scope="module")
def resnet20(mpqbench_registry):
    """A stand-in run on ResNet-20's layout and costs (random weights: no features are read), first/last pinned at
    W8A8, with a budget at the uniform 3-bit size: what :func:`solve` reads."""
    entry = mpqbench_registry.model("resnet20")
    model = entry.build(ImageShape(3, 32, 10))
    layout = entry.layout(model)
    cost = CostModel.measure(model, layout, (3, 32, 32))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    return SimpleNamespace(layout=layout, cost=cost, fixed=fixed, budget=parse_budgets("size_mb=w3")[0].resolve(
        cost, fixed), measure=NO_TIMER)


def _resnet20_like_orm(n: int, most_orthogonal: int = -1) -> np.ndarray:
    """Off-diagonal ORM 0.80-0.92 (gamma ~14-16, as measured on ResNet-20), one unit least similar."""
    rng = np.random.default_rng(1)
    orm = rng.uniform(0.80, 0.92, size=(n, n))
    orm = (orm + orm.T) / 2
    orm[most_orthogonal, :] = orm[:, most_orthogonal] = 0.78
    np.fill_diagonal(orm, 1.0)
    return orm


def _maximal(run, result, top: int = 8) -> bool:
    """No unit can take one more bit within the budget."""
    return all(not run.budget.met(run.cost, unit_policy(run.layout, run.fixed, {**result.bits, u: b + 1}, 8))
               for u, b in result.bits.items() if b < top)


@pytest.mark.parametrize("most_orthogonal", [-1, 0])
def test_beta_100_fills_the_budget_and_orders_units_by_coefficient(resnet20, most_orthogonal):
    """The official PTQ beta: every direct theta underflows to 0 (the old code then returned all-2-bit weights
    with the budget unused). With the most orthogonal unit last, c_i = 1/(L-i+1) (position only); with it
    first, every later c is ~e^-40 of it, under any MILP tolerance: the exact program still spends the budget
    and, among units of equal cost, never gives a unit more bits than one with a larger coefficient."""
    units = searched_units(resnet20.layout, resnet20.fixed)
    gamma, log_theta, log_c = importance(_resnet20_like_orm(len(units), most_orthogonal), beta=100.0)
    assert 13 < gamma.min() and gamma.max() < 17
    assert not np.exp(log_theta).any()  # what the direct formula gives
    if most_orthogonal == -1:
        assert np.allclose(normalised(log_c), np.exp(log_coefficients("position", len(units), None)))
    else:
        assert (log_c[1:] - log_c[0] < -30).all()
    result = solve(resnet20, units, log_c, (2, 3, 4, 5, 6, 7, 8), 8)
    assert resnet20.budget.met(resnet20.cost, result.policy) and _maximal(resnet20, result)
    assert set(result.bits.values()) != {2}
    params = resnet20.cost.unit_params()
    for i, u in enumerate(units):
        for j, v in enumerate(units):
            if params[u] == params[v] and log_c[i] > log_c[j]:
                assert result.bits[u] >= result.bits[v], (u, v)


def test_the_exact_program_matches_brute_force_over_any_coefficient_range():
    rng = np.random.default_rng(0)
    for case in range(150):
        n, candidates = int(rng.integers(2, 6)), (2, 3, 4, 6)
        cost = rng.integers(1, 9, size=n) * 0.125
        log_c = rng.normal(size=n) * (3 if case % 2 else 300)  # the odd cases span e^-1000 and more
        room = float(cost.sum() * rng.uniform(2, 5))
        bits = solve_exact(log_c, cost, room, candidates)
        exact = integer_coefficients(log_c)  # the brute force compares exact integers too
        best = max(sum(c * b for c, b in zip(exact, option)) for option in itertools.product(candidates, repeat=n)
                   if np.dot(cost, option) <= room)
        assert np.dot(cost, bits) <= room and sum(c * b for c, b in zip(exact, bits)) == best
    with pytest.raises(UserError, match="no policy"):
        solve_exact(np.zeros(2), np.array([1.0, 1.0]), 3.0, (2, 3))


def test_integer_coefficients_keep_their_ratios():
    log_c = np.array([0.0, -1.0, -700.0, -1500.0])
    exact = integer_coefficients(log_c)
    assert exact[3] == 1 << 60 and exact[0] > exact[1] > exact[2] > exact[3]
    assert exact[1] / exact[0] == pytest.approx(math.exp(-1.0), rel=1e-15)


def test_nan_features_are_an_error_not_coefficients(method_run):
    run = method_run(budget="size_mb=w4")
    units = searched_units(run.layout, run.fixed)
    images = torch.full((8, *run.data.train.x.shape[1:]), float("nan"))
    with pytest.raises(RuntimeError, match="features of unit.s. conv2, conv3 hold NaN"):
        orm_signal(run.fp32_model(), run.layout, units, images, "eval", 10.0, NO_TIMER)


# The official procedure on two stored cases: three units of 0.5, 1 and 2 MiB of weights at x = b/8 = 1,
# 2.7125 MiB of budget for them, bits 4-8 (x in [0.5, 1]). Expected bits derived by hand from the official
# steps (x0 = 1, SLSQP, np.around(8 x)):
# * beta = 10, gamma 14-14.5: c ~ 1e-61, so SLSQP's absolute tolerance is met as soon as it is feasible and
#   it stops after one step, the Euclidean projection of x0 = 1 onto cost . x <= 2.7125: x = 1 - t cost with
#   t = (3.5 - 2.7125) / (0.25 + 1 + 4) = 0.15, so 8 x = 7.4, 6.8, 5.6 and bits 7, 7, 6: 2.8125 MiB, over.
# * beta = 1, gamma 0.2/0.1/0.3: theta = e^-gamma, c = 0.8214, 0.8228, 0.7408, the linear program's vertex
#   fills units by c / cost (1.64, 0.82, 0.37): units 0 and 1 at x = 1 (2.5 MiB with unit 2 at 0.5), unit 2
#   gets the rest, x = 0.5 + 0.2125 / 2 = 0.60625, 8 x = 4.85 -> 5: bits 8, 8, 5, 2.75 MiB, over. (The exact
#   program's answer at this budget is 8, 8, 4.)
SLSQP_CASES = [(10.0, [14.0, 14.5, 13.8], [7, 7, 6], 1), (1.0, [0.2, 0.1, 0.3], [8, 8, 5], 2)]


@pytest.mark.parametrize("beta, gamma, expected, iterations", SLSQP_CASES)
def test_slsqp_round_reproduces_the_official_procedure(beta, gamma, expected, iterations):
    cost, room = np.array([0.5, 1.0, 2.0]), 2.7125
    bits, trace = slsqp_round(suffix_log_mean(-beta * np.array(gamma)), cost, room, 4, 8)
    assert bits.tolist() == expected and trace["iterations"] == iterations
    assert bits @ cost / 8 > room  # both overshoot: rounding is not checked against the budget


@pytest.mark.parametrize("params, budget", [("candidates=4-8", "size_mb=w6"), ("candidates=2-4", "size_mb=w3"),
                                            ("allocation=position:candidates=2-8", "bitops_g=w3a8")])
def test_slsqp_round_search_records_its_trace_and_the_measured_budget(method_run, params, budget):
    run = method_run(params=f"solver=slsqp-round:{params}", budget=budget, first_last=None)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    record = run.extra["ompq"]
    low, high = run.params["candidates"][0], run.params["candidates"][-1]
    assert set(record["bits"].values()) <= set(range(low, high + 1))
    assert record["measured"] == pytest.approx(run.budget.measure(run.cost, policy))
    assert record["budget_met"] == run.budget.met(run.cost, policy)
    assert record["slsqp"]["iterations"] >= 1 and "c" not in record and len(record["log_c"]) == 4
    assert "search:solver" in run.phases


def test_slsqp_round_constraint_is_the_official_one(method_run):
    """For a size budget the official constraint reads model_size - first_last_size - sum x_i params_i >= 0,
    params in MiB: the costs and room the solver gets must be exactly those."""
    run = method_run(budget="size_mb=w4")
    units = searched_units(run.layout, run.fixed)
    cost, room = linear_budget(run, units, (2, 3, 4, 5, 6, 7, 8), 8)
    params = run.cost.unit_params()
    assert np.allclose(cost, [params[u] / 2**20 for u in units], rtol=1e-12)
    pinned = sum(run.cost.layers[layer].params * 8 for layer in run.fixed) / 8 / 2**20  # first/last at 8 bits
    assert room == pytest.approx(run.budget.value - pinned, rel=1e-12)


def test_position_and_reversed_controls_order_the_coefficients():
    log_theta = np.array([0.0, -1.0, -2.0, -3.0])  # theta falls along the network
    signal = {"log_theta": log_theta, "log_c": suffix_log_mean(log_theta)}
    theta = np.exp(log_theta)
    orm_c = np.exp(log_coefficients("orm", 4, signal))
    reversed_c = np.exp(log_coefficients("reversed", 4, signal))
    assert np.allclose(reversed_c, [theta[::-1][i:].mean() for i in range(4)])
    assert (np.diff(orm_c) < 0).all() and (np.diff(reversed_c) > 0).all()
    assert np.allclose(np.exp(log_coefficients("position", 4, None)), [1 / 4, 1 / 3, 1 / 2, 1])
    assert np.allclose(log_coefficients("greedy", 4, None), 0.0)


def test_search_meets_the_budget_and_records_the_signal(method_run):
    run = method_run(budget="size_mb=w4")
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    record = run.extra["ompq"]
    assert record["units"] == ["conv2", "conv3"]  # first/last pinned at 8 bits
    assert len(record["batch_indices"]) == 32 and record["bn"] == "eval"
    assert np.array(record["orm"]).shape == (2, 2)
    assert set(record["c"]) == set(record["log_c"]) == set(record["log_theta"]) == {"conv2", "conv3"}
    assert max(record["c"].values()) == 1.0 and "optimal" in record["solver_status"]
    assert record["solver"] == "exact"
    assert {"search:features", "search:orm", "search:solver"} <= set(run.phases)
    assert all(policy[layer].a == 8 for layer in run.layout.layers)


def test_search_covers_first_and_last_when_the_run_searches_them(method_run):
    run = method_run(params="a=4:bn=train:candidates=2-4", budget="bitops_g=w3", first_last=None)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    assert run.extra["ompq"]["units"] == ["conv1", "conv2", "conv3", "fc"]
    assert {policy[layer].w for layer in run.layout.layers} <= {2, 3, 4}
    assert all(policy[layer].a == (8 if layer == run.layout.first else 4) for layer in run.layout.layers)


def test_residual_features_and_bitops_budget(method_run):
    run = method_run(budget="bitops_g=w4a8", model="resnet20")
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    assert len(run.extra["ompq"]["units"]) == 18
    assert policy["layer2.0.conv2"].w == policy["layer2.0.downsample.0"].w


def test_feature_batch_follows_the_seed(method_run):
    run = method_run(budget="size_mb=w4")
    run.method.search(run)
    other = replace(run, seed=1, extra={}, phases={})
    other.method.search(other)
    assert run.extra["ompq"]["batch_indices"] != other.extra["ompq"]["batch_indices"]


@pytest.mark.parametrize("allocation, features", [("greedy", False), ("random", False), ("position", False),
                                                  ("reversed", True)])
def test_controls_meet_the_budget(method_run, allocation, features):
    run = method_run(params=f"allocation={allocation}", budget="size_mb=w3", first_last=None)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    assert ("search:features" in run.phases) == features


def test_random_control_differs_between_seeds(method_run):
    run = method_run(params="allocation=random", budget="size_mb=w4", first_last=None)
    policies = set()
    for seed in range(4):
        seeded = replace(run, seed=seed, extra={}, phases={})
        policy = seeded.method.search(seeded)
        assert seeded.budget.met(seeded.cost, policy)
        policies.add(tuple(sorted(seeded.extra["ompq"]["bits"].items())))
    assert len(policies) > 1
    again = replace(run, seed=0, extra={}, phases={})
    again.method.search(again)
    assert tuple(sorted(again.extra["ompq"]["bits"].items())) in policies


def test_beta_to_zero_is_size_greedy(method_run):
    """theta -> 1, so c = 1: the program maximises the plain sum of unit bits and cuts the largest units."""
    results = {}
    for params in ("beta=1e-9", "allocation=greedy", ""):
        run = method_run(params=params, budget="size_mb=w3", first_last=None)
        run.method.search(run)
        results[params] = run.extra["ompq"]
    assert all(c == pytest.approx(1.0, abs=1e-6) for c in results["beta=1e-9"]["c"].values())
    total = {k: sum(r["bits"].values()) for k, r in results.items()}
    assert total["beta=1e-9"] == total["allocation=greedy"] >= total[""]
    bits = results["allocation=greedy"]["bits"]
    params = run.cost.unit_params()
    biggest, smallest = max(params, key=params.get), min(params, key=params.get)
    assert bits[biggest] == 2 and bits[smallest] == 8


@pytest.mark.parametrize("params", ["candidates=1/4", "candidates=4/9", "a=12", "allocation=best", "bn=frozen",
                                    "beta=-1", "beta=inf", "batch=1", "batch=100000", "solver=newton",
                                    "solver=slsqp-round:candidates=2/4/8", "solver=slsqp-round:candidates=4",
                                    "solver=slsqp-round:allocation=random"])
def test_bad_parameters_are_user_errors(method_run, params):
    with pytest.raises(UserError):
        run = method_run(params=params, budget="size_mb=w4")
        run.method.search(run)
