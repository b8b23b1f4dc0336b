"""`tpt eval`: a method on a task, one record per sample in a resumable run folder."""
from __future__ import annotations

import argparse
import os

from ..argtypes import folder_name, non_negative_int, positive_int
from ..methods.registry import METHODS
from .common import UsageError, device, setup_errors, task_options
from .show import format_summary

EXAMPLES = """\
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


#: options of `tpt eval` that set a method parameter as `--set NAME=VALUE` does, for the methods whose
#: fields have it (TPT's and C-TPT's); read and checked by the method's fields like any --set
PARAMETER_OPTIONS = ("steps", "lr", "selection_p", "ctx_init", "n_ctx", "coop_ckpt", "cocoop_ckpt", "jacobian")


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a method on a task (resumable run folder)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                        description="Evaluate a method on a task, one record per sample in --out.")
    _what_options(ev)
    _run_options(ev)
    _parameter_options(ev)
    ev.set_defaults(func=run)


def _what_options(ev) -> None:
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
                           "ctpt, rtpt, zero, zero-ensemble, mta (episodic), tda, dmn (online): see `tpt methods` "
                           "(default: tpt)")
    what.add_argument("--set", dest="method_set", action="append", default=[], metavar="NAME=VALUE",
                      help="a parameter of the method (see `tpt methods`), VALUE read as JSON when it can be: "
                           "--set gamma=0.2 --set templates=tip7; repeatable")
    what.add_argument("--out", required=True, type=folder_name,
                      help="run folder: created if absent, resumed if it holds this run")


def _run_options(ev) -> None:
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


def _parameter_options(ev) -> None:
    tune = ev.add_argument_group("method parameters as options (the methods that have them: tpt, tpt-coop, "
                                 "tpt-cocoop, ctpt); each is --set NAME=VALUE")
    tune.add_argument("--steps", default=None, help="tuning steps per sample (default 1)")
    tune.add_argument("--lr", default=None, help="AdamW learning rate (default 5e-3)")
    tune.add_argument("--selection-p", default=None,
                      help="fraction of views kept by confidence selection (default 0.1: 6 of 64)")
    tune.add_argument("--ctx-init", default=None,
                      help="phrase the context starts from (default 'a photo of a'); 'none' or '' for random "
                           "N(0, 0.02^2) vectors drawn from --set seed=S (recorded)")
    tune.add_argument("--n-ctx", default=None,
                      help="context vectors of a random start (default 4); refused with a phrase, whose token count it is")
    tune.add_argument("--coop-ckpt", default=None, help="CoOp checkpoint whose ctx initialises the context (tpt-coop)")
    tune.add_argument("--cocoop-ckpt", default=None, help="CoCoOp checkpoint (tpt-cocoop)")
    tune.add_argument("--jacobian", action="store_const", const="true", default=None,
                      help="speed only: the first step's gradient from the Jacobian of the class features at the "
                           "initial context, computed once per task (exact in mathematics; pays off after about "
                           "n_ctx x text width / 2 samples, e.g. 1024 for ViT-B-16: for long runs on a GPU)")


def _parse_sets(items: list[str]) -> dict[str, str]:
    """--set NAME=VALUE items -> {name: text}; the method's fields read the texts."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--set takes NAME=VALUE; got {item!r}")
        if name.strip() in out:
            raise UsageError(f"--set {name.strip()} is given twice")
        out[name.strip()] = value
    return out


def _method_from_args(args):
    """The method of `tpt eval`'s options: --method, its parameters from --set and the parameter
    options, each read and checked by the method's fields."""
    from ..methods.registry import make_method, method_info, parse_parameters

    texts = _parse_sets(getattr(args, "method_set", []))
    options = {dest: getattr(args, dest) for dest in PARAMETER_OPTIONS if getattr(args, dest, None) is not None}
    if twice := sorted(set(texts) & set(options)):
        raise UsageError(f"{', '.join(twice)} given both as an option and with --set")
    specs = method_info(args.method).specs()
    if foreign := [f"--{dest.replace('_', '-')}" for dest in options if dest not in specs]:
        raise UsageError(f"{', '.join(foreign)}: --method {args.method} has no such parameter; drop "
                         f"{'it' if len(foreign) == 1 else 'them'}, or give {args.method}'s own parameters with "
                         f"--set NAME=VALUE (`tpt methods` lists them)")
    return make_method(args.method, **parse_parameters(args.method, {**texts, **options}))

def run(args) -> int:
    from ..clip import load_clip
    from ..data import load_task
    from ..runs import evaluate, plan

    if args.model != "micro" and args.pretrained is None:
        raise UsageError(f"--pretrained is required for --model {args.model}: give a tag (e.g. openai; "
                         f"see `tpt models`), a checkpoint file, or 'none' for random weights")
    with setup_errors():
        method = _method_from_args(args)
        task = load_task(args.task, args.root, **task_options(args))   # a wrong layout is refused here
        clip = load_clip(args.model, pretrained=args.pretrained, device=device(args.device),
                         precision=args.precision, jit_archive=args.jit_archive)
        # every check of the run, the one `evaluate` makes too (before --out is touched)
        run_plan = plan(clip, task, method, args.out, limit=args.limit, seed=args.seed, n_views=args.views,
                        batch_size=args.batch_size, workers=args.workers, progress=not args.no_progress,
                        stream_seed=args.stream_seed, feature_cache=args.feature_cache)
    result = evaluate(run_plan)
    if int(os.environ.get("RANK", 0)) == 0:
        print(format_summary(result.summary, result.out))
    return 0
