"""The ``ray`` executor on a real Ray cluster on this machine: a head and a worker node started as ``ray start``
starts them (each its own process tree), small resources. A tiny sweep through ``mpqbench run --executor
ray`` survives a worker process killed mid-cell and ends with the same records as a local run of the grid;
at the executor level, a job's exception is its result and a worker that dies every time is WorkerDied; a
cell whose node lacks the FP32 checkpoint gets it through Ray's object store."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpqbench.errors import WorkerDied
from mpqbench.plugins.ray_executor.cluster import LocalCluster

pytestmark = [pytest.mark.ray, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                  reason="needs Ray: pip install 'mpqbench[ray]'")]

GRID = ["--models", "small-cnn", "--datasets", "digits", "--recipe", "tiny", "--methods",
        "fp32,uniform:w=8,uniform:w=4,uniform:w=2", "--seeds", "0", "--no-progress"]
SAME = ("status", "spec", "plugin", "policy", "searched_policy", "metrics", "training", "budget")
"""Record fields a run on the cluster must share with the local run (timings and environment differ)."""


def _mpqbench(out: Path, cache: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mpqbench")
    env = {**os.environ, **(env or {}), "MPQBENCH_CACHE": str(cache)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([str(exe), "run", *GRID, "--out", str(out), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(workers=1, cpus=1, head_cpus=1) as c:
        yield c


@pytest.fixture
def connected(cluster, monkeypatch):
    """This process as a driver of the cluster, for executor-level tests. Ray reads its authentication mode
    once per process, when first imported: the cluster's token must be in the environment by then."""
    for key, value in cluster.driver_env().items():
        monkeypatch.setenv(key, value)
    import ray

    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()


def test_sweep_survives_a_killed_worker_and_matches_a_local_run(cluster, tmp_path):
    local = _mpqbench(tmp_path / "local", tmp_path / "cache-local", "--executor", "local")
    config = tmp_path / "sweep.toml"  # the executor and its parameters from a config file, as a user would
    config.write_text(f'executor = "ray"\n[params.ray]\naddress = "{cluster.address}"\nmax_retries = 2\n')
    sweep = _mpqbench(tmp_path / "ray", tmp_path / "cache-ray", "--config", str(config), env=cluster.driver_env())
    killed = None
    deadline = time.monotonic() + 600
    while sweep.poll() is None and killed is None and time.monotonic() < deadline:
        cells = [pid for pid, cmd in cluster.processes().items() if cmd.startswith("ray::mpqbench cell")]
        if cells:
            os.kill(cells[0], signal.SIGKILL)
            killed = cells[0]
        time.sleep(0.05)
    out, _ = sweep.communicate(timeout=600)
    assert killed, f"the sweep ended before a cell's worker could be killed:\n{out}"
    assert sweep.returncode == 0, out
    assert local.wait(timeout=600) == 0, local.stdout.read()
    ray_runs, local_runs = _records(tmp_path / "ray"), _records(tmp_path / "local")
    assert len(local_runs) == 4 and set(ray_runs) == set(local_runs)
    for run_id, record in local_runs.items():
        assert record["status"] == "done", record["error"]
        assert {k: ray_runs[run_id][k] for k in SAME} == {k: record[k] for k in SAME}
        for artifact in (tmp_path / "local" / "artifacts" / run_id).glob("*"):
            assert (tmp_path / "ray" / "artifacts" / run_id / artifact.name).read_bytes() == artifact.read_bytes()
    assert len(list((tmp_path / "local" / "artifacts").glob("*/*.npz"))) == 3  # the uniform runs' integer models


def test_a_jobs_error_is_its_result_and_a_worker_dying_every_time_is_worker_died(connected):
    from mpqbench.plugins.ray_executor.executor import RayExecutor

    jobs = [functools.partial(int, "7"), functools.partial(int, "x"), functools.partial(os._exit, 3)]
    events, results = [], {}
    for i, result in RayExecutor().run(jobs, 1, {"max_retries": 1}, on_start=lambda i: events.append(("start", i))):
        events.append(("done", i))
        results[i] = result
    assert results[0] == 7
    assert isinstance(results[1], ValueError) and "invalid literal" in str(results[1])
    assert isinstance(results[2], WorkerDied)
    for i in results:  # a start notice arriving after the job's result is dropped (the bar would show it forever)
        assert ("start", i) not in events[events.index(("done", i)):]


def test_closing_the_generator_cancels_the_tasks_in_flight(connected):
    """What the driver does on Ctrl-C: nothing may run on after it."""
    from mpqbench.plugins.ray_executor.executor import RayExecutor

    jobs = [functools.partial(int, "1"), functools.partial(time.sleep, 120), functools.partial(time.sleep, 120)]
    runs = RayExecutor().run(jobs, 1, {})
    assert next(runs) == (0, 1)

    def sleeping() -> list[int]:
        return [pid for pid, cmd in connected.processes().items() if cmd.startswith("ray::mpqbench partial")]

    deadline = time.monotonic() + 120
    while len(sleeping()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(sleeping()) == 2
    runs.close()
    deadline = time.monotonic() + 30
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not sleeping()


def test_a_cell_on_a_node_without_the_checkpoint_gets_it_through_the_object_store(connected, tmp_path):
    """As if the checkpoint job had run on another machine: its files are deleted here between the checkpoint
    jobs and the cells; with checkpoints=ship the cells restore them, with checkpoints=shared they fail."""
    from mpqbench.pipeline.config import SweepConfig
    from mpqbench.pipeline.driver import sweep
    from mpqbench.pipeline.jobs import CheckpointJob
    from mpqbench.plugin.registry import load_registry
    from mpqbench.plugins.ray_executor.executor import RayExecutor

    cache = tmp_path / "cache"

    class Elsewhere(RayExecutor):
        name = "ray-elsewhere"

        def run(self, jobs, workers, params, on_start=None):
            yield from super().run(jobs, workers, params, on_start)
            if jobs and all(isinstance(j, CheckpointJob) for j in jobs):
                shutil.rmtree(cache / "checkpoints")

    registry = load_registry()
    registry.tables["executor"]["ray-elsewhere"] = Elsewhere()
    outcomes = {}
    for mode in ("shared", "ship"):
        cfg = SweepConfig(methods=["uniform:w=4"], models=["small-cnn"], datasets=["digits"], seeds=[0],
                          recipe="tiny", out=str(tmp_path / mode), executor=f"ray-elsewhere:checkpoints={mode}")
        outcomes[mode] = sweep(cfg, registry, cache, show_progress=False)
    assert [o.status for o in outcomes["shared"]] == ["failed"] and "checkpoint" in outcomes["shared"][0].error
    assert [o.status for o in outcomes["ship"]] == ["done"]
    assert list((cache / "checkpoints").glob("*.pt"))


def test_a_checkpoint_cached_by_an_earlier_sweep_is_found_by_its_sidecar_and_restored(tmp_path):
    """The driver ships a checkpoint it did not train in this sweep from its own cache: found by model, data
    set, seed and FP32 recipe fields, and written on the node only where missing or different."""
    from mpqbench.plugins import remote
    from mpqbench.train.recipe import get_recipe

    recipe = get_recipe("tiny")
    folder = tmp_path / "driver" / "checkpoints"
    folder.mkdir(parents=True)
    for key, fields in (("aaaa", recipe.fp32_key()), ("bbbb", {**recipe.fp32_key(), "fp32_lr": 1.0})):
        (folder / f"small-cnn-digits-s0-{key}.pt").write_bytes(key.encode())
        (folder / f"small-cnn-digits-s0-{key}.json").write_text(json.dumps({"key": key, "recipe": fields}))
    identity = ("small-cnn", "digits", 0, json.dumps(recipe.fp32_key(), sort_keys=True))
    files = remote.cached_files(str(tmp_path / "driver"), identity)
    assert sorted(files) == ["small-cnn-digits-s0-aaaa.json", "small-cnn-digits-s0-aaaa.pt"]
    node = tmp_path / "node"
    (node / "checkpoints").mkdir(parents=True)
    (node / "checkpoints" / "small-cnn-digits-s0-aaaa.pt").write_bytes(b"truncated")
    remote.restore(files, str(node))
    assert {p.name: p.read_bytes() for p in (node / "checkpoints").iterdir()} == files
    assert remote.cached_files(str(tmp_path / "driver"), identity[:2] + (1,) + identity[3:]) == {}
