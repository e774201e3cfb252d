"""The run store: one JSON record per run, written atomically by the driver alone, plus the run's artifacts.

Layout under the results folder: ``runs/<run_id>.json`` (the record) and ``artifacts/<run_id>/`` (the
exported IntegerModel). A record is replaced only by a newer attempt of the same run or by the same
record with more target results; a kill -9 at any moment leaves every finished record intact. A record
that does not parse (a disk that filled up, a hand edit) is set aside by the sweep that meets it
(``runs/<id>.json.corrupt``, one warning line) and its cell is run again; commands that only read skip it
with a warning and change nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from mpqbench.errors import UserError
from mpqbench.pipeline.record import RunRecord
from mpqbench.system.paths import write_atomic

log = logging.getLogger("mpqbench.store")


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, run_id: str) -> Path:
        return self.root / "runs" / f"{run_id}.json"

    def artifact(self, run_id: str, name: str) -> Path:
        return self.root / "artifacts" / run_id / name

    def integer_model(self, record: RunRecord) -> Path:
        """The path of a run's exported integer model; a one-line UserError when it has none here."""
        path = self.artifact(record.id, "integer_model.npz")
        if "int_top1" not in record.metrics:
            raise UserError(f"run {record.id} has no integer model")
        if not path.exists():
            raise UserError(f"run {record.id}: its integer model is not in {self.root}/artifacts (re-run it)")
        return path

    def check_readable(self) -> None:
        """A one-line UserError unless the folder holds a ``runs/`` folder."""
        if not (self.root / "runs").is_dir():
            raise UserError(f"{self.root} holds no runs/ folder: not a results folder (see --results)")

    def check_writable(self) -> None:
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            probe = self.root / "runs" / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write results to {self.root}: {exc.strerror or exc}") from None

    def _read(self, path: Path, quarantine: bool) -> RunRecord | None:
        try:
            return RunRecord.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            if quarantine:
                target = path.with_name(path.name + ".corrupt")
                path.replace(target)
                log.warning("record %s is unreadable (%s): set aside as %s, its run is redone", path.name,
                            str(exc)[:80], target.name)
            else:
                log.warning("record %s is unreadable (%s): skipped", path.name, str(exc)[:80])
            return None

    def load(self, run_id: str, quarantine: bool = False) -> RunRecord | None:
        return self._read(self.path(run_id), quarantine)

    def write(self, record: RunRecord) -> None:
        write_atomic(self.path(record.id), json.dumps(record.to_json(), indent=1, default=_jsonable).encode())

    def write_artifact(self, run_id: str, name: str, data: bytes) -> None:
        write_atomic(self.artifact(run_id, name), data)

    def records(self) -> Iterator[RunRecord]:
        for path in sorted((self.root / "runs").glob("*.json")):
            record = self._read(path, quarantine=False)
            if record is not None:
                yield record

    def find(self, prefix: str) -> RunRecord:
        """A record by id or unique id prefix; a one-line UserError otherwise."""
        self.check_readable()
        matches = sorted((self.root / "runs").glob(f"{prefix}*.json")) if prefix else []
        if len(matches) != 1:
            what = "no run" if not matches else f"{len(matches)} runs"
            raise UserError(f"{what} match {prefix!r} in {self.root}/runs")
        record = self._read(matches[0], quarantine=False)
        if record is None:
            raise UserError(f"record {matches[0]} is unreadable")
        return record


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
