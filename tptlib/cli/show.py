"""`tpt show`: the summary of a run folder (finished or partial), and the report `tpt eval` prints."""
from __future__ import annotations

import math

from ..jsonout import dumps
from .common import JSON_HELP


def add_parser(sub) -> None:
    show = sub.add_parser("show", help="print the summary of a run folder (finished or partial)",
                          description="Print the summary of a run folder, merging the rows of all processes.")
    show.add_argument("out", help="run folder")
    show.add_argument("--json", action="store_true", help=JSON_HELP.format("the summary"))
    show.set_defaults(func=run)


def run(args) -> int:
    from ..runs import load_run

    result = load_run(args.out)
    print(dumps(result.summary, indent=2) if args.json else format_summary(result.summary, result.out))
    return 0


def format_summary(summary: dict, out) -> str:
    """A short human report of a run summary."""
    def pct(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}%"

    weights = summary["pretrained"] or ("shipped weights" if str(summary["model"]).startswith("micro")
                                        else "random weights")
    lines = [f"{summary['method']} on {summary['task']} with {summary['model']} ({weights}): {out}",
             f"  samples  {summary['n']} of {summary['n_expected']} recorded"
             + ("" if summary["complete"] else " (partial: run the same command again to resume)")
             + f", {summary['n_errors']} errors (excluded from accuracy)",
             f"  top-1    {pct(summary['top1'])}  [95% CI {pct(summary['top1_ci'][0])} - {pct(summary['top1_ci'][1])}]"
             f"   before adaptation {pct(summary['top1_before'])}",
             f"  top-5    {pct(summary['top5'])}   before adaptation {pct(summary['top5_before'])}",
             f"  ECE      {pct(summary['ece'])}   before adaptation {pct(summary['ece_before'])}   (15 bins)",
             f"  ECE20    {pct(summary.get('ece20'))}   before adaptation {pct(summary.get('ece20_before'))}   "
             f"(20 bins, as C-TPT and TTA-VLM report)"]
    lines.append(_format_cost(summary))
    if summary.get("stream_seed") is not None:
        lines.append(f"  online: samples in the order of a permutation seeded by {summary['stream_seed']} (run.json 'stream')")
    if summary["n_fp32_retries"]:
        lines.append(f"  {summary['n_fp32_retries']} samples redone in fp32 after a non-finite fp16 loss")
    bins = [b for b in summary.get("reliability") or [] if b["count"]]
    if bins:
        lines.append("  reliability (15 bins, non-empty): confidence range, samples, mean confidence, accuracy")
        lines += [f"    ({b['lower']:.3f}, {b['upper']:.3f}]  {b['count']:>6}  {100 * b['confidence']:6.2f}%  "
                  f"{100 * b['accuracy']:6.2f}%" for b in bins]
    return "\n".join(lines)


def _format_cost(summary: dict) -> str:
    seconds = summary.get("seconds_per_sample")
    line = f"  time     {'n/a' if seconds is None or seconds != seconds else f'{seconds:.4f} s'} per sample (engine)"
    image, method = summary.get("image_seconds_per_sample"), summary.get("method_seconds_per_sample")
    if image is not None:
        line += f": image tower {image:.4f} s, method {method:.4f} s"
        if summary.get("cached_features"):
            line += " (tower time as measured when the cached features were computed)"
    peak = summary.get("peak_mem_mib")
    line += f"\n  memory   peak {'n/a' if peak is None else f'{peak:,.1f} MiB'} above the level before a batch"
    if peak is not None:
        line += (f" (image tower {summary['image_peak_mib']:,.1f} MiB, method {summary['method_peak_mib']:,.1f} MiB; "
                 f"CUDA allocator, or sampled resident memory on a CPU)")
    return line
