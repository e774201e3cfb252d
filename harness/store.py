"""The run store: one JSON record per run, written atomically, plus the run's artifacts.

Layout under the output folder: ``runs/<run_id>.json`` (the record) and ``artifacts/<run_id>/`` (the
exported IntegerModel). A record is replaced only by a newer attempt of the same run or by the same
record with more target results; a kill -9 at any moment leaves every finished record intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from mpqbench.paths import write_atomic


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def artifact(self, run_id: str, name: str) -> Path:
        path = self.root / "artifacts" / run_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def load(self, run_id: str) -> dict | None:
        try:
            return json.loads(self.path(run_id).read_text())
        except FileNotFoundError:
            return None

    def write(self, record: dict) -> None:
        write_atomic(self.path(record["id"]), json.dumps(record, indent=1, default=_jsonable).encode())

    def records(self) -> Iterator[dict]:
        for path in sorted((self.root / "runs").glob("*.json")):
            yield json.loads(path.read_text())

    def find(self, prefix: str) -> dict | None:
        """A record by id or unique id prefix."""
        matches = sorted((self.root / "runs").glob(f"{prefix}*.json"))
        if len(matches) != 1:
            return None
        return json.loads(matches[0].read_text())


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
