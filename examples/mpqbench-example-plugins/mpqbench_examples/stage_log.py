"""A cross-cutting plugin: every stage of every run goes through ``mpqbench_stage``; this wrapper appends one
JSON line per stage (method, seed, stage, seconds, whether it raised) to the file named by
``$MPQBENCH_STAGE_LOG``, and does nothing when it is unset. Wrappers see the run and the stage's name and
must return what the stage returned; the core's innermost implementation runs the stage."""

from __future__ import annotations

import json
import os
import time

from mpqbench import hookimpl


@hookimpl(wrapper=True)
def mpqbench_stage(run, stage, call):
    path = os.environ.get("MPQBENCH_STAGE_LOG")
    start = time.perf_counter()
    ok = False
    try:
        result = yield
        ok = True
        return result
    finally:
        if path:
            spec = getattr(run, "spec", None)
            line = {"method": getattr(getattr(spec, "method", None), "name", None), "seed": getattr(run, "seed", None),
                    "stage": stage, "seconds": round(time.perf_counter() - start, 4), "ok": ok}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
