"""The example plugins' own tests, written as a plugin author writes them: with the fixtures mpqbench installs
for pytest (``mpqbench_run``: a RunContext on a tiny model and data set; ``mpqbench_cell``: the whole
pipeline of one cell, in seconds)."""

import functools
import json
import os

import numpy as np
from mpqbench_examples.bench import main as cost_table
from mpqbench_examples.dataset import bars
from mpqbench_examples.executor import Subprocesses
from mpqbench_examples.method import quant_error

from mpqbench.errors import WorkerDied


def test_quant_error_falls_with_bits():
    import torch

    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = [quant_error(w, b) for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 100


def test_qerror_spends_a_traffic_budget_and_keeps_within_it(mpqbench_run):
    run = mpqbench_run("qerror", budget="traffic_kb=w3")
    policy = run.method.search(run)
    assert run.budget.met(run.cost, policy)
    assert run.budget.kind.name == "traffic_kb" and run.budget.value > 0
    searched = [layer for layer in run.layout.layers if layer not in run.fixed]
    assert {policy[layer].a for layer in searched} == {8}
    assert set(run.extra["qerror"]["errors"]) <= set(searched)


def test_the_whole_pipeline_on_lenet5_and_bars_with_the_numpy_target_and_ema_max(mpqbench_cell):
    record, artifacts = mpqbench_cell("qerror", model="lenet5", dataset="bars", budget="size_mb=w4",
                                      targets=("numpy-ref",), act_quantizer="ema-max")
    assert record.status == "done", record.error
    assert record.budget["met"] and record.metrics["int_top1"] > 50  # four classes: chance is 25%
    target = record.targets["numpy-ref"]
    assert target["check"]["bit_exact"] and target["metrics"]["macs"]["value"] == record.metrics["macs"]
    assert "integer_model.npz" in artifacts


def test_the_subprocess_executor_returns_every_result_errors_and_dead_workers():
    jobs = [functools.partial(pow, 2, 3), functools.partial(int, "x"), functools.partial(os._exit, 3),
            functools.partial(sum, [1, 2, 3])]
    started = []
    results = dict(Subprocesses().run(jobs, 2, {"python": ""}, started.append))
    assert sorted(started) == [0, 1, 2, 3] and results[0] == 8 and results[3] == 6
    assert isinstance(results[1], ValueError) and isinstance(results[2], WorkerDied)


def test_bars_is_the_same_everywhere_and_balanced():
    a, b = bars(None, None), bars(None, None)
    assert np.array_equal(a.train.x.numpy(), b.train.x.numpy()) and a.shape.classes == 4
    counts = np.bincount(a.test.y.numpy(), minlength=4)
    assert counts.min() > len(a.test) / 8


def test_cost_table_prints_a_row_per_uniform_policy(capsys, mpqbench_registry):
    assert cost_table(["--model", "lenet5"], mpqbench_registry) == 0
    out = capsys.readouterr().out
    assert "W4A4" in out and "W2A2" in out and out.startswith("lenet5:")


def test_the_stage_log_sees_every_stage(monkeypatch, tmp_path, mpqbench_cell):
    log = tmp_path / "stages.jsonl"
    monkeypatch.setenv("MPQBENCH_STAGE_LOG", str(log))
    record, _ = mpqbench_cell("uniform", params="w=8")
    stages = [json.loads(line)["stage"] for line in log.read_text().splitlines()]
    assert {"search", "train", "finalize", "evaluate", "export"} <= set(stages)
