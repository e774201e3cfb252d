"""The columns a leaderboard view can show, what each means, and the row operations every view shares:
filtering, grouping by (model, data set, budget), ranking within a group, sorting.

A view (terminal, web page, LaTeX) picks column keys; :func:`columns_for` resolves them against the table
(target columns exist only when some run deployed to that target). Each column knows its title, a legend
line, how to format a cell and which direction is better, so a sort or a "best in group" needs no
per-view code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from mpqbench.errors import UserError
from mpqbench.report import units

GROUP = ["model", "dataset", "budget"]
COMPACT = ["rank", "method", "seeds", "top1", "int_top1", "bits", "size", "bitops", "met", "@targets"]
WIDE = ["rank", "method", "recipe", "seeds", "top1", "top1_ci", "int_top1", "int_minus_fq", "drop", "w_bits",
        "a_bits", "size", "bitops", "met", "search", "train", "@all_targets", "test_images", "runs", "code",
        "commit", "failed"]


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    legend: str
    cell: Callable[[pd.Series], str]
    value: Callable[[pd.Series], float | str]
    """What sorting and "best" compare (NaN/empty sorts last)."""
    better: str | None = None
    """``high`` or ``low`` when one direction is better (the default sort direction), else None."""
    numeric: bool = True
    latex: str | None = None
    """Title in a LaTeX table (None: the column is not offered there)."""


def _num(key: str) -> Callable[[pd.Series], float]:
    return lambda row: _float(row.get(key))


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _seconds(value) -> str:
    if units.missing(value):
        return ""
    if value >= 600:
        return f"{value / 60:.0f} min"
    return f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def _met_value(row) -> float:
    met = str(row.get("budget_met", "-"))
    if "/" not in met:
        return np.nan
    a, b = met.split("/")
    return int(a) / int(b) if int(b) else np.nan


def _rank_cell(row) -> str:
    rank = row.get("rank")
    if not units.missing(rank):
        return str(int(rank))
    if is_reference(row):
        return "ref"
    return "✗" if row.get("unmet") else ("fail" if not row.get("seeds") and row.get("failed") else "")


def _failed(row) -> str:
    n = int(row.get("failed") or 0)
    return f"{n}: {first_line(row.get('error'))[:70]}" if n else ""


def first_line(text) -> str:
    text = (text or "").strip() if isinstance(text, str) else ""
    return text.splitlines()[0] if text else ""


BASE: dict[str, Column] = {c.key: c for c in [
    Column("rank", "#", "rank by top-1 within its (model, data set, budget) group; ref: the FP32 reference; "
           "✗: not every run met the budget (never ranked)", _rank_cell, _num("rank"), "low", latex=None),
    Column("method", "method", "method with every parameter that differs from its default",
           lambda r: str(r["method"]), lambda r: str(r["method"]), numeric=False, latex="Method"),
    Column("model", "model", "model", lambda r: str(r["model"]), lambda r: str(r["model"]), numeric=False),
    Column("dataset", "data set", "data set", lambda r: str(r["dataset"]), lambda r: str(r["dataset"]),
           numeric=False),
    Column("budget", "budget", "budget KIND=VALUE; wN: the size (or BitOPs) of the uniform N-bit policy",
           lambda r: str(r["budget"]), lambda r: str(r["budget"]), numeric=False, latex="Budget"),
    Column("recipe", "recipe", "training recipe and the fields a sweep overrode", lambda r: str(r["recipe"]),
           lambda r: str(r["recipe"]), numeric=False),
    Column("seeds", "n", "seeds that finished (the n behind every mean ± std)", lambda r: str(int(r["seeds"])),
           _num("seeds"), "high", latex="$n$"),
    Column("top1", "top-1 %", "fake-quant test accuracy, mean ± sample std over the seeds (no ± with one seed)",
           lambda r: units.mean_std(r["top1"], r["top1_std"]), _num("top1"), "high", latex="Top-1 (\\%)"),
    Column("top1_ci", "95% CI", "half-width of the 95% confidence interval of the top-1 mean (Student's t)",
           lambda r: "" if units.missing(r.get("top1_ci95")) else f"± {r['top1_ci95']:.2f}", _num("top1_ci95"),
           "low"),
    Column("int_top1", "int top-1", "accuracy of the exported integer model (reference executor), mean",
           lambda r: "" if units.missing(r["int_top1"]) else f"{r['int_top1']:.2f}", _num("int_top1"), "high",
           latex="Int top-1 (\\%)"),
    Column("int_minus_fq", "int-fq", "integer minus fake-quant top-1, in points (near 0: the export is faithful)",
           lambda r: units.mean_std(r["int_minus_fq"], np.nan), _num("int_minus_fq"), None),
    Column("drop", "drop", "top-1 points lost against the FP32 checkpoint the run started from",
           lambda r: units.mean_std(r["drop"], r["drop_std"]), _num("drop"), "low", latex="Drop"),
    Column("bits", "W/A bits", "W: weight bits weighted by parameter count; A: plain mean over activation "
           "quantization points", lambda r: "" if units.missing(r["avg_w_bits"]) else
           f"{r['avg_w_bits']:.2f}/{r['mean_a_bits']:.2f}", _num("avg_w_bits"), "low", latex="W/A bits"),
    Column("w_bits", "W bits", "weight bits weighted by parameter count", lambda r: units.mean_std(
        r["avg_w_bits"], np.nan), _num("avg_w_bits"), "low", latex="W bits"),
    Column("a_bits", "A bits", "activation bits, plain mean over quantization points", lambda r: units.mean_std(
        r["mean_a_bits"], np.nan), _num("mean_a_bits"), "low", latex="A bits"),
    Column("size", "size", "weights at their bit widths (1 KB = 1024 bytes)",
           lambda r: units.size(_float(r["size_mb"]) * 2**20), _num("size_mb"), "low", latex="Size (KB)"),
    Column("bitops", "BitOPs", "sum of MACs x weight bits x input activation bits, per image",
           lambda r: units.si(_float(r["bitops_g"]) * 1e9), _num("bitops_g"), "low", latex="BitOPs (G)"),
    Column("met", "met", "runs whose final policy meets the budget (checked by the harness)",
           lambda r: str(r.get("budget_met", "-")), _met_value, "high"),
    Column("search", "search", "search time per run, mean (seconds; min above 10 minutes)",
           lambda r: _seconds(r["search_s"]), _num("search_s"), "low"),
    Column("train", "train", "fine-tune time per run, mean", lambda r: _seconds(r["train_s"]), _num("train_s"),
           "low"),
    Column("test_images", "test imgs", "test images behind each accuracy",
           lambda r: "" if units.missing(r.get("test_images")) else str(r["test_images"]).removesuffix(".0"),
           _num("test_images"), None),
    Column("runs", "runs", "run ids (first 8 characters), by seed", lambda r: " ".join(
        i[:8] for i in r.get("run_ids") or []), lambda r: " ".join(r.get("run_ids") or []), numeric=False),
    Column("code", "code", "method plugin version and source hash", lambda r: str(r.get("code") or ""),
           lambda r: str(r.get("code") or ""), numeric=False),
    Column("commit", "commit", "mpqbench git commit(s) that produced the runs", lambda r: " ".join(
        c[:7] + ("+" if c.endswith("-dirty") else "") for c in r.get("commits") or []),
        lambda r: " ".join(r.get("commits") or []), numeric=False),
    Column("failed", "failed", "failed runs and the first error", _failed, _num("failed"), "low", numeric=False),
]}


def is_reference(row) -> bool:
    return str(row["method"]).split("(")[0] == "fp32"


def target_names(df: pd.DataFrame) -> list[str]:
    return [c[:-len(" bit-exact")] for c in df.columns if c.endswith(" bit-exact")]


def _target_metric(df: pd.DataFrame, target: str, metric: str, marker: bool) -> Column:
    key = f"{target}:{metric}"
    unit = df.attrs.get("units", {}).get(key, "")
    base = unit.split(",")[0].strip()
    how = unit.split(",")[1].strip() if "," in unit else ""

    def cell(row) -> str:
        text = units.metric(row.get(key), base)
        if marker and text:
            exact = _text(row.get(f"{target} bit-exact"))
            ok = "/" in exact and exact.split("/")[0] == exact.split("/")[1]
            text += " ✓" if ok else " ✗"
        return text

    legend = f"{metric} on {target} ({base}, {how})" + (
        "; ✓: bit-exact against the reference executor on every deployed run, ✗: not" if marker else "")
    return Column(key, f"{target} {units.short_unit(base) if base.split('/')[0] != 'bytes' else metric}", legend,
                  cell, _num(key), None, latex=None)


def _target_exact(target: str) -> Column:
    key = f"{target} bit-exact"
    return Column(key, f"{target} exact", f"{target}: deployed runs bit-exact against the reference executor",
                  lambda r: _text(r.get(key)), lambda r: _text(r.get(key)), None, numeric=False)


def _text(value) -> str:
    return "" if units.missing(value) else str(value or "")


def available(df: pd.DataFrame) -> dict[str, Column]:
    """Every column this table can show: the base ones plus, per target, its headline metrics and exactness."""
    cols = dict(BASE)
    for target in target_names(df):
        metrics = df.attrs.get("headlines", {}).get(target) or [
            c.split(":", 1)[1] for c in df.columns if c.startswith(target + ":")]
        metrics = [m for m in metrics if f"{target}:{m}" in df.columns]
        if metrics:
            head = _target_metric(df, target, metrics[0], marker=True)
            cols[target] = Column(target, head.title, head.legend, head.cell, head.value, None)
        for m in metrics:
            cols[f"{target}:{m}"] = _target_metric(df, target, m, marker=False)
        cols[f"{target} bit-exact"] = _target_exact(target)
    return cols


def _expand(keys: Iterable[str], df: pd.DataFrame, cols: dict[str, Column]) -> list[str]:
    out = []
    for key in keys:
        if key == "@targets":
            out += [t for t in target_names(df) if t in cols]
        elif key == "@all_targets":
            for t in target_names(df):
                out += [k for k in cols if k.startswith(t + ":")] + [f"{t} bit-exact"]
        else:
            out.append(key)
    return out


def columns_for(df: pd.DataFrame, spec: str | None = None, wide: bool = False) -> list[Column]:
    """Columns to show: ``spec`` is a comma list of keys (``method,top1,size``), or changes to the default
    (``+train,-bitops``); None gives the compact default (``wide``: everything)."""
    cols = available(df)
    keys = _expand(WIDE if wide else COMPACT, df, cols)
    if spec:
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if all(s[0] in "+-" for s in items):
            for s in items:
                if s[0] == "+" and s[1:] not in keys:
                    keys.append(s[1:])
                elif s[0] == "-" and s[1:] in keys:
                    keys.remove(s[1:])
            keys = [k for k in keys if k]
            items = keys
        keys = _expand(items, df, cols)
    unknown = [k for k in keys if k not in cols]
    if unknown:
        raise UserError(f"unknown column(s) {', '.join(unknown)} (known: {', '.join(cols)})")
    return [cols[k] for k in keys]


def select(df: pd.DataFrame, model=None, dataset=None, method=None, budget=None, recipe=None) -> pd.DataFrame:
    """Rows matching every filter given (each a list; a method matches by its label or its name alone,
    so ``uniform`` keeps ``uniform(w=4)``). A filter that matches nothing is a one-line UserError."""
    keep = pd.Series(True, index=df.index)
    for field, wanted in (("model", model), ("dataset", dataset), ("budget", budget), ("recipe", recipe),
                          ("method", method)):
        if not wanted:
            continue
        values = df[field].astype(str)
        match = values.isin(wanted)
        if field == "method":
            match |= values.str.split("(").str[0].isin(wanted)
        if not match.any():
            raise UserError(f"no rows with {field} {', '.join(wanted)} (there are: {', '.join(sorted(set(values)))})")
        keep &= match
    out = df[keep].copy()
    out.attrs = dict(df.attrs)
    return out


def rank(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``rank`` (1 = best top-1 within its (model, data set, budget) group; ties share a rank) and
    ``unmet``. The FP32 reference, rows without a finished seed, rows where some run missed its budget and
    stale rows (shown with ``--stale``) are not ranked."""
    out = df.copy()
    out.attrs = dict(df.attrs)
    met = out["budget_met"].astype(str)
    out["unmet"] = met.str.contains("/") & (met.str.split("/").str[0] != met.str.split("/").str[-1])
    stale = out["method"].astype(str).str.contains("[stale code", regex=False)
    eligible = (out["seeds"] > 0) & ~out.apply(is_reference, axis=1) & ~out["unmet"] & out["top1"].notna() & ~stale
    out["rank"] = np.nan
    if eligible.any():
        ranks = out[eligible].groupby(GROUP, sort=False, dropna=False)["top1"].rank(method="min", ascending=False)
        out.loc[eligible, "rank"] = ranks
    return out


def order(df: pd.DataFrame, sort: str | None, cols: dict[str, Column] | None = None) -> pd.DataFrame:
    """Rows sorted within each group (groups keep the table's order): by rank by default, or ``KEY``
    (its better direction first) or ``KEY:asc`` / ``KEY:desc``; missing values last."""
    cols = cols or available(df)
    key, _, direction = (sort or "rank").partition(":")
    if key not in cols:
        raise UserError(f"--sort: unknown column {key!r} (known: {', '.join(cols)})")
    if direction not in ("", "asc", "desc"):
        raise UserError(f"--sort {sort}: the direction is asc or desc")
    column = cols[key]
    descending = direction == "desc" or (not direction and column.better == "high")
    if key == "rank":  # unranked rows: the reference first, then the rest by top-1
        values = [-1e9 if is_reference(r) else (r["rank"] if not units.missing(r["rank"]) else 1e9 - _nz(r["top1"]))
                  for _, r in df.iterrows()]
    else:
        values = [column.value(r) for _, r in df.iterrows()]
    numeric = column.numeric or key == "rank"
    blank = [units.missing(v) if numeric else v == "" for v in values]
    group_of = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, df[GROUP].astype(str).to_numpy())))}
    keys = pd.DataFrame({"g": [group_of[tuple(k)] for k in df[GROUP].astype(str).to_numpy()], "blank": blank,
                         "v": [(0.0 if b else float(v)) if numeric else str(v) for v, b in zip(values, blank)]},
                        index=range(len(df)))
    keys = keys.sort_values(["g", "blank", "v"], ascending=[True, True, not descending], kind="stable")
    out = df.iloc[keys.index.to_numpy()]
    out.attrs = dict(df.attrs)
    return out


def _nz(value) -> float:
    return 0.0 if units.missing(value) else float(value)


def groups(df: pd.DataFrame):
    """(model, data set, budget) groups in table order: ``((model, dataset, budget), rows)``."""
    return df.groupby(GROUP, sort=False, dropna=False)
