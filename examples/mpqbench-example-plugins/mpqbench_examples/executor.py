"""``subprocess``: every job of a sweep in a fresh Python process, the shape of a cluster executor.

A job is a picklable callable that loads what it needs (data, checkpoints, plugins) wherever it runs, so an
executor only has to ship it somewhere, run it and bring back what it returns: here the job goes to
``python -m mpqbench_examples.worker`` through a pipe and its result (or its own exception) comes back the
same way; a Slurm or Ray executor does the same through a job queue. Up to ``workers`` processes run at
once (threads of this process wait on them). The contract: yield ``(index, result)`` as jobs finish, a
job's exception being its result and a dead worker an ``mpqbench.errors.WorkerDied``; call
``on_start(index)`` when one starts; when the generator is closed (the driver closes it on Ctrl-C), cancel
what has not started and stop what runs.

Threads alone would not do: building a run traces its model with ``torch.fx``, which patches module calls
process-wide while it traces, so two runs must not trace in one process at the same time.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from mpqbench import hookimpl
from mpqbench.api import Executor
from mpqbench.errors import WorkerDied


class Subprocesses(Executor):
    name = "subprocess"
    description = "each job in a fresh Python process, jobs and results pickled through pipes"
    params = {"python": ""}
    """The interpreter that runs the jobs (default: this one); it needs mpqbench and the plugins installed."""

    def run(self, jobs, workers, params, on_start=None):
        python = params.get("python") or sys.executable
        lock = threading.Lock()
        running: set[subprocess.Popen] = set()
        closing = threading.Event()

        def call(i):
            if closing.is_set():
                return WorkerDied("cancelled")
            if on_start:
                with lock:
                    on_start(i)
            proc = subprocess.Popen([python, "-m", "mpqbench_examples.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            with lock:
                running.add(proc)
            try:
                out, _ = proc.communicate(pickle.dumps(jobs[i]))
            finally:
                with lock:
                    running.discard(proc)
            if proc.returncode != 0 or not out:
                return WorkerDied(f"worker process exited with status {proc.returncode}")
            return pickle.loads(out)

        pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mpqbench-subprocess")
        futures = {pool.submit(call, i): i for i in range(len(jobs))}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=futures.get):
                    yield futures[future], future.result()
        finally:
            closing.set()
            with lock:
                for proc in running:
                    proc.kill()
            pool.shutdown(wait=True, cancel_futures=True)


@hookimpl
def mpqbench_register_executors(register):
    register(Subprocesses())
