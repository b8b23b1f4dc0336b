"""The `tpt` command: evaluate methods on tasks, check datasets, list models, build the micro-CLIP.
One module per subcommand (`evaluate` is `tpt eval`, then `methods`, `show`, `compare`, `data`,
`models`, `diagnose`, `micro`; `tpt bench` is `tptlib.bench.command`), each with `add_parser(sub)`
and the function the subcommand runs; `common` holds what they share.

Also runs as `python -m tptlib.cli ...`, which is how torchrun starts it:
    torchrun --nproc-per-node 4 -m tptlib.cli eval ...
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from . import compare, data, diagnose, evaluate, methods, micro, models, show
from .common import EXIT_USAGE, Parser, UsageError, describe_os_error, discard_stdout, one_line
from .compare import format_agreement
from .show import format_summary

__all__ = ["EXIT_USAGE", "UsageError", "build_parser", "format_agreement", "format_summary", "main", "one_line"]

#: the subcommands in the order `tpt --help` lists them (None: the benchmark's, imported when the parser is built)
SUBCOMMANDS = (evaluate, methods, show, compare, data, models, None, diagnose, micro)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tpt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Test-time prompt tuning (TPT) of CLIP models: evaluate methods on benchmark tasks.",
        epilog=textwrap.dedent("""\
            start here:
              tpt models                 what --model / --pretrained accept
              tpt data list              the tasks and the folder each expects under --root
              tpt data check --task A --root ~/data
              tpt eval --task micro:A --method tpt --out runs/micro-A-tpt
            Run `tpt <command> --help` for a command's options and examples."""))
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for command in SUBCOMMANDS:
        if command is None:
            from ..bench import command
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tpt` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["micro", "build"]:
        return micro.build(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)          # unknown options are refused here (exit status 2)
    from ..runs import RunError
    logging.basicConfig(level=logging.WARNING, format="tpt: %(levelname)s: %(name)s: %(message)s")
    try:
        status = args.func(args)
        sys.stdout.flush()            # a closed pipe shows here, not as a traceback at exit
        return status
    except KeyboardInterrupt:
        print("\ntpt: interrupted. Finished batches are recorded; run the same command again to resume.",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        discard_stdout()
        print("tpt: error: the output was closed before all of it was written (a pipe into head?)",
              file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, RunError) as exc:
        print(f"tpt: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:            # a path too long, a file that cannot be read: named, in one line
        print(f"tpt: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
