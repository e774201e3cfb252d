"""The core's contracts (issue #10): the final policy is read back from the model, per-bitwidth quantizer
state, the Trainer's parameter groups / validation steps / loss terms, finalize, records of both schemas."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mpqbench.api import BitPolicy, Method
from mpqbench.cost.model import CostModel
from mpqbench.data.splits import ImageShape
from mpqbench.integer.export import export
from mpqbench.integer.fixedpoint import ExportError
from mpqbench.integer.model import IntegerModel
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout
from mpqbench.pipeline.record import RunRecord
from mpqbench.pipeline.store import RunStore
from mpqbench.quant.model import QuantModel
from mpqbench.quant.quantizers import LSQQuantizer, Quantizer
from mpqbench.report import leaderboard
from mpqbench.testing import run_cell

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "fashion-mnist-resnet20"


class BitChanger(Method):
    """Searches W8 everywhere, then, inside train(), drops conv2 to 2 bits and conv3's input to 3 bits."""

    name, version = "test-bit-changer", "1"

    def search(self, run):
        return BitPolicy.uniform(run.layout, 8, 8, run.fixed)

    def train(self, run, policy):
        changed = dict(policy.to_json())
        changed["conv2"] = [2, 8]
        changed["conv3"] = [2, 3]
        model = run.quant_model(policy)
        model.apply_policy(BitPolicy.from_json(changed))
        return run.finetune(model)


class _Mixture(Quantizer):
    """Not a single grid until collapsed: averages a 2-bit and a 4-bit LSQ grid."""

    single_grid = False

    def __init__(self, channels):
        super().__init__(4, True)
        self.low, self.high = LSQQuantizer(2, True, channels), LSQQuantizer(4, True, channels)

    def forward(self, x):
        return 0.5 * (self.low(x) + self.high(x))

    def collapse(self):
        return self.high


class Bilevel(Method):
    """A toy learner: a gate logit in its own Adam group stepped on the validation split every 2 steps, a
    distillation term and a budget term; the gate picks conv2's bits at the end (finalize reads them)."""

    name, version = "test-bilevel", "1"

    def search(self, run):
        return BitPolicy.uniform(run.layout, 4, 8, run.fixed)

    def train(self, run, policy):
        model = run.quant_model(policy)
        layer = model.layers()["conv2"]
        model.set_weight_quantizer("conv2", _Mixture(layer.weight.shape[0]))
        gate = nn.Parameter(torch.zeros(()))
        model.register_parameter("gate", gate)
        with run.searching():
            trainer = run.trainer(model, name="search", epochs=2)
            trainer.add_optimizer("gate", [gate], optimizer="adam", lr=0.1, split="val", every=2)
            trainer.add_loss("kd", run.kd(4.0), weight=0.5)
            cost = run.cost.layers["conv2"].params / run.cost.total_params
            trainer.add_loss("budget", lambda state: torch.sigmoid(gate) * cost)
            steps = []
            trainer.on_step(lambda state: steps.append((state.step, state.logits is None)))
            trainer.fit()
        run.extra["steps_seen"] = len(steps)
        run.extra["callbacks_before_forward"] = all(before for _, before in steps)
        return model


@pytest.fixture(scope="module")
def registry():
    from mpqbench.plugin.registry import load_registry

    reg = load_registry()
    for method in (BitChanger(), Bilevel()):
        reg.tables["method"][method.name] = method
    return reg


def test_the_record_describes_the_model_a_method_trained_not_the_one_it_searched(registry, mpqbench_cache):
    record, artifacts = run_cell(registry, mpqbench_cache, "test-bit-changer", budget="size_mb=w4")
    assert record.status == "done", record.error
    assert record.searched_policy["conv2"] == [8, 8] and record.policy["conv2"] == [2, 8]
    imodel = IntegerModel.load(io.BytesIO(artifacts["integer_model.npz"]))
    for op in imodel.ops:
        if op.kind in ("conv", "linear"):
            w, a = record.policy[op.name]
            assert op.attrs["w_bits"] == w, op.name
            assert imodel.tensors[op.inputs[0]].bits == a, op.name
    # size, BitOPs and the budget verdict are those of the final policy, measured by the shared cost model
    final = BitPolicy.from_json(record.policy)
    shape = ImageShape(1, 8, 10)
    net = small_cnn(shape)
    cost = CostModel.measure(net, small_cnn_layout(net), (1, 8, 8))
    assert record.metrics["size_mb"] == pytest.approx(cost.size_mb(final))
    assert record.metrics["bitops_g"] == pytest.approx(cost.bitops_g(final))
    assert record.budget["measured"] == pytest.approx(cost.size_mb(final))
    assert record.budget["met"] is (cost.size_mb(final) <= record.budget["value"] * (1 + 1e-9))
    assert imodel.weight_bytes() == record.metrics["weight_bytes"]


def test_a_learner_with_its_own_optimizer_validation_steps_and_loss_terms(registry, mpqbench_cache):
    record, artifacts = run_cell(registry, mpqbench_cache, "test-bilevel", budget="size_mb=w4")
    assert record.status == "done", record.error
    history = record.training["search"]
    assert len(history) == 2
    for epoch in history:
        assert {"ce", "kd", "budget", "loss", "val:ce", "val:kd", "val:budget"} <= set(epoch)
        assert epoch["loss"] == pytest.approx(epoch["ce"] + epoch["kd"] + epoch["budget"], rel=1e-5)
    assert record.training["search"][0]["budget"] != record.training["search"][1]["budget"]  # the gate moved
    assert record.extra["callbacks_before_forward"] and record.extra["steps_seen"] > 0
    assert record.policy["conv2"][0] == 4  # collapsed by the default finalize
    assert record.phases["train:search"]["seconds"] > 0
    assert record.search_seconds >= record.phases["train:search"]["seconds"]
    assert record.train_seconds <= record.phases["train"]["seconds"]


def test_lsq_keeps_the_step_it_learned_at_each_bitwidth():
    q = LSQQuantizer(4, signed=True, channels=3)
    q(torch.randn(3, 8))
    with torch.no_grad():
        q.step.mul_(0.37)  # as if learned
    learned = q.step.detach().clone()
    q.set_bits(3)
    q(torch.randn(3, 8))
    assert not torch.equal(q.step.detach(), learned)
    q.set_bits(4)
    assert torch.equal(q.step.detach(), learned)
    q.ensure(2, 5)
    state = q.state_dict()
    fresh = LSQQuantizer(4, signed=True, channels=3)
    fresh.load_state_dict(state)
    assert set(fresh.steps) == {"2", "3", "4", "5"} and torch.equal(fresh.step.detach(), learned)


def test_export_refuses_a_model_that_is_not_one_grid_per_layer():
    shape = ImageShape(1, 8, 10)
    net = small_cnn(shape)
    layout = small_cnn_layout(net)
    model = QuantModel(net, layout, BitPolicy.uniform(layout, 4, 4, {}))
    model(torch.rand(4, 1, 8, 8))
    model.set_weight_quantizer("conv2", _Mixture(net.conv2.weight.shape[0]))
    with pytest.raises(ExportError, match="conv2"):
        export(model, (1, 8, 8))
    model.finalize()
    assert model.mixed_grids() == [] and export(model, (1, 8, 8)).ops


def test_published_records_of_schema_1_load_and_the_leaderboard_is_unchanged():
    store = RunStore(PUBLISHED)
    records = list(store.records())
    assert len(records) == len(list((PUBLISHED / "runs").glob("*.json"))) and records
    schema_1 = [r for r in records if json.loads(store.path(r.id).read_text())["schema"] == 1]
    assert all(r.searched_policy == r.policy and r.schema == 2 for r in schema_1)
    table = leaderboard.table(records)
    assert leaderboard.markdown(table) + "\n" == (PUBLISHED / "leaderboard.md").read_text()


def test_a_schema_1_record_reads_as_schema_2():
    old = {"schema": 1, "id": "a", "status": "done", "label": "ompq", "spec": {"seed": 0}, "plugin": {},
           "started": "", "policy": {"conv1": [8, 8]}, "layers": {}, "metrics": {"top1": 90.0}, "phases": {},
           "extra": {}, "finished": "", "environment": {}, "targets": {}}
    record = RunRecord.from_json(old)
    assert record.schema == 2 and record.searched_policy == record.policy == {"conv1": [8, 8]}
    assert record.training == {} and record.search_seconds is None


def test_records_round_trip_and_unknown_schemas_are_refused():
    record = RunRecord(id="x", label="m", spec={"seed": 3}, plugin={"name": "m"}, status="done")
    again = RunRecord.from_json(json.dumps(record.to_json()))
    assert again == record and again.seed == 3
    with pytest.raises(ValueError):
        RunRecord.from_json({**record.to_json(), "schema": 99})
    with pytest.raises(ValueError):
        RunRecord.from_json({**record.to_json(), "surprise": 1})


def test_search_and_finetune_seeds_vary_separately(mpqbench_cell):
    """``search_seed`` fixed: OMPQ's feature batch is the same for every run seed, the fine-tune is not;
    ``finetune_seed`` fixed: the batch follows the run seed, and with a search that draws nothing (the greedy
    control) two run seeds give the same model (one FP32 start for all: ``fp32_seed``)."""
    def cell(seed, **seeds):
        record, _ = mpqbench_cell("ompq", params=seeds.pop("params", ""), budget="size_mb=w4", seed=seed, fp32_seed=0,
                                  **seeds)
        assert record.status == "done", record.error
        return record

    fixed_search = [cell(s, search_seed=7) for s in (0, 1)]
    assert fixed_search[0].extra["ompq"]["batch_indices"] == fixed_search[1].extra["ompq"]["batch_indices"]
    assert fixed_search[0].training["finetune"] != fixed_search[1].training["finetune"]
    assert fixed_search[0].spec["recipe"]["search_seed"] == 7 and "finetune_seed" not in fixed_search[0].spec["recipe"]
    fixed_tune = [cell(s, finetune_seed=7) for s in (0, 1)]
    assert fixed_tune[0].extra["ompq"]["batch_indices"] != fixed_tune[1].extra["ompq"]["batch_indices"]
    greedy = [cell(s, finetune_seed=7, params="allocation=greedy") for s in (0, 1)]
    assert greedy[0].training["finetune"] == greedy[1].training["finetune"]
    assert greedy[0].metrics["top1"] == greedy[1].metrics["top1"]


def test_search_inside_train_takes_the_search_seed_and_leaves_the_finetune_draws_alone(mpqbench_run):
    draws = {}
    for search_seed in (3, 4):
        run = mpqbench_run("uniform", budget="size_mb=w4", seed=0, search_seed=search_seed)
        with run.seeded("train"):
            assert run.seed == 0
            with run.searching():
                assert run.seed == search_seed
                assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(search_seed)))
            assert run.seed == 0
            draws[search_seed] = torch.rand(3)
    assert torch.equal(draws[3], draws[4])
    unset = mpqbench_run("uniform", budget="size_mb=w4", seed=2)
    with unset.seeded("search"):  # no stage seed fixed: nothing is reseeded
        torch.manual_seed(11)
        before = torch.rand(2)
    torch.manual_seed(11)
    assert unset.seed == 2 and torch.equal(before, torch.rand(2))
