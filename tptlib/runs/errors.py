"""The errors of a run folder that cannot be used as asked."""


class RunError(Exception):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


class RunLockedError(RunError):
    """Another process is running on the same folder."""


class RunMismatchError(RunError):
    """The folder holds a run with other parameters."""

