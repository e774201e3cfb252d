"""Bad input: one clear line on stderr, a non-zero exit, never a traceback."""

import pytest

from conftest import run_cli
from mpqbench.cli import _labels, main

TINY = ["--models", "small-cnn", "--datasets", "digits", "--recipe", "tiny", "--no-progress"]


@pytest.mark.parametrize("args,message", [
    (["run", "--methods", "nope", *TINY], "unknown method 'nope'"),
    (["run", "--methods", "uniform:w=4", "--targets", "nope", *TINY], "unknown target 'nope'"),
    (["run", "--methods", "uniform:w=4", "--models", "nope", "--datasets", "digits"], "unknown model 'nope'"),
    (["run", "--methods", "uniform:w=4", "--models", "small-cnn", "--datasets", "nope"], "unknown dataset 'nope'"),
    (["run", "--methods", "uniform", "--budgets", "size_mb=lots", *TINY], "malformed budget value"),
    (["run", "--methods", "uniform", "--budgets", "speed=3", *TINY], "unknown budget kind"),
    (["run", "--methods", "uniform", "--budgets", "avg_bits=0.5", *TINY], "infeasible"),
    (["run", "--methods", "uniform", *TINY], "needs a budget"),
    (["run", "--methods", "uniform:q=3", *TINY], "no parameter 'q'"),
    (["run", "--methods", "uniform:w=four", *TINY], "is not a number or none"),
    (["run", "--methods", "ompq:allocation=best", "--budgets", "size_mb=w4", *TINY], "is not one of orm, greedy"),
    (["run", "--methods", "uniform:w=4", "--recipe", "nope", "--models", "small-cnn"], "unknown recipe"),
    (["run", "--methods", "uniform:w=4", "--set", "epochs=3", *TINY], "unknown recipe field"),
    (["run", "--methods", "uniform:w=4", "--config", "/nonexistent.toml"], "cannot read config"),
    (["run", "--methods", "uniform:w=4", "--models", "small-cnn", "--datasets", "fashion-mnist",
      "--data-root", "/nonexistent", "--recipe", "tiny"], "Fashion-MNIST not found"),
    (["verify", "0000", "--targets", "arm-qemu", "--out", "/nonexistent"], "holds no runs/ folder"),
    (["bench", "nope"], "unknown benchmark"),
])
def test_user_errors_are_one_line(args, message, capsys, tmp_path):
    code = main([*args, "--out", str(tmp_path)] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("mpqbench: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_the_console_script_exits_non_zero_without_a_traceback(tmp_path):
    result = run_cli("run", "--methods", "nope", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == "mpqbench: error: unknown method 'nope' (known: " + \
        result.stderr.split("(known: ", 1)[1].strip()
    assert "Traceback" not in result.stderr


def test_method_labels_keep_their_commas_inside_parentheses():
    assert _labels("ddq(a=8,variant=fixed), ddq(a=8),uniform") == ["ddq(a=8,variant=fixed)", "ddq(a=8)", "uniform"]
