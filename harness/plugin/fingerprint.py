"""A plugin's fingerprint (name, version, hash of its own files), part of every run id it produces, so a
result is invalidated when the code that produced it changes.

The hash covers the plugin's own files only: every file (any suffix, so C, CUDA or Verilog sources count)
under the folder of the package its entry point names, or the single module file when the entry point is
a module. Never the folder a single-module plugin happens to sit in (that would be all of site-packages:
slow, and changed by installing an unrelated package).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

SKIPPED = ("__pycache__",)


@functools.lru_cache(maxsize=None)
def source_hash(module_name: str) -> str:
    """sha256 (16 hex digits) of the files of ``module_name``: its package folder, or its file."""
    module = importlib.import_module(module_name)
    digest = hashlib.sha256()
    if hasattr(module, "__path__"):  # a package: every file below its folder
        root = Path(next(iter(module.__path__)))
        files = sorted(p for p in root.rglob("*") if p.is_file() and not set(SKIPPED) & set(p.parts)
                       and p.suffix != ".pyc")
    else:
        root = Path(module.__file__).parent
        files = [Path(module.__file__)]
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
