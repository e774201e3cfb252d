"""The ``ray`` executor: one Ray task per job, on a running Ray cluster or on a Ray instance it starts here.

- **Where.** ``address`` (``--executor ray:address=HOST:PORT``), else ``$RAY_ADDRESS``, else a local Ray
  instance of ``cpus`` CPUs (0: this machine's) that lives as long as the sweep.
- **Resources.** A task asks for its recipe's ``threads`` CPUs (so Ray runs as many at once as the cluster
  has CPUs for) and ``gpus`` GPUs when it trains on CUDA (``--device cuda``, or ``auto`` on a cluster with
  GPUs) or deploys to a CUDA target. ``--jobs N`` above 1 caps the tasks in flight at N; with ``--jobs 1``
  (the default) the cluster's resources alone decide.
- **FP32 checkpoints.** Checkpoint jobs run first (the driver asks for them first). With
  ``checkpoints=ship`` (the default) each cell's task also receives its checkpoint's files through Ray's
  object store (from the task that trained them, or from the driver's cache when an earlier sweep did) and
  writes them into its node's cache folder when they are missing there, so nodes need no shared storage;
  ``checkpoints=shared`` skips that, for a cache folder every node mounts.
- **Failures.** A job's own exception comes back as its result (a failed row). A task whose worker process or
  node dies is re-run by Ray up to ``max_retries`` times, then reported as
  :class:`~mpqbench.errors.WorkerDied`. A cell refuses to run on a node whose method code differs from the
  driver's (its run id would lie).
- **Progress and logs.** Each task tells the driver through a small actor when it starts (the progress bar's
  "running:" line) and relays its log records (FP32 epochs become progress bars, warnings reach the console).
- **Ctrl-C.** Closing the generator cancels every task not finished (running ones are killed).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from mpqbench.api import Executor
from mpqbench.errors import UserError, WorkerDied
from mpqbench.pipeline.jobs import CellJob, CheckpointJob
from mpqbench.plugin.params import Choice
from mpqbench.plugins import remote

log = logging.getLogger("mpqbench.executor")
POLL_S = 0.25
"""How often the driver looks for started tasks and log records while it waits."""


class RayExecutor(Executor):
    name = "ray"
    description = "one Ray task per job on a Ray cluster (address=, $RAY_ADDRESS) or a local Ray instance"
    params = {
        "address": "",
        "cpus": 0,
        "gpus": 1.0,
        "max_retries": 2,
        "checkpoints": Choice("ship", "shared"),
    }

    def __init__(self):
        self._shipped: dict[tuple, Any] = {}
        """Checkpoint identity -> object ref of its files, kept from the checkpoint jobs to the cells."""
        self._session = None

    def run(self, jobs, workers, params, on_start=None):
        params = {**{k: v[0] if isinstance(v, Choice) else v for k, v in self.params.items()}, **params}
        if not jobs:
            return
        ray = connect(params["address"], params["cpus"])
        if self._session != ray.get_runtime_context().get_job_id():
            self._session, self._shipped = ray.get_runtime_context().get_job_id(), {}
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        gpu_jobs = [j for j in jobs if remote.needs_gpu(j, has_gpus)]
        if gpu_jobs and not has_gpus:
            raise UserError(f"{remote.describe(gpu_jobs[0])} needs a GPU and the Ray cluster has none")
        ship = params["checkpoints"] == "ship"
        finished: set[int] = set()
        inbox = _Inbox(ray, jobs, finished, on_start)
        cap = workers if workers > 1 else len(jobs)
        waiting = list(range(len(jobs)))[::-1]
        running: dict[Any, int] = {}  # first object ref of a task -> job index
        extra: dict[int, Any] = {}  # job index -> its checkpoint files' ref (checkpoint jobs when shipping)
        try:
            while waiting or running:
                while waiting and len(running) < cap:
                    i = waiting.pop()
                    job = jobs[i]
                    files = self._files_for(job, ray) if ship and isinstance(job, CellJob) else None
                    returns = 2 if ship and isinstance(job, CheckpointJob) else 1
                    refs = _task().options(
                        num_cpus=remote.threads(job), num_gpus=params["gpus"] if remote.needs_gpu(job, has_gpus) else 0,
                        max_retries=params["max_retries"], retry_exceptions=False, num_returns=returns,
                        name=f"mpqbench {remote.describe(job)}",
                    ).remote(job, i, inbox.mailbox, inbox.level, files, returns == 2)
                    if returns == 2:
                        running[refs[0]], extra[i] = i, refs[1]
                    else:
                        running[refs] = i
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                inbox.drain()
                for ref in done:
                    i = running.pop(ref)
                    finished.add(i)
                    result = _result(ray, ref)
                    if i in extra and isinstance(result, dict):
                        self._shipped[remote.checkpoint_identity(jobs[i])] = extra.pop(i)
                    yield i, result
        finally:
            for ref in running:
                ray.cancel(ref, force=True)
            inbox.close(timeout=0 if running else 5)

    def _files_for(self, job: CellJob, ray):
        """The object ref of the cell's FP32 checkpoint files: from this sweep's checkpoint job, else from the
        driver's cache (put once), else None (the cell will report the checkpoint missing)."""
        identity = remote.checkpoint_identity(job)
        if identity not in self._shipped:
            files = remote.cached_files(job.cache, identity)
            self._shipped[identity] = ray.put(files) if files else None
        return self._shipped[identity]


def connect(address: str, cpus: int):
    """The ``ray`` module, connected: to ``address``, else ``$RAY_ADDRESS``, else a local instance."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'mpqbench[ray]'") from None
    if ray.is_initialized():
        return ray
    target = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    if target is None:
        options["num_cpus"] = cpus or os.cpu_count()
    try:
        ray.init(address=target, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"connect to the Ray cluster at {target}" if target else "start a local Ray instance"
        raise UserError(f"cannot {where}: {(str(exc).strip() or type(exc).__name__).splitlines()[0]}") from None
    log.info("Ray: %s", ray.cluster_resources())
    return ray


def _result(ray, ref):
    """A finished task's result; Ray's own errors (after its retries) become WorkerDied."""
    from ray import exceptions

    try:
        return ray.get(ref)
    except exceptions.RayTaskError as exc:  # the task wrapper itself failed, e.g. unpickling the job
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
        return remote.portable(cause) if cause else RuntimeError(str(exc).strip().splitlines()[-1])
    except exceptions.RayError as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return WorkerDied(f"{type(exc).__name__} after Ray's retries: {text}")


class _Inbox:
    """The driver's side of the mailbox: one ``take`` in flight at a time (a take abandoned unanswered would
    swallow what it later returns), its items replayed here."""

    def __init__(self, ray, jobs, finished: set[int], on_start):
        self.ray, self.jobs, self.finished, self.on_start = ray, jobs, finished, on_start
        self.mailbox = _mailbox_class().options(num_cpus=0).remote()
        self.level = logging.getLogger().getEffectiveLevel()
        self.pending = None

    def drain(self, timeout: float = 0.0) -> None:
        if self.pending is None:
            self.pending = self.mailbox.take.remote()
        ready, _ = self.ray.wait([self.pending], timeout=timeout)
        if not ready:
            return
        items, self.pending = self.ray.get(self.pending), None
        for kind, i, payload in items:
            if kind == "start":
                if self.on_start and i not in self.finished:
                    self.on_start(i)
            else:
                record = logging.makeLogRecord(payload)
                logging.getLogger(record.name).handle(record)

    def close(self, timeout: float) -> None:
        """Take what is left (the last records of the last tasks), then end the actor."""
        try:
            self.on_start = None
            self.drain(timeout)
            if self.pending is None:
                self.drain(timeout)
        finally:
            self.ray.kill(self.mailbox)


@functools.lru_cache(maxsize=1)
def _mailbox_class():
    import ray

    @ray.remote
    class Mailbox:
        """Start notices and log records from the tasks, taken by the driver while it waits."""

        def __init__(self):
            self.items = []

        def put(self, item):
            self.items.append(item)

        def take(self):
            items, self.items = self.items, []
            return items

    return Mailbox


@functools.lru_cache(maxsize=1)
def _task():
    import ray

    return ray.remote(run_job)


class _Relay(logging.Handler):
    """Sends a task's log records to the mailbox (not the ones logged while sending one)."""

    def __init__(self, mailbox, index: int):
        super().__init__()
        self.mailbox, self.index, self.sending = mailbox, index, False

    def emit(self, record: logging.LogRecord) -> None:
        if self.sending:
            return
        self.sending = True
        try:
            data = dict(record.__dict__, msg=record.getMessage(), args=None, exc_info=None, exc_text=None)
            self.mailbox.put.remote(("log", self.index, data))
        except Exception:
            self.handleError(record)
        finally:
            self.sending = False


def run_job(job, index: int, mailbox, level: int, files, return_files: bool):
    """The body of a Ray task: restore the checkpoint files it was handed, run the job with its log records
    relayed to the driver, and return its result (its own exception included); a checkpoint job when shipping
    also returns the files it wrote, as a second object the driver hands to the cells."""
    mailbox.put.remote(("start", index, None))
    root, progress = logging.getLogger(), logging.getLogger("mpqbench.progress")
    relay, old = _Relay(mailbox, index), (root.level, progress.level)
    root.addHandler(relay)
    root.setLevel(level)
    progress.setLevel(logging.INFO)
    try:
        try:
            if files:
                remote.restore(files, job.cache)
            remote.check_code(job)
            result = job()
        except Exception as exc:  # a job's own error is its result
            result = remote.portable(exc)
    finally:
        root.removeHandler(relay)
        root.setLevel(old[0])
        progress.setLevel(old[1])
    if return_files:
        return result, (remote.trained_files(job.cache, result) if isinstance(result, dict) else None)
    return result
