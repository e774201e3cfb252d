"""RunRecord: the typed, versioned record of one run, written only by the driver and read by every report.

Schema 2 adds the policy the search returned (``searched_policy``) beside the final one read back from the
finalized model (``policy``, what the budget is checked on), and the per-epoch loss parts of every training
stage (``training``), and which test images each model classified correctly (``correct``, so two rows can
be compared image by image: :mod:`mpqbench.report.compare`). Records of schema 1 (one policy, no loss
parts) still load: their policy is both; records without ``correct`` compare by seed only.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np

SCHEMA = 2
STATUSES = ("running", "done", "failed")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    id: str
    label: str
    """The method with every parameter that differs from its default, e.g. ``ompq(beta=1)``."""
    spec: dict[str, Any]
    """The run's identity (:meth:`mpqbench.pipeline.spec.RunSpec.identity`)."""
    plugin: dict[str, str]
    """The method's fingerprint: name, version, source hash."""
    status: str = "running"
    started: str = ""
    finished: str | None = None
    error: str | None = None
    traceback: str | None = None
    searched_policy: dict[str, list[int]] | None = None
    policy: dict[str, list[int]] | None = None
    layers: dict[str, list[int]] = field(default_factory=dict)
    """Layer -> [weights, MACs per image]."""
    budget: dict[str, Any] | None = None
    """text, kind, unit, value, measured, met: measured on the final policy."""
    metrics: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    training: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    correct: dict[str, str] = field(default_factory=dict)
    """Metric (``fp32_top1``, ``top1``, ``int_top1``) -> per-test-image correctness, :func:`pack_correct`."""
    environment: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> "RunRecord":
        """A record of any schema this version reads (1 or 2); ValueError for anything else."""
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict) or data.get("schema") not in (1, SCHEMA):
            raise ValueError(f"not a run record of schema 1 or {SCHEMA}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
        record = cls(**data)
        if record.schema == 1:  # read as schema 2: written back (verify --update), it is a schema-2 record
            record.searched_policy, record.schema = record.policy, SCHEMA
        return record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])

    @property
    def budget_met(self) -> bool | None:
        return None if self.budget is None else bool(self.budget["met"])

    def correct_mask(self, metric: str) -> np.ndarray | None:
        """Which test images the model behind ``metric`` got right (bool array), None if not recorded."""
        text = self.correct.get(metric)
        if text is None:
            return None
        count, _, bits = text.partition(":")
        return np.unpackbits(np.frombuffer(base64.b64decode(bits), np.uint8), count=int(count)).astype(bool)

    def seconds(self, phase: str) -> float | None:
        entry = self.phases.get(phase)
        return None if entry is None else float(entry["seconds"])

    @property
    def search_seconds(self) -> float | None:
        """The search stage plus search a method does inside training (``train:search``)."""
        parts = [self.seconds("search"), self.seconds("train:search")]
        return None if parts[0] is None else sum(p for p in parts if p is not None)

    @property
    def train_seconds(self) -> float | None:
        train = self.seconds("train")
        return None if train is None else train - (self.seconds("train:search") or 0.0)


def pack_correct(mask) -> str:
    """A bool vector as ``"<count>:<base64 of its packed bits>"`` (1.3 kB for 10,000 test images)."""
    mask = np.asarray(mask, dtype=bool)
    return f"{mask.size}:{base64.b64encode(np.packbits(mask)).decode()}"
