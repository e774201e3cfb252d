"""The ``slurm`` executor through submitit's local executor (each job a process on this machine, as a Slurm
job would be on a node): a tiny sweep gives the records a local run gives; a job's exception is its result and
a job whose process dies every time is WorkerDied after its resubmissions."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpqbench.errors import WorkerDied

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                                    reason="needs submitit: pip install 'mpqbench[slurm]'")]

GRID = ["--models", "small-cnn", "--datasets", "digits", "--recipe", "tiny", "--methods", "uniform:w=4",
        "--seeds", "0", "--no-progress"]
SAME = ("status", "spec", "plugin", "policy", "searched_policy", "metrics", "training", "budget")


def _mpqbench(out: Path, cache: Path, *args: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("mpqbench")
    return subprocess.Popen([str(exe), "run", *GRID, "--out", str(out), *args], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, "MPQBENCH_CACHE": str(cache)})


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def test_a_sweep_through_submitit_matches_a_local_run(tmp_path):
    local = _mpqbench(tmp_path / "local", tmp_path / "cache-local", "--executor", "local")
    slurm = _mpqbench(tmp_path / "slurm", tmp_path / "cache-slurm", "--jobs", "2", "--executor",
                      f"slurm:cluster=local:poll_s=0.2:folder={tmp_path / 'jobs'}")
    out, _ = slurm.communicate(timeout=600)
    assert slurm.returncode == 0, out
    assert local.wait(timeout=600) == 0, local.stdout.read()
    slurm_runs, local_runs = _records(tmp_path / "slurm"), _records(tmp_path / "local")
    assert len(local_runs) == 1 and set(slurm_runs) == set(local_runs)
    for run_id, record in local_runs.items():
        assert record["status"] == "done", record["error"]
        assert {k: slurm_runs[run_id][k] for k in SAME} == {k: record[k] for k in SAME}
    assert len(list((tmp_path / "jobs").glob("*_result.pkl"))) == 2, "the FP32 and cell jobs went through submitit"


def test_a_jobs_error_is_its_result_and_a_job_dying_every_time_is_worker_died(tmp_path):
    from mpqbench.plugins.slurm_executor.executor import SlurmExecutor

    jobs = [functools.partial(int, "7"), functools.partial(int, "x"), functools.partial(os._exit, 3)]
    params = {"cluster": "local", "folder": str(tmp_path / "jobs"), "poll_s": 0.1, "max_retries": 1}
    started = []
    results = dict(SlurmExecutor().run(jobs, 3, params, on_start=started.append))
    assert results[0] == 7
    assert isinstance(results[1], ValueError) and "invalid literal" in str(results[1])
    assert isinstance(results[2], WorkerDied) and "2 times" in str(results[2])
    assert sorted(set(started)) == [0, 1, 2]
