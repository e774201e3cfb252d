"""Protocols as suites (``mpqbench run --suite``), PTQ calibration on the calibration split, the hard
Fashion-MNIST task, the half-width ResNet-20 and the Pareto figure (docs/protocols.md)."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mpqbench import suites
from mpqbench.cli import _config, build_parser, main
from mpqbench.data import builtin as data
from mpqbench.data.splits import ImageShape, Split
from mpqbench.errors import UserError
from mpqbench.models.resnets import resnet20, resnet20_half
from mpqbench.pipeline.config import SweepConfig
from mpqbench.quant.quantizers import LSQQuantizer
from mpqbench.report import leaderboard, plots
from mpqbench.train.loop import accuracy, predict
from mpqbench.train import reconstruct
from mpqbench.train.ptq import CLIP_RATIOS, calibrate, mse_step
from mpqbench.train.recipe import get_recipe

REPO = Path(__file__).resolve().parents[1]
needs_fashion = pytest.mark.skipif(not Path(data.FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist missing")


# --- suites -----------------------------------------------------------------------------------------------------

def test_every_suite_parses_validates_and_documents_itself():
    assert suites.names() == ["ptq", "ptq-hard", "qat", "qat-hard"]
    for name in suites.names():
        cfg = SweepConfig.from_suite(name)
        text = suites.path(name).read_text()
        assert text.startswith(f"# Suite `{name}`")
        for topic in ("Model, data:", "Recipe:", "Budgets", "Seeds", "Methods"):
            assert topic.lower() in text.lower(), (name, topic)
        assert cfg.seeds == [0, 1, 2, 3, 4] and cfg.recipe == "quick" and cfg.out == f"results/suite-{name}"
        assert "avg_bits=2.25" in ",".join(cfg.budgets)
        cfg.get_recipe()  # recipe overrides are valid fields and values
    ptq, qat = SweepConfig.from_suite("ptq"), SweepConfig.from_suite("qat")
    assert ptq.get_recipe().qat_epochs == 0 and ptq.get_recipe().ptq_init == "mse" and ptq.first_last == "search"
    assert ptq.get_recipe().ptq_reconstruct == 200 == SweepConfig.from_suite("ptq-hard").get_recipe().ptq_reconstruct
    assert qat.get_recipe().qat_epochs > 0
    size = ["size_mb=w5", "w6", "w7"]
    assert qat.method_budgets == {"ompq": size, "hawq-v3": size, "uniform:a=8": size}
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert package_data["package-data"]["mpqbench.suites"] == ["*.toml"]
    assert "mpqbench.suites" in package_data["packages"]


def test_a_malformed_method_budget_or_an_unknown_method_in_it_is_a_user_error(tmp_path, mpqbench_registry):
    bad = tmp_path / "bad.toml"
    bad.write_text('[method_budgets]\nompq = 3\n')
    with pytest.raises(UserError, match="method_budgets"):
        SweepConfig.from_toml(str(bad))
    cfg = SweepConfig(methods=["uniform"], models=["small-cnn"], datasets=["digits"], budgets=["avg_bits=3"],
                      method_budgets={"nosuch": ["avg_bits=4"]})
    with pytest.raises(UserError, match="nosuch"):
        cfg.expand(mpqbench_registry)


def test_flags_override_the_suite_and_budgets_replace_its_method_budgets():
    args = build_parser().parse_args(["run", "--suite", "ptq", "--recipe", "tiny", "--seeds", "0", "--methods",
                                      "uniform", "--set", "ptq_init=lsq"])
    cfg = _config(args)
    assert (cfg.recipe, cfg.seeds, cfg.methods) == ("tiny", [0], ["uniform"])
    assert cfg.models == ["resnet20", "mobilenetv2"]  # not overridden: the suite's
    recipe = cfg.get_recipe()
    assert (recipe.name, recipe.qat_epochs, recipe.ptq_init, recipe.train_subset) == ("tiny", 0, "lsq", 1024)
    cfg = _config(build_parser().parse_args(["run", "--suite", "qat", "--budgets", "avg_bits=3"]))
    assert cfg.budgets == ["avg_bits=3"] and cfg.method_budgets == {}


def _suite_methods(registry, name: str) -> list[str]:
    """The suite's methods that are registered here (a baseline still being written may not be yet)."""
    return [m for m in SweepConfig.from_suite(name).methods if m.split(":")[0] in registry.tables["method"]]


def _cells(dry_run: str) -> list[list[str]]:
    """The dry run's cells to run: [run, method, model, dataset, budget, seed, "to", "run"]."""
    return [r for r in (line.split() for line in dry_run.splitlines()) if len(r) == 8 and r[-2:] == ["to", "run"]]


@needs_fashion
def test_suite_dry_run_lists_its_cells_and_method_budgets_apply_to_their_method_only(capsys, mpqbench_registry,
                                                                                     tmp_path):
    methods = _suite_methods(mpqbench_registry, "qat")
    assert main(["run", "--suite", "qat", "--models", "resnet20", "--seeds", "0", "--dry-run",
                 "--methods", ",".join(methods), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _cells(out)
    assert {r[2] for r in rows} == {"resnet20"} and {r[5] for r in rows} == {"0"}
    budgets = {}
    for r in rows:
        budgets.setdefault(r[1] if r[1].startswith("uniform") else r[1].split("(")[0], set()).add(r[4])
    sizes = {"size_mb=w5", "size_mb=w6", "size_mb=w7"}
    # the uniform baselines: at A8 under the key "uniform:a=8" as written (OMPQ's sizes), at A4 the shared ones
    assert budgets["ompq"] == budgets["hawq-v3"] == budgets["uniform(a=8)"] == sizes
    # bitops_g=w3a3 is written w3 (activations as the weights)
    shared = {"avg_bits=2.25", "avg_bits=2.5", "avg_bits=2.75", "avg_bits=3", "bitops_g=w3", "bitops_g=w2a4"}
    assert budgets["sdq"] == budgets["dfq-diff"] == budgets["ddq"] == budgets["uniform(a=4)"] == shared
    budgeted = sum(m.split(":")[0] in ("ompq", "hawq-v3") or m == "uniform:a=8" for m in methods) * 3 + sum(
        m.split(":")[0] in ("sdq", "dfq-diff", "ddq", "sensitivity") or m == "uniform:a=4" for m in methods) * 6
    assert f"{budgeted + 5} cells: {budgeted + 5} to run" in out  # + fp32 and four uniform points


@needs_fashion
def test_ptq_hard_suite_dry_run_is_the_hard_task_on_the_half_width_model(capsys, mpqbench_registry, tmp_path):
    methods = _suite_methods(mpqbench_registry, "ptq-hard")  # an empty --out: not the committed results
    assert main(["run", "--suite", "ptq-hard", "--dry-run", "--methods", ",".join(methods),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _cells(out)
    assert {(r[2], r[3]) for r in rows if r[1] != "fp32"} == {("resnet20-half", "fashion-mnist-hard")}
    cfg = SweepConfig.from_suite("ptq-hard")
    per_seed = 5 + sum(len(cfg.parsed_budgets(mpqbench_registry, m)) for m in methods if ":w=" not in m and m != "fp32")
    n = 5 * per_seed
    assert f"{n} cells: {n} to run" in out
    # the OMPQ controls, solver and beta sweep beside OMPQ, at their own budgets
    labels = {(r[1], r[4]) for r in rows}
    assert ("ompq(allocation=position,beta=100,candidates=2/3/4)", "avg_bits=2.75") in labels
    assert not any(r[1].startswith("ompq(allocation") and r[4] == "avg_bits=3" for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["run", "--suite", "nosuch"], "unknown suite 'nosuch'; suites: ptq, ptq-hard, qat, qat-hard"),
    (["run", "--suite", "qat", "--config", "examples/sweep.toml"], "--suite and --config"),
])
def test_suite_mistakes_are_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_suite_list_prints_the_suites_in_one_line(capsys):
    assert main(["run", "--suite", "list"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == ["suites: ptq, ptq-hard, qat, qat-hard (see docs/protocols.md)"]


# --- PTQ calibration --------------------------------------------------------------------------------------------

def _steps(model) -> dict[str, torch.Tensor]:
    return {name: q.step.detach().clone() for name, q in model.named_modules() if isinstance(q, LSQQuantizer)}


@pytest.mark.parametrize("rule", ["mse", "lsq"])
def test_ptq_calibrates_on_the_calibration_split_never_the_test_split(mpqbench_run, rule):
    run = mpqbench_run("uniform", params="w=4", qat_epochs=0, ptq_init=rule)
    policy = run.method.search(run)
    model = run.finetune(policy)
    assert all(bool(q.initialized[q.bits]) for q in model.modules() if isinstance(q, LSQQuantizer))
    steps = _steps(model)
    on_calib, on_test = run.quant_model(policy), run.quant_model(policy)
    calibrate(on_calib, run.data.calib, rule)
    calibrate(on_test, run.data.test, rule)
    assert steps.keys() == _steps(on_calib).keys()
    assert all(torch.equal(steps[k], v) for k, v in _steps(on_calib).items())
    acts = [k for k in steps if k.startswith("net.actq.")]
    assert acts and any(not torch.equal(steps[k], _steps(on_test)[k]) for k in acts)  # so the check can fail
    # and the fine-tune never touched the test split: calibrating with it replaced gives the same steps
    run.data = replace(run.data, test=Split(torch.full_like(run.data.test.x, 255), run.data.test.y))
    again = run.finetune(policy)
    assert all(torch.equal(steps[k], v) for k, v in _steps(again).items())


def test_mse_steps_are_sane_and_ptq_at_8_bits_keeps_fp32_accuracy(mpqbench_run):
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    step = float(mse_step(x, -8, 7, per_channel=False))
    assert 2.0 < step * 7 < 3.5  # MSE-optimal 4-bit clipping of a unit Gaussian is near 2.5-3 sigma

    def err(s):
        return float((torch.round(x / s).clamp(-8, 7) * s - x).square().sum())

    assert err(step) <= min(err(r * float(x.abs().max()) / 7) for r in CLIP_RATIOS) + 1e-3
    w = torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 7).reshape(6, 1)
    steps = mse_step(w, -8, 7, per_channel=True)
    assert steps.shape == (6,) and (steps > 0).all() and (steps * 7 <= w.abs().amax(1) * (1 + 1e-6)).all()
    assert (steps[1:] > steps[:-1]).all()  # wider channels, larger steps

    run = mpqbench_run("uniform", params="w=8", qat_epochs=0)
    model = run.finetune(run.method.search(run))
    test = run.data.test
    assert accuracy(predict(model, test), test.y) >= accuracy(predict(run.fp32, test), test.y) - 3


def test_ptq_init_is_recorded_only_without_a_fine_tune():
    quick = get_recipe("quick")
    assert "ptq_init" not in quick.to_json()  # earlier QAT run ids stay valid
    assert quick.override(qat_epochs=0).to_json()["ptq_init"] == "mse"
    with pytest.raises(UserError, match="ptq_init"):
        quick.override(ptq_init="minmax")


def test_ptq_reconstruct_is_recorded_only_when_on_and_without_a_fine_tune():
    quick = get_recipe("quick")
    assert "ptq_reconstruct" not in quick.override(qat_epochs=0).to_json()  # off: earlier PTQ ids stay valid
    assert quick.override(qat_epochs=0, ptq_reconstruct=50).to_json()["ptq_reconstruct"] == 50
    assert "ptq_reconstruct" not in quick.override(ptq_reconstruct=50).to_json()
    with pytest.raises(UserError, match="ptq_reconstruct"):
        quick.override(ptq_reconstruct=-1)


def test_soft_rounding_starts_at_the_weights_and_ends_on_the_grid():
    fraction = torch.tensor([0.0, 0.1, 0.49, 0.5, 0.9, 0.999])
    assert torch.allclose(reconstruct.soft_rounding(reconstruct.initial_v(fraction)), fraction, atol=2e-4)


def test_adaround_lowers_the_layer_output_error_and_leaves_weights_on_their_grid(mpqbench_run):
    """2-bit weights, so rounding matters: the learned rounding's output error on the calibration data is below
    round-to-nearest's for every layer, some weights round the other way, and the written-back weights are what
    the model's own quantizer returns (on the grid), so export and targets see the learned rounding."""
    run = mpqbench_run("uniform", params="w=2:a=8", qat_epochs=0, ptq_reconstruct=150)
    model = run.finetune(run.method.search(run))
    report = run.extra["ptq_reconstruct"]
    assert set(report) == set(model.layers())  # the 8-bit first and last layers too
    for name, layer in model.layers().items():
        if layer.weight_quantizer.bits == 2:
            assert report[name]["mse"] < report[name]["mse_nearest"] and report[name]["flipped"] > 0
        assert torch.allclose(layer.weight_quantizer(layer.weight), layer.weight, atol=1e-6)
    assert "train:reconstruct" in run.phases


# --- hard data set, half-width model ----------------------------------------------------------------------------

def test_class_subset_keeps_the_named_classes_in_file_order_and_renumbers_them():
    x = torch.arange(8)
    y = torch.tensor([6, 1, 0, 4, 2, 6, 0, 9])
    xs, ys = data._classes(x, y, (0, 2, 4, 6), per_class=1)
    assert xs.tolist() == [0, 2, 3, 4] and ys.tolist() == [3, 0, 2, 1]


@needs_fashion
def test_hard_fashion_mnist_has_four_confusable_classes_and_the_documented_sizes(mpqbench_registry, tmp_path):
    splits = mpqbench_registry.dataset("fashion-mnist-hard").load(None, tmp_path)
    assert splits.shape == ImageShape(1, 28, 4)
    assert (len(splits.train), len(splits.val), len(splits.calib), len(splits.test)) == (5000, 1000, 1024, 4000)
    for split in (splits.train, splits.val, splits.test):
        assert set(split.y.unique().tolist()) == {0, 1, 2, 3}
    assert splits.test.y.bincount().tolist() == [1000] * 4
    assert (splits.train.y.bincount() + splits.val.y.bincount()).tolist() == [1500] * 4
    full = data.fashion_mnist(None, tmp_path)
    for label, official in enumerate(data.HARD_CLASSES):  # the same images, under their new label
        image = splits.test.x[splits.test.y == label][0]
        assert (full.test.y[(full.test.x == image).flatten(1).all(1)] == official).all()


def test_half_width_resnet20_has_half_the_channels_and_is_registered(mpqbench_registry):
    shape = ImageShape(1, 28, 4)
    full, half = resnet20(shape), resnet20_half(shape)
    convs = [(n, m.out_channels) for n, m in full.named_modules() if isinstance(m, torch.nn.Conv2d)]
    half_convs = dict((n, m.out_channels) for n, m in half.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert [half_convs[n] * 2 for n, _ in convs] == [c for _, c in convs]
    assert half.fc.in_features * 2 == full.fc.in_features
    assert mpqbench_registry.model("resnet20-half").build(shape).conv1.out_channels == 8


# --- Pareto figure ----------------------------------------------------------------------------------------------

def _budget_sweep(kinds=("avg_bits",)):
    from test_report import record

    recs = [record("fp32", 0, 90.0, budget=None, bits=(32, 32))]
    recs += [record(f"uniform(w={w})", s, 80.0 + w, budget=None, bits=(w, w)) for w in (2, 3) for s in (0, 1)]
    for kind in kinds:
        for bits in (2.25, 2.5, 3.0):
            for seed in (0, 1):
                r = record("mymethod", seed, 82.0 + bits + seed / 4, budget=f"{kind}={bits:g}")
                r.id += kind
                r.metrics["avg_w_bits"] = bits
                recs.append(r)
    return recs


def test_pareto_figure_is_written_for_a_budget_sweep_and_only_then(tmp_path):
    records = _budget_sweep(("avg_bits", "bitops_g"))
    df = leaderboard.table(records)
    assert plots.sweeps(df) == [("small-cnn", "digits", "tiny")]
    paths = leaderboard.write(df, tmp_path / "sweep", records=records)
    assert tmp_path / "sweep" / "leaderboard-pareto.svg" in paths
    assert (tmp_path / "sweep" / "leaderboard-pareto.png").stat().st_size > 0
    maps = {p.name for p in paths if p.parent.name == "bitmaps"}  # one per budget: 2.25 and 2.5 are not "2"
    assert {"small-cnn_digits_avg_bits-2.25.svg", "small-cnn_digits_avg_bits-2.5.png"} <= maps
    fig = plots.pareto_figure(df)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"mymethod", "uniform", "budgets: avg_bits", "budgets: bitops_g"} <= set(legend)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("average weight bits")
    styles = {line.get_linestyle() for line in ax.lines if len(line.get_xdata()) == 3}
    assert {"-", ":"} <= styles  # one line per budget kind over its three budgets
    paired = fig.axes[1]  # the same rows minus each seed's FP32 accuracy (record(): drop = 90 - top1)
    assert "FP32" in paired.get_ylabel()
    expected = [82.0 + bits + 0.125 - 90.0 for bits in (2.25, 2.5, 3.0)]  # seed means of top1 - 90
    assert any(list(line.get_ydata()) == pytest.approx(expected) for line in paired.lines)
    single = [r for r in records if r.spec["budget"] in (None, "avg_bits=2.5")]
    df1 = leaderboard.table(single)
    assert plots.sweeps(df1) == []
    paths = leaderboard.write(df1, tmp_path / "single", records=single)
    assert not any("pareto" in p.name for p in paths)
