"""The ``ray`` executor (``--executor ray``, optional dependency ``mpqbench[ray]``): a sweep's jobs as Ray
tasks on a cluster or a local Ray instance (:mod:`.executor`); a local multi-node cluster for tests and the
benchmark (:mod:`.cluster`); ``mpqbench bench executors`` (:mod:`.bench`). Ray is imported only when the
executor runs, so the plugin loads (and ``--executor ray`` fails in one line) where Ray is not installed."""

from mpqbench.api import Benchmark, hookimpl


@hookimpl
def mpqbench_register_executors(register):
    from mpqbench.plugins.ray_executor.executor import RayExecutor

    register(RayExecutor())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.ray_executor.bench import main

    register(Benchmark("executors", main, "one 8-cell sweep through the process and ray executors: wall time "
                                          "and the harness's overhead over the cells' own time"))
