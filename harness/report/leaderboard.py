"""Leaderboard tables from run records (pandas + tabulate): the numeric table every view reads, its Markdown
form, and the files ``--write`` makes.

One row per (method with its parameters, model, data set, recipe, budget, method code): numbers are mean
+- std over the distinct seeds that finished, with their count and the half-width of their 95% confidence
interval (``<metric>_ci95``); failed runs are counted and their first error shown. Each row also carries its
provenance: the run ids (with seeds and statuses), the git commits and mpqbench versions that made them, a
one-line environment per machine, the method's code version, the number of test images. Records made by
older code of a method than the newest for the same row (their plugin fingerprint differs; run ids hash
it) are *stale*: never averaged with the current ones, hidden unless asked for (``stale=True``), and counted
in a note.

The views live beside this module: :mod:`.terminal` (ranked, 120 columns), :mod:`.provenance` (JSON/CSV),
:mod:`.latex`, :mod:`.plots` and :mod:`.bitmaps` (figures), :mod:`.site` (``mpqbench publish``),
:mod:`.compare` (``mpqbench compare``); :mod:`.columns` holds what they share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from mpqbench.pipeline.record import RunRecord
from mpqbench.train.recipe import recipe_label

KEYS = ["method", "model", "dataset", "recipe", "budget"]
METRICS = [  # record metric -> column title
    ("top1", "top-1 %"),
    ("int_top1", "int top-1 %"),
    ("int_minus_fq", "int - fq"),
    ("drop", "drop vs FP32"),
    ("avg_w_bits", "W bits"),
    ("mean_a_bits", "A bits"),
    ("size_mb", "size MB"),
    ("bitops_g", "BitOPs G"),
    ("search_s", "search s"),
    ("train_s", "train s"),
]


def flatten(record: RunRecord) -> dict:
    """One record as a flat row of numbers (NaN where a run has no such figure)."""
    spec = record.spec
    row = {"method": record.label, "model": spec["model"], "dataset": spec["dataset"],
           "recipe": recipe_label(spec["recipe"]), "budget": spec["budget"] or "-", "seed": spec["seed"],
           "status": record.status, "error": record.error, "id": record.id, "code": record.plugin.get("source"),
           "finished": record.finished or "", "plugin_version": record.plugin.get("version"),
           "commit": record.environment.get("git_commit"), "mpqbench_version": record.environment.get("mpqbench"),
           "environment": environment_text(record.environment), "test_images": record.metrics.get("test_images"),
           "fp32_top1": record.metrics.get("fp32_top1", np.nan),
           "budget_value": (record.budget or {}).get("value", np.nan)}
    row.update({k: record.metrics.get(k, np.nan) for k, _ in METRICS if not k.endswith("_s")})
    row["search_s"] = _nan(record.search_seconds)
    row["train_s"] = _nan(record.train_seconds)
    row["budget_met"] = record.budget_met
    for name, section in record.targets.items():
        row[f"{name}:status"] = section["status"]
        if section["status"] == "done":
            row[f"{name}:bit_exact"] = section["check"]["bit_exact"]
            row.setdefault("_headlines", {})[name] = list(section.get("headline") or section["metrics"])
            for metric in section.get("headline") or section["metrics"]:
                m = section["metrics"].get(metric)
                if m:
                    row[f"{name}:{metric}"] = m["value"]
                    row.setdefault("_units", {})[f"{name}:{metric}"] = f"{m['unit']}, {m['how']}"
    return row


def environment_text(env: dict) -> str:
    """A record's machine and software in one short line (the record holds the full details)."""
    if not env:
        return ""
    parts = [f"mpqbench {env.get('mpqbench', '?')}", f"torch {env.get('torch', '?')}",
             f"python {env.get('python', '?')}", f"{env.get('cpu', '?')} x{env.get('cores', '?')}"]
    if env.get("gpu"):
        parts.append(str(env["gpu"]))
    return ", ".join(parts)


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom): with
    2-3 seeds it is 4-13 times the standard error, which is why a small difference between two rows is
    usually noise. NaN below 2 values."""
    n = len(values)
    if n < 2:
        return np.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))


def _distinct(values) -> list:
    return sorted({v for v in values if isinstance(v, str) and v} | {v for v in values if isinstance(v, int)},
                  key=str)


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _mark_stale(df: pd.DataFrame) -> pd.Series:
    """True for rows whose method code is older than the newest code seen for the same row key (the code
    of the most recently finished record)."""
    newest = df.sort_values("finished").groupby(KEYS, dropna=False)["code"].last()
    current = df.set_index(KEYS).index.map(lambda key: newest.get(key))
    return pd.Series(df["code"].to_numpy() != np.asarray(current, dtype=object), index=df.index)


def table(records: Iterable[RunRecord], stale: bool = False) -> pd.DataFrame:
    """The numeric leaderboard: ``<metric>`` (mean) and ``<metric>_std`` columns per group. Stale records
    are left out (``attrs["stale"]`` counts them) unless ``stale``, when they form rows of their own."""
    rows = [flatten(r) for r in records if r.status in ("done", "failed")]
    if not rows:
        return pd.DataFrame(columns=KEYS)
    units, headlines = {}, {}
    for r in rows:
        units.update(r.pop("_units", {}))
        for name, metrics in r.pop("_headlines", {}).items():
            headlines.setdefault(name, [m for m in metrics])
    df = pd.DataFrame(rows)
    df["_order"] = [(r["dataset"], r["model"], r["recipe"], "" if r["budget"] == "-" else r["budget"],
                     r["method"] != "fp32", r["method"]) for r in rows]
    df = df.sort_values("_order", kind="stable").drop(columns="_order")
    is_stale = _mark_stale(df)
    n_stale = int(is_stale.sum())
    if stale:
        df.loc[is_stale, "method"] = df.loc[is_stale, "method"] + " [stale code " + df.loc[is_stale, "code"] + "]"
    else:
        df = df[~is_stale]
    target_cols = sorted(c for c in df.columns if ":" in c and not c.endswith((":status", ":bit_exact")))
    out = []
    for key, group in df.groupby(KEYS, sort=False, dropna=False):
        done = group[group.status == "done"]
        row = dict(zip(KEYS, key))
        row["seeds"] = done["seed"].nunique()
        row["failed"] = int((group.status == "failed").sum())
        row["error"] = next((e for e in group.error if isinstance(e, str)), "")
        for metric, _ in METRICS:
            values = pd.to_numeric(done[metric], errors="coerce").dropna()
            row[metric] = values.mean() if len(values) else np.nan
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{metric}_ci95"] = ci95(values)
        ordered = group.sort_values(["seed", "id"])
        row["run_ids"] = list(ordered["id"])
        row["run_seeds"] = [int(s) for s in ordered["seed"]]
        row["run_status"] = list(ordered["status"])
        row["commits"] = _distinct(group["commit"])
        row["mpqbench_versions"] = _distinct(group["mpqbench_version"])
        row["environments"] = _distinct(group["environment"])
        row["code"] = " ".join(_distinct([f"{v} {c}" for v, c in zip(group["plugin_version"], group["code"])]))
        images = sorted({int(v) for v in pd.to_numeric(done["test_images"], errors="coerce").dropna()})
        row["test_images"] = images[0] if len(images) == 1 else (np.nan if not images else "/".join(map(str, images)))
        for extra in ("fp32_top1", "budget_value"):
            values = pd.to_numeric(group[extra], errors="coerce").dropna()
            row[extra] = values.mean() if len(values) else np.nan
        met = done.budget_met.dropna()
        row["budget_met"] = "-" if met.empty else f"{int(met.sum())}/{len(met)}"
        for status_col in (c for c in df.columns if c.endswith(":status")):
            name = status_col[:-len(":status")]
            statuses = done[status_col].dropna()
            if statuses.empty:
                continue
            exact = done.get(f"{name}:bit_exact", pd.Series(dtype=object)).dropna()
            row[f"{name} bit-exact"] = f"{int(exact.astype(bool).sum())}/{len(exact)}" if len(exact) else (
                statuses.iloc[0])
            for col in (c for c in target_cols if c.startswith(name + ":")):
                values = pd.to_numeric(done[col], errors="coerce").dropna()
                row[col] = values.mean() if len(values) else np.nan
        out.append(row)
    result = pd.DataFrame(out) if out else pd.DataFrame(columns=KEYS)
    result.attrs["units"] = units
    result.attrs["headlines"] = headlines
    result.attrs["stale"] = n_stale
    return result


def _fmt(mean, std, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return ""
    text = f"{mean:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if std is not None and not np.isnan(std) else "")


def markdown(df: pd.DataFrame) -> str:
    """The human table: mean ± std strings, target columns titled with their units."""
    if df.empty:
        return "(no finished runs)"
    note = ""
    if df.attrs.get("stale") and not df["method"].str.contains("[stale code", regex=False).any():
        note = (f"\n\n{df.attrs['stale']} stale record(s) hidden: made by older code of a method than the newest "
                "for the same row (show them with --stale).")
    shown = df[KEYS + ["seeds"]].copy()
    for metric, title in METRICS:
        digits = 2 if metric not in ("search_s", "train_s") else 1
        shown[title] = [_fmt(m, s, digits) for m, s in zip(df[metric], df[f"{metric}_std"])]
    shown["budget met"] = df["budget_met"]
    units = df.attrs.get("units", {})
    for col in df.columns:
        if col.endswith(" bit-exact"):
            shown[col] = df[col].fillna("")
        elif ":" in col:
            title = f"{col} ({units[col]})" if col in units else col
            shown[title] = [f"{v:.4g}" if not np.isnan(v) else "" for v in df[col]]
    if df["failed"].any():
        shown["failed"] = [f"{n}: {e[:80]}" if n else "" for n, e in zip(df["failed"], df["error"])]
    shown = shown.loc[:, [c for c in shown.columns if (shown[c].astype(str) != "").any()]]
    align = ["left" if c in KEYS else "right" for c in shown.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align) + note


def plot(df: pd.DataFrame, stem: Path) -> list[Path]:
    """The accuracy/cost trade-off figure (:mod:`mpqbench.report.plots`) as ``stem``.svg and ``stem``.png."""
    from mpqbench.report import plots

    return plots.save(plots.tradeoff(df), Path(stem).with_suffix(""))


def write(df: pd.DataFrame, out_dir: Path, stem: str = "leaderboard",
          records: Iterable[RunRecord] | None = None) -> list[Path]:
    """``stem``.md (the Markdown table), .csv and .json (with provenance, :mod:`mpqbench.report.provenance`),
    .svg and .png (the trade-off figure), ``stem``-pareto.svg and .png (top-1 against average weight bits)
    where methods ran at several budgets of one kind, and, given the records, a per-layer bit map per (model,
    data set, budget) in ``bitmaps/``."""
    from mpqbench.report import bitmaps, plots, provenance

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.json"]
    paths[0].write_text(markdown(df) + "\n")
    paths[1].write_text(provenance.to_csv(df))
    paths[2].write_text(provenance.to_json(df) + "\n")
    paths += plot(df, out_dir / stem)
    if plots.sweeps(df):
        paths += plots.save(plots.pareto_figure(df), out_dir / f"{stem}-pareto")
    if records is not None:
        for written in bitmaps.write(df, records, out_dir / "bitmaps").values():
            paths += written
    return paths
