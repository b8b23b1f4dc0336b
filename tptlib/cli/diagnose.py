"""`tpt diagnose`: what one TPT step does on tasks, and why."""
from __future__ import annotations

import argparse

from ..argtypes import positive_int
from .common import UsageError, device, setup_errors


def add_parser(sub) -> None:
    diag = sub.add_parser(
        "diagnose", help="what one TPT step does on tasks, and why (zero-shot, selection, step geometry)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure, on the first --limit samples of each task: zero-shot top-1, ECE, the 80-template "
                    "ensemble and the spread over prompt wordings; the kept views' average against view 0; TPT's "
                    "fixed/broken; view 0's top-1 margin in cosine, how far the step moves the class features, "
                    "and how often it moves view 0 towards the kept views' class (tptlib.analysis.diagnose).",
        epilog="example:\n  tpt diagnose --task micro:V2-dev micro:A-dev --limit 500")
    diag.add_argument("--task", nargs="+", required=True, help="task names (as for tpt eval)")
    diag.add_argument("--model", default="micro", help="as for tpt eval (default micro)")
    diag.add_argument("--pretrained", default=None, help="as for tpt eval")
    diag.add_argument("--root", default=None, help="data root (not needed for micro: tasks)")
    diag.add_argument("--limit", type=positive_int, default=500, help="samples per task (default 500)")
    diag.add_argument("--lr", type=float, default=5e-3, help="TPT's learning rate (default 5e-3)")
    diag.add_argument("--steps", type=positive_int, default=1, help="TPT's steps (default 1)")
    diag.add_argument("--device", default=None, help="cpu, cuda or cuda:N")
    diag.add_argument("--csv", default=None, help="also write the table to this CSV file")
    diag.add_argument("--plot", default=None, metavar="PNG",
                      help="also plot zero-shot, the kept views' average and TPT per task with Wilson intervals")
    diag.set_defaults(func=run)


def run(args) -> int:
    from ..analysis.diagnose import diagnose, diagnosis_table, format_table
    from ..clip import load_clip
    from ..data import load_task
    from ..methods import TPT

    if args.model != "micro" and args.pretrained is None:
        raise UsageError(f"--pretrained is required for --model {args.model}")
    with setup_errors():
        method = TPT(steps=args.steps, lr=args.lr)
        tasks = [load_task(name, args.root) for name in args.task]
        clip = load_clip(args.model, pretrained=args.pretrained, device=device(args.device))
    table = diagnosis_table([diagnose(clip, task, n=args.limit, method=method) for task in tasks])
    print(format_table(table))
    if args.csv:
        table.to_csv(args.csv)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..analysis.diagnose import plot_diagnosis
        fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(table)), 4.5))
        plot_diagnosis(table, ax=ax)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
    return 0
