"""Every bad input: one clear line (at most 3), a non-zero exit or a failed row, no traceback for a user
mistake, every finished record intact, the rest of the sweep finished (issue #9).

The first group runs the command line in this process (fast); the sweep-level faults run the console script
in a subprocess on the tiny model, with the example plugin installed through an entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import TINY, _env, _records, plugin_path  # noqa: F401  (fixture)

from conftest import run_cli
from mpqbench.cli import main

RUN = ["run", "--models", "small-cnn", "--datasets", "digits", "--recipe", "tiny", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return str(path)


CASES = [  # (arguments, a phrase of the one line) -- "{tmp}" is a per-test folder
    (["run", "--methods", "nope"], "unknown method 'nope'"),
    (["run", "--methods", ""], "--methods is empty"),
    (["run", "--methods", "uniform:w=4", "--seeds", "abc"], "--seeds: expected non-negative integers"),
    (["run", "--methods", "uniform:w=4", "--seeds", "-1"], "--seeds: expected non-negative integers"),
    (["run", "--methods", "uniform:w=4", "--jobs", "0"], "--jobs: expected an integer >= 1"),
    (["run", "--methods", "uniform:w=4", "--jobs", "two"], "--jobs: expected an integer >= 1"),
    (["run", "--methods", "uniform:w=4", "--deploy-images", "0"], "--deploy-images: expected an integer >= 1"),
    (["run", "--methods", "uniform", "--budgets", "size_mb=lots"], "malformed budget value"),
    (["run", "--methods", "uniform", "--budgets", "speed=3"], "unknown budget kind 'speed'"),
    (["run", "--methods", "uniform", "--budgets", "size_mb=-1"], "must be a positive finite number"),
    (["run", "--methods", "uniform", "--budgets", "avg_bits=0.5"], "infeasible"),
    (["run", "--methods", "uniform"], "needs a budget"),
    (["run", "--methods", "uniform:w=99"], "w=99 is not a bitwidth in [2, 8]"),
    (["run", "--methods", "uniform:w=4:a=1"], "a=1 is not a bitwidth in [2, 8]"),
    (["run", "--methods", "uniform:w=banana"], "w='banana' is not a number or none"),
    (["run", "--methods", "uniform:q=3"], "no parameter 'q'"),
    (["run", "--methods", "uniform:w"], "malformed parameter"),
    (["run", "--methods", "ompq:beta=-1", "--budgets", "size_mb=w4"], "beta=-1.0 must be >= 0"),
    (["run", "--methods", "ompq:candidates=1-4", "--budgets", "size_mb=w4"], "bitwidth 1 is not an integer in"),
    (["run", "--methods", "hawq-v3", "--budgets", "avg_bits=w3"], "hawq-v3's smallest policy"),
    (["run", "--methods", "uniform:w=4", "--set", "qat_epochs=-3"], "qat_epochs=-3 is out of range"),
    (["run", "--methods", "uniform:w=4", "--set", "batch_size=0"], "batch_size=0 is out of range"),
    (["run", "--methods", "uniform:w=4", "--set", "epochs=3"], "unknown recipe field 'epochs'"),
    (["run", "--methods", "uniform:w=4", "--set", "qat_lr=fast"], "qat_lr: 'fast' is not a number"),
    (["run", "--methods", "uniform:w=4", "--set", "qat_lr"], "--set takes FIELD=VALUE"),
    (["run", "--methods", "uniform:w=4", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["run", "--methods", "uniform:w=4", "--first-last", "4"], "--first-last: expected 8 or search"),
    (["run", "--methods", "uniform:w=4", "--device", "tpu"], "unknown device 'tpu'"),
    (["run", "--methods", "uniform:w=4", "--executor", "nope"], "unknown executor 'nope'"),
    (["run", "--methods", "uniform:w=4", "--targets", "nope"], "unknown target 'nope'"),
    (["run", "--methods", "uniform:w=4", "--targets", "arm-qemu:cpu"], "malformed parameter"),
    (["run", "--methods", "uniform:w=4", "--models", "nope"], "unknown model 'nope'"),
    (["run", "--methods", "uniform:w=4", "--datasets", "cifar10"], "cifar10 needs --data-root"),
    (["run", "--methods", "uniform:w=4", "--datasets", "fashion-mnist", "--data-root", "/nonexistent"],
     "Fashion-MNIST not found"),
    (["run", "--methods", "uniform:w=4", "--config", "/nonexistent.toml"], "cannot read config"),
    (["run", "--config", "TOML:jobs = 'two'"], "jobs: expected an integer >= 1, not 'two'"),
    (["run", "--config", "TOML:seeds = ['a']"], "seeds: expected non-negative integers"),
    (["run", "--config", "TOML:speed = 3"], "unknown key 'speed'"),
    (["run", "--config", "TOML:methods = ["], "cannot read config"),
    (["run", "--config", "TOML:deploy-images = true"], "deploy-images: expected an integer >= 1"),
    (["run", "--methods", "uniform:w=4", "--out", "FILE"], "cannot write results to"),
    (["leaderboard", "--results", "/no/such/folder"], "holds no runs/ folder"),
    (["leaderboard", "--results", "{tmp}/empty", "--write", "{tmp}/board"], "no finished or failed runs"),
    (["policy", "0000", "--results", "{tmp}/empty"], "no run match '0000'"),
    (["verify", "0000", "--targets", "arm-qemu", "--results", "/nonexistent"], "holds no runs/ folder"),
    (["bench", "nope"], "unknown benchmark 'nope'"),
    (["run", "--unknown-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_is_one_line_and_a_non_zero_exit(args, message, capsys, tmp_path):
    (tmp_path / "empty" / "runs").mkdir(parents=True)
    (tmp_path / "FILE").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    args = [_toml(tmp_path, a[5:]) if a.startswith("TOML:") else a for a in args]
    if args[0] == "run":
        args = [*RUN, *args[1:]]
        if "--out" not in args:
            args += ["--out", str(tmp_path / "res")]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert message in err, err
    assert len(err.strip().splitlines()) <= 3 and "Traceback" not in err, err


def test_a_cache_that_is_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("MPQBENCH_CACHE", str(tmp_path / "cache"))
    code = main([*RUN, "--methods", "uniform:w=4", "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert code == 2 and "is not usable" in err and len(err.strip().splitlines()) == 1


def test_toml_accepts_comma_strings_and_both_spellings(tmp_path, capsys):
    config = _toml(tmp_path, 'methods = "fp32,uniform:w=4"\nfirst-last = "8"\ndeploy_images = 8\nseeds = "0,1"\n'
                             'models = "small-cnn"\ndatasets = ["digits"]\nrecipe = "tiny"\n')
    assert main(["run", "--config", config, "--dry-run", "--out", str(tmp_path / "r"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 4 to run" in out and "uniform(w=4)" in out


def test_the_committed_example_config_expands():
    assert main(["run", "--config", str(REPO / "examples" / "sweep.toml"), "--dry-run"]) == 0


def test_defaults_run_and_dry_run_lists_the_grid(tmp_path, capsys):
    assert main(["run", "--dry-run", "--out", str(tmp_path)]) == 0  # every default is valid
    out = capsys.readouterr().out
    assert "fp32" in out and "uniform(w=8)" in out and "FP32 resnet20/fashion-mnist seed 0" in out


def test_verify_is_read_only_and_a_truncated_artifact_is_one_line(plugin_path, tmp_path):  # noqa: F811
    out = tmp_path / "res"
    env = _env(plugin_path)
    assert run_cli("run", "--methods", "example-half", "--out", str(out), *TINY, env=env).returncode == 0
    (record,) = _records(out).values()
    path = out / "runs" / f"{record['id']}.json"
    before = path.read_bytes()
    ok = run_cli("verify", record["id"], "--targets", "example-exact", "--images", "8", "--results", str(out), env=env)
    assert ok.returncode == 0 and "bit_exact=True" in ok.stdout and "images=8" in ok.stdout
    assert path.read_bytes() == before  # verify never rewrites what it checks
    bench = run_cli("bench", "executor", "--run", record["id"], "--out", str(out), "--images", "8", env=env)
    assert bench.returncode == 0 and "8 digits test images" in bench.stdout, bench.stderr
    updated = run_cli("verify", record["id"], "--targets", "example-exact", "--images", "8", "--update",
                      "--results", str(out), env=env)
    assert updated.returncode == 0 and json.loads(path.read_text())["targets"]["example-exact"]["check"]["images"] == 8
    artifact = out / "artifacts" / record["id"] / "integer_model.npz"
    artifact.write_bytes(artifact.read_bytes()[:100])
    bad = run_cli("verify", record["id"], "--targets", "example-exact", "--results", str(out), env=env)
    assert bad.returncode == 2 and "not a readable integer model" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_faults_in_one_sweep_each_get_one_line_and_every_other_cell_finishes(plugin_path, tmp_path):  # noqa: F811
    """A corrupt record, a truncated FP32 checkpoint, a worker killed mid-cell (SIGKILL), a plugin that raises
    and a diverging loss, all in one --jobs 2 sweep."""
    out, cache = tmp_path / "res", tmp_path / "cache"
    env = {**_env(plugin_path), "MPQBENCH_CACHE": str(cache)}
    first = run_cli("run", "--methods", "example-half", "--seeds", "0,1", "--out", str(out), *TINY, env=env)
    assert first.returncode == 0, first.stderr
    records = _records(out)
    victim, kept = sorted(records)
    (out / "runs" / f"{victim}.json").write_text('{"schema": 2, "id": "trunc')
    kept_bytes = (out / "runs" / f"{kept}.json").read_bytes()
    (weights,) = (cache / "checkpoints").glob("*-s0-*.pt")
    weights.write_bytes(weights.read_bytes()[:1000])
    result = run_cli("run", "--methods", "example-half,example-killer,example-broken,example-diverge", "--seeds",
                     "0,1", "--jobs", "2", "--out", str(out), *TINY, env={**env, "EXAMPLE_KILL": "1"})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    err = result.stderr
    assert err.count(f"record {victim}.json is unreadable") == 1 and "set aside" in err
    assert "is corrupt (sha256 differs" in err and "trained again" in err
    assert "worker process died" in err
    assert (out / "runs" / f"{kept}.json").read_bytes() == kept_bytes  # finished records untouched
    assert (out / "runs" / f"{victim}.json.corrupt").exists()
    status = {(r["label"], r["spec"]["seed"]): (r["status"], r.get("error") or "") for r in _records(out).values()}
    assert status[("example-half", 0)][0] == status[("example-half", 1)][0] == "done"
    assert status[("example-killer", 0)][0] == "done"
    assert status[("example-killer", 1)] [0] == "failed" and "worker died" in status[("example-killer", 1)][1]
    assert all(status[("example-broken", s)][0] == "failed" for s in (0, 1))
    assert all("diverged" in status[("example-diverge", s)][1] for s in (0, 1))
    for label in ("example-killer", "example-broken", "example-diverge"):  # one line per failed cell
        assert sum(line.startswith(f"failed: {label} ") for line in err.splitlines()) == (
            1 if label == "example-killer" else 2)
    again = run_cli("run", "--methods", "example-broken", "--seeds", "0", "--out", str(out), *TINY, env=env)
    assert again.returncode == 1 and "failed earlier; --retry-failed" in again.stderr  # not retried
    retried = run_cli("run", "--methods", "example-broken", "--seeds", "0", "--retry-failed", "--out", str(out),
                      *TINY, env=env)
    assert retried.returncode == 1 and "fails on purpose" in retried.stderr and "failed earlier" not in retried.stderr


def test_ctrl_c_with_two_jobs_stops_promptly_and_writes_nothing_half(plugin_path, tmp_path):  # noqa: F811
    out = tmp_path / "res"
    exe = str(Path(sys.executable).with_name("mpqbench"))
    proc = subprocess.Popen([exe, "run", "--methods", "example-sleepy,example-half", "--seeds", "0,1,2,3,4,5",
                             "--jobs", "2", "--out", str(out), *TINY],
                            env={**os.environ, **_env(plugin_path, EXAMPLE_BLOCK="1")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # a terminal's default: a shell starts background jobs (``make test &``) with SIGINT
                            # ignored, which exec keeps and Python then honours: no KeyboardInterrupt at all
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "runs").glob("*.json"))) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    stopped = time.time()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # say what it printed
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"still running 60 s after Ctrl-C; {len(list((out / 'runs').glob('*.json')))} records; "
                    f"stderr:\n{err[-3000:]}")
    assert time.time() - stopped < 30
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    count = len(_records(out))
    time.sleep(3)
    assert len(_records(out)) == count < 12  # nothing runs on after the interrupt
    assert not list((out / "runs").glob(".*.tmp"))


def test_a_missing_toolchain_is_one_line(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("python3",):
        if shutil.which(tool):
            (bare / tool).symlink_to(shutil.which(tool))
    result = run_cli("run", "--methods", "uniform:w=4", "--targets", "arm-qemu", "--out", str(tmp_path / "res"),
                     *TINY, env={"PATH": str(bare)})
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("arm-qemu")]
    assert lines == ["arm-qemu unavailable: arm-qemu: qemu-aarch64 not found (apt-get install qemu-user) "
                     "(1 run; full text in the records)"]
