"""`tpt data`: the known tasks, and a check of a dataset on disk."""
from __future__ import annotations

import argparse

from ..argtypes import positive_int
from .common import setup_errors, task_options


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="list tasks, or check a dataset on disk")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="<data command>")
    check = data_sub.add_parser(
        "check", help="check a dataset's layout and images before a long run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load a task from --root and report images per class, missing and unreadable files.",
        epilog="example:\n  tpt data check --task A --root ~/data\n"
               "exit status: 0 all fine, 1 problems listed in the report, 2 wrong layout.")
    check.add_argument("--task", required=True, help="task name (see `tpt data list`)")
    check.add_argument("--root", default=None, help="data root, or the dataset folder itself")
    check.add_argument("--split-dir", default=None, help="folder holding CoOp's split_zhou_*.json files")
    check.add_argument("--max-images", type=positive_int, default=None,
                       help="open only this many images, spread over the task (default: all)")
    check.set_defaults(func=cmd_data_check)
    listing = data_sub.add_parser("list", help="the known tasks and the folder each expects under --root")
    listing.set_defaults(func=cmd_data_list)


def cmd_data_check(args) -> int:
    from ..data import check_task

    with setup_errors():
        report = check_task(args.task, args.root, max_images=args.max_images, **task_options(args))
    print(report)
    return 0 if report.rstrip().endswith("RESULT: OK") else 1


def cmd_data_list(args) -> int:
    from ..data import list_tasks

    print(f"{'task':<11} {'classes':>7}  {'folder under --root':<42} views")
    for info in list_tasks():
        print(f"{info.name:<11} {info.n_classes:>7}  {info.default_dir:<42} {'AugMix' if info.augmix else 'crop+flip'}")
    print("micro:<set>  the embedded micro profile's sets (no --root)")
    return 0
