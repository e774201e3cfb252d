"""The built-in executors (registered by :mod:`mpqbench.plugin.core`): ``local`` runs jobs
one after another in this process; ``process`` runs them in a pool of worker processes.

The process pool survives its workers: when one dies (SIGKILL, the out-of-memory killer), the pool breaks
and takes every job in flight with it. Each worker reports which job it starts, so the job whose worker was
killed is known (the others' workers were only terminated by the broken pool, SIGTERM): it is retried once,
and reported as :class:`~mpqbench.errors.WorkerDied` if its worker dies again (the driver records that cell
as failed and goes on); the other jobs in flight are simply run again in a fresh pool. Workers ignore
SIGINT; on Ctrl-C the driver closes the generator, which cancels what has not started and terminates the
workers, so nothing runs on after the interrupt. Workers' log records travel through a queue to the
driver's handlers (one console, one progress bar).
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import os
import queue as queue_module
import signal
import threading
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


_STARTS = None


def _worker_init(queue, starts, level: int) -> None:
    global _STARTS
    _STARTS = starts
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(queue)]
    root.setLevel(level)
    logging.getLogger("mpqbench.progress").setLevel(logging.INFO)  # FP32 epochs reach the driver's bar


def _tracked(index: int, job):
    """Run a job in a worker, saying first which process runs it."""
    _STARTS.put((index, os.getpid()))
    return job()


def _relay(queue) -> None:
    """Hand the workers' log records to the driver's handlers, until None (a daemon thread: a queue left
    half-written by a terminated worker cannot block the driver)."""
    while True:
        try:
            record = queue.get()
        except (EOFError, OSError):
            return
        if record is None:
            return
        logging.getLogger(record.name).handle(record)


class ProcessExecutor(Executor):
    name = "process"
    description = "a pool of --jobs worker processes on this machine (the default with --jobs > 1)"

    def run(self, jobs, workers, params, on_start=None):
        ctx = multiprocessing.get_context("spawn")
        queue, starts = ctx.Queue(), ctx.Queue()
        for q in (queue, starts):  # a worker terminated mid-write must never hold up the driver's exit
            q.cancel_join_thread()
        relay = threading.Thread(target=_relay, args=(queue,), daemon=True)
        relay.start()
        pending, strikes = deque(range(len(jobs))), Counter()
        try:
            while pending:
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                           initargs=(queue, starts, logging.getLogger().getEffectiveLevel()))
                running: dict = {}
                processes: dict = {}
                try:
                    while pending or running:
                        while pending and len(running) < workers:
                            i = pending[0]  # taken off only once submitted: a pool that broke meanwhile refuses it
                            running[pool.submit(_tracked, i, jobs[i])] = i
                            pending.popleft()
                            if on_start:
                                on_start(i)
                        processes.update(getattr(pool, "_processes", None) or {})
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
                    killed = _killed_jobs(starts, processes, set(running.values()))
                    for i in sorted(running.values()):
                        if i not in killed:
                            pending.appendleft(i)
                            continue
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
            queue.put(None)
            relay.join(timeout=5)


def _killed_jobs(starts, processes: dict, running: set[int]) -> set[int]:
    """The jobs in flight whose worker died by itself (not terminated by the broken pool); every job in
    flight when that cannot be told (a worker that died before reporting its job)."""
    pid_of = {}
    while True:
        try:
            index, pid = starts.get(timeout=0.2)
        except queue_module.Empty:
            break
        pid_of[index] = pid
    for proc in processes.values():
        proc.join(timeout=5)
    killed = {i for i in running if i in pid_of and pid_of[i] in processes
              and processes[pid_of[i]].exitcode not in (None, 0, -signal.SIGTERM)}
    return killed or set(running)


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

