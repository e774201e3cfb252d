"""The core's own implementations of the phase hooks.

``dispatch`` answers each phase last (``trylast``) by calling the run's method or target, so any plugin
may take a phase over. ``instrument`` wraps every phase to time it and take its peak memory, so no
method has to.
"""

from __future__ import annotations

from mpqbench.hookspecs import hookimpl
from mpqbench.meter import measure


class Dispatch:
    @hookimpl(trylast=True)
    def mpqbench_search(self, run):
        return run.method.search(run)

    @hookimpl(trylast=True)
    def mpqbench_train(self, run, policy):
        return run.method.train(run, policy)

    @hookimpl(trylast=True)
    def mpqbench_deploy(self, run, target, imodel, inputs):
        return target.deploy(run, imodel, inputs)


class Instrument:
    @hookimpl(wrapper=True)
    def mpqbench_search(self, run):
        with measure(run.phases, "search"):
            return (yield)

    @hookimpl(wrapper=True)
    def mpqbench_train(self, run, policy):
        with measure(run.phases, "train"):
            return (yield)

    @hookimpl(wrapper=True)
    def mpqbench_deploy(self, run, target, imodel, inputs):
        with measure(run.phases, f"deploy:{target.name}"):
            return (yield)
