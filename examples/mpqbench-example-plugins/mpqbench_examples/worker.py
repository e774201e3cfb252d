"""The worker of the ``subprocess`` executor: a pickled job on stdin, its pickled result (or the exception it
raised) on stdout. Whatever the job prints goes to stderr, so it cannot corrupt the result."""

from __future__ import annotations

import pickle
import sys


def main() -> int:
    result_stream = sys.stdout.buffer
    sys.stdout = sys.stderr
    job = pickle.load(sys.stdin.buffer)
    try:
        result = job()
    except Exception as exc:  # a job's own error is its result
        result = exc
    result_stream.write(pickle.dumps(result))
    result_stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
