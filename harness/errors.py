"""Errors that reach the user as one line, never as a traceback."""


class UserError(Exception):
    """A mistake in the user's input (unknown name, malformed budget, missing data set, ...).

    The CLI prints ``mpqbench: error: <message>`` and exits with status 2.
    """


class Unavailable(Exception):
    """A target or resource that cannot run on this machine; the sweep records it and goes on."""


class WorkerDied(Exception):
    """The process running a job died (killed by a signal, e.g. the out-of-memory killer)."""
