"""`tpt micro build`: train the micro-CLIP (its options are `tptlib.micro.train`'s)."""
from __future__ import annotations


def add_parser(sub) -> None:
    micro = sub.add_parser("micro", help="the embedded micro profile (tpt micro build --help)")
    micro_sub = micro.add_subparsers(dest="micro_command", required=True, metavar="<micro command>")
    # `tpt micro build ...` is handed to tptlib.micro.train.main, which owns its options (see main)
    micro_sub.add_parser("build", help="train the micro-CLIP on the procedural world and write its weights")


def build(argv: list[str]) -> int:
    from ..micro.train import main as build_main

    return build_main(argv)
