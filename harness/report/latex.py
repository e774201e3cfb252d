"""The leaderboard as LaTeX tables for papers: booktabs rules, mean ± std, the best per group in bold.

One ``table`` per (model, data set); within it a block per budget (a ``\\midrule`` and an italic header
row naming the budget, its resolved value and the recipe), rows ranked as in the terminal view. "Best"
is decided on the printed values (two decimals), so rows that print the same are bold together; only
ranked rows compete (never the FP32 reference or a row that missed its budget), and only the accuracy
columns are marked (cost columns are what the budget fixes). Rows without a finished seed are left out
with a LaTeX comment saying so. Needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import pandas as pd

from mpqbench.errors import UserError
from mpqbench.report import columns as C
from mpqbench.report import units
from mpqbench.report.terminal import budget_title

DEFAULT = ["method", "seeds", "top1", "int_top1", "bits", "size", "bitops"]
BOLD = ("top1", "int_top1")
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def escape(text: str) -> str:
    return "".join(SPECIAL.get(ch, ch) for ch in str(text))


def _cell(key: str, row) -> str:
    """Cell text in LaTeX: numbers in math mode, mean ± std with \\pm."""
    if key == "top1":
        text = units.mean_std(row["top1"], row["top1_std"], pm=r" \pm ")
    elif key == "int_top1":
        text = units.mean_std(row["int_top1"], row["int_top1_std"], pm=r" \pm ")
    elif key == "drop":
        text = units.mean_std(row["drop"], row["drop_std"], pm=r" \pm ")
    elif key == "size":
        text = "" if units.missing(row["size_mb"]) else f"{row['size_mb'] * 1024:.1f}"
    elif key == "bitops":
        text = "" if units.missing(row["bitops_g"]) else f"{row['bitops_g']:.2f}"
    elif key == "seeds":
        text = str(int(row["seeds"]))
    else:
        return escape(C.BASE[key].cell(row))
    return f"${text}$" if text else ""


def _best(rows: pd.DataFrame, key: str) -> set:
    ranked = rows[rows["rank"].notna()]
    values = {i: round(float(v), 2) for i, v in ranked[key].items() if not units.missing(v)}
    if not values:
        return set()
    top = max(values.values())
    return {i for i, v in values.items() if v == top}


def table(df: pd.DataFrame, model: str, dataset: str, keys: list[str]) -> str:
    cols = [C.BASE[k] for k in keys]
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             r"\caption{" + escape(f"{model} on {dataset}") + r": test top-1 accuracy (\%), mean $\pm$ sample "
             r"standard deviation over $n$ seeds; best per budget in bold. Size: weights at their bit widths "
             r"(1\,KB = 1024 bytes); BitOPs: $\sum$ MACs $\times$ weight bits $\times$ activation bits per image.}",
             r"\label{tab:" + escape(f"{model}-{dataset}").replace("\\_", "-") + "}",
             r"\begin{tabular}{" + "".join("l" if not c.numeric else "r" for c in cols) + "}", r"\toprule",
             " & ".join(c.latex for c in cols) + r" \\"]
    for key, rows in C.groups(df):
        recipes = rows["recipe"].astype(str).unique()
        head = budget_title(key[2], rows) + (f"; recipe {recipes[0]}" if len(recipes) == 1 else "")
        lines += [r"\midrule", rf"\multicolumn{{{len(cols)}}}{{l}}{{\emph{{{escape(head)}}}}} \\"]
        best = {k: _best(rows, k) for k in BOLD if k in keys}
        for idx, row in rows.iterrows():
            if not row["seeds"]:
                lines.append(f"% left out: {row['method']} ({key[2]}): {int(row['failed'])} failed run(s), no finished "
                             "seed")
                continue
            cells = []
            for col in cols:
                text = _cell(col.key, row)
                if idx in best.get(col.key, ()) and text:
                    text = r"$\mathbf{" + text.strip("$") + "}$"
                if col.key == "method" and len(recipes) > 1:
                    text += escape(f" [{row['recipe']}]")
                cells.append(text)
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def render(df: pd.DataFrame, columns: str | None = None, sort: str | None = None) -> str:
    """Every (model, data set) of the table as a LaTeX ``table`` (booktabs), separated by blank lines."""
    if df.empty:
        raise UserError("no finished or failed runs: no LaTeX table to make")
    keys = [k.strip() for k in columns.split(",")] if columns else DEFAULT
    offered = [k for k, c in C.BASE.items() if c.latex]
    unknown = [k for k in keys if k not in offered]
    if unknown:
        raise UserError(f"--format latex: unknown column(s) {', '.join(unknown)} (known: {', '.join(offered)})")
    ranked = C.order(C.rank(df), sort)
    parts = [table(rows, model, dataset, keys) for (model, dataset), rows in
             ranked.groupby(["model", "dataset"], sort=False)]
    return "% requires \\usepackage{booktabs}\n" + "\n\n".join(parts) + "\n"


def document(body: str) -> str:
    """A minimal standalone document around :func:`render`'s tables (what the tests compile)."""
    return "\n".join([r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage{booktabs}",
                      r"\begin{document}", body,
                      r"\end{document}", ""])
