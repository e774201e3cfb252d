"""Wall time and peak memory of a phase, taken by the core (hook wrappers), never by each method."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psutil

SAMPLE_SECONDS = 0.02


@contextmanager
def measure(into: dict, phase: str):
    """Record ``seconds``, ``cpu_seconds`` and ``peak_rss_mb`` (sampled with psutil every 20 ms, so a
    phase's own peak, not the process's lifetime peak) of the block into ``into[phase]``."""
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], proc.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    cpu0, t0 = proc.cpu_times(), time.perf_counter()
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        cpu1 = proc.cpu_times()
        into[phase] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
            "peak_rss_mb": peak[0] / 2**20,
        }
