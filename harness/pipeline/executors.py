"""The built-in executors (registered by :mod:`mpqbench.plugin.core`): ``local`` runs jobs
one after another in this process; ``process`` runs them in a pool of worker processes.

The process pool survives its workers: when one dies (SIGKILL, the out-of-memory killer), every job that was
in flight is retried once in a fresh pool, and a job in flight when a worker dies a second time is reported
as :class:`~mpqbench.errors.WorkerDied` (the driver records that cell as failed and goes on). Workers ignore
SIGINT; on Ctrl-C the driver closes the generator, which cancels what has not started and terminates the
workers, so nothing runs on after the interrupt. Workers' log records travel through a queue to the
driver's handlers (one console, one progress bar).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import signal
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from mpqbench.errors import WorkerDied
from mpqbench.plugin.objects import Executor

STRIKES = 2
"""Worker deaths a job may be in flight for before it is reported as WorkerDied."""


class LocalExecutor(Executor):
    name = "local"
    description = "one job after another in this process (the default with --jobs 1)"

    def run(self, jobs, workers, params, on_start=None):
        for i, job in enumerate(jobs):
            if on_start:
                on_start(i)
            try:
                result = job()
            except Exception as exc:  # a job's own error is its result
                result = exc
            yield i, result


def _worker_init(queue, level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)


class _Relay(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        logging.getLogger(record.name).handle(record)
        return True


class ProcessExecutor(Executor):
    name = "process"
    description = "a pool of --jobs worker processes on this machine (the default with --jobs > 1)"

    def run(self, jobs, workers, params, on_start=None):
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        listener = logging.handlers.QueueListener(queue, _Relay())
        listener.start()
        pending, strikes = deque(range(len(jobs))), Counter()
        try:
            while pending:
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                           initargs=(queue, logging.getLogger().getEffectiveLevel()))
                running: dict = {}
                try:
                    while pending or running:
                        while pending and len(running) < workers:
                            i = pending.popleft()
                            running[pool.submit(jobs[i])] = i
                            if on_start:
                                on_start(i)
                        done, _ = wait(running, return_when=FIRST_COMPLETED)
                        for future in done:
                            try:
                                result = future.result()
                            except BrokenProcessPool:
                                raise
                            except Exception as exc:  # a job's own error is its result
                                result = exc
                            yield running.pop(future), result
                except BrokenProcessPool:
                    for i in sorted(running.values()):
                        strikes[i] += 1
                        if strikes[i] >= STRIKES:
                            yield i, WorkerDied(f"a worker process died {strikes[i]} times while running this job "
                                                "(killed by a signal, e.g. out of memory)")
                        else:
                            logging.getLogger("mpqbench.executor").warning(
                                "a worker process died; %s retried in a fresh pool", _describe(jobs[i]))
                            pending.appendleft(i)
                finally:
                    _stop(pool)
        finally:
            listener.stop()


def _describe(job) -> str:
    return getattr(job, "label", type(job).__name__)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (they may be mid-job after a Ctrl-C)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)

