"""Where mpqbench keeps what it caches (FP32 checkpoints, unpacked data, built binaries)."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """``$MPQBENCH_CACHE``, else ``~/.cache/mpqbench``."""
    path = Path(os.environ.get("MPQBENCH_CACHE") or Path.home() / ".cache" / "mpqbench")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def file_lock(path: Path):
    """An exclusive inter-process lock (parallel workers needing the same checkpoint train it once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename with fsync: a reader (or a kill -9) sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
