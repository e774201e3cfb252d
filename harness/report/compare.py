"""Two sweeps, or two methods of one sweep, side by side: the rows they share with the difference and its
paired significance over matched seeds, and the rows only one of them has.

Rows are the leaderboard's (stale records left out the same way). Two folders match rows on (method,
model, data set, recipe, budget); two methods of one folder match on (model, data set, recipe, budget).
Two tests, because a difference has two sources of noise:

* **seeds** (training noise): runs pair by seed (runs of the same seed share the FP32 start and the data
  order, so the paired difference removes most seed-to-seed spread); Student's paired t-test (two-sided,
  scipy's ``ttest_rel``) on the seeds both sides finished; below two pairs there is no test.
* **images** (test-set noise): where both records store per-image correctness (``RunRecord.correct``), an
  exact McNemar test on the discordant images pooled over the paired seeds (images A got right and B wrong
  against the reverse; scipy's ``binomtest``), which sees a consistent difference of a few images that the
  accuracy's standard error hides.

A difference is called only when every test available says so (p < alpha, default 0.05); otherwise it is
"within noise". With 2-3 seeds only large, consistent differences pass, which is the point.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from scipy import stats

from mpqbench.errors import UserError
from mpqbench.pipeline.record import RunRecord
from mpqbench.report import leaderboard, units

ROW_KEY = ["method", "model", "dataset", "recipe", "budget"]
METRICS = [m for m, _ in leaderboard.METRICS if not m.endswith("_s")] + ["search_s", "train_s"]


@dataclass
class Pair:
    key: dict
    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    pairs: int
    diff: float
    """Mean of the paired differences B - A over the seeds both finished (NaN without a pair)."""
    ci95: float
    """Half-width of the 95% confidence interval of ``diff`` (NaN below two pairs)."""
    p: float
    """Paired t-test over seeds (NaN below two pairs)."""
    verdict: str
    p_images: float = float("nan")
    """Exact McNemar test on the pooled discordant images (NaN where correctness is not recorded)."""
    discordant: str = ""
    """``A-only/B-only``: images only A got right / only B got right, over the paired seeds."""


@dataclass
class Comparison:
    a: str
    b: str
    metric: str
    alpha: float
    shared: list[Pair]
    only_a: list[dict]
    only_b: list[dict]

    def to_json(self) -> dict:
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        out = asdict(self)
        out["shared"] = [{k: clean(v) for k, v in p.items()} for p in out["shared"]]
        return out


def seed_values(records: Iterable[RunRecord], metric: str, stale: bool = False) -> pd.DataFrame:
    """Leaderboard rows (``ROW_KEY``) with ``values``: {seed: metric} of their finished runs, and ``masks``:
    {seed: per-image correctness} where the records hold it."""
    records = list(records)
    if metric not in METRICS:
        raise UserError(f"--metric: unknown metric {metric!r} (known: {', '.join(METRICS)})")
    table = leaderboard.table(records, stale=stale)
    if table.empty:
        return pd.DataFrame(columns=[*ROW_KEY, "a_bits", "values", "masks"])
    by_id = {r.id: leaderboard.flatten(r) for r in records}
    records_by_id = {r.id: r for r in records}
    values, masks = [], []
    for ids in table["run_ids"]:
        runs = [by_id[i] for i in ids if by_id[i]["status"] == "done"]
        values.append({int(r["seed"]): float(r[metric]) for r in runs if not units.missing(r.get(metric))})
        found = {int(r["seed"]): records_by_id[r["id"]].correct_mask(metric) for r in runs}
        masks.append({seed: mask for seed, mask in found.items() if mask is not None})
    out = table[ROW_KEY].copy()
    out["a_bits"] = table["mean_a_bits"].round(2)
    out["values"] = values
    out["masks"] = masks
    return out


def mcnemar(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> tuple[float, str]:
    """(exact McNemar p, "A-only/B-only") over the seeds both sides have masks of equal length for."""
    seeds = [s for s in sorted(set(a) & set(b)) if a[s].shape == b[s].shape]
    if not seeds:
        return np.nan, ""
    only_a = sum(int((a[s] & ~b[s]).sum()) for s in seeds)
    only_b = sum(int((~a[s] & b[s]).sum()) for s in seeds)
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return p, f"{only_a}/{only_b}"


def paired(a: dict[int, float], b: dict[int, float], alpha: float) -> tuple[int, float, float, float, str]:
    """(pairs, mean difference B - A, its 95% CI half-width, p, verdict) over the seeds in both."""
    seeds = sorted(set(a) & set(b))
    if not a or not b:
        return 0, np.nan, np.nan, np.nan, f"no finished run in {'A' if not a else 'B'}"
    if not seeds:
        return 0, np.nan, np.nan, np.nan, "no seed in common"
    d = np.array([b[s] - a[s] for s in seeds])
    mean = float(d.mean())
    if len(d) < 2:
        return 1, mean, np.nan, np.nan, "1 pair: no test"
    sd = float(d.std(ddof=1))
    ci = float(stats.t.ppf(0.975, len(d) - 1) * sd / math.sqrt(len(d)))
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
        verdict = "identical on every seed" if mean == 0 else f"B {mean:+.2f} on every seed (no spread to test)"
        return len(d), mean, ci, p, verdict
    p = float(stats.ttest_rel([b[s] for s in seeds], [a[s] for s in seeds]).pvalue)
    verdict = f"within noise (p={p:.2g})" if p >= alpha else f"B {'higher' if mean > 0 else 'lower'} (p={p:.2g})"
    return len(d), mean, ci, p, verdict


def _combined(diff: float, p_seeds: float, p_images: float, alpha: float, seed_verdict: str) -> str:
    """The verdict from both tests: a difference only when every available test calls it."""
    tests = [p for p in (p_seeds, p_images) if not units.missing(p)]
    if all(p < alpha for p in tests) and diff != 0:
        basis = "" if len(tests) == 2 else ", images only"
        return f"B {'higher' if diff > 0 else 'lower'} (p={max(tests):.2g}{basis})"
    if units.missing(p_seeds) and seed_verdict.startswith("1 pair"):
        return f"within noise (images p={p_images:.2g}, 1 seed)"
    return f"within noise (seeds p={p_seeds:.2g}, images p={p_images:.2g})" if not units.missing(p_seeds) \
        else f"within noise (images p={p_images:.2g})"


def _stats(values: dict[int, float]) -> tuple[int, float, float]:
    v = np.array(list(values.values()), float)
    return len(v), (float(v.mean()) if len(v) else np.nan), (float(v.std(ddof=1)) if len(v) > 1 else np.nan)


def compare(rows_a: pd.DataFrame, rows_b: pd.DataFrame, key: list[str], names: tuple[str, str], metric: str,
            alpha: float = 0.05) -> Comparison:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must lie between 0 and 1, not {alpha}")
    index_a = {tuple(r[k] for k in key): r["values"] for _, r in rows_a.iterrows()}
    index_b = {tuple(r[k] for k in key): r["values"] for _, r in rows_b.iterrows()}
    masks_a = {tuple(r[k] for k in key): r.get("masks") or {} for _, r in rows_a.iterrows()}
    masks_b = {tuple(r[k] for k in key): r.get("masks") or {} for _, r in rows_b.iterrows()}
    shared = []
    for k in [k for k in index_a if k in index_b]:
        a, b = index_a[k], index_b[k]
        n_a, mean_a, std_a = _stats(a)
        n_b, mean_b, std_b = _stats(b)
        pairs, diff, ci, p, verdict = paired(a, b, alpha)
        p_images, discordant = mcnemar(masks_a[k], masks_b[k])
        if not units.missing(p_images) and pairs:
            verdict = _combined(diff, p, p_images, alpha, verdict)
        shared.append(Pair(dict(zip(key, k)), n_a, n_b, mean_a, mean_b, std_a, std_b, pairs, diff, ci, p, verdict,
                           p_images, discordant))
    only = lambda src, other: [{**dict(zip(key, k)), "seeds": len(v)} for k, v in src.items()  # noqa: E731
                               if k not in other]
    return Comparison(names[0], names[1], metric, alpha, shared, only(index_a, index_b), only(index_b, index_a))


def folders(records_a, records_b, names: tuple[str, str], metric: str = "top1", alpha: float = 0.05,
            across_recipes: bool = False) -> Comparison:
    """Two sweeps: rows matched on (method, model, data set, recipe, budget); with ``across_recipes`` on
    (method, model, data set, budget), for the same grid run under two recipes (``lsq_grad=paper`` against
    ``torch``), each folder holding one recipe per row."""
    rows = [seed_values(records, metric) for records in (records_a, records_b)]
    key = ROW_KEY
    if across_recipes:
        key = [k for k in ROW_KEY if k != "recipe"]
        for name, side in zip(names, rows):
            several = side[side.duplicated(key, keep=False)]
            if not several.empty:
                first = several.iloc[0]
                raise UserError(f"--across-recipes: {name} holds {first['method']} {first['budget']} under "
                                f"several recipes ({', '.join(sorted(several['recipe'].unique()))})")
    return compare(*rows, key, names, metric, alpha)


def methods(records, method_a: str, method_b: str, metric: str = "top1", alpha: float = 0.05) -> Comparison:
    """Two methods (labels as the leaderboard writes them, e.g. ``ompq`` and ``uniform(a=8)``) of one sweep,
    matched on (model, data set, recipe, budget); a side's rows without a budget match every budget."""
    rows = seed_values(records, metric)
    for m in (method_a, method_b):
        if m not in set(rows["method"]):
            raise UserError(f"no rows of method {m!r} (there are: {', '.join(sorted(set(rows['method'])))})")
    key = [k for k in ROW_KEY if k != "method"]
    rows_a, rows_b = rows[rows["method"] == method_a], rows[rows["method"] == method_b]
    return compare(_at_budgets(rows_a, rows_b), _at_budgets(rows_b, rows_a), key, (method_a, method_b), metric,
                   alpha)


def _at_budgets(rows: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with each row run without a budget (a fixed bitwidth, e.g. uniform W3A4) repeated at every
    budget ``other`` has for its (model, data set, recipe): such a row is the same row whatever the budget, so
    a method's row at avg_bits=3 can be paired with uniform W3A4 seed by seed."""
    fixed = rows["budget"] == "-"
    place = ["model", "dataset", "recipe"]
    budgets = other.loc[other["budget"] != "-", place + ["budget"]].drop_duplicates()
    if not fixed.any() or budgets.empty:
        return rows
    spread = rows[fixed].drop(columns="budget").merge(budgets, on=place)
    placed = rows[fixed].set_index(place).index.isin(budgets.set_index(place).index)
    return pd.concat([rows[~fixed], rows[fixed][~placed], spread[rows.columns]], ignore_index=True)


def baseline(records, name: str = "uniform", metric: str = "top1", alpha: float = 0.05) -> Comparison:
    """Every other method's rows of one sweep against the rows of method ``name`` (any parameters, e.g.
    ``uniform(a=8)``) at the same (model, data set, recipe, budget) and the same mean activation bits: the claim
    of a mixed-precision method is that its allocation beats the uniform one at equal cost, and activation bits
    change accuracy on their own. A row with no such baseline row is listed as B-only; FP32 is left out."""
    rows = seed_values(records, metric)
    is_base = rows["method"].map(lambda label: label.split("(")[0]) == name
    if not is_base.any():
        raise UserError(f"no rows of method {name!r} to compare against (there are: "
                        f"{', '.join(sorted(set(rows['method'])))})")
    key = [k for k in ROW_KEY if k != "method"] + ["a_bits"]
    result = Comparison(name, "each method", metric, alpha, [], [], [])
    for method in sorted(set(rows.loc[~is_base & (rows["method"] != "fp32"), "method"])):
        part = compare(rows[is_base], rows[rows["method"] == method], key, (name, method), metric, alpha)
        for p in part.shared:
            p.key = {"method": method, **p.key}
        result.shared += part.shared
        result.only_b += [{"method": method, **r} for r in part.only_b]
    return result


def render(result: Comparison, width: int = 120) -> str:
    """One table per (model, data set) of the shared rows, then the rows only one side has, then a legend."""
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, emoji=False, markup=False)
    console.print(f"{result.metric}: A = {result.a}, B = {result.b}")
    pairs: dict[tuple, list[Pair]] = {}
    for p in result.shared:
        pairs.setdefault((p.key["model"], p.key["dataset"]), []).append(p)
    for (model, dataset), rows in pairs.items():
        recipes = {p.key.get("recipe", "A's and B's") for p in rows}  # no recipe in the key: matched across them
        several = len(recipes) > 1
        shown = [k for k in ("method", "budget", "a_bits") if k in rows[0].key] + (["recipe"] if several else [])
        recipe = "" if several else f" · recipe {recipes.pop()}"
        console.print(Text(f"{model} · {dataset}{recipe}"))
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
        for k in shown:
            table.add_column({"a_bits": "A bits"}.get(k, k), overflow="fold",
                             max_width={"method": 30, "budget": 14}.get(k, 22))
        for title in ("A", "B", "B - A", "95% CI", "pairs", "A-only/B-only"):
            table.add_column(title, justify="right", no_wrap=True)
        table.add_column("verdict", overflow="fold")
        for p in rows:
            cells = [*(str(p.key[k]) for k in shown), units.mean_std(p.mean_a, p.std_a),
                     units.mean_std(p.mean_b, p.std_b), "" if units.missing(p.diff) else f"{p.diff:+.2f}",
                     "" if units.missing(p.ci95) else f"± {p.ci95:.2f}", str(p.pairs), p.discordant, p.verdict]
            table.add_row(*map(Text, cells))
        console.print(table)
    if not result.shared:
        console.print("no rows in common")
    for side, rows in (("A", result.only_a), ("B", result.only_b)):
        for r in rows:
            console.print(f"only in {side} ({getattr(result, side.lower())}): " + " ".join(
                str(r[k]) for k in r if k != "seeds") + f" ({r['seeds']} seed{'s' if r['seeds'] != 1 else ''})")
    console.print(f"A, B: mean ± sample std over each side's seeds. B - A: mean of the differences over the seeds "
                  f"both finished, with the 95% confidence interval of that mean. A-only/B-only: test images only A / "
                  f"only B classified correctly, pooled over those seeds. Verdict: paired t-test over seeds and exact "
                  f"McNemar test over images (where recorded), a difference only when both give p < {result.alpha}.")
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


def to_json(result: Comparison) -> str:
    return json.dumps(result.to_json(), indent=1) + "\n"
