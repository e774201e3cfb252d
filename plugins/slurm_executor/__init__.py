"""The ``slurm`` executor (``--executor slurm``, optional dependency ``mpqbench[slurm]``): a sweep's jobs as
Slurm jobs through submitit (:mod:`.executor`). submitit is imported only when the executor runs."""

from mpqbench.api import hookimpl


@hookimpl
def mpqbench_register_executors(register):
    from mpqbench.plugins.slurm_executor.executor import SlurmExecutor

    register(SlurmExecutor())
