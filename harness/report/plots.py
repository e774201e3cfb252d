"""Accuracy/cost trade-off figures (matplotlib, SVG and PNG).

One row of two panels per (model, data set): top-1 against weight size and against BitOPs, both on log2
axes (a bit more or less per weight is a constant step). The FP32 checkpoint is a dashed reference line,
not a point: on the same axis it would push every quantized point into a sliver of the width. A method is
one series across budgets; ``uniform`` is one line across its bitwidths (rows that differ only in the
parameters of :data:`SWEEP_PARAMS` join one series). Rows from different recipes never share a line: the
recipe is the line style. Error bars are ± one sample standard deviation over the seeds; the grey step line
is the Pareto front of the row means (no other row is both cheaper and more accurate). Colours are the
Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), each paired with a marker,
assigned per method family in a stable order so a method keeps its colour across figures.

The Pareto figure (:func:`pareto_figure`) has one panel per (model, data set, recipe) whose methods were run at
several budgets of one kind (a suite's budget sweep): top-1 against the average weight bits the finalized
models have (parameter-weighted, measured, not the budget asked for), so methods run under different budget
kinds share one axis. Each method is one line per budget kind over its budgets (the kind is the line style);
uniform rows are points, each its own bitwidth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mpqbench.report import units
from mpqbench.report.columns import is_reference

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442"]
TOL_MUTED = ["#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255", "#AA4499"]
PALETTE = OKABE_ITO + TOL_MUTED
"""Method colours, most distinct first (Okabe-Ito without black, then Paul Tol's muted scheme)."""
NEUTRALS = ["#000000", "#777777", "#BBBBBB"]
BASELINES = ("uniform",)
"""Families drawn in neutral tones (black, greys), so the methods under test carry the colours."""
MARKERS = "osD^v<>pP*hX"
LINESTYLES = ["-", "--", ":", "-."]
SWEEP_PARAMS = {"uniform": ("w",)}
"""Parameters that move a method along its own trade-off curve (uniform's bitwidth): rows that differ only
in these are one series."""

KIND_STYLES = {"avg_bits": "-", "size_mb": "--", "bitops_g": ":"}
"""Line style of a method's series per budget kind in the Pareto figure (other kinds: dash-dot)."""

AXES = {"size_mb": ("weight size (log2 scale)", 2**20, units.size),
        "bitops_g": ("BitOPs per image (log2 scale)", 1e9, lambda v: units.si(v, ""))}


def _tick(fmt):
    return lambda v, _: fmt(v).replace(".0 ", " ").replace(".00 ", " ")


def split_label(label: str) -> tuple[str, list[str]]:
    """``uniform(a=8,w=2)`` -> ``("uniform", ["a=8", "w=2"])``."""
    if "(" not in label or not label.endswith(")"):
        return label, []
    name, _, inner = label[:-1].partition("(")
    items: list[str] = []
    for part in inner.split(","):
        if "=" in part or not items:
            items.append(part)
        else:
            items[-1] += "," + part
    return name, items


def family(label: str, sweep: dict[str, Sequence[str]] = SWEEP_PARAMS) -> str:
    """The series a row belongs to: its label without the parameters that sweep the method's own curve."""
    name, items = split_label(str(label))
    kept = [i for i in items if i.split("=")[0] not in sweep.get(name, ())]
    return f"{name}({','.join(kept)})" if kept else name


def styles(labels: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Family -> (colour, marker), in sorted order, the same for every figure built from the same rows."""
    fams = sorted({family(label) for label in labels if label.split("(")[0] != "fp32"})
    base = [f for f in fams if f.split("(")[0] in BASELINES]
    rest = [f for f in fams if f not in base]
    out = {f: (NEUTRALS[i % len(NEUTRALS)], MARKERS[-1 - i % len(MARKERS)]) for i, f in enumerate(base)}
    out.update({f: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, f in enumerate(rest)})
    return out


def pareto(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    idx = np.lexsort((-y, x))
    front, best = [], -np.inf
    for i in idx:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return np.asarray(front, dtype=int)


def _fp32_levels(rows: pd.DataFrame) -> list[float]:
    ref = rows[rows.apply(is_reference, axis=1) & rows["top1"].notna()]
    if not ref.empty:
        return sorted({round(float(v), 2) for v in ref["top1"]})
    values = pd.to_numeric(rows.get("fp32_top1"), errors="coerce").dropna()
    return sorted({round(float(v), 2) for v in values})


def _front(ax, xs: np.ndarray, ys: np.ndarray) -> None:
    """The grey Pareto front of the quantized row means (``xs`` cost, ``ys`` accuracy)."""
    if len(xs) > 1:
        front = pareto(xs, ys)
        ax.step(xs[front], ys[front], where="post", color="0.55", linewidth=5, alpha=0.35, zorder=1,
                solid_capstyle="round")


def _front_and_reference(ax, rows: pd.DataFrame, xs: np.ndarray, ys: np.ndarray) -> None:
    """The Pareto front (:func:`_front`) and the FP32 level lines."""
    _front(ax, xs, ys)
    for level in _fp32_levels(rows):
        ax.axhline(level, color="0.2", linestyle=(0, (5, 3)), linewidth=1, zorder=2)
        ax.annotate(f"FP32 {level:.2f}", (0, level), xycoords=("axes fraction", "data"), xytext=(3, 3),
                    textcoords="offset points", ha="left", va="bottom", fontsize=7, color="0.2")


def _reference_handles() -> list:
    """Legend entries of what :func:`_front_and_reference` draws."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="0.55", linewidth=5, alpha=0.35, label="Pareto front"),
            Line2D([], [], color="0.2", linestyle=(0, (5, 3)), label="FP32 checkpoint")]


def panel(ax, rows: pd.DataFrame, x: str, palette: dict[str, tuple[str, str]], recipes: list[str]) -> None:
    """One trade-off panel: series, error bars, Pareto front, FP32 line, budget marks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    title, scale, fmt = AXES[x]
    quant = rows[~rows.apply(is_reference, axis=1) & rows["top1"].notna() & rows[x].notna() & (rows["seeds"] > 0)]
    for (fam, recipe), series in quant.groupby([quant["method"].map(family), "recipe"], sort=True):
        colour, marker = palette[fam]
        series = series.sort_values(x)
        ax.errorbar(series[x] * scale, series["top1"], yerr=series["top1_std"].fillna(0).to_numpy(), color=colour,
                    marker=marker, markersize=5, capsize=2.5, elinewidth=0.9, linewidth=1.4, zorder=3,
                    linestyle=LINESTYLES[recipes.index(recipe) % len(LINESTYLES)] if len(series) > 1 else "none")
    _front_and_reference(ax, rows, quant[x].to_numpy(float) * scale, quant["top1"].to_numpy(float))
    kind = {"size_mb": "size_mb", "bitops_g": "bitops_g"}[x]
    budgets = rows[rows["budget"].astype(str).str.startswith(kind + "=")]
    for text, value in budgets.groupby("budget")["budget_value"].first().items():
        if not units.missing(value):
            ax.axvline(value * scale, color="0.6", linestyle=":", linewidth=1, zorder=0)
            ax.annotate(text.split("=", 1)[1], (value * scale, 0), xycoords=("data", "axes fraction"),
                        xytext=(2, 2), textcoords="offset points", fontsize=7, color="0.45")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(FuncFormatter(_tick(fmt)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(title)
    ax.set_ylabel("top-1 % (fake-quant)")
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.tick_params(labelsize=8)


def budget_kind(budget: str) -> str:
    """``avg_bits=2.5`` -> ``avg_bits``; ``latency_us@fpga-sim:preset=x=10`` -> ``latency_us@fpga-sim``."""
    return str(budget).rpartition("=")[0].split(":")[0]


def sweeps(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The (model, data set, recipe) groups, in table order, where some method finished several budgets of one
    kind: the groups the Pareto figure draws."""
    done = df[(df["seeds"] > 0) & (df["budget"] != "-")]
    kinds = done["budget"].map(budget_kind)
    counts = done.groupby(["model", "dataset", "recipe", "method", kinds])["budget"].nunique()
    return list(dict.fromkeys(key[:3] for key, n in counts.items() if n > 1))


def pareto_panel(ax, rows: pd.DataFrame, palette: dict[str, tuple[str, str]], paired: bool = False) -> None:
    """Top-1 against average weight bits: a line per (method, budget kind), uniform rows as points, the
    Pareto front of the row means, the FP32 level. ``paired``: top-1 minus the FP32 accuracy of the run's own
    checkpoint instead (minus ``drop``), mean ± std over seeds: where every seed trains its own FP32
    checkpoint, their spread moves every row of a seed together and this panel removes it."""
    y, std = ("drop", "drop_std") if paired else ("top1", "top1_std")
    sign = -1.0 if paired else 1.0
    quant = rows[~rows.apply(is_reference, axis=1) & rows[y].notna() & rows["avg_w_bits"].notna()
                 & (rows["seeds"] > 0)]
    for (label, kind), series in quant.groupby([quant["method"], quant["budget"].map(budget_kind)], sort=True):
        fam = family(label)
        colour, marker = palette[fam]
        baseline = fam.split("(")[0] in BASELINES
        series = series.sort_values("avg_w_bits")
        ax.errorbar(series["avg_w_bits"], sign * series[y], yerr=series[std].fillna(0).to_numpy(),
                    color=colour, marker=marker, markersize=5, capsize=2.5, elinewidth=0.9, linewidth=1.4, zorder=3,
                    linestyle="none" if baseline or len(series) < 2 else KIND_STYLES.get(kind, "-."))
    xs, ys = quant["avg_w_bits"].to_numpy(float), sign * quant[y].to_numpy(float)
    if paired:
        _front(ax, xs, ys)
        ax.axhline(0, color="0.2", linestyle=(0, (5, 3)), linewidth=1, zorder=2)
    else:
        _front_and_reference(ax, rows, xs, ys)
    ax.set_xlabel("average weight bits (parameter-weighted, measured)")
    ax.set_ylabel("top-1 - the seed's FP32 (points)" if paired else "top-1 % (fake-quant)")
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.tick_params(labelsize=8)


def pareto_figure(df: pd.DataFrame, palette: dict[str, tuple[str, str]] | None = None):
    """The Pareto figure: per group of :func:`sweeps` (there must be one) a row of two panels, top-1 and top-1
    paired with the seed's own FP32 accuracy; one legend below."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    groups = sweeps(df)
    palette = palette or styles(df["method"])
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 4.2 * len(groups) + 1.4), squeeze=False,
                             layout="constrained")
    labels: set[str] = set()
    for row_axes, (model, dataset, recipe) in zip(axes, groups):
        rows = df[(df["model"] == model) & (df["dataset"] == dataset) & (df["recipe"] == recipe)]
        for ax, paired in zip(row_axes, (False, True)):
            pareto_panel(ax, rows, palette, paired)
            ax.set_title(f"{model} / {dataset} / {recipe}" + (", paired by seed" if paired else ""), fontsize=10)
        labels |= {str(m) for m in rows.loc[rows["seeds"] > 0, "method"] if not str(m).startswith("fp32")}
    used = sorted({family(m) for m in labels})
    kinds = sorted({budget_kind(b) for b in df.loc[df["seeds"] > 0, "budget"] if b != "-"})
    handles = [Line2D([], [], color=palette[f][0], marker=palette[f][1],
                      linestyle="none" if f.split("(")[0] in BASELINES else "-", label=f) for f in used]
    handles += [Line2D([], [], color="0.3", linestyle=KIND_STYLES.get(k, "-."), label=f"budgets: {k}") for k in kinds]
    handles += _reference_handles()
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False,
               title="error bars: ± 1 sample std over seeds (right: of the difference to the seed's own FP32 "
                     "checkpoint)", title_fontsize=8)
    return fig


def tradeoff(df: pd.DataFrame, palette: dict[str, tuple[str, str]] | None = None):
    """The figure: one row of (size, BitOPs) panels per (model, data set), one legend below them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    done = df[df["seeds"] > 0]
    palette = palette or styles(df["method"])
    pairs = list(done.groupby(["model", "dataset"], sort=False))
    fig, axes = plt.subplots(max(len(pairs), 1), 2, figsize=(10, 3.8 * max(len(pairs), 1) + 1.2),
                             squeeze=False, layout="constrained")
    recipes = sorted(done["recipe"].astype(str).unique())
    for row_axes, ((model, dataset), rows) in zip(axes, pairs):
        for ax, x in zip(row_axes, ("size_mb", "bitops_g")):
            panel(ax, rows, x, palette, recipes)
            ax.set_title(f"{model} / {dataset}", fontsize=10)
    used = sorted({family(m) for m in done["method"] if not str(m).startswith("fp32")})
    handles = [Line2D([], [], color=palette[f][0], marker=palette[f][1], linestyle="-", label=f) for f in used]
    if len(recipes) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=LINESTYLES[i % len(LINESTYLES)], label=f"recipe: {r}")
                    for i, r in enumerate(recipes)]
    handles += _reference_handles()
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8, frameon=False,
               title="error bars: ± 1 sample std over seeds; dotted verticals: budgets", title_fontsize=8)
    return fig


def save(fig, stem: Path) -> list[Path]:
    """``stem``.svg and ``stem``.png, reproducibly (no dates, fixed SVG ids)."""
    import matplotlib
    from matplotlib import pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.svg", stem.parent / f"{stem.name}.png"]  # not with_suffix: "avg_bits-2.25"
    with matplotlib.rc_context({"svg.hashsalt": "mpqbench", "svg.fonttype": "path"}):
        fig.savefig(paths[0], metadata={"Date": None, "Creator": None})
    fig.savefig(paths[1], dpi=130, metadata={"Software": None})
    plt.close(fig)
    return paths
