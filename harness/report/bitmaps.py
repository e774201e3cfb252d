"""Per-layer bit maps: for each (model, data set, budget), where each method spent its bits.

Two heatmaps stacked, weight bits on top and activation bits below: one row per method (each leaderboard
row with a finished run and a policy; the FP32 reference has none), one column per quantized layer in
network order (see :func:`network_order`). A cell is the mean
over the row's seeds of the final policy's bits (the one the budget was checked on), written in the cell:
an integer where every seed agrees, one decimal where they differ. Colour is cividis (monotone in
lightness, readable with colour-vision deficiencies), on a fixed 2-8 bit scale so maps compare.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from mpqbench.pipeline.record import RunRecord
from mpqbench.report.columns import GROUP, is_reference

BITS = (2, 8)


def slug(*parts: str) -> str:
    """A file name part: ``('resnet20', 'fashion-mnist', 'size_mb=w3')`` -> ``resnet20_fashion-mnist_size_mb-w3``."""
    return "_".join(re.sub(r"[^A-Za-z0-9._]+", "-", "no-budget" if p in ("-", "") else str(p)).strip("-")
                    for p in parts)


def network_order(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """Model -> its layers in network order. Records keep the order of the model's forward pass, except
    records rewritten with sorted keys by older code: an alphabetical order is taken only when no record of
    the model has another (a network whose order is alphabetical reads the same either way)."""
    orders: dict[str, list[str]] = {}
    for r in records:
        layers = list(r.policy or r.layers or [])
        if not layers:
            continue
        model = r.spec.get("model")
        if model not in orders or (orders[model] == sorted(orders[model]) and layers != sorted(layers)):
            orders[model] = layers
    return orders


def bit_matrix(df: pd.DataFrame, records: Iterable[RunRecord]) -> dict[tuple, dict]:
    """(model, data set, budget) -> {"layers": [...], "rows": [label], "w": array, "a": array, "w_agree": array,
    "a_agree": array} built from the finished runs behind each table row (its ``run_ids``); ``*_agree``: every
    seed has the same bits in that cell."""
    records = list(records)
    by_id = {r.id: r for r in records}
    order = network_order(records)
    out = {}
    for key, rows in df.groupby(GROUP, sort=False, dropna=False):
        labels, w_rows, a_rows, w_agree, a_agree, layers = [], [], [], [], [], None
        several_recipes = rows["recipe"].nunique() > 1
        for _, row in rows.iterrows():
            if is_reference(row) or not row["seeds"]:
                continue
            runs = [by_id[i] for i in row["run_ids"] if i in by_id and by_id[i].done and by_id[i].policy]
            if not runs:
                continue
            layers = layers or order.get(key[0]) or list(runs[0].policy)
            bits = np.array([[r.policy.get(layer, [np.nan, np.nan]) for layer in layers] for r in runs], float)
            labels.append(f"{row['method']} [{row['recipe']}]" if several_recipes else str(row["method"]))
            w_rows.append(bits[:, :, 0].mean(0))
            a_rows.append(bits[:, :, 1].mean(0))
            agree = bits.max(0) == bits.min(0)
            w_agree.append(agree[:, 0])
            a_agree.append(agree[:, 1])
        if labels:
            out[key] = {"layers": layers, "rows": labels, "w": np.array(w_rows), "a": np.array(a_rows),
                        "w_agree": np.array(w_agree), "a_agree": np.array(a_agree)}
    return out


def figure(key: tuple, data: dict):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import BoundaryNorm

    layers, labels = data["layers"], data["rows"]
    cmap = plt.get_cmap("cividis", BITS[1] - BITS[0] + 1)
    norm = BoundaryNorm(np.arange(BITS[0] - 0.5, BITS[1] + 1.5), cmap.N)
    height = 0.32 * len(labels)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.42 * len(layers) + 3), 2 * height + 2.4),
                             layout="constrained", sharex=True)
    for ax, part, name in zip(axes, ("w", "a"), ("weight bits", "activation bits (the layer's input)")):
        values = data[part]
        image = ax.imshow(np.clip(values, *BITS), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        for (i, j), v in np.ndenumerate(values):
            if np.isnan(v):
                continue
            text = f"{v:.0f}" if data[f"{part}_agree"][i, j] else f"{v:.1f}"
            rgb = cmap(norm(np.clip(v, *BITS)))[:3]
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="white" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 0.5 else "black")
        ax.set_yticks(range(len(labels)), labels, fontsize=7.5)
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
        ax.tick_params(length=0)
    model, dataset, budget = key
    fig.suptitle(f"{model} / {dataset} — {'no budget' if budget in ('-', '') else 'budget ' + budget}: bits per "
                 "layer (network order; mean over seeds, decimals where seeds differ)", fontsize=9)
    fig.colorbar(image, ax=axes, ticks=range(BITS[0], BITS[1] + 1), label="bits", shrink=0.8, pad=0.01)
    return fig


def write(df: pd.DataFrame, records: Iterable[RunRecord], folder: Path) -> dict[tuple, list[Path]]:
    """A bit map per (model, data set, budget) into ``folder`` (``<model>_<dataset>_<budget>.svg/.png``)."""
    from mpqbench.report.plots import save

    return {key: save(figure(key, data), folder / slug(*key)) for key, data in bit_matrix(df, records).items()}
