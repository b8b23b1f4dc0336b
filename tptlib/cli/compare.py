"""`tpt compare`: how far two runs of the same task agree, sample by sample."""
from __future__ import annotations

import argparse

from ..jsonout import dumps
from .common import JSON_HELP, setup_errors


def add_parser(sub) -> None:
    compare = sub.add_parser(
        "compare", help="how far two runs of the same task agree, sample by sample",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare two run folders of the same task: identical top-1 predictions, the largest "
                    "|logit difference|, the accuracy of each and their paired difference. For checking "
                    "that a change of precision, device or batch size leaves predictions alone.",
        epilog="example:\n"
               "  tpt eval --task micro:A --method tpt --out runs/A-fp32 --precision fp32\n"
               "  tpt eval --task micro:A --method tpt --out runs/A-bf16 --precision bf16\n"
               "  tpt compare runs/A-fp32 runs/A-bf16\n"
               "exit status: 0 identical top-1 on every shared sample, 1 some differ, 2 not comparable.")
    compare.add_argument("a", help="run folder")
    compare.add_argument("b", help="run folder of the same task")
    compare.add_argument("--json", action="store_true", help=JSON_HELP.format("the comparison"))
    compare.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.compare import prediction_agreement
    from ..runs import load_run

    a, b = load_run(args.a), load_run(args.b)
    with setup_errors():
        cmp = prediction_agreement(a, b)
    print(dumps(cmp, indent=2) if args.json else format_agreement(cmp, args.a, args.b))
    return 0 if cmp["same_top1"] == cmp["n"] else 1


def format_agreement(cmp: dict, a, b) -> str:
    """A short human report of `analysis.prediction_agreement`."""
    lines = [f"{cmp['task']}: {a} (a) against {b} (b), {cmp['n']} samples both scored"]
    if cmp["differences"]:
        lines.append("  the runs differ in: " + "; ".join(f"{k} {va!r} / {vb!r}" for k, va, vb in cmp["differences"]))
    changed = cmp["changed_idx"]
    more = f" (idx {', '.join(map(str, changed[:10]))}{', ...' if len(changed) > 10 else ''})" if changed else ""
    lines += [f"  same top-1   {cmp['same_top1']}/{cmp['n']} ({cmp['same_top1_pct']:.2f}%){more}",
              f"  |logit diff| max {cmp['max_abs_logit_diff']:.3g} (idx {cmp['worst_idx']}), "
              f"mean {cmp['mean_abs_logit_diff']:.3g}",
              f"  before adaptation (view 0, initial prompt): same top-1 {cmp['same_top1_before']}/{cmp['n']}, "
              f"|logit diff| max {cmp['max_abs_logit_diff_before']:.3g}",
              f"  top-1        a {cmp['top1_a']:.2f}%, b {cmp['top1_b']:.2f}%: a - b = {cmp['delta']:+.2f} points "
              f"[95% CI {cmp['low']:+.2f}, {cmp['high']:+.2f}]; right only in a {cmp['a_only']}, only in b "
              f"{cmp['b_only']} (McNemar p = {cmp['p_value']:.3g})"]
    return "\n".join(lines)
