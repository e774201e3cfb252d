"""One 8-cell sweep through the process and ray executors: wall time and the harness's overhead over the cells'
own time.

The sweep (small-cnn on digits, ``fp32`` and ``uniform`` at W8/W4/W2, seeds 0 and 1, recipe ``tiny`` unless
``--recipe``; ``--set qat_epochs=N`` lengthens the cells) runs as ``mpqbench run`` in a subprocess, the way
a user runs it, once per configuration:

- ``process1``: ``--executor process --jobs 1``; ``process2``: ``--executor process --jobs 2``;
- ``ray-cluster``: ``--executor ray`` on a running cluster of this machine (a head with no CPUs and two worker
  nodes of one CPU each; its start-up, timed apart, is outside the sweep's wall time, as on a standing
  cluster);
- ``ray-local``: ``--executor ray:cpus=2`` starting its own Ray instance (start-up included).

Both FP32 checkpoints are trained first into a shared cache, so every configuration runs the same 8 cells.
A cell's own time is the sum of its record's phase seconds; the overhead is the wall time over the ideal
``sum(cell time) / workers``, minus one: process start-up, imports, preflight, scheduling, data and checkpoint
loading, writing records, and idle workers. Cells' times grow when two share two cores (and when other work
shares the machine: the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from tabulate import tabulate

CONFIGS = {
    "process1": (["--executor", "process", "--jobs", "1"], 1),
    "process2": (["--executor", "process", "--jobs", "2"], 2),
    "ray-cluster": (["--executor", "ray"], 2),
    "ray-local": (["--executor", "ray:cpus=2"], 2),
}


def _sweep(opts, methods: str) -> list[str]:
    sets = [arg for item in opts.set for arg in ("--set", item)]
    return ["--models", "small-cnn", "--datasets", "digits", "--recipe", opts.recipe, "--methods", methods,
            "--seeds", "0,1", "--no-progress", *sets]


def _run(args: list[str], out: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds of one ``mpqbench run``, and its start as a Unix time."""
    exe = str(Path(sys.executable).with_name("mpqbench"))
    launched, start = time.time(), time.perf_counter()
    proc = subprocess.run([exe, "run", *args, "--out", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"mpqbench run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, launched


def _records(out: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if any(r["status"] != "done" for r in records):
        raise RuntimeError(f"a cell failed in {out}")
    return records


def _unix(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def main(args: list[str], registry) -> int:
    """One 8-cell sweep through the process and ray executors: wall time and the harness's overhead."""
    parser = argparse.ArgumentParser(prog="mpqbench bench executors", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="recipe override")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    opts = parser.parse_args(args)
    configs = [c.strip() for c in opts.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="mpqbench-bench-") as tmp:
        root = Path(tmp)
        env = {**os.environ, "MPQBENCH_CACHE": str(root / "cache")}
        env.pop("RAY_ADDRESS", None)
        load = [os.getloadavg()[0]]
        print(f"training the FP32 checkpoints (recipe {opts.recipe}) ...", file=sys.stderr)
        _run(_sweep(opts, "fp32") + ["--executor", "local"], root / "warmup", env)
        rows = []
        for name in configs:
            flags, workers = CONFIGS[name]
            cluster, started, run_env = None, "", env
            if name == "ray-cluster":
                from mpqbench.plugins.ray_executor.cluster import LocalCluster

                t0 = time.perf_counter()
                cluster = LocalCluster(workers=2, cpus=1, head_cpus=0).__enter__()
                started = f"{time.perf_counter() - t0:.1f}"
                run_env = {**env, **cluster.driver_env(), "RAY_ADDRESS": cluster.address}
            try:
                print(f"{name} ...", file=sys.stderr)
                wall, launched = _run(_sweep(opts, "fp32,uniform:w=8,uniform:w=4,uniform:w=2") + flags, root / name,
                                      run_env)
            finally:
                if cluster is not None:
                    cluster.stop()
            records = _records(root / name)
            cells = [sum(phase["seconds"] for phase in r["phases"].values()) for r in records]
            first, last = min(_unix(r["started"]) for r in records), max(_unix(r["finished"]) for r in records)
            ideal = sum(cells) / workers
            load.append(os.getloadavg()[0])
            rows.append((name, workers, len(cells), f"{wall:.1f}", f"{sum(cells):.1f}",
                         f"{sum(cells) / len(cells):.2f}", f"{100 * (wall / ideal - 1):.0f}%",
                         f"{first - launched:.0f}", f"{100 * ((last - first) / ideal - 1):.0f}%", started or "-"))
    print(tabulate(rows, headers=["config", "workers", "cells", "wall s", "sum cell s", "mean cell s", "overhead",
                                  "to 1st cell s", "in-sweep overhead", "cluster start s"]))
    print("\noverhead: wall / (sum cell s / workers) - 1; to 1st cell: launch to the first cell's start (whole "
          "seconds); in-sweep overhead: first cell's start to last cell's end, over the same ideal, minus one")
    print(f"\ncores: {os.cpu_count()}; 1-minute load average during the runs: "
          f"{', '.join(f'{x:.1f}' for x in load)} (above the core count: other work shares the CPU)")
    return 0
