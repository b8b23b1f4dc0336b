"""`tpt bench`: the batched engine against the faithful one-sample reference, in one process.

Both paths get the same model (the real architecture, random weights from a seed unless
`--pretrained` names weights), the same class names (the first N of ImageNet-A's 200, or of
ImageNet's 1000 when N > 200) and the same views (synthetic images made into views with
`tpt.make_views`). The two paths run interleaved (an engine batch, then its share of reference
samples, ...) so that a machine whose load changes during the run slows both alike. Printed and
written to a JSON file: samples/s of each path and their ratio, peak memory of each path, the
share of identical argmax predictions and the max |logit difference| on the samples both ran,
FLOPs per sample of each path and the device's matmul peak, so the gap to the limit is visible.

    python -m tptlib.bench                                   # CPU: ViT-B-16, 200 classes, 64 views
    python -m tptlib.bench --device cuda --classes 1000      # one GPU, amp as the authors
    tpt bench --help                                         # the same, through the CLI
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

from ..argtypes import positive_int
from ..jsonout import dumps
from .inputs import bench_classnames
from .report import format_table
from .runner import run_bench

EPILOG = """\
examples:
  # the CPU check (about 10-15 minutes on 2 cores): engine on 4 samples, reference on 2
  python -m tptlib.bench --model ViT-B-16 --classes 200 --views 64 --samples 4 --reference-samples 2

  # one GPU, 1000 classes, the authors' precision (fp16 autocast with loss scaling)
  python -m tptlib.bench --device cuda --precision amp --classes 1000 --batch-size 16 --samples 128

  # a quick smoke run with the embedded micro-CLIP
  python -m tptlib.bench --model micro --classes 20 --views 8 --samples 2 --reference-samples 2

  # what each exact speed-up is worth: switch them off one at a time
  python -m tptlib.bench --plain-text --plain-image ...

  # the first step from the context Jacobian (its one-off cost is the engine's setup_s)
  python -m tptlib.bench --device cuda --classes 1000 --batch-size 16 --samples 128 --jacobian

reading the table:
  samples/s      samples per second of wall time (views made beforehand, not timed)
  peak mem       CPU: peak resident memory above the level before the call (sampled every 2 ms);
                 CUDA: max allocated above what was allocated before the call (model, cached text)
  GFLOP/sample   counted with torch's FlopCounterMode on the pieces each path runs, per sample
  limit          device peak / FLOPs per sample: the most samples/s the path's arithmetic allows.
                 The peak is the best of matmul probes before, between and after the runs; on a
                 CPU shared with other work every probe may run under load, and a path can then
                 show more than 100% of its "limit"
  CPU time       the speed-up also in process CPU time (all threads): on a CPU shared with other
                 work, wall time swings with their load and CPU time much less (on CUDA it is host
                 time and means little)
  agreement      on the samples both paths ran: identical argmax, max |logit difference|,
                 identical kept views (confidence selection)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("model and task")
    what.add_argument("--model", default="ViT-B-16",
                      help="open_clip model name (ViT-B-16, RN50, ...) or 'micro' (default ViT-B-16)")
    what.add_argument("--pretrained", default=None,
                      help="weights: an open_clip tag or a checkpoint file; default: random weights of the "
                           "real shape, seeded by --seed (speed does not depend on the weights)")
    what.add_argument("--classes", type=positive_int, default=200,
                      help="number of classes: the first N of ImageNet-A's 200 (N <= 200) or of ImageNet's "
                           "1000 (default 200)")
    what.add_argument("--views", type=positive_int, default=64, help="views per sample, view 0 the original (default 64)")
    what.add_argument("--steps", type=int, default=1, help="TPT steps (default 1)")
    what.add_argument("--selection-p", type=float, default=0.1,
                      help="share of views kept by confidence selection (default 0.1: 6 of 64)")
    what.add_argument("--seed", type=int, default=0, help="seed of the weights, images and views (default 0)")

    run = p.add_argument_group("how it runs")
    run.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda when available)")
    run.add_argument("--precision", default="auto", choices=("auto", "fp32", "amp", "bf16"),
                     help="auto = amp on CUDA (fp16 autocast + loss scaling, the authors'), fp32 on the CPU")
    run.add_argument("--reference-precision", default=None, choices=("fp32", "amp", "bf16"),
                     help="precision of the reference (default: the same as --precision). Set fp32 to "
                          "measure what a lower engine precision does to the predictions")
    run.add_argument("--batch-size", type=positive_int, default=None,
                     help="engine samples per call (default 4 on the CPU, 16 on CUDA)")
    run.add_argument("--samples", type=positive_int, default=None,
                     help="samples the engine runs (default 4 on the CPU, 128 on CUDA)")
    run.add_argument("--reference-samples", type=positive_int, default=None,
                     help="samples the reference runs, the first ones of the engine's (default 2 on the CPU, "
                          "16 on CUDA); agreement is measured on these")
    run.add_argument("--class-chunk", type=positive_int, default=None,
                     help="engine: classes per text-tower pass (default: all at once)")
    run.add_argument("--image-chunk", type=positive_int, default=None,
                     help="engine: views per image-tower pass (default: 128 on a CPU, 256 on a GPU)")
    run.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    run.add_argument("--warmup", type=int, default=None,
                     help="untimed warm-up calls of each path before timing (default 1 on CUDA, 0 on the CPU)")
    run.add_argument("--plain-text", action="store_true",
                     help="engine without the prefix cache / length buckets (open_clip's text tower on the cut sequence)")
    run.add_argument("--plain-image", action="store_true",
                     help="engine with the image tower as open_clip runs it (no fused attention, no class-token-only last block)")
    run.add_argument("--jacobian", action="store_true",
                     help="engine: first step's gradient from the context Jacobian, computed once (in setup; "
                          "pays off after ~n_ctx*W/2 samples, so for long runs on a GPU)")
    run.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the device peak")

    out = p.add_argument_group("output")
    out.add_argument("--json", default=None,
                     help="where to write the results, as strict JSON (a NaN or an infinity is null; default "
                          "bench/bench-<device>-<classes>.json)")
    out.add_argument("--quiet", action="store_true", help="no progress lines, only the table")


def build_parser(prog: str = "python -m tptlib.bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    add_arguments(p)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Mount `bench` on a CLI's subparsers (`tpt bench ...`); the command returns an exit status."""
    p = subparsers.add_parser("bench", help="engine vs. faithful reference: speed, memory, agreement, FLOPs",
                              description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args) -> int:
    import torch

    from ..clip import load_clip
    from ..methods import TPT
    from ..version import versions

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cpu = device.type == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (4 if cpu else 16)
    samples = args.samples or (4 if cpu else 128)
    reference_samples = args.reference_samples or min(samples, 2 if cpu else 16)
    warmup = args.warmup if args.warmup is not None else (0 if cpu else 1)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, file=sys.stderr, flush=True))

    try:
        TPT(steps=args.steps, selection_p=args.selection_p).check_views(args.views)   # before any work
        classnames, source = bench_classnames(args.classes)
        torch.manual_seed(args.seed)
        clip = load_clip(args.model, pretrained=args.pretrained, device=device, precision=args.precision)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tpt bench: error: {exc}", file=sys.stderr)
        return 2
    reference_clip = (dataclasses.replace(clip, precision=args.reference_precision)
                      if args.reference_precision else None)
    log(f"tpt bench: {clip}, {len(classnames)} classes, {args.views} views, engine {samples} samples "
        f"(batch {batch_size}), reference {reference_samples}")
    started = time.time()
    res = run_bench(clip, classnames, views=args.views, steps=args.steps, selection_p=args.selection_p,
                    batch_size=batch_size, samples=samples,
                    reference_samples=reference_samples, class_chunk=args.class_chunk, image_chunk=args.image_chunk,
                    seed=args.seed, warmup=warmup, fast_text=not args.plain_text, fast_image=not args.plain_image,
                    jacobian=args.jacobian,
                    reference_clip=reference_clip, flops=not args.no_flops, log=log)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    res["config"] = {"model": args.model, "weights": args.pretrained or f"random weights, seed {args.seed}",
                     "classes": len(classnames), "class_source": source, "views": args.views, "steps": args.steps,
                     "selection_p": args.selection_p,
                     "device": str(device), "device_name": device_name, "precision": clip.precision,
                     "threads": torch.get_num_threads(), "warmup": warmup, "seed": args.seed}
    res["argv"] = list(sys.argv)
    res["versions"] = versions()
    res["started"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started))
    res["wall_s"] = time.time() - started
    print(format_table(res), flush=True)
    path = Path(args.json or f"bench/bench-{device.type}-{len(classnames)}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"written: {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tptlib.bench ...`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_from_args(args)
