"""The plugin authors' guide (docs/plugins.md) and its example package (examples/mpqbench-example-plugins).

In the manner of datasette's documentation tests: every hook of ``mpqbench.plugin.hookspecs`` is in the
guide with its exact signature, and has an example implementation that a test exercises. The example
package is installed into a fresh virtual environment (which sees the project's installed packages
through a ``.pth`` file, so nothing is downloaded), listed by ``mpqbench plugins``, used by one sweep that
needs every example plugin at once, read back as a leaderboard row, and its own tests run with the
pytest fixtures mpqbench installs. About a minute on two cores.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from mpqbench.plugin import hookspecs

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
PACKAGE = REPO / "examples" / "mpqbench-example-plugins"
HOOKS = {name: fn for name, fn in vars(hookspecs).items() if name.startswith("mpqbench_")
         and hasattr(fn, "mpqbench_spec")}

# What the install test sees for each hook: proof that the example's implementation ran.
EVIDENCE = {
    "mpqbench_register_methods": "method qerror",
    "mpqbench_register_targets": "target numpy-ref",
    "mpqbench_register_budget_kinds": "budget kind traffic_kb",
    "mpqbench_register_executors": "executor subprocess",
    "mpqbench_register_benchmarks": "benchmark cost-table",
    "mpqbench_register_models": "model lenet5",
    "mpqbench_register_datasets": "dataset bars",
    "mpqbench_register_quantizers": "quantizer ema-max",
    "mpqbench_stage": "stage log",
}


def test_every_hook_is_in_the_guide_with_its_exact_signature():
    guide = GUIDE.read_text()
    assert HOOKS, "no hookspecs found"
    for name, fn in HOOKS.items():
        signature = f"def {name}{inspect.signature(fn)}:"
        assert signature in guide, f"docs/plugins.md lacks `{signature}`"
        assert f"`{name}`" in guide, f"docs/plugins.md's table lacks {name}"
    documented = set(re.findall(r"def (mpqbench_\w+)\(", guide))
    assert documented == set(HOOKS), f"the guide documents hooks that do not exist: {documented - set(HOOKS)}"


def test_every_hook_has_an_example_implementation_that_the_install_test_checks():
    assert set(EVIDENCE) == set(HOOKS), "a new hook needs an example plugin and evidence in the install test"
    entry_points = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]["entry-points"]["mpqbench"]
    sources = {module: (PACKAGE / (module.replace(".", "/") + ".py")).read_text() for module in entry_points.values()}
    for name in HOOKS:
        assert any(re.search(rf"^def {name}\(", text, re.M) for text in sources.values()), name


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv that sees the project's packages (a .pth runs site.addsitedir on them), with the example
    package installed into it by pip, as a user installs a plugin."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "mpqbench-parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    source = shutil.copytree(PACKAGE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                              "-q", str(source)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert install.returncode == 0, install.stderr[-2000:]
    assert list(Path(site).glob("mpqbench_example_plugins-*.dist-info"))
    return root


DRIVER = """
import contextlib, io, json, sys
from mpqbench.cli import main
out = {}
for name, args in json.loads(sys.argv[1]).items():
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main(args)
    out[name] = {"code": code, "out": buf.getvalue(), "err": err.getvalue()}
print(json.dumps(out))
"""


def test_the_example_package_installs_registers_runs_and_passes_its_own_tests(venv, tmp_path):
    python = str(venv / "bin" / "python")
    env = {**os.environ, "MPQBENCH_CACHE": str(tmp_path / "cache"),
           "MPQBENCH_STAGE_LOG": str(tmp_path / "stages.jsonl")}
    env.pop("PYTHONPATH", None)
    own_tests = subprocess.Popen([python, "-m", "pytest", "-q", "-x", "-p", "no:randomly"], cwd=venv / "src",
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env={**env, "MPQBENCH_CACHE": str(tmp_path / "cache-tests"),
                                      "MPQBENCH_STAGE_LOG": ""})
    out = tmp_path / "results"
    commands = {
        "plugins": ["plugins"],
        "run": ["run", "--methods", "qerror", "--models", "lenet5", "--datasets", "bars", "--budgets", "traffic_kb=w4",
                "--targets", "numpy-ref", "--executor", "subprocess", "--jobs", "2", "--seeds", "0,1",
                "--recipe", "tiny", "--set", "act_quantizer=ema-max", "--set", "fp32_seed=0", "--out", str(out),
                "--no-progress"],
        "leaderboard": ["leaderboard", "--results", str(out)],
        "bench": ["bench", "cost-table", "--model", "lenet5"],
    }
    done = subprocess.run([python, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    for name, r in result.items():
        assert r["code"] == 0, (name, r["err"][-2000:])

    plugins = result["plugins"]["out"]
    for hook, provided in EVIDENCE.items():
        if hook != "mpqbench_stage":
            line = next((line for line in plugins.splitlines() if provided in line), "")
            assert "mpqbench-example-plugins" in line and "0.1.0" in line, (hook, provided)
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert len(records) == 2 and all(r["status"] == "done" for r in records), [r.get("error") for r in records]
    for r in records:
        assert r["spec"]["model"] == "lenet5" and r["spec"]["dataset"] == "bars"
        assert r["budget"]["kind"] == "traffic_kb" and r["budget"]["met"]
        assert r["spec"]["recipe"]["act_quantizer"] == "ema-max"
        assert r["targets"]["numpy-ref"]["check"]["bit_exact"]
    board = result["leaderboard"]["out"]
    row = next(line for line in board.splitlines() if " qerror " in f" {line} ")
    assert row.split()[0] == "1" and "2/2" in row and "✓" in row  # ranked, budget met twice, bit-exact
    assert "lenet5 · bars · budget traffic_kb=w4" in board and "act_quantizer=ema-max" in board
    assert max(len(line) for line in board.splitlines()) <= 120
    assert result["bench"]["out"].startswith("lenet5:") and "W2A2" in result["bench"]["out"]
    stages = [json.loads(line) for line in (tmp_path / "stages.jsonl").read_text().splitlines()]
    assert {s["stage"] for s in stages} >= {"search", "train", "export", "deploy:numpy-ref"}
    assert {s["seed"] for s in stages} == {0, 1} and all(s["ok"] for s in stages)

    log, _ = own_tests.communicate(timeout=600)
    assert own_tests.returncode == 0, log[-3000:]
    assert re.search(r"\b7 passed\b", log), log[-1000:]
