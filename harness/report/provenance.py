"""Leaderboard files that say where their numbers come from: JSON and CSV with a schema version, the
mpqbench versions and git commits that produced the rows, the run ids behind every row, the number of test
images and a 95% confidence interval beside each standard deviation.

JSON (``schema`` 1): ``{"schema", "kind", "generator", "commits", "mpqbench_versions", "records",
"stale_hidden", "units", "columns", "rows": [...]}`` with one object per row; lists stay lists and missing
numbers are null. CSV: the same rows, lists joined by spaces, with the schema version in a last column
(``leaderboard_schema``) so a row copied elsewhere still says what it is. Neither file holds a timestamp:
rebuilding from the same records gives the same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

import mpqbench

SCHEMA = 1
LIST_COLUMNS = ("run_ids", "run_seeds", "run_status", "commits", "mpqbench_versions", "environments")
DESCRIPTIONS = {
    "method": "method with every parameter that differs from its default",
    "recipe": "training recipe name plus the fields a sweep overrode",
    "budget": "budget as written (KIND=VALUE; wN: the cost of the uniform N-bit policy); budget_value resolved",
    "seeds": "distinct seeds that finished",
    "failed": "failed runs; error: the first error",
    "<metric>": "mean over the finished seeds",
    "<metric>_std": "sample standard deviation over the seeds (ddof 1; null with one seed)",
    "<metric>_ci95": "half-width of the 95% confidence interval of the mean (Student's t; null with one seed)",
    "top1": "fake-quant test accuracy, %",
    "int_top1": "integer model's test accuracy (reference executor), %",
    "int_minus_fq": "int_top1 - top1, points",
    "drop": "FP32 checkpoint top-1 minus top1, points",
    "avg_w_bits": "weight bits weighted by parameter count",
    "mean_a_bits": "activation bits, plain mean over quantization points",
    "size_mb": "weights at their bit widths, 2^20 bytes",
    "bitops_g": "sum of MACs x w x a per image, 10^9",
    "search_s": "search seconds per run (including search inside training)",
    "train_s": "fine-tune seconds per run",
    "budget_met": "runs meeting the budget / runs",
    "run_ids": "every run of the row (finished and failed), by seed; run_seeds and run_status align with it",
    "commits": "mpqbench git commits that produced the runs (-dirty: with uncommitted changes)",
    "mpqbench_versions": "mpqbench versions that produced the runs",
    "environments": "machine and software of the runs, one line each (full details in each record)",
    "code": "method plugin version and source hash",
    "test_images": "test images behind each accuracy",
    "fp32_top1": "accuracy of the FP32 checkpoint the runs started from, %",
    "<target> bit-exact": "deployed runs whose outputs equal the reference executor's / deployed runs",
    "<target>:<metric>": "target headline metric, mean (unit in units)",
}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if hasattr(value, "item"):
        return _clean(value.item())
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _clean(v) for k, v in row.items()} for row in df.to_dict(orient="records")]


def document(df: pd.DataFrame) -> dict[str, Any]:
    """The JSON document of a leaderboard table (:func:`mpqbench.report.leaderboard.table`)."""
    listed = lambda col: sorted({v for vs in df.get(col, []) for v in (vs or [])})  # noqa: E731
    return {
        "schema": SCHEMA,
        "kind": "mpqbench-leaderboard",
        "generator": f"mpqbench {mpqbench.__version__}",
        "commits": listed("commits"),
        "mpqbench_versions": listed("mpqbench_versions"),
        "records": int(sum(len(ids or []) for ids in df.get("run_ids", []))),
        "stale_hidden": int(df.attrs.get("stale", 0)),
        "units": dict(df.attrs.get("units", {})),
        "columns": DESCRIPTIONS,
        "rows": rows(df),
    }


def to_json(df: pd.DataFrame) -> str:
    return json.dumps(document(df), indent=1, ensure_ascii=False)


def to_csv(df: pd.DataFrame) -> str:
    flat = df.copy()
    for col in LIST_COLUMNS:
        if col in flat:
            flat[col] = [" ".join(map(str, v)) if isinstance(v, list) else "" for v in flat[col]]
    if "environments" in flat:
        flat["environments"] = [" | ".join(v) if isinstance(v, list) else "" for v in df["environments"]]
    if "test_images" in flat:
        flat["test_images"] = [str(_clean(v)) if _clean(v) is not None else "" for v in flat["test_images"]]
    flat["leaderboard_schema"] = SCHEMA
    return flat.to_csv(index=False)
