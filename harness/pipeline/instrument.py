"""The core's implementations of the stage hook: the innermost one runs the stage, a wrapper times it and
takes its peak memory, so no method or target has to."""

from __future__ import annotations

from mpqbench.plugin.hookspecs import hookimpl
from mpqbench.system.meter import measure


class Instrument:
    @hookimpl(trylast=True)
    def mpqbench_stage(self, run, stage, call):
        return call()


class Meter:
    @hookimpl(wrapper=True)
    def mpqbench_stage(self, run, stage, call):
        with measure(run.phases, stage):
            return (yield)
