"""The terminal leaderboard: one compact table per (model, data set, budget) group, rows ranked by top-1,
then a legend of the columns shown, the failures and the stale records hidden. Fits ``width`` columns
(120 by default); ``wide`` shows every column without a width limit.
"""

from __future__ import annotations

import io
import textwrap

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mpqbench.report import columns as C
from mpqbench.report import units

WIDTH = 120


def budget_title(budget: str, rows: pd.DataFrame) -> str:
    """``size_mb=w3 (99.6 KB)``: the budget as written plus its resolved value in human units."""
    if budget in ("-", "", None):
        return "no budget"
    value = pd.to_numeric(rows.get("budget_value"), errors="coerce").dropna()
    if value.empty:
        return f"budget {budget}"
    kind = budget.split("=")[0].split(":")[0]
    v = float(value.iloc[0])
    shown = {"size_mb": lambda: units.size(v * 2**20), "bitops_g": lambda: units.si(v * 1e9, "BitOPs")}.get(
        kind, lambda: units.sig(v))()
    return f"budget {budget} ({shown})"


def group_title(key: tuple, rows: pd.DataFrame) -> str:
    model, dataset, budget = key
    recipes = rows["recipe"].astype(str).unique()
    recipe = f" · recipe {recipes[0]}" if len(recipes) == 1 else ""
    return f"{model} · {dataset} · {budget_title(budget, rows)}{recipe}"


def render(df: pd.DataFrame, columns: str | None = None, sort: str | None = None, wide: bool = False,
           width: int = WIDTH, legend: bool = True) -> str:
    """The leaderboard as plain text (no colour codes), ready to print."""
    if df.empty:
        return "(no finished runs)"
    ranked = C.rank(df)
    chosen = C.columns_for(ranked, columns, wide)
    ranked = C.order(ranked, sort, C.available(ranked))
    out = io.StringIO()
    console = Console(file=out, width=100_000 if wide else width, color_system=None, highlight=False,
                      emoji=False, soft_wrap=False, markup=False)
    cells = {c.key: [c.cell(r) for _, r in ranked.iterrows()] for c in [*chosen, C.BASE["recipe"]]}
    widths = {k: max([len(x) for x in v] + [0]) for k, v in cells.items()}
    dropped = []
    named = {k.strip().lstrip("+") for k in (columns or "").split(",")}
    if not wide:  # many targets: keep the method readable, name the targets left out (never one asked for)
        targets = [c for c in chosen if c.key in C.target_names(ranked) and c.key not in named]
        while targets and width - sum(max(widths[c.key], *map(len, header(c).splitlines())) + 2 for c in chosen
                                      if c.key not in TEXT) < MIN_METHOD + 2:
            dropped.insert(0, targets.pop())
            chosen = [c for c in chosen if c is not dropped[0]]
    for key, rows in C.groups(ranked):
        shown = list(chosen)
        if rows["recipe"].nunique() > 1 and "recipe" not in [c.key for c in shown]:
            at = [c.key for c in shown].index("method") + 1 if "method" in [c.key for c in shown] else 0
            shown.insert(at, C.BASE["recipe"])
        console.print(Text(group_title(key, rows)))
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0), show_edge=False, expand=False)
        natural = {c.key: max([widths[c.key]] + [len(line) for line in header(c).splitlines()]) for c in shown}
        spare = width - sum(natural[c.key] + 2 for c in shown if c.key not in TEXT)
        texts = [c for c in shown if c.key in TEXT]
        for col in shown:
            text = col.key in TEXT
            share = max(12, spare // max(len(texts), 1) - 2) if text and not wide else None
            table.add_column(header(col), justify="left" if text else "right", no_wrap=not text, overflow="fold",
                             min_width=min(natural[col.key], share or natural[col.key]), max_width=share)
        for _, row in rows.iterrows():
            table.add_row(*(Text(col.cell(row)) for col in shown))  # Text: labels like "[stale code x]" are not markup
        console.print(table)
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    if legend:
        text += "\n" + legend_text(ranked, chosen, None if wide else width)
        if dropped:
            text += "\n" + _wrap(f"not shown for width: {', '.join(c.key for c in dropped)} (add one with --columns "
                                 f"+{dropped[0].key}, or --wide)", width, 4)
    return text.rstrip() + "\n"


TEXT = ("method", "recipe", "failed", "runs", "commit", "code")
MIN_METHOD = 18
"""Narrowest method column the compact view accepts before it leaves target columns out."""


def header(col: C.Column) -> str:
    """A target column's title on two lines (target, unit): the compact table has no width to spare."""
    target = ":" not in col.key and col.key not in C.BASE and not col.key.endswith(" bit-exact")
    return col.title.replace(" ", "\n", 1) if target else col.title


def legend_text(df: pd.DataFrame, shown: list[C.Column], width: int | None = WIDTH) -> str:
    """What each shown column means, what ± is, which runs failed and what was hidden, wrapped to ``width``."""
    pad = max(len(c.title) for c in shown) + 3
    entries = [(c.title, c.legend) for c in shown]
    entries.append(("±", "mean ± sample standard deviation (ddof 1) over the n seeds of the row; 95% confidence "
                         "intervals are in --wide and --format json/csv"))
    lines = ["Columns:"]
    for title, text in entries:
        lines.append(_wrap(f"  {title:<{pad - 2}}{text}", width, pad))
    failed = df[df["failed"] > 0]
    for _, row in failed.iterrows():
        lines.append(_wrap(f"failed: {row['method']} {row['model']}/{row['dataset']} {row['budget']}: "
                           f"{int(row['failed'])} run(s): {C.first_line(row['error'])[:200]}", width, 4))
    if df.attrs.get("stale") and not df["method"].astype(str).str.contains("[stale code", regex=False).any():
        lines.append(_wrap(f"{df.attrs['stale']} stale record(s) hidden: made by older code of a method than the "
                           "newest for the same row (show them with --stale).", width, 4))
    return "\n".join(lines)


def _wrap(text: str, width: int | None, indent: int) -> str:
    if not width:
        return text
    return textwrap.fill(text, width, subsequent_indent=" " * indent, break_on_hyphens=False)
