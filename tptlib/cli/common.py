"""What every `tpt` subcommand shares: the parser that refuses abbreviations and reports a bad
command line in one line, the usage error and its exit status, and the options' small readers."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from contextlib import contextmanager

EXIT_USAGE = 2      # bad input: unknown parameter, wrong data root, unusable checkpoint or run folder
#: what every --json option prints: strict JSON, whatever the numbers
JSON_HELP = "print {} as strict JSON (a NaN or an infinity, e.g. an accuracy over no sample, is null)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, sub-parsers) that refuses abbreviated
    options (`--step 3` is an error, not a silent `--steps 3`) and reports a bad command line in
    one line, as every other user error: `tpt: error: ...`, exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        command = self.prog.removeprefix("tpt").strip()
        where = f"tpt {command} --help" if command else "tpt --help"
        self.exit(EXIT_USAGE, f"tpt: error: {command + ': ' if command else ''}{message} (see {where})\n")


class UsageError(Exception):
    """A command line that cannot work; printed without a traceback, exit status 2."""


def task_options(args) -> dict:
    """Loader options given on the command line (only CoOp-split sets take --split-dir)."""
    return {} if args.split_dir is None else {"split_dir": args.split_dir}


def device(requested: str | None) -> str:
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


@contextmanager
def setup_errors():
    """Turn the refusals of loaders and constructors (bad names, paths, layouts, checkpoints,
    method parameters: ValueError and its kind, such as DatasetLayoutError and CheckpointError;
    a missing file; TypeError for an option the task does not take, such as --split-dir for
    ImageNet) into a `UsageError`. Used around setup only, so that errors inside a run keep their
    traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def one_line(message: str) -> str:
    """A message of several lines as one (each line stripped, joined by spaces)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def discard_stdout() -> None:
    """Point the standard output at /dev/null, so that flushing it at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def describe_os_error(exc: OSError) -> str:
    """An `OSError` as one line that names the file and says what is wrong with it."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        why += " (a path or a name in it is longer than this file system allows; use a shorter one)"
    where = f"{exc.filename}: " if exc.filename else ""
    return one_line(f"{where}{why}")
