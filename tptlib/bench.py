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
import ctypes
import dataclasses
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path

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

#: nominal dense tensor-core peaks (FLOP/s) by device-name fragment, for the JSON beside the measured peak
NOMINAL_PEAKS = {
    "H100": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H100 SXM dense"},
    "H200": {"fp16": 989e12, "bf16": 989e12, "tf32": 494e12, "fp32": 67e12, "note": "H200 SXM dense"},
    "A100": {"fp16": 312e12, "bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12, "note": "A100 dense"},
}


# --- arguments ------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_argument_group("model and task")
    what.add_argument("--model", default="ViT-B-16",
                      help="open_clip model name (ViT-B-16, RN50, ...) or 'micro' (default ViT-B-16)")
    what.add_argument("--pretrained", default=None,
                      help="weights: an open_clip tag or a checkpoint file; default: random weights of the "
                           "real shape, seeded by --seed (speed does not depend on the weights)")
    what.add_argument("--classes", type=_positive_int, default=200,
                      help="number of classes: the first N of ImageNet-A's 200 (N <= 200) or of ImageNet's "
                           "1000 (default 200)")
    what.add_argument("--views", type=_positive_int, default=64, help="views per sample, view 0 the original (default 64)")
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
    run.add_argument("--batch-size", type=_positive_int, default=None,
                     help="engine samples per call (default 4 on the CPU, 16 on CUDA)")
    run.add_argument("--samples", type=_positive_int, default=None,
                     help="samples the engine runs (default 4 on the CPU, 128 on CUDA)")
    run.add_argument("--reference-samples", type=_positive_int, default=None,
                     help="samples the reference runs, the first ones of the engine's (default 2 on the CPU, "
                          "16 on CUDA); agreement is measured on these")
    run.add_argument("--class-chunk", type=_positive_int, default=None,
                     help="engine: classes per text-tower pass (default: all at once)")
    run.add_argument("--image-chunk", type=_positive_int, default=256,
                     help="engine: views per image-tower pass (default 256)")
    run.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
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
                     help="where to write the results (default bench/bench-<device>-<classes>.json)")
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


# --- inputs ---------------------------------------------------------------------------------

def bench_classnames(n: int) -> tuple[list[str], str]:
    """The first `n` of ImageNet-A's 200 class names (n <= 200) or of ImageNet's 1000."""
    from .data import catalog
    names = catalog._imagenet_classnames()
    if n <= 200:
        _, indices = catalog._imagenet_folders(catalog._BY_ALIAS[catalog._norm("A")])
        return [names[i] for i in indices][:n], "ImageNet-A"
    if n > len(names):
        raise ValueError(f"--classes at most {len(names)} (ImageNet's classes); got {n}")
    return names[:n], "ImageNet"


def synthetic_image(index: int, seed: int):
    """A smooth random RGB image (PIL, 320x256) for sample `index`: low-resolution noise upsampled."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng([seed, index, 7])
    small = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    fine = rng.integers(-24, 25, size=(256, 320, 3))
    big = np.asarray(Image.fromarray(small).resize((320, 256), Image.BICUBIC), dtype=np.int64)
    return Image.fromarray(np.clip(big + fine, 0, 255).astype(np.uint8))


def sample_views(clip, index: int, n_views: int, seed: int):
    from .augment import make_views
    return make_views(synthetic_image(index, seed), index=index, seed=seed, n_views=n_views,
                      image_size=clip.image_size, augmix=False, mean=clip.mean, std=clip.std)


# --- measuring ------------------------------------------------------------------------------

def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS, so that the next RSS baseline is honest (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of the code inside `with`, above the level before it (bytes in `.peak`).

    CUDA: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated before.
    CPU: resident set size sampled every 2 ms by a thread, minus the RSS before (after malloc_trim).
    """

    def __init__(self, device):
        self.device, self.peak, self.absolute = device, 0, 0

    def __enter__(self):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self.base = _rss_bytes()
            self._max = self.base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc):
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.absolute = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.absolute = max(self._max, _rss_bytes())
        self.peak = max(0, self.absolute - self.base)
        return False


def count_flops(fn) -> int:
    """FLOPs torch's FlopCounterMode counts for `fn()` (matmuls, convolutions, attention).

    `nn.MultiheadAttention`'s fused inference path is switched off while counting: the counter
    does not see the projections inside it (the arithmetic is the same either way).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())


def path_flops(clip, engine, reference, n_views: int, steps: int, class_chunk: int | None) -> dict:
    """FLOPs per sample of each path, counted piece by piece on one sample.

    Engine: the image tower on the views once; per step the text tower forward and backward over
    the classes (the prefix path); with a class chunk and several steps, a forward between steps;
    one forward for the prediction. Reference: per step the image tower on all views and the text
    tower forward and backward at the full context length; the image tower on view 0 and one text
    forward for the prediction. The logits, entropies and AdamW are left out (under 0.1%).
    """
    import torch

    from .methods.tpt_step import backward, jacobian_grad
    from .towers import encode_images

    model, dev = clip.model, clip.device
    one = torch.zeros(1, 3, clip.image_size, clip.image_size, device=dev)
    with torch.no_grad(), clip.autocast():
        img_ref = count_flops(lambda: model.encode_image(one))
        img_eng = count_flops(lambda: encode_images(model, one, engine.fast_image))

    prepared = engine.prepared
    text = prepared.text
    C = len(engine.classnames)
    ctx0 = prepared.prompt.init_ctx.unsqueeze(0).clone()
    n_kept = max(1, int(n_views * engine.method.selection_p))
    kept = torch.nn.functional.normalize(torch.randn(1, n_kept, clip.embed_dim, device=dev), dim=-1)
    chunk = class_chunk if class_chunk and class_chunk < C else None
    init = prepared.init_feats.unsqueeze(0) if prepared.init_feats is not None else None

    def eng_step():
        ctx = ctx0.clone().requires_grad_(True)
        feats = init if init is not None else text.class_features(model, ctx0, chunk)
        with clip.autocast():
            backward(model, text, ctx, kept, feats, clip.logit_scale, chunk, None)

    jac = prepared.jacobian

    def eng_first_step():
        ctx = ctx0.clone().requires_grad_(True)
        with clip.autocast():
            jacobian_grad(jac, ctx, kept, init, clip.logit_scale)

    with clip.autocast():
        eng_step_flops = count_flops(eng_step)
        eng_first_flops = count_flops(eng_first_step) if jac is not None else eng_step_flops
        with torch.no_grad():
            eng_fwd = count_flops(lambda: text.class_features(model, ctx0, chunk))

    # the reference's text tower: every class costs the same at the full length, so count a few and scale
    few = min(C, 4)
    rprompt = reference.prompt

    def ref_step():
        ctx = ctx0.clone().requires_grad_(True)
        with clip.autocast():
            rprompt.encode(model, ctx, slice(0, few)).sum().backward()

    ref_step_flops = count_flops(ref_step) * C / few
    with torch.no_grad(), clip.autocast():
        ref_fwd = count_flops(lambda: rprompt.encode(model, ctx0, slice(0, few))) * C / few

    engine_total = n_views * img_eng + (eng_first_flops + (steps - 1) * eng_step_flops if steps else 0) \
        + (max(0, steps - 1) * eng_fwd if chunk else 0) + (eng_fwd if steps else 0)
    reference_total = steps * (n_views * img_ref + ref_step_flops) + img_ref + ref_fwd
    return {"engine_per_sample": engine_total, "reference_per_sample": reference_total,
            "parts": {"image_per_view_reference": img_ref, "image_per_view_engine": img_eng,
                      "text_step_engine": eng_step_flops, "text_first_step_engine": eng_first_flops,
                      "text_forward_engine": eng_fwd,
                      "text_step_reference": ref_step_flops, "text_forward_reference": ref_fwd}}


def device_peak(device, precision: str, seconds: float = 1.0) -> dict:
    """The device's matmul throughput, measured in this process (the best of several runs)."""
    import torch
    dtype = {"amp": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    flop = 2 * n ** 3
    best = 0.0
    deadline = time.perf_counter() + seconds
    torch.matmul(a, b)
    while time.perf_counter() < deadline or best == 0.0:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        reps = 10 if device.type == "cuda" else 1
        for _ in range(reps):
            torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, reps * flop / (time.perf_counter() - t))
    out = {"measured_flops": best, "how": f"best {n}x{n}x{n} {str(dtype).removeprefix('torch.')} matmul"}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in NOMINAL_PEAKS.items():
            if key in name:
                kind = {"amp": "fp16", "bf16": "bf16"}.get(precision, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32")
                out["nominal_flops"], out["nominal_note"] = peaks[kind], f"{peaks['note']} {kind}"
    return out


# --- the run --------------------------------------------------------------------------------

@dataclasses.dataclass
class PathStats:
    samples: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0          # process CPU time (all threads) spent in the path's calls
    peak_bytes: int = 0
    peak_absolute_bytes: int = 0
    calls: list = dataclasses.field(default_factory=list)   # [samples, wall s, CPU s] per call

    def add(self, n: int, seconds: float, cpu_seconds: float, mem: PeakMemory) -> None:
        self.samples += n
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds
        self.calls.append([n, round(seconds, 4), round(cpu_seconds, 4)])
        self.peak_bytes = max(self.peak_bytes, mem.peak)
        self.peak_absolute_bytes = max(self.peak_absolute_bytes, mem.absolute)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")

    @property
    def samples_per_cpu_s(self) -> float:
        return self.samples / self.cpu_seconds if self.cpu_seconds else float("nan")


class Timer:
    """Wall time and process CPU time of the code inside `with` (synchronising CUDA at both ends)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return False


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(clip, classnames: list[str], *, views: int = 64, steps: int = 1, selection_p: float = 0.1,
              batch_size: int = 4,
              samples: int = 4, reference_samples: int = 2, class_chunk: int | None = None,
              image_chunk: int = 256, seed: int = 0, warmup: int = 0, fast_text: bool = True,
              jacobian: bool = False,
              fast_image: bool = True, reference_clip=None, flops: bool = True, log=print) -> dict:
    """Run both paths on the same views, interleaved; returns the results dict (see `main`)."""
    import torch

    from .engine import Engine
    from .towers import vit_supported
    from .methods import TPT
    from .reference import ReferenceTPT

    if reference_samples > samples:
        raise ValueError(f"--reference-samples ({reference_samples}) cannot exceed --samples ({samples}): "
                         "agreement is measured on samples both paths ran")
    device = clip.device
    reference_clip = reference_clip or clip
    t = time.perf_counter()
    from .objectives import n_selected
    n_selected(views, selection_p)                      # refuses a setting that keeps no view
    engine = Engine(clip, TPT(steps=steps, selection_p=selection_p, fast_text=fast_text, jacobian=jacobian),
                    classnames, batch_size=batch_size,
                    class_chunk=class_chunk, image_chunk=image_chunk, fast_image=fast_image)
    setup_engine = time.perf_counter() - t
    t = time.perf_counter()
    reference = ReferenceTPT(reference_clip, classnames, steps=steps, selection_p=selection_p)
    setup_reference = time.perf_counter() - t

    peak_before = device_peak(device, clip.precision) if flops else None
    probes = []                                 # short matmul probes between calls (a shared CPU's load varies)
    n_batches = math.ceil(samples / batch_size)
    # reference samples after engine batch i: spread evenly, never ahead of the views made so far
    quota = [round(reference_samples * (i + 1) / n_batches) - round(reference_samples * i / n_batches)
             for i in range(n_batches)]
    eng, ref = PathStats(), PathStats()
    eng_logits, eng_kept, ref_logits, ref_kept, eng_loss, ref_loss = {}, {}, {}, {}, {}, {}
    kept_views: dict[int, torch.Tensor] = {}
    next_ref = 0

    if warmup:
        w = torch.stack([sample_views(clip, i, views, seed) for i in range(min(batch_size, samples))])
        for _ in range(warmup):
            engine.run_views(w)
            reference.predict(w[0])
        _sync(device)
        del w
    engine.stage_seconds = {}                   # image tower vs tuning + prediction, from here on

    for bi in range(n_batches):
        idx = list(range(bi * batch_size, min(samples, (bi + 1) * batch_size)))
        batch = torch.stack([sample_views(clip, i, views, seed) for i in idx])          # [b, V, 3, S, S]
        if device.type == "cuda":
            batch = batch.pin_memory()      # as a pinned DataLoader delivers them (the authors' and `tpt eval`'s)
        for i, v in zip(idx, batch):
            if i < reference_samples:
                kept_views[i] = v
        with PeakMemory(device) as mem, Timer(device) as tm:
            out, _ = engine.run_views(batch)
        eng.add(len(idx), tm.wall, tm.cpu, mem)
        dt = tm.wall
        for j, i in enumerate(idx):
            eng_logits[i] = out.logits[j].detach().float().cpu()
            eng_kept[i] = out.kept[j].tolist()
            eng_loss[i] = float(out.loss[j])
        if flops and device.type == "cpu":
            probes.append(device_peak(device, clip.precision, seconds=0.3))
        log(f"  engine     batch {bi + 1}/{n_batches} ({len(idx)} samples): {dt:.2f} s, "
            f"{len(idx) / dt:.3g} samples/s, peak {mem.peak / 2**20:.0f} MiB")
        del batch, out
        for _ in range(quota[bi]):
            i = next_ref
            next_ref += 1
            with PeakMemory(device) as mem, Timer(device) as tm:
                r = reference.predict(kept_views[i])
            ref.add(1, tm.wall, tm.cpu, mem)
            dt = tm.wall
            ref_logits[i], ref_kept[i], ref_loss[i] = r["logits"].float(), r["kept"], r["loss"]
            log(f"  reference  sample {i + 1}/{reference_samples}: {dt:.2f} s, peak {mem.peak / 2**20:.0f} MiB")
            del kept_views[i]

    both = sorted(set(ref_logits) & set(eng_logits))
    same_argmax = sum(int(eng_logits[i].argmax()) == int(ref_logits[i].argmax()) for i in both)
    same_kept = sum(eng_kept[i] == ref_kept[i] for i in both)
    max_diff = max((float((eng_logits[i] - ref_logits[i]).abs().max()) for i in both), default=float("nan"))
    loss_diff = max((abs(eng_loss[i] - ref_loss[i]) for i in both), default=float("nan"))

    result = {
        "engine": {**dataclasses.asdict(eng), "samples_per_s": eng.samples_per_s,
                   "samples_per_cpu_s": eng.samples_per_cpu_s, "setup_s": setup_engine,
                   "stage_seconds": dict(engine.stage_seconds),
                   "batch_size": batch_size, "class_chunk": class_chunk, "image_chunk": image_chunk,
                   "fast_text": bool(fast_text and engine.prepared.encoder is not None),
                   "fast_image": bool(fast_image and vit_supported(clip.model.visual)),
                   "jacobian": engine.prepared.jacobian is not None},
        "reference": {**dataclasses.asdict(ref), "samples_per_s": ref.samples_per_s,
                      "samples_per_cpu_s": ref.samples_per_cpu_s, "setup_s": setup_reference,
                      "precision": reference_clip.precision},
        "ratio": eng.samples_per_s / ref.samples_per_s if ref.samples else float("nan"),
        "ratio_cpu_time": eng.samples_per_cpu_s / ref.samples_per_cpu_s if ref.samples else float("nan"),
        "agreement": {"samples": len(both), "identical_argmax": same_argmax,
                      "identical_argmax_share": same_argmax / len(both) if both else float("nan"),
                      "identical_kept": same_kept, "max_abs_logit_diff": max_diff, "max_abs_loss_diff": loss_diff},
    }
    if flops:
        f = path_flops(clip, engine, reference, views, steps, class_chunk)
        peak = device_peak(device, clip.precision)
        for probe in [peak_before, *probes]:    # the best of the probes before, between and after the runs
            if probe["measured_flops"] > peak["measured_flops"]:
                peak = probe
        limit_eng = peak["measured_flops"] / f["engine_per_sample"]
        limit_ref = peak["measured_flops"] / f["reference_per_sample"]
        result["flops"] = f
        result["device_peak"] = peak
        result["limit"] = {"engine_samples_per_s": limit_eng, "reference_samples_per_s": limit_ref,
                           "engine_share_of_limit": eng.samples_per_s / limit_eng,
                           "reference_share_of_limit": ref.samples_per_s / limit_ref if ref.samples else float("nan"),
                           "flop_ratio": f["reference_per_sample"] / f["engine_per_sample"]}
    return result


def _fmt_mem(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 10 * 2**30 else f"{b / 2**30:,.1f} GiB"


def format_table(res: dict) -> str:
    cfg = res["config"]
    e, r, a = res["engine"], res["reference"], res["agreement"]
    lines = [
        f"tpt bench: {cfg['model']} ({cfg['weights']}), {cfg['classes']} classes ({cfg['class_source']}'s first "
        f"{cfg['classes']}), {cfg['views']} views, {cfg['steps']} step(s), {cfg['device_name']}, "
        f"precision {cfg['precision']}, {cfg['threads']} CPU threads",
    ]
    has_f = "flops" in res
    head = f"{'path':<22}{'samples':>8}{'samples/s':>11}{'s/sample':>10}{'peak mem':>12}"
    if has_f:
        head += f"{'GFLOP/sample':>14}{'limit/s':>10}{'of limit':>10}"
    lines += ["", head, "-" * len(head)]
    eng_name = f"engine (batch {e['batch_size']}{', jacobian' if e.get('jacobian') else ''})"
    for name, p, key in ((eng_name, e, "engine"), ("reference (1 at a time)", r, "reference")):
        sps = p["samples_per_s"]
        row = (f"{name:<22}{p['samples']:>8}{sps:>11.4g}{(1 / sps if sps else float('nan')):>10.3g}"
               f"{_fmt_mem(p['peak_bytes']):>12}")
        if has_f:
            fl = res["flops"][f"{key}_per_sample"]
            lim = res["limit"][f"{key}_samples_per_s"]
            row += f"{fl / 1e9:>14,.0f}{lim:>10.4g}{sps / lim:>10.1%}"
        lines.append(row)
    lines.append("")
    lines.append(f"speed-up engine / reference: {res['ratio']:.2f}x wall time, {res['ratio_cpu_time']:.2f}x process "
                 f"CPU time" + (f"   (FLOP ratio {res['limit']['flop_ratio']:.2f}x)" if has_f else ""))
    mem_ratio = r["peak_bytes"] / e["peak_bytes"] if e["peak_bytes"] else float("nan")
    lines.append(f"peak memory reference / engine: {mem_ratio:.2f}x")
    lines.append(f"agreement on the {a['samples']} samples both ran: identical argmax {a['identical_argmax']}/"
                 f"{a['samples']} ({a['identical_argmax_share']:.1%}), max |logit diff| {a['max_abs_logit_diff']:.2e}, "
                 f"identical kept views {a['identical_kept']}/{a['samples']}, max |loss diff| {a['max_abs_loss_diff']:.2e}")
    if e.get("jacobian"):
        lines.append(f"engine setup {e['setup_s']:.3g} s with the context Jacobian, as long as "
                     f"{e['setup_s'] * e['samples_per_s']:.0f} samples of the engine's tuning (not in samples/s)")
    stages = e.get("stage_seconds") or {}
    if stages and e["samples"]:
        total = sum(stages.values())
        parts = res.get("flops", {}).get("parts", {})
        stage_flops = {"image": cfg["views"] * parts["image_per_view_engine"],
                       "method": res["flops"]["engine_per_sample"] - cfg["views"] * parts["image_per_view_engine"]
                       } if parts else {}
        cells = []
        for key, label in (("image", "image tower"), ("method", "tuning + prediction")):
            sec = stages.get(key, 0.0) / e["samples"]
            rate = f", {stage_flops[key] / sec / 1e9:,.0f} GFLOP/s" if stage_flops and sec else ""
            cells.append(f"{label} {sec:.3g} s ({stages.get(key, 0.0) / total:.0%}{rate})")
        lines.append("engine time per sample: " + ", ".join(cells))
    if has_f:
        pk = res["device_peak"]
        nominal = (f"; nominal {pk['nominal_flops'] / 1e12:,.0f} TFLOP/s ({pk['nominal_note']})"
                   if "nominal_flops" in pk else "")
        lines.append(f"device peak: {pk['measured_flops'] / 1e9:,.1f} GFLOP/s measured ({pk['how']}){nominal}")
    return "\n".join(lines)


def run_from_args(args) -> int:
    import torch

    from .version import versions
    from .clip import load_clip

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
        classnames, source = bench_classnames(args.classes)
        torch.manual_seed(args.seed)
        clip = load_clip(args.model, pretrained=args.pretrained, device=device, precision=args.precision)
    except (ValueError, FileNotFoundError) as exc:
        print(f"tpt bench: error: {exc}", file=sys.stderr)
        return 2
    reference_clip = (dataclasses.replace(clip, precision=args.reference_precision)
                      if args.reference_precision else None)
    from .objectives import n_selected
    try:
        n_selected(args.views, args.selection_p)
    except ValueError as exc:
        print(f"tpt bench: error: {exc}", file=sys.stderr)
        return 2
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
    path.write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    print(f"written: {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tptlib.bench ...`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
