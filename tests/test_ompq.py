"""OMPQ: the ORM (linear CKA), importance, a full search and its controls on the tiny run."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from mpqbench.errors import UserError
from mpqbench.plugins.ompq.orm import importance, orm_matrix


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
    gamma, theta, c = importance(orm, beta=2.0)
    assert np.allclose(gamma, [0.6, 0.8, 0.4])
    assert np.allclose(theta, np.exp(-2.0 * gamma))
    assert np.allclose(c, [theta.mean(), theta[1:].mean(), theta[2]])
    assert np.allclose(importance(orm, beta=0.0)[2], 1.0)


def test_search_meets_the_budget_and_records_the_signal(method_run):
    run = method_run(budget="size_mb=w4")
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    record = run.extra["ompq"]
    assert record["units"] == ["conv2", "conv3"]  # first/last pinned at 8 bits
    assert len(record["batch_indices"]) == 32 and record["bn"] == "eval"
    assert np.array(record["orm"]).shape == (2, 2)
    assert set(record["c"]) == {"conv2", "conv3"} and "Optimal" in record["solver_status"]
    assert {"search:features", "search:orm", "search:solver"} <= set(run.phases)
    assert all(policy[layer].a == 8 for layer in run.layout.layers)


def test_search_covers_first_and_last_when_the_run_searches_them(method_run):
    run = method_run(params="a=4:bn=train:candidates=2-4", budget="bitops_g=w3", first_last=None)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    assert run.extra["ompq"]["units"] == ["conv1", "conv2", "conv3", "fc"]
    assert {policy[layer].w for layer in run.layout.layers} <= {2, 3, 4}
    assert all(policy[layer].a == 4 for layer in run.layout.layers)


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


@pytest.mark.parametrize("allocation", ["greedy", "random"])
def test_controls_meet_the_budget(method_run, allocation):
    run = method_run(params=f"allocation={allocation}", budget="size_mb=w3", first_last=None)
    policy = run.method.search(run)
    policy.check(run.layout, run.fixed)
    assert run.budget.met(run.cost, policy)
    assert "search:features" not in run.phases


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
                                    "beta=-1", "batch=1", "batch=100000"])
def test_bad_parameters_are_user_errors(method_run, params):
    with pytest.raises(UserError):
        run = method_run(params=params, budget="size_mb=w4")
        run.method.search(run)
