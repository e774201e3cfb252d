"""The runner, run store and leaderboard end to end, through the CLI as a user runs them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

HERE = Path(__file__).parent
TINY = ["--models", "small-cnn", "--datasets", "digits", "--recipe", "tiny", "--no-progress"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> str:
    """A site folder where the example plugin is installed as a distribution with an entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "mpqbench_example_plugin.py").write_text((HERE / "thirdparty" / "mpqbench_example_plugin.py").read_text())
    info = site / "mpqbench_example_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mpqbench-example-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mpqbench]\nexample = mpqbench_example_plugin\n")
    return str(site)


def _env(plugin_path: str, **extra) -> dict:
    return {"PYTHONPATH": plugin_path + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json")}


def test_a_third_party_plugin_registers_through_its_entry_point(plugin_path):
    result = run_cli("plugins", env=_env(plugin_path))
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if line.startswith("example "))
    assert "mpqbench-example-plugin" in line and "0.1" in line and "method example-half" in line
    assert "method ompq" in result.stdout or "method uniform" in result.stdout


def test_a_failing_plugin_is_a_failed_row_and_the_sweep_goes_on(plugin_path, tmp_path):
    out = tmp_path / "res"
    result = run_cli("run", "--methods", "example-broken,example-half", "--out", str(out), *TINY,
                     env=_env(plugin_path))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    records = list(_records(out).values())
    status = {r["label"]: r["status"] for r in records}
    assert status == {"example-broken": "failed", "example-half": "done"}
    broken = next(r for r in records if r["status"] == "failed")
    assert "fails on purpose" in broken["error"]
    board = run_cli("leaderboard", "--out", str(out))
    assert "example-broken" in board.stdout and "fails on purpose" in board.stdout
    half = next(r for r in records if r["status"] == "done")
    assert {"search", "train", "finalize", "evaluate", "export"} <= set(half["phases"])
    assert half["phases"]["train"]["peak_rss_mb"] > 0
    assert half["environment"]["torch"] and half["metrics"]["int_top1"] > 0


def test_rerun_skips_and_kill_9_resumes_without_losing_records(plugin_path, tmp_path):
    out = tmp_path / "res"
    args = [str(Path(sys.executable).with_name("mpqbench")), "run", "--methods", "example-sleepy", "--seeds",
            "0,1,2", "--out", str(out), *TINY]
    proc = subprocess.Popen(args, env={**os.environ, **_env(plugin_path, EXAMPLE_BLOCK="1")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_records(out) if (out / "runs").exists() else {}) < 2 and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it was killed"
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {k: (out / "runs" / f"{k}.json").read_bytes() for k in _records(out)}
    assert len(before) == 2 and all(json.loads(v)["status"] == "done" for v in before.values())
    result = run_cli("run", "--methods", "example-sleepy", "--seeds", "0,1,2", "--out", str(out), *TINY,
                     env=_env(plugin_path))
    assert result.returncode == 0, result.stderr
    assert "1 runs finished" not in result.stderr and "(2 reused)" in result.stderr
    after = _records(out)
    assert len(after) == 3 and all(r["status"] == "done" for r in after.values())
    assert all((out / "runs" / f"{k}.json").read_bytes() == v for k, v in before.items())
    assert not list((out / "runs").glob(".*.tmp"))


def test_parallel_jobs_and_toml_config(tmp_path):
    out = tmp_path / "res"
    config = tmp_path / "sweep.toml"
    config.write_text(f"""
methods = ["uniform:w=8", "uniform"]
budgets = ["size_mb=w3"]
models = ["small-cnn"]
datasets = ["digits"]
recipe = "tiny"
seeds = [0, 1]
jobs = 2
out = "{out}"
[recipe_overrides]
qat_epochs = 1
fp32_seed = 0
""")
    result = run_cli("run", "--config", str(config), "--no-progress")
    assert result.returncode == 0, result.stderr
    records = list(_records(out).values())
    assert len(records) == 4 and all(r["status"] == "done" for r in records)
    assert {r["spec"]["seed"] for r in records} == {0, 1}
    assert {r["extra"]["fp32_checkpoint"]["seed"] for r in records} == {0}  # one FP32 start for both seeds
    budgeted = [r for r in records if r["spec"]["budget"]]
    assert all(r["budget"]["met"] and r["policy"]["conv2"][0] == 3 for r in budgeted)
    csv = run_cli("leaderboard", "--out", str(out), "--format", "csv").stdout
    assert csv.splitlines()[0].startswith("method,model,dataset,recipe,budget,seeds")
    assert len(csv.strip().splitlines()) == 3  # header + one row per (method, budget), seeds aggregated
    assert ",tiny fp32_seed=0," in csv  # the recipe column names what was overridden
    written = run_cli("leaderboard", "--out", str(out), "--write", str(tmp_path / "board"))
    assert written.returncode == 0 and (tmp_path / "board" / "leaderboard.json").exists()
    assert (tmp_path / "board" / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "board" / "leaderboard.json").read_text())["rows"]
    assert {r["seeds"] for r in rows} == {2}
    policy = run_cli("policy", budgeted[0]["id"][:8], budgeted[1]["id"], "--out", str(out))
    assert policy.returncode == 0 and "[2] W/A" in policy.stdout
    assert any(line.startswith("conv2") and line.split()[-2:] == ["3/3", "3/3"] for line in policy.stdout.splitlines())


def test_targets_get_columns_and_verify_catches_a_wrong_one(plugin_path, tmp_path):
    out = tmp_path / "res"
    env = _env(plugin_path)
    off = run_cli("run", "--methods", "example-half", "--targets", "example-exact", "--out", str(out), *TINY,
                  env={**env, "EXAMPLE_OFF": "1"})
    assert off.returncode == 0 and "unavailable" in off.stdout  # recorded, and the sweep goes on
    result = run_cli("run", "--methods", "example-half", "--targets", "example-exact", "--out", str(out), *TINY,
                     env=env)
    assert result.returncode == 0, result.stderr
    assert "example-exact bit-exact" in result.stdout and "1/1" in result.stdout
    (record,) = _records(out).values()
    assert record["targets"]["example-exact"]["check"]["bit_exact"] is True
    ok = run_cli("verify", record["id"], "--targets", "example-exact", "--out", str(out), env=env)
    assert ok.returncode == 0 and "bit_exact=True" in ok.stdout
    bad = run_cli("verify", record["id"], "--targets", "example-wrong", "--out", str(out), env=env)
    assert bad.returncode == 1
    assert "bit_exact=False" in bad.stdout and "first_divergent_layer=conv1" in bad.stdout
    again = run_cli("run", "--methods", "example-half", "--targets", "example-exact,example-wrong", "--out",
                    str(out), *TINY, env=env)
    assert "(1 reused)" in again.stderr and "example-wrong bit-exact" in again.stdout


def test_the_same_run_id_gives_the_same_result_with_one_or_two_jobs(tmp_path):
    """Every job trains with the recipe's thread count, whatever --jobs is: same id, same numbers."""
    results = {}
    for jobs in ("1", "2"):
        out, cache = tmp_path / f"res{jobs}", tmp_path / f"cache{jobs}"
        done = run_cli("run", "--methods", "fp32,uniform:w=4,uniform:w=3", "--jobs", jobs, "--out", str(out), *TINY,
                       env={"MPQBENCH_CACHE": str(cache)})
        assert done.returncode == 0, done.stderr
        results[jobs] = {k: (r["metrics"]["top1"], r["metrics"].get("int_top1"), r["environment"]["torch_threads"])
                         for k, r in _records(out).items()}
    assert results["1"] == results["2"] and len(results["1"]) == 3


def test_stale_code_is_never_averaged_with_current_code(plugin_path, tmp_path):
    out = tmp_path / "res"
    assert run_cli("run", "--methods", "example-half", "--out", str(out), *TINY, env=_env(plugin_path)).returncode == 0
    (record,) = _records(out).values()
    old = {**record, "id": "0ld" + record["id"][3:], "plugin": {**record["plugin"], "source": "0" * 16},
           "finished": "2000-01-01T00:00:00+00:00", "metrics": {**record["metrics"], "top1": 10.0}}
    (out / "runs" / f"{old['id']}.json").write_text(json.dumps(old))
    board = run_cli("leaderboard", "--results", str(out), "--format", "csv").stdout.splitlines()
    assert len(board) == 2 and ",1," in board[1] and "10.0" not in board[1]  # one seed, the current code's
    shown = run_cli("leaderboard", "--results", str(out))
    assert "1 stale record(s) hidden" in shown.stdout
    both = run_cli("leaderboard", "--results", str(out), "--stale", "--format", "csv").stdout.splitlines()
    assert len(both) == 3 and any("stale code 0000000000000000" in line for line in both)


def test_a_single_module_plugin_hashes_its_own_file_only(plugin_path, tmp_path):
    from mpqbench.plugin.fingerprint import source_hash

    code = ("import sys; sys.path.insert(0, {!r}); from mpqbench.plugin.fingerprint import source_hash; "
            "print(source_hash('mpqbench_example_plugin'))").format(plugin_path)
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    (Path(plugin_path) / "unrelated_module.py").write_text("x = 1\n")  # installing something else beside it
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert first == second and len(first.strip()) == 16
    assert source_hash("mpqbench.plugins.arm_qemu") != source_hash("mpqbench.plugins.ompq")


class _BreakingPool:
    """A stand-in process pool that runs jobs at once and, once, breaks while the driver submits (the window
    between a worker's death and the driver seeing it)."""

    broke = False

    def __init__(self, *args, **kwargs):
        self._processes = {}

    def submit(self, fn, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        if args[0] == 1 and not _BreakingPool.broke:
            _BreakingPool.broke = True
            raise BrokenProcessPool("a child process terminated abruptly")
        future = Future()
        future.set_result(args[1]())
        return future

    def shutdown(self, **kwargs):
        pass


def test_a_job_refused_by_a_pool_that_just_broke_is_run_in_the_next_pool(monkeypatch):
    from mpqbench.pipeline import executors

    monkeypatch.setattr(executors, "ProcessPoolExecutor", _BreakingPool)
    monkeypatch.setattr(executors, "_STARTS", type("Starts", (), {"put": lambda self, item: None})())
    jobs = [lambda n=n: n * 10 for n in range(4)]
    results = dict(executors.ProcessExecutor().run(jobs, 2, {}))
    assert _BreakingPool.broke and results == {0: 0, 1: 10, 2: 20, 3: 30}
