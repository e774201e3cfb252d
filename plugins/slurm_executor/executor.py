"""The ``slurm`` executor: one Slurm job per mpqbench job, submitted and watched through submitit.

- **Where.** ``cluster=slurm`` (the default) submits with ``sbatch`` from a login node; ``cluster=local`` runs
  each job as a process on this machine through submitit's local executor (the tests use it). submitit writes
  each job's pickle, result and logs under ``folder``; Slurm nodes must see that folder, the Python
  environment (the same mpqbench and plugins) and the FP32 cache folder at the same paths, as on any cluster
  with a shared file system (no checkpoint is carried between nodes).
- **Resources.** ``cpus_per_task`` = the recipe's threads; ``gpus`` GPUs (default 0) per job that trains
  (``--device auto``, the default, then finds them on the node) and at least one for a job deploying to a
  CUDA target; ``time_min``, ``mem_gb`` (0: the partition's default), ``partition``, ``account``, ``qos``,
  ``constraint`` as sbatch takes them. Every job is submitted at
  once and Slurm's queue decides what runs; ``--jobs N`` above 1 keeps at most N submitted at a time.
- **Failures.** A job's own exception is its result (a failed row). A job that ends without a result (killed,
  node failure, time limit) is resubmitted up to ``max_retries`` times, then reported as
  :class:`~mpqbench.errors.WorkerDied`. A cell refuses to run on a node whose method code differs from the
  driver's.
- **Ctrl-C.** Closing the generator cancels (``scancel``) every job not finished.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable

from mpqbench.api import Executor
from mpqbench.errors import UserError, WorkerDied
from mpqbench.plugin.params import Choice
from mpqbench.plugins import remote

log = logging.getLogger("mpqbench.executor")
STARTED = ("RUNNING", "COMPLETING", "COMPLETED", "FINISHED")
"""submitit job states after the job began (Slurm's, and the local executor's RUNNING/FINISHED)."""


@dataclass(frozen=True)
class Outcome:
    """What a Slurm job runs: the mpqbench job, with its exception returned as its result (submitit would
    otherwise keep only its traceback text)."""

    job: Callable[[], Any]

    def __call__(self):
        try:
            remote.check_code(self.job)
            return self.job()
        except Exception as exc:
            return remote.portable(exc)


class SlurmExecutor(Executor):
    name = "slurm"
    description = "one Slurm job per job through submitit (cluster=local: processes on this machine)"
    params = {
        "cluster": Choice("slurm", "local"),
        "folder": "slurm-jobs",
        "partition": "",
        "account": "",
        "qos": "",
        "constraint": "",
        "time_min": 240,
        "mem_gb": 0.0,
        "gpus": 0,
        "max_retries": 1,
        "poll_s": 10.0,
    }

    def run(self, jobs, workers, params, on_start=None):
        params = {**{k: v[0] if isinstance(v, Choice) else v for k, v in self.params.items()}, **params}
        if not jobs:
            return
        try:
            import submitit
            from submitit.core.utils import UncompletedJobError
        except ImportError:
            raise UserError("the slurm executor needs submitit: pip install 'mpqbench[slurm]'") from None
        executor = _executor(submitit, params)
        cap = workers if workers > 1 else len(jobs)
        pending, running, started, strikes = deque(range(len(jobs))), {}, set(), Counter()
        try:
            while pending or running:
                while pending and len(running) < cap:
                    i = pending.popleft()
                    job = jobs[i]
                    gpus = max(params["gpus"], 1) if remote.needs_gpu(job, params["gpus"] > 0) else 0
                    executor.update_parameters(name=f"mpqbench {remote.describe(job)}",
                                               cpus_per_task=remote.threads(job), gpus_per_node=gpus)
                    running[i] = executor.submit(Outcome(job))
                    if params["cluster"] == "local":
                        running[i]._results_timeout_s = 2  # no network file system to wait for
                finished = False
                for i, handle in list(running.items()):
                    if i not in started and handle.state in STARTED:
                        started.add(i)
                        if on_start:
                            on_start(i)
                    if not handle.done():
                        continue
                    finished = True
                    del running[i]
                    try:
                        result = handle.result()
                    except UncompletedJobError as exc:
                        strikes[i] += 1
                        reason = _first_line(exc)
                        if strikes[i] <= params["max_retries"]:
                            log.warning("job %s (%s) ended without a result; resubmitted: %s", handle.job_id,
                                        remote.describe(jobs[i]), reason)
                            pending.appendleft(i)
                            started.discard(i)
                            continue
                        result = WorkerDied(f"Slurm job {handle.job_id} ended without a result {strikes[i]} times "
                                            f"(killed, node failure or time limit; logs in {handle.paths.folder}): "
                                            f"{reason}")
                    yield i, result
                if not finished:
                    time.sleep(params["poll_s"])
        finally:
            for handle in running.values():
                try:
                    handle.cancel(check=False)
                except Exception as exc:  # cancelling is best effort; say what may still run
                    log.warning("could not cancel Slurm job %s: %s", handle.job_id, exc)


def _executor(submitit, params: dict):
    """A submitit executor with the sweep-wide parameters (per-job ones are set at each submission)."""
    executor = submitit.AutoExecutor(folder=params["folder"], cluster=params["cluster"])
    options: dict[str, Any] = {"timeout_min": int(params["time_min"])}
    if params["mem_gb"]:
        options["mem_gb"] = params["mem_gb"]
    for key in ("partition", "account", "qos", "constraint"):
        if params[key]:
            options[f"slurm_{key}"] = params[key]
    executor.update_parameters(**options)
    return executor


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__
