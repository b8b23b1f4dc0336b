"""Ctrl-C and SIGTERM end the `tpt` program in one line, at any moment, startup included.

    tpt: interrupted (SIGINT); what was finished is kept: run the same command again to resume.

Python's default turns Ctrl-C into a `KeyboardInterrupt` raised wherever the program happens to be:
while a module is being imported it prints a traceback, inside a C++ callback (torch's start-up) it
aborts the process, inside a destructor it is printed as "Exception ignored" and lost; SIGTERM
ends the process without a word. `install()` replaces both with a handler that writes one line to
the standard error and ends the process at once with exit status 128 + the signal (130, 143).
Nothing is lost by ending at once: a run commits each batch of records in its own transaction and
writes run.json by an atomic rename, as after SIGKILL (`tests/test_runs_processes.py`); a forked
worker (a DataLoader's) ends silently, its parent reports.

The handler is installed only in the `tpt` program (`python -m tptlib.cli`, the `tpt` script), by
`import tptlib` itself when that is the program, so that it covers the imports that follow; a
library user's process (a notebook, a test) keeps Python's behaviour.
"""
from __future__ import annotations

import os
import signal
import sys

_owner: int | None = None
_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def is_tpt_program() -> bool:
    """Whether this process is the `tpt` command: `python -m tptlib.cli ...` or the `tpt` script."""
    argv = getattr(sys, "orig_argv", None) or []
    if "-m" in argv[1:] and argv[argv.index("-m", 1) + 1:][:1] == ["tptlib.cli"]:
        return True
    return os.path.basename(sys.argv[0] if sys.argv else "") == "tpt"


def _end(signum, frame) -> None:
    if os.getpid() != _owner:          # a forked worker: its parent got the signal too and reports
        os._exit(128 + signum)
    for sig in _NAMES:
        signal.signal(sig, signal.SIG_IGN)
    try:
        sys.stdout.flush()
    except Exception:                  # a closed pipe, or a write the signal interrupted
        pass
    lead = "\n" if os.isatty(2) else ""        # after a progress bar's line
    message = (f"{lead}tpt: interrupted ({_NAMES.get(signum, signum)}); what was finished is kept: run the same "
               "command again to resume.\n")
    try:
        os.write(2, message.encode())
    except OSError:
        pass
    os._exit(128 + signum)


def install() -> None:
    """End the process in one line on SIGINT (exit status 130) and SIGTERM (143). Main thread only."""
    global _owner
    _owner = os.getpid()
    for sig in _NAMES:
        signal.signal(sig, _end)
