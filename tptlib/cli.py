"""The `tpt` command: evaluate methods on tasks, check datasets, list models, build the micro-CLIP.

Also runs as `python -m tptlib.cli ...`, which is how torchrun starts it:
    torchrun --nproc-per-node 4 -m tptlib.cli eval ...
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import sys
import textwrap
from contextlib import contextmanager

from .argtypes import finite_float, folder_name, non_negative_int, positive_int
from .jsonout import dumps
from .methods.registry import METHODS

EXIT_USAGE = 2      # bad input: unknown parameter, wrong data root, unusable checkpoint or run folder
#: what every --json option prints: strict JSON, whatever the numbers
_JSON_HELP = "print {} as strict JSON (a NaN or an infinity, e.g. an accuracy over no sample, is null)"

_EVAL_EXAMPLES = """\
examples:
  # the embedded micro profile: runs on any CPU, no downloads
  tpt eval --task micro:A --method tpt --out runs/micro-A-tpt

  # TPT on ImageNet-A with OpenAI's ViT-B/16 (the paper's setting)
  tpt eval --model ViT-B-16-quickgelu --pretrained openai --task A --root ~/data --method tpt --out runs/vitb16-A-tpt

  # zero-shot baseline on the first 100 samples, on the GPU
  tpt eval --model RN50-quickgelu --pretrained openai --task I --root ~/data --method zeroshot --limit 100 --device cuda --out runs/rn50-I-zs

  # TPT initialised from a CoOp checkpoint
  tpt eval --model RN50-quickgelu --pretrained openai --task A --root ~/data --method tpt-coop --coop-ckpt coop_rn50.pth --out runs/rn50-A-coop

  # four GPUs: each process takes every 4th sample; the summary covers all of them
  torchrun --nproc-per-node 4 -m tptlib.cli eval --model ViT-B-16-quickgelu --pretrained openai --task I --root ~/data --method tpt --device cuda --out runs/vitb16-I-tpt

  # the peers (tpt methods lists them): ZERO, and TDA with another positive-cache weight, sharing one
  # encoding of the views through a feature cache
  tpt eval --task micro:A --method zero --out runs/micro-A-zero --feature-cache runs/features
  tpt eval --task micro:A --method tda --set pos_alpha=1.5 --out runs/micro-A-tda --feature-cache runs/features

An interrupted run resumes when the same command is run again: samples already recorded in
--out are skipped. The same --out with different parameters is refused. Records:
<out>/records.sqlite (read with tptlib.load_run(out)); log: <out>/run.log.
"""

#: options that only tune methods use, with the argparse destination they fill
_TPT_OPTIONS = {"steps": "--steps", "lr": "--lr", "selection_p": "--selection-p", "ctx_init": "--ctx-init",
                "n_ctx": "--n-ctx", "coop_ckpt": "--coop-ckpt", "cocoop_ckpt": "--cocoop-ckpt",
                "jacobian": "--jacobian"}


class _Parser(argparse.ArgumentParser):
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    ev = sub.add_parser("eval", help="evaluate a method on a task (resumable run folder)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EVAL_EXAMPLES,
                        description="Evaluate a method on a task, one record per sample in --out.")
    what = ev.add_argument_group("what to run")
    what.add_argument("--model", default="micro",
                      help="open_clip model name (RN50-quickgelu, ViT-B-16-quickgelu for OpenAI's weights, "
                           "RN50, ViT-B-16, ...; see `tpt models`) "
                           "or 'micro' for the embedded micro-CLIP (default)")
    what.add_argument("--pretrained", default=None,
                      help="weights: an open_clip tag (openai, laion2b_s34b_b88k, ...), a checkpoint file "
                           "(.safetensors/.pt/.bin), or 'none' for random weights of the real shape. "
                           "Required for every model but micro (whose weights ship with tptlib)")
    what.add_argument("--jit-archive", action="store_true",
                      help="--pretrained is OpenAI's TorchScript archive (contains code; only load files you trust)")
    what.add_argument("--task", required=True,
                      help="task name: I, A, V, R, K, Flower102, DTD, Pets, Cars, UCF101, Caltech101, Food101, "
                           "SUN397, eurosat, Aircraft (see `tpt data list`), or micro:<set>")
    what.add_argument("--root", default=None,
                      help="data root holding the dataset folders (or the dataset folder itself); "
                           "not needed for micro: tasks")
    what.add_argument("--split-dir", default=None,
                      help="folder holding CoOp's split_zhou_*.json files, when they are not in the dataset "
                           "folder (as in TPT's data/data_splits/)")
    what.add_argument("--method", default="tpt", choices=[info.command_name for info in METHODS.values()],
                      help="zeroshot: 'a photo of a {class}.'; ensemble: CLIP's 80 templates; tpt: test-time "
                           "prompt tuning; tpt-coop / tpt-cocoop: TPT from a CoOp / CoCoOp checkpoint; the peers "
                           "ctpt, zero, zero-ensemble, mta (episodic), tda, dmn (online): see `tpt methods` "
                           "(default: tpt)")
    what.add_argument("--set", dest="method_set", action="append", default=[], metavar="NAME=VALUE",
                      help="a parameter of the method (see `tpt methods`), VALUE read as JSON when it can be: "
                           "--set gamma=0.2 --set templates=tip7; repeatable")
    what.add_argument("--out", required=True, type=folder_name,
                      help="run folder: created if absent, resumed if it holds this run")

    run = ev.add_argument_group("run")
    run.add_argument("--limit", type=positive_int, default=None, help="only the first N samples of the task")
    run.add_argument("--seed", type=non_negative_int, default=0, help="seed of the views: sample i uses (seed, i) (default 0)")
    run.add_argument("--views", type=positive_int, default=64,
                     help="views per sample, view 0 the original (default 64, as in the paper)")
    run.add_argument("--batch-size", type=positive_int, default=8,
                     help="samples per engine call; speed and memory only, never results (default 8)")
    run.add_argument("--workers", type=non_negative_int, default=0,
                     help="processes building views ahead of the model (default 0: in the main process)")
    run.add_argument("--device", default=None,
                     help="cpu, cuda or cuda:N (default: cuda if available, else cpu); under torchrun, "
                          "cuda means cuda:LOCAL_RANK")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "amp", "bf16"),
                     help="auto: amp (fp16 autocast, the authors' setting) on CUDA, fp32 on CPU (default)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (TQDM_DISABLE=1 also works)")
    run.add_argument("--stream-seed", type=non_negative_int, default=None,
                     help="online methods (tda, dmn): the seed of the order they see the samples in (default: "
                          "--seed); the order is recorded in run.json")
    run.add_argument("--feature-cache", default=None, metavar="DIR",
                     help="keep the view features in DIR and reuse them: a sample encoded once (by any method, "
                          "same model, task and seed) is not augmented or encoded again")

    tune = ev.add_argument_group("TPT options (tpt, tpt-coop, tpt-cocoop, ctpt only)")
    tune.add_argument("--steps", type=non_negative_int, default=None, help="tuning steps per sample (default 1)")
    tune.add_argument("--lr", type=finite_float, default=None, help="AdamW learning rate (default 5e-3)")
    tune.add_argument("--selection-p", type=finite_float, default=None,
                      help="fraction of views kept by confidence selection (default 0.1: 6 of 64)")
    tune.add_argument("--ctx-init", default=None,
                      help="phrase the context starts from (default 'a photo of a'); 'none' for random N(0, 0.02^2)")
    tune.add_argument("--n-ctx", type=positive_int, default=None, help="context vectors when --ctx-init none (default 4)")
    tune.add_argument("--coop-ckpt", default=None, help="CoOp checkpoint whose ctx initialises the context (tpt-coop)")
    tune.add_argument("--cocoop-ckpt", default=None, help="CoCoOp checkpoint (tpt-cocoop)")
    tune.add_argument("--jacobian", action="store_const", const=True, default=None,
                      help="speed only: the first step's gradient from the Jacobian of the class features at the "
                           "initial context, computed once per task (exact in mathematics; pays off after about "
                           "n_ctx x text width / 2 samples, e.g. 1024 for ViT-B-16: for long runs on a GPU)")
    ev.set_defaults(func=cmd_eval)

    methods = sub.add_parser("methods", help="list the methods: paper, kind (fixed, episodic, online), defaults",
                             description="The methods --method accepts, each with its paper, whether it adapts "
                                         "per sample (episodic) or over the test stream (online), and its "
                                         "parameters' defaults (set them with --set NAME=VALUE).")
    methods.add_argument("--json", action="store_true", help=_JSON_HELP.format("the listing"))
    methods.set_defaults(func=cmd_methods)

    show = sub.add_parser("show", help="print the summary of a run folder (finished or partial)",
                          description="Print the summary of a run folder, merging the rows of all processes.")
    show.add_argument("out", help="run folder")
    show.add_argument("--json", action="store_true", help=_JSON_HELP.format("the summary"))
    show.set_defaults(func=cmd_show)

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
    compare.add_argument("--json", action="store_true", help=_JSON_HELP.format("the comparison"))
    compare.set_defaults(func=cmd_compare)

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

    models = sub.add_parser("models", help="list the models and pretrained tags --model/--pretrained accept")
    models.set_defaults(func=cmd_models)

    from .bench.command import add_parser as add_bench_parser
    add_bench_parser(sub)

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
    diag.set_defaults(func=cmd_diagnose)

    micro = sub.add_parser("micro", help="the embedded micro profile (tpt micro build --help)")
    micro_sub = micro.add_subparsers(dest="micro_command", required=True, metavar="<micro command>")
    # `tpt micro build ...` is handed to tptlib.micro.train.main, which owns its options (see main)
    micro_sub.add_parser("build", help="train the micro-CLIP on the procedural world and write its weights")
    return parser


class UsageError(Exception):
    """A command line that cannot work; printed without a traceback, exit status 2."""


def _parse_sets(items: list[str]) -> dict:
    """--set NAME=VALUE items -> keyword arguments (VALUE parsed as JSON when it can be)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--set takes NAME=VALUE; got {item!r}")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def _method_from_args(args):
    from .methods import make_method
    from .objectives import n_selected

    extra = _parse_sets(getattr(args, "method_set", []))
    if not (args.method.startswith("tpt") or args.method == "ctpt"):
        given = [flag for dest, flag in _TPT_OPTIONS.items() if getattr(args, dest) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to the tpt methods, not --method {args.method} "
                             f"(ctpt takes them too); drop {'it' if len(given) == 1 else 'them'}, or give "
                             f"{args.method}'s own parameters with --set NAME=VALUE (`tpt methods` lists them)")
        return make_method(args.method, **extra)
    if args.coop_ckpt and args.method != "tpt-coop":
        raise UsageError("--coop-ckpt needs --method tpt-coop")
    if args.cocoop_ckpt and args.method != "tpt-cocoop":
        raise UsageError("--cocoop-ckpt needs --method tpt-cocoop")
    kwargs = {dest: getattr(args, dest) for dest in _TPT_OPTIONS if getattr(args, dest) is not None}
    if isinstance(kwargs.get("ctx_init"), str) and kwargs["ctx_init"].lower() == "none":
        kwargs["ctx_init"] = None
    method = make_method(args.method, **{**kwargs, **extra})
    n_selected(args.views, method.selection_p)      # refuses now, not mid-run, a ratio that keeps no view
    return method


def _task_options(args) -> dict:
    """Loader options given on the command line (only CoOp-split sets take --split-dir)."""
    return {} if args.split_dir is None else {"split_dir": args.split_dir}


def _device(requested: str | None) -> str:
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def cmd_eval(args) -> int:
    from .clip import load_clip
    from .data import load_task
    from .runs import check_run_arguments, check_run_inputs, evaluate
    from .runs.folder import check_out_path

    if args.model != "micro" and args.pretrained is None:
        raise UsageError(f"--pretrained is required for --model {args.model}: give a tag (e.g. openai; "
                         f"see `tpt models`), a checkpoint file, or 'none' for random weights")
    check_out_path(args.out)
    with _setup_errors():
        check_run_arguments(limit=args.limit, seed=args.seed, n_views=args.views, batch_size=args.batch_size,
                            workers=args.workers, stream_seed=args.stream_seed)
        method = _method_from_args(args)
        task = load_task(args.task, args.root, **_task_options(args))   # a wrong layout is refused here
        method = method.for_task(task.name)        # the per-dataset defaults, resolved (and prepared) once
        clip = load_clip(args.model, pretrained=args.pretrained, device=_device(args.device),
                         precision=args.precision, jit_archive=args.jit_archive)
        check_run_inputs(clip, task, method, args.views)   # reads the method's checkpoints: before --out exists
    result = evaluate(clip, task, method, args.out, limit=args.limit, seed=args.seed, n_views=args.views,
                      batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                      stream_seed=args.stream_seed, feature_cache=args.feature_cache)
    if int(os.environ.get("RANK", 0)) == 0:
        print(format_summary(result.summary, result.out))
    return 0


def cmd_diagnose(args) -> int:
    from .analysis.diagnose import diagnose, diagnosis_table, format_table
    from .clip import load_clip
    from .data import load_task
    from .methods import TPT

    if args.model != "micro" and args.pretrained is None:
        raise UsageError(f"--pretrained is required for --model {args.model}")
    with _setup_errors():
        method = TPT(steps=args.steps, lr=args.lr)
        tasks = [load_task(name, args.root) for name in args.task]
        clip = load_clip(args.model, pretrained=args.pretrained, device=_device(args.device))
    table = diagnosis_table([diagnose(clip, task, n=args.limit, method=method) for task in tasks])
    print(format_table(table))
    if args.csv:
        table.to_csv(args.csv)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .analysis.diagnose import plot_diagnosis
        fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(table)), 4.5))
        plot_diagnosis(table, ax=ax)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
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


def cmd_methods(args) -> int:
    from .methods.registry import listing

    rows = listing()
    if args.json:
        print(dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<14} {r['kind']:<9} {r['summary']}")
        if r["paper"]:
            print(f"{'':<25}paper: {r['paper']}")
        shown = ", ".join(f"{k}={v!r}" for k, v in r["defaults"].items() if k != "dataset")
        print(textwrap.fill(f"defaults: {shown}", width=110, initial_indent=" " * 25, subsequent_indent=" " * 27))
        if r["per_dataset"]:
            print(f"{'':<25}None = the authors' value for the task's dataset: {', '.join(r['per_dataset'])}")
    print("\nParameters: tpt eval --method NAME --set NAME=VALUE. Online methods see the samples in a seeded "
          "order (--stream-seed) and cannot be sharded over processes.")
    return 0


def cmd_show(args) -> int:
    from .runs import load_run

    result = load_run(args.out)
    print(dumps(result.summary, indent=2) if args.json else format_summary(result.summary, result.out))
    return 0


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


def cmd_compare(args) -> int:
    from .analysis.compare import prediction_agreement
    from .runs import load_run

    a, b = load_run(args.a), load_run(args.b)
    with _setup_errors():
        cmp = prediction_agreement(a, b)
    print(dumps(cmp, indent=2) if args.json else format_agreement(cmp, args.a, args.b))
    return 0 if cmp["same_top1"] == cmp["n"] else 1


def cmd_data_check(args) -> int:
    from .data import check_task

    with _setup_errors():
        report = check_task(args.task, args.root, max_images=args.max_images, **_task_options(args))
    print(report)
    return 0 if report.rstrip().endswith("RESULT: OK") else 1


def cmd_data_list(args) -> int:
    from .data import list_tasks

    print(f"{'task':<11} {'classes':>7}  {'folder under --root':<42} views")
    for info in list_tasks():
        print(f"{info.name:<11} {info.n_classes:>7}  {info.default_dir:<42} {'AugMix' if info.augmix else 'crop+flip'}")
    print("micro:<set>  the embedded micro profile's sets (no --root)")
    return 0


def cmd_models(args) -> int:
    import open_clip

    by_model: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        by_model.setdefault(name, []).append(tag)
    print("micro      the embedded micro-CLIP (weights ship with tptlib; no --pretrained)")
    print("\nopen_clip models with downloadable weights (--model NAME --pretrained TAG):")
    for name in sorted(by_model):
        print(f"  {name:<36} {', '.join(by_model[name])}")
    others = sorted(set(open_clip.list_models()) - set(by_model))
    print(f"\n{len(others)} more open_clip architectures load with a checkpoint file or --pretrained none:")
    print(textwrap.fill(", ".join(others), width=100, initial_indent="  ", subsequent_indent="  "))
    print("\nOpenAI's weights (the paper's) were trained with QuickGELU: use --model RN50-quickgelu or "
          "ViT-B-16-quickgelu with --pretrained openai.")
    return 0


def _micro_build(argv: list[str]) -> int:
    from .micro.train import main as build_main

    return build_main(argv)


@contextmanager
def _setup_errors():
    """Turn the refusals of loaders and constructors (bad names, paths, layouts, checkpoints,
    method parameters: ValueError and its kind, such as DatasetLayoutError and CheckpointError;
    a missing file; TypeError for an option the task does not take, such as --split-dir for
    ImageNet) into a `UsageError`. Used around setup only, so that errors inside a run keep their
    traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise UsageError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tpt` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["micro", "build"]:
        return _micro_build(argv[2:])
    parser = build_parser()
    args = parser.parse_args(argv)          # unknown options are refused here (exit status 2)
    from .runs import RunError
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
        _discard_stdout()
        print("tpt: error: the output was closed before all of it was written (a pipe into head?)",
              file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, RunError) as exc:
        print(f"tpt: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:            # a path too long, a file that cannot be read: named, in one line
        print(f"tpt: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE


def describe_os_error(exc: OSError) -> str:
    """An `OSError` as one line that names the file and says what is wrong with it."""
    why = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        why += " (a path or a name in it is longer than this file system allows; use a shorter one)"
    where = f"{exc.filename}: " if exc.filename else ""
    return one_line(f"{where}{why}")


def one_line(message: str) -> str:
    """A message of several lines as one (each line stripped, joined by spaces)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _discard_stdout() -> None:
    """Point the standard output at /dev/null, so that flushing it at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
