"""Leaderboard tables from run records (pandas + tabulate): Markdown, CSV and JSON, plus a plot.

One row per (method with its parameters, model, data set, recipe, budget, method code): numbers are mean
+- std over the distinct seeds that finished, with their count; failed runs are counted and their first
error shown. Records made by older code of a method than the newest for the same row (their plugin
fingerprint differs; run ids hash it) are *stale*: never averaged with the current ones, hidden unless
asked for (``stale=True``), and counted in a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

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
           "finished": record.finished or ""}
    row.update({k: record.metrics.get(k, np.nan) for k, _ in METRICS if not k.endswith("_s")})
    row["search_s"] = _nan(record.search_seconds)
    row["train_s"] = _nan(record.train_seconds)
    row["budget_met"] = record.budget_met
    for name, section in record.targets.items():
        row[f"{name}:status"] = section["status"]
        if section["status"] == "done":
            row[f"{name}:bit_exact"] = section["check"]["bit_exact"]
            for metric in section.get("headline") or section["metrics"]:
                m = section["metrics"].get(metric)
                if m:
                    row[f"{name}:{metric}"] = m["value"]
                    row.setdefault("_units", {})[f"{name}:{metric}"] = f"{m['unit']}, {m['how']}"
    return row


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
    units = {}
    for r in rows:
        units.update(r.pop("_units", {}))
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


MARKERS = "osD^v<>pP*hX"


def plot(df: pd.DataFrame, path: Path, x: str = "size_mb") -> None:
    """Top-1 (mean +- std over seeds) against ``x`` (size_mb or bitops_g), one panel per model and data
    set, one series per method: the accuracy/cost trade-off the table spreads over rows."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    done = df[df["seeds"] > 0]
    panels = list(done.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(10 * max(len(panels), 1), 4.5), squeeze=False)
    for ax, ((model, dataset), group) in zip(axes[0], panels):
        several = group["recipe"].nunique() > 1
        series = list(group.groupby(["method", "recipe"], sort=False))
        for i, ((method, recipe), rows) in enumerate(series):  # colour and marker both vary: many series
            rows = rows.sort_values(x)
            ax.errorbar(rows[x], rows["top1"], yerr=rows["top1_std"].fillna(0), marker=MARKERS[i % len(MARKERS)],
                        color=plt.get_cmap("tab20")(i % 20), capsize=3, linestyle="-" if len(rows) > 1 else "none",
                        label=f"{method} [{recipe}]" if several else method)
        ax.set_xscale("log")
        ax.set_xlabel({"size_mb": "weight size (MB, log scale)", "bitops_g": "BitOPs (G, log scale)"}[x])
        ax.set_ylabel("top-1 % (fake-quant)")
        ax.set_title(f"{model} / {dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(df: pd.DataFrame, out_dir: Path, stem: str = "leaderboard") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.csv", out_dir / f"{stem}.json", out_dir / f"{stem}.png"]
    paths[0].write_text(markdown(df) + "\n")
    df.to_csv(paths[1], index=False)
    df.to_json(paths[2], orient="records", indent=1)
    plot(df, paths[3])
    return paths
