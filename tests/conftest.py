"""Shared test set-up: an isolated cache per test session, and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per xdist worker: more threads than cores slows tiny models a lot


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Checkpoints and unpacked data go to a per-session folder, never the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("MPQBENCH_CACHE")
    os.environ["MPQBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MPQBENCH_CACHE", None)
    else:
        os.environ["MPQBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def mpqbench_cache(isolated_cache) -> Path:
    """The testing plugin's cache is the session's isolated cache."""
    return isolated_cache


@pytest.fixture(scope="module")
def arm_cache(tmp_path_factory):
    """A build cache for the arm-qemu tests; they are skipped where the toolchain is missing."""
    from mpqbench.plugins.arm_qemu import toolchain

    reason = toolchain.unavailable()
    if reason:
        pytest.skip(reason)
    return tmp_path_factory.mktemp("arm-cache")


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console script in a subprocess (what a user runs)."""
    exe = Path(sys.executable).with_name("mpqbench")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
