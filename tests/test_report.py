"""Reading results (issue #15): the terminal leaderboard, provenance files, LaTeX, plots, bit maps, compare.

Most tests build records by hand (no training): a few hundred milliseconds each. The committed results
(ResNet-20 on Fashion-MNIST) check the views against a real sweep.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mpqbench.cli import main
from mpqbench.errors import UserError
from mpqbench.pipeline.record import RunRecord, pack_correct
from mpqbench.pipeline.store import RunStore
from mpqbench.report import bitmaps, compare, latex, leaderboard, plots, provenance, terminal, units
from mpqbench.report import columns as C
from mpqbench.train.recipe import get_recipe

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "fashion-mnist-resnet20"
LAYERS = ["stem", "conv2", "conv3", "fc"]  # network order, not alphabetical
ENV = {"python": "3.11.7", "mpqbench": "0.1.0", "torch": "2.14.1", "cpu": "Test CPU", "cores": 2, "gpu": None,
       "git_commit": "abcdef0123456789abcdef0123456789abcdef01"}


def record(label: str, seed: int, top1: float, *, budget: str | None = "size_mb=w3", bits=(3, 8), met=True,
           status="done", source="s1", model="small-cnn", targets=None, commit=None, finished=None) -> RunRecord:
    """A finished (or failed) run record as the driver writes it, without running anything."""
    name = label.split("(")[0]
    w, a = bits
    policy = {layer: [8, 8] if layer in ("stem", "fc") else [w, a] for layer in LAYERS}
    size = (100 * 8 + 1000 * w * 2 + 50 * 8) / 8 / 2**20
    rid = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{label}-{budget}-{seed}-{source}-{model}")
    done = status == "done"
    return RunRecord(
        id=rid, label=label, status=status, error=None if done else "UserError: no policy meets it\ndetails",
        spec={"method": name, "params": {}, "model": model, "dataset": "digits", "budget": budget, "seed": seed,
              "recipe": get_recipe("tiny").to_json(), "first_last_bits": 8},
        plugin={"name": name, "version": "1", "source": source}, started="2026-01-01T00:00:00+00:00",
        finished=finished or f"2026-01-01T00:0{seed}:00+00:00", policy=policy if done else None,
        layers={layer: [1000, 10000] for layer in LAYERS},
        budget=None if budget is None else {"text": budget, "kind": "size_mb", "value": 0.0009, "measured": size,
                                            "met": met},
        metrics={"top1": top1, "int_top1": top1 + 0.01, "int_minus_fq": 0.01, "drop": 90.0 - top1,
                 "avg_w_bits": float(w), "mean_a_bits": float(a), "size_mb": size, "bitops_g": 0.001 * w * a,
                 "fp32_top1": 90.0, "test_images": 256} if done else {},
        phases={"search": {"seconds": 1.0}, "train": {"seconds": 10.0 + seed}} if done else {},
        targets=targets or {}, environment={**ENV, "git_commit": commit or ENV["git_commit"]})


def sweep() -> list[RunRecord]:
    recs = [record("fp32", 0, 90.0, budget=None, bits=(32, 32))]
    for w in (2, 4, 8):
        recs.append(record(f"uniform(w={w})", 0, 80.0 + w, budget=None, bits=(w, w)))
    for seed, (a, b, c) in enumerate([(85.0, 86.0, 84.0), (85.4, 86.5, 84.1), (84.9, 86.2, 83.8)]):
        recs.append(record("uniform", seed, a))
        recs.append(record("mymethod", seed, b, bits=(3, 8)))
        recs.append(record("greedy", seed, c, met=seed != 1))
    recs.append(record("broken", 0, 0, status="failed"))
    return recs


@pytest.fixture(scope="module")
def published():
    records = list(RunStore(PUBLISHED).records())
    return records, leaderboard.table(records)


# --- terminal view ---------------------------------------------------------------------------------------------

def test_the_committed_leaderboard_fits_120_columns_with_every_row_a_legend_and_human_units(published):
    records, df = published
    text = terminal.render(df)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    rows = [line for line in lines if line.split() and (line.split()[0].isdigit() or line.split()[0] in (
        "ref", "fail", "✗"))]
    assert len(rows) == len(df)  # one line per row (a long label may wrap onto a second)
    for method in df["method"]:
        assert any(method.startswith(row.split()[1]) for row in rows), method
    assert "no budget" in text and "budget size_mb=w3 (99.6 KB)" in text
    assert "KB" in text and " M " in text and "e+06" not in text and "0.00 ± 0.00" not in text
    assert "±" in text.split("Columns:")[1] and "parameter count" in text  # the legend explains W bits and ±
    assert "failed: hawq-v3" in text and "no policy with weight bits in {8, 4}" in text
    assert "arm-qemu" in text and "✓" in text


def test_ranks_are_within_each_group_and_skip_the_reference_unmet_budgets_and_failures():
    df = C.rank(leaderboard.table(sweep()))
    rank = {(r.method, r.budget): r.rank for r in df.itertuples()}
    assert rank[("mymethod", "size_mb=w3")] == 1 and rank[("uniform", "size_mb=w3")] == 2
    assert math.isnan(rank[("greedy", "size_mb=w3")])  # one seed missed its budget: never ranked
    assert rank[("uniform(w=8)", "-")] == 1 and math.isnan(rank[("fp32", "-")])
    text = terminal.render(leaderboard.table(sweep()), legend=False)
    row = {line.split()[1]: line.split()[0] for line in text.splitlines() if len(line.split()) > 2}
    assert row["fp32"] == "ref" and row["greedy"] == "✗" and row["broken"] == "fail"


def test_stale_records_are_hidden_with_a_note_or_shown_by_their_label_and_never_ranked():
    recs = sweep() + [record("uniform", 0, 70.0, source="old", finished="2025-01-01T00:00:00+00:00")]
    text = terminal.render(leaderboard.table(recs))
    assert "1 stale record(s) hidden" in text and "70.00" not in text
    shown = terminal.render(leaderboard.table(recs, stale=True), legend=False)
    line = next(line for line in shown.splitlines() if "[stale code old]" in line)
    assert line.split()[0] == "uniform" and "70.00" in line  # no rank in front of it


def test_columns_sort_and_filters_choose_what_is_shown():
    df = leaderboard.table(sweep())
    text = terminal.render(df, columns="method,top1,train", legend=False)
    header = [line for line in text.splitlines() if "method" in line][0]
    assert header.split() == ["method", "top-1", "%", "train"]
    by_train = terminal.render(C.select(df, budget=["size_mb=w3"]), columns="method,train", sort="train:desc",
                               legend=False)
    methods = [line.split()[0] for line in by_train.splitlines()[3:]]
    assert methods[:3] == ["greedy", "mymethod", "uniform"] or methods.index("broken") == len(methods) - 1
    assert "BitOPs" not in terminal.render(df, columns="-bitops", legend=False)
    assert "search" in terminal.render(df, columns="+search", legend=False)
    only = C.select(df, method=["uniform"])
    assert set(only["method"]) == {"uniform", "uniform(w=2)", "uniform(w=4)", "uniform(w=8)"}
    with pytest.raises(UserError, match="unknown column"):
        terminal.render(df, columns="method,nope")
    with pytest.raises(UserError, match="no rows with model"):
        C.select(df, model=["resnet99"])
    with pytest.raises(UserError, match="direction"):
        C.order(df, "top1:up")


def test_many_targets_still_fit_and_the_ones_left_out_are_named():
    recs = sweep()
    for r in recs:
        if r.status == "done":
            r.targets = {f"target-{i}": {"status": "done", "check": {"bit_exact": True}, "headline": ["lat"],
                                         "metrics": {"lat": {"value": 1e3 * i, "unit": "cycles/image",
                                                             "how": "simulated"}}} for i in range(8)}
    text = terminal.render(leaderboard.table(recs))
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "target-0" in text and "not shown for width:" in text and "target-7" in text.split("not shown")[1]
    assert "target-7" in terminal.render(leaderboard.table(recs), columns="+target-7", legend=False)


def test_wide_shows_every_column_and_confidence_intervals():
    text = terminal.render(leaderboard.table(sweep()), wide=True)
    for title in ("95% CI", "int-fq", "search", "train", "runs", "commit", "test imgs", "failed"):
        assert title in text
    assert "abcdef0" in text and "± 0." in text


def test_units_read_as_people_write_them():
    assert units.si(3919000, "instr/img") == "3.92 M instr/img"
    assert units.size(70348) == "68.7 KB" and units.size(2**20 * 1.03) == "1.03 MB" and units.size(512) == "512 B"
    assert units.mean_std(94.291, 0.0912) == "94.29 ± 0.09" and units.mean_std(94.291, float("nan")) == "94.29"
    assert units.short_unit("instructions/image") == "instr/img"


# --- provenance ------------------------------------------------------------------------------------------------

def test_json_and_csv_carry_schema_versions_commits_run_ids_test_images_and_ci95():
    recs = sweep()
    recs[4].environment["git_commit"] = "1111111"
    df = leaderboard.table(recs)
    doc = json.loads(provenance.to_json(df))
    assert doc["schema"] == provenance.SCHEMA and doc["kind"] == "mpqbench-leaderboard"
    assert doc["generator"].startswith("mpqbench ") and doc["mpqbench_versions"] == ["0.1.0"]
    assert set(doc["commits"]) == {"1111111", ENV["git_commit"]}
    row = next(r for r in doc["rows"] if r["method"] == "mymethod")
    assert row["run_ids"] == [r.id for r in recs if r.label == "mymethod"] and row["run_seeds"] == [0, 1, 2]
    assert row["test_images"] == 256 and row["seeds"] == 3
    values = np.array([86.0, 86.5, 86.2])
    assert row["top1_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3))
    assert row["top1_std"] == pytest.approx(values.std(ddof=1))
    assert next(r for r in doc["rows"] if r["method"] == "fp32")["top1_ci95"] is None  # one seed: no interval
    assert doc["records"] == len(recs)
    csv = provenance.to_csv(df).splitlines()
    assert csv[0].startswith("method,model,dataset,recipe,budget,seeds") and csv[0].endswith(",leaderboard_schema")
    mine = next(line for line in csv if line.startswith("mymethod,"))
    assert " ".join(r.id for r in recs if r.label == "mymethod") in mine and mine.endswith(",1")


def test_the_written_files_are_reproducible(tmp_path):
    recs = sweep()
    df = leaderboard.table(recs)
    first = leaderboard.write(df, tmp_path / "a", records=recs)
    leaderboard.write(df, tmp_path / "b", records=recs)
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in first)
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.svg", "leaderboard.png"} <= set(names)
    assert "bitmaps/small-cnn_digits_size_mb-w3.svg" in names and "bitmaps/small-cnn_digits_no-budget.png" in names
    for name in names:
        if not name.endswith(".png"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


# --- LaTeX -----------------------------------------------------------------------------------------------------

def test_latex_has_booktabs_mean_pm_std_and_the_best_of_each_group_in_bold(tmp_path):
    recs = sweep() + [record("odd_name&co", 0, 10.0)]
    body = latex.render(leaderboard.table(recs))
    assert body.count(r"\begin{tabular}") == 1 and r"\toprule" in body and r"\bottomrule" in body
    assert body.count(r"\midrule") == 2  # one block per budget
    assert r"$\mathbf{86.23 \pm 0.25}$" in body  # mymethod: best top-1 of the size_mb=w3 group
    assert r"$\mathbf{88.00}$" in body  # uniform(w=8): best of the unbudgeted group
    assert r"\mathbf{84" not in body  # greedy missed its budget on one seed: it never wins
    assert r"odd\_name\&co" in body and "% left out: broken" in body
    for line in body.splitlines():
        if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
            assert line.replace(r"\&", "").count("&") == 6, line
    if shutil.which("pdflatex"):
        (tmp_path / "t.tex").write_text(latex.document(body))
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]
        assert (tmp_path / "t.pdf").read_bytes()[:4] == b"%PDF"


def test_latex_of_the_committed_results_compiles_or_is_well_formed(published, tmp_path):
    _, df = published
    body = latex.render(df)
    assert body.count(r"\begin{table}") == body.count(r"\end{table}") == 1
    if shutil.which("pdflatex"):
        (tmp_path / "p.tex").write_text(latex.document(body))
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "p.tex"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-2000:]


# --- plots -----------------------------------------------------------------------------------------------------

def test_pareto_front_keeps_only_points_nothing_beats():
    x = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    y = np.array([50.0, 70.0, 60.0, 80.0, 70.0])
    assert list(plots.pareto(x, y)) == [0, 1, 3]


def test_uniform_is_one_series_across_bitwidths_and_colours_are_distinct():
    assert plots.family("uniform(a=8,w=2)") == "uniform(a=8)" and plots.family("uniform(w=4)") == "uniform"
    assert plots.family("ompq(beta=1)") == "ompq(beta=1)"
    palette = plots.styles(["uniform(w=2)", "uniform(w=4)", "ompq", "hawq-v3", "dfq", "fp32"])
    assert set(palette) == {"uniform", "ompq", "hawq-v3", "dfq"}
    assert len({c for c, _ in palette.values()}) == 4 and len({m for _, m in palette.values()}) == 4
    assert palette["uniform"][0] == "#000000"  # baselines in neutral tones, methods in Okabe-Ito colours
    assert {palette[m][0] for m in ("ompq", "hawq-v3", "dfq")} <= set(plots.OKABE_ITO)


def test_tradeoff_figure_has_size_and_bitops_panels_a_reference_line_and_an_outside_legend(published):
    _, df = published
    fig = plots.tradeoff(df)
    axes = fig.axes
    assert [ax.get_xlabel().split()[0] for ax in axes] == ["weight", "BitOPs"]
    for ax in axes:
        assert ax.get_xscale() == "log"
        xs = np.concatenate([line.get_xdata() for line in ax.lines if len(line.get_xdata())
                             and line.get_xdata()[0] not in (0, 1)])
        full = 1.03 * 2**20 if ax is axes[0] else 31.77e9
        assert xs.max() < full / 2  # FP32 is a horizontal line, not a point on the cost axis
        assert any(line.get_linestyle() == "--" and len(set(line.get_ydata())) == 1 for line in ax.lines)
    uniform_full = [line for line in axes[0].lines if line.get_color() == "#000000" and len(line.get_xdata()) == 4]
    assert uniform_full, "uniform(w=2,3,4,8) of the full recipe is one line"
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    for ax in axes:
        assert not legend.overlaps(ax.get_window_extent())
    from matplotlib import pyplot as plt

    plt.close(fig)


def test_bit_maps_put_layers_in_network_order_and_average_seeds():
    recs = sweep()
    for r in recs[:3]:  # records rewritten with sorted keys by older code
        r.policy = dict(sorted(r.policy.items()))
    for r in recs:
        if r.label == "mymethod" and r.seed == 2:
            r.policy["conv2"] = [4, 8]
    data = bitmaps.bit_matrix(leaderboard.table(recs), recs)
    w3 = data[("small-cnn", "digits", "size_mb=w3")]
    assert w3["layers"] == LAYERS and "fp32" not in w3["rows"]
    row = w3["rows"].index("mymethod")
    assert w3["w"][row, 1] == pytest.approx((3 + 3 + 4) / 3) and not w3["w_agree"][row, 1] and w3["w_agree"][row, 2]
    assert w3["a"][row].tolist() == [8, 8, 8, 8] and w3["a_agree"][row].all()  # weight bits differing is not a's
    assert bitmaps.network_order(recs)["small-cnn"] == LAYERS  # an alphabetical order loses to a real one
    assert data[("small-cnn", "digits", "-")]["layers"] == LAYERS
    assert bitmaps.slug("resnet20", "fashion-mnist", "size_mb=w3") == "resnet20_fashion-mnist_size_mb-w3"


# --- compare ---------------------------------------------------------------------------------------------------

def test_compare_pairs_seeds_and_says_when_a_difference_is_within_noise():
    recs = sweep()
    result = compare.methods(recs, "uniform", "mymethod")
    (pair,) = result.shared
    a, b = [85.0, 85.4, 84.9], [86.0, 86.5, 86.2]
    assert pair.pairs == 3 and pair.diff == pytest.approx(np.mean(np.subtract(b, a)))
    assert pair.p == pytest.approx(stats.ttest_rel(b, a).pvalue) and pair.verdict.startswith("B higher")
    close = compare.methods(recs, "uniform", "greedy")
    assert close.shared[0].verdict.startswith(("within noise", "B lower"))
    noisy = [record("x", s, 85 + d) for s, d in enumerate([0.3, -0.2, 0.1])] + [
        record("y", s, 85 + d) for s, d in enumerate([0.1, 0.2, -0.1])]
    assert compare.methods(noisy, "x", "y").shared[0].verdict.startswith("within noise")
    text = compare.render(result)
    assert "McNemar" in text and "B higher" in text and max(map(len, text.splitlines())) <= 120


def test_compare_tests_images_pairwise_where_records_hold_per_image_correctness():
    rng = np.random.default_rng(0)
    truth = rng.random(2000) < 0.85
    recs = []
    for seed in range(3):
        better = truth.copy()
        better[np.flatnonzero(~truth)[:40]] = True  # B gets 40 more images right than A on every seed
        for label, mask in (("a", truth), ("b", better)):
            r = record(label, seed, 100 * mask.mean() + 0.05 * seed * (1 if label == "a" else -1))
            r.correct = {"top1": pack_correct(mask)}
            recs.append(r)
    assert np.array_equal(recs[1].correct_mask("top1"), recs[1].correct_mask("top1")) and \
        recs[0].correct_mask("top1").tolist() == truth.tolist() and recs[0].correct_mask("int_top1") is None
    (pair,) = compare.methods(recs, "a", "b").shared
    assert pair.discordant == "0/120" and pair.p_images == pytest.approx(stats.binomtest(120, 120).pvalue)
    assert pair.verdict.startswith("B higher")
    same = [r for r in recs if r.label == "a"] + [record("c", s, recs[2 * s].metrics["top1"]) for s in range(3)]
    for r in same[3:]:
        r.correct = {"top1": pack_correct(truth)}
    (tie,) = compare.methods(same, "a", "c").shared
    assert tie.discordant == "0/0" and tie.p_images == 1.0 and "within noise" in tie.verdict


def test_compare_pairs_a_row_without_a_budget_with_the_other_methods_row_at_each_budget():
    fixed = [record("uniform(w=3)", s, 84.0 + s, budget=None) for s in range(3)]
    mixed = [record("mixed", s, 85.0 + s + (b == "size_mb=w4"), budget=b) for s in range(3)
             for b in ("size_mb=w3", "size_mb=w4")]
    result = compare.methods(fixed + mixed, "uniform(w=3)", "mixed")
    diffs = {p.key["budget"]: (p.pairs, p.diff) for p in result.shared}
    assert diffs == {"size_mb=w3": (3, pytest.approx(1.0)), "size_mb=w4": (3, pytest.approx(2.0))}
    assert not result.only_a and not result.only_b
    # both sides at budgets: matched budget by budget, as before
    at_w3 = compare.methods(sweep(), "uniform", "mymethod")
    assert [p.key["budget"] for p in at_w3.shared] == ["size_mb=w3"]


def test_compare_two_folders_lists_rows_only_one_side_has(tmp_path):
    a, b = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    recs = sweep()
    for r in recs:
        a.write(r)
        if r.label != "greedy":
            b.write(r if r.label != "mymethod" else record("mymethod", r.seed, r.metrics["top1"] + 1.0))
    b.write(record("newcomer", 0, 70.0))
    result = compare.folders(a.records(), b.records(), ("a", "b"))
    shared = {p.key["method"]: p for p in result.shared}
    assert shared["mymethod"].diff == pytest.approx(1.0) and shared["mymethod"].pairs == 3
    assert "identical" in shared["uniform"].verdict
    assert [r["method"] for r in result.only_a] == ["greedy"] and [r["method"] for r in result.only_b] == ["newcomer"]
    assert json.loads(compare.to_json(result))["only_b"][0]["seeds"] == 1
    # the same grid under another recipe: nothing matches, unless matched across recipes
    other = RunStore(tmp_path / "other")
    for r in recs:
        r.spec["recipe"] = {**r.spec["recipe"], "lsq_grad": "torch"}
        r.id += "-torch"
        other.write(r)
    assert not compare.folders(a.records(), other.records(), ("a", "other")).shared
    across = compare.folders(a.records(), other.records(), ("a", "other"), across_recipes=True)
    assert {p.key["method"] for p in across.shared} == {"uniform", "mymethod", "greedy", "broken", "uniform(w=2)",
                                                        "uniform(w=4)", "uniform(w=8)", "fp32"}
    assert "recipe A's and B's" in compare.render(across)
    both = RunStore(tmp_path / "both")
    for r in [*a.records(), *other.records()]:
        both.write(r)
    with pytest.raises(UserError, match="several recipes"):
        compare.folders(both.records(), a.records(), ("both", "a"), across_recipes=True)


# --- the CLI ---------------------------------------------------------------------------------------------------

def test_cli_leaderboard_formats_and_filters(capsys):
    assert main(["leaderboard", "--results", str(PUBLISHED)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 120 and "Columns:" in out
    assert main(["leaderboard", "--results", str(PUBLISHED), "--format", "latex", "--method", "ompq"]) == 0
    out = capsys.readouterr().out
    assert r"\toprule" in out and "uniform" not in out
    assert main(["leaderboard", "--results", str(PUBLISHED), "--format", "json", "--budget", "size_mb=w4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["budget"] for r in doc["rows"]} == {"size_mb=w4"} and doc["schema"] == provenance.SCHEMA
    assert main(["leaderboard", "--results", str(PUBLISHED), "--columns", "nope"]) == 2
    assert "unknown column(s) nope" in capsys.readouterr().err
    assert main(["compare", str(PUBLISHED), "--methods", "uniform(a=8),ompq"]) == 0
    assert "within noise" in capsys.readouterr().out
    assert main(["compare", str(PUBLISHED)]) == 2
    assert "two results folders" in capsys.readouterr().err
    assert main(["compare", str(PUBLISHED), "--methods", "ompq,nope"]) == 2
    assert "no rows of method 'nope'" in capsys.readouterr().err
    assert main(["compare", str(PUBLISHED), "--baseline", "uniform", "--across-recipes"]) == 2
    assert "--across-recipes compares two results folders" in capsys.readouterr().err


def test_compare_against_a_baseline_pairs_every_method_with_uniform_at_its_budget_and_activation_bits(capsys):
    recs = sweep() + [record("lowact(a=4)", s, 84.0 + s, bits=(3, 4)) for s in range(3)]
    recs += [record("uniform(a=4)", s, 83.0 + s, bits=(3, 4)) for s in range(2)]
    result = compare.baseline(recs, "uniform")
    pairs = {p.key["method"]: p for p in result.shared}
    assert set(pairs) == {"mymethod", "greedy", "lowact(a=4)"}  # fp32 and the uniform rows are not compared
    assert pairs["mymethod"].mean_a == pytest.approx(np.mean([85.0, 85.4, 84.9])) and pairs["mymethod"].pairs == 3
    assert pairs["lowact(a=4)"].key["a_bits"] == 4.0 and pairs["lowact(a=4)"].pairs == 2  # its A4 uniform row
    assert pairs["lowact(a=4)"].diff == pytest.approx(1.0)
    assert [r["method"] for r in result.only_b] == ["broken"]
    with pytest.raises(UserError, match="no rows of method 'hawq'"):
        compare.baseline(recs, "hawq")
    assert "A bits" in compare.render(result)
