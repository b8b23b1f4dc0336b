"""`tpt methods`: the methods --method accepts, each with its parameters (from its fields)."""
from __future__ import annotations

import textwrap

from ..jsonout import dumps
from .common import JSON_HELP


def add_parser(sub) -> None:
    methods = sub.add_parser("methods", help="list the methods: paper, kind (fixed, episodic, online), defaults",
                             description="The methods --method accepts, each with its paper, whether it adapts "
                                         "per sample (episodic) or over the test stream (online), and its "
                                         "parameters' defaults (set them with --set NAME=VALUE).")
    methods.add_argument("--json", action="store_true", help=JSON_HELP.format("the listing"))
    methods.set_defaults(func=run)


def run(args) -> int:
    from ..methods.registry import listing

    rows = listing()
    if args.json:
        print(dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<9} {r['summary']}")
        if r["paper"]:
            print(f"{'':<25}paper: {r['paper']}")
        for key, default in r["defaults"].items():
            if key == "dataset":
                continue
            shown = "(required)" if key == r["requires"] else "(per dataset)" if key in r["per_dataset"] else repr(default)
            print(textwrap.fill(f"{key}={shown}  {r['help'][key]} ({r['accepts'][key]})", width=110, initial_indent=" " * 27,
                                subsequent_indent=" " * 31))
        if r["per_dataset"]:
            print(f"{'':<27}(per dataset) = the authors' value for the task's dataset unless given")
    print("\nParameters: tpt eval --method NAME --set NAME=VALUE. Online methods see the samples in a seeded "
          "order (--stream-seed) and cannot be sharded over processes.")
    return 0
