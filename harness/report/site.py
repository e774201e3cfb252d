"""``mpqbench publish``: a static web site from one or more result folders (asv-style: plain files, any static
host or ``file://``, no server, nothing fetched from elsewhere).

Layout of the output folder::

    index.html                 one line per (model, data set): rows, runs, best per budget, sources
    <model>_<dataset>.html     sortable, filterable table; trade-off plot; per-layer bit maps
    plots/ bitmaps/            SVG (shown) and PNG (linked) figures
    runs/<run_id>.json         a copy of every record a row is built from (linked from its row)
    data/leaderboard.json|csv  the provenance files of :mod:`mpqbench.report.provenance`
    static/site.css site.js    a few lines of vanilla JS: click a header to sort, type to filter

Pages are Jinja2 templates (``templates/``, autoescaped). A folder that is not a results folder is a
one-line error; a run id found in two folders is taken from the first (a warning names it).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader

import mpqbench
from mpqbench.errors import UserError
from mpqbench.pipeline.record import RunRecord
from mpqbench.pipeline.store import RunStore
from mpqbench.report import bitmaps, leaderboard, plots, provenance, units
from mpqbench.report import columns as C
from mpqbench.report.terminal import budget_title

log = logging.getLogger("mpqbench.site")
PAGE_COLUMNS = ["rank", "method", "budget", "recipe", "seeds", "top1", "top1_ci", "int_top1", "int_minus_fq", "drop",
                "w_bits", "a_bits", "size", "bitops", "met", "@all_targets", "search", "train", "failed"]


@dataclass
class Source:
    folder: str
    records: list[RunRecord]
    paths: dict[str, Path] = field(default_factory=dict)


def load(folders: list[str]) -> list[Source]:
    sources, seen = [], {}
    for folder in folders:
        store = RunStore(folder)
        store.check_readable()
        source = Source(folder, [])
        for record in store.records():
            if record.id in seen:
                log.warning("run %s is in %s and %s: the copy in %s is used", record.id, seen[record.id], folder,
                            seen[record.id])
                continue
            seen[record.id] = folder
            source.records.append(record)
            source.paths[record.id] = store.path(record.id)
        sources.append(source)
    return sources


def _cells(row: pd.Series, cols: list[C.Column]) -> list[dict]:
    out = []
    for col in cols:
        value = col.value(row)
        sort = "" if (units.missing(value) if col.numeric or col.key == "rank" else value == "") else value
        out.append({"key": col.key, "text": col.cell(row), "sort": sort, "numeric": col.numeric})
    return out


def _runs(row: pd.Series) -> list[dict]:
    return [{"id": i, "seed": s, "status": st, "href": f"runs/{i}.json"}
            for i, s, st in zip(row["run_ids"], row["run_seeds"], row["run_status"])]


def _env(row: pd.Series) -> dict:
    commits = row.get("commits") or []
    short = ", ".join(c[:7] + ("-dirty" if c.endswith("-dirty") else "") for c in commits) or "no commit recorded"
    return {"short": short, "full": " | ".join(row.get("environments") or []), "code": row.get("code") or "",
            "commits": commits}


def page_slug(model: str, dataset: str) -> str:
    return bitmaps.slug(model, dataset)


def publish(out_dir: str | Path, folders: list[str], title: str = "mpqbench leaderboard",
            stale: bool = False) -> list[Path]:
    """Build the site into ``out_dir`` (created; files of an earlier build are replaced). Returns the pages."""
    out = Path(out_dir)
    sources = load(folders)
    records = [r for s in sources for r in s.records]
    df = leaderboard.table(records, stale=stale)
    if df.empty:
        raise UserError(f"no finished or failed runs in {', '.join(folders)}: nothing to publish")
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("plots", "bitmaps", "runs", "data", "static"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for name in ("site.css", "site.js"):
        (out / "static").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("templates") / "static" / name, out / "static" / name)
    (out / "data").mkdir()
    (out / "data" / "leaderboard.json").write_text(provenance.to_json(df) + "\n")
    (out / "data" / "leaderboard.csv").write_text(provenance.to_csv(df))
    used = {i for ids in df["run_ids"] for i in ids}
    (out / "runs").mkdir()
    for source in sources:
        for run_id, path in source.paths.items():
            if run_id in used:
                shutil.copyfile(path, out / "runs" / f"{run_id}.json")
    env = Environment(loader=PackageLoader("mpqbench.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    ranked = C.order(C.rank(df), None)
    palette = plots.styles(df["method"])
    pages, index = [], []
    for (model, dataset), rows in ranked.groupby(["model", "dataset"], sort=False):
        rows = rows.copy()
        rows.attrs = dict(df.attrs)
        slug = page_slug(model, dataset)
        figure = plots.save(plots.tradeoff(rows, palette), out / "plots" / slug)
        maps = bitmaps.write(rows, records, out / "bitmaps")
        cols = C.columns_for(rows, ",".join(PAGE_COLUMNS))
        groups = []
        for key, group in C.groups(rows):
            best = group[group["rank"] == 1]
            groups.append({"budget": key[2], "title": budget_title(key[2], group),
                           "best": ", ".join(best["method"]) if not best.empty else "",
                           "best_top1": f"{units.mean_std(best['top1'].iloc[0], best['top1_std'].iloc[0])} "
                                        f"(n={int(best['seeds'].iloc[0])})" if not best.empty else "",
                           "bitmap": {"svg": f"bitmaps/{maps[key][0].name}", "png": f"bitmaps/{maps[key][1].name}"}
                           if key in maps else None})
        table_rows = [{"cells": _cells(r, cols), "runs": _runs(r), "env": _env(r), "budget": r["budget"],
                       "ref": C.is_reference(r)} for _, r in rows.iterrows()]
        legend = [(c.title, c.legend) for c in cols]
        html = env.get_template("page.html.j2").render(
            title=title, model=model, dataset=dataset, columns=cols, rows=table_rows, groups=groups,
            legend=legend, plot={"svg": f"plots/{figure[0].name}", "png": f"plots/{figure[1].name}"},
            version=mpqbench.__version__, stale=df.attrs.get("stale", 0))
        path = out / f"{slug}.html"
        path.write_text(html)
        pages.append(path)
        index.append({"href": path.name, "model": model, "dataset": dataset, "rows": len(rows),
                      "runs": sum(len(ids) for ids in rows["run_ids"]), "methods": rows["method"].nunique(),
                      "groups": groups})
    doc = provenance.document(df)
    html = env.get_template("index.html.j2").render(
        title=title, pages=index, sources=[{"folder": s.folder, "runs": len(s.records)} for s in sources],
        commits=doc["commits"], versions=doc["mpqbench_versions"], version=mpqbench.__version__,
        stale=df.attrs.get("stale", 0))
    (out / "index.html").write_text(html)
    return [out / "index.html", *pages]
