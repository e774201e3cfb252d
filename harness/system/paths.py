"""Where mpqbench keeps what it caches (FP32 checkpoints, unpacked data, built binaries), and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from mpqbench.errors import UserError


def cache_dir() -> Path:
    """``$MPQBENCH_CACHE``, else ``~/.cache/mpqbench``; a path that cannot be a folder is a user error."""
    path = Path(os.environ.get("MPQBENCH_CACHE") or Path.home() / ".cache" / "mpqbench")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cache folder {path} (MPQBENCH_CACHE) is not usable: {exc.strerror}") from None
    return path


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
