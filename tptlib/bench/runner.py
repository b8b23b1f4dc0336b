"""The benchmark run: the engine and the reference on the same views, interleaved (an engine batch, then
its share of reference samples, ...), so that a machine whose load changes slows both alike."""
from __future__ import annotations

import dataclasses
import math
import time

from .flops import path_flops
from .inputs import sample_views
from .profiling import PeakMemory, Timer, device_peak, sync


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


def run_bench(clip, classnames: list[str], *, views: int = 64, steps: int = 1, selection_p: float = 0.1,
              batch_size: int = 4, samples: int = 4, reference_samples: int = 2, class_chunk: int | None = None,
              image_chunk: int | None = None, seed: int = 0, warmup: int = 0, fast_text: bool = True, jacobian: bool = False,
              fast_image: bool = True, reference_clip=None, flops: bool = True, log=print) -> dict:
    """Run both paths on the same views, interleaved; returns the results dict (see `main`)."""
    import torch

    from ..engine import Engine
    from ..meter import Meter
    from ..methods import TPT
    from ..reference import ReferenceTPT
    from ..towers import resnet_supported, vit_supported

    if reference_samples > samples:
        raise ValueError(f"--reference-samples ({reference_samples}) cannot exceed --samples ({samples}): "
                         "agreement is measured on samples both paths ran")
    device, reference_clip = clip.device, reference_clip or clip
    method = TPT(steps=steps, selection_p=selection_p, fast_text=fast_text, jacobian=jacobian)
    method.check_views(views)                           # refuses a setting that keeps no view
    # the image tower vs tuning + prediction, device synchronised between them (memory: around whole calls)
    engine, setup_engine = _timed(lambda: Engine(clip, method, classnames, batch_size=batch_size,
                                                 meter=Meter(device, memory=False), class_chunk=class_chunk,
                                                 image_chunk=image_chunk, fast_image=fast_image))
    reference, setup_reference = _timed(lambda: ReferenceTPT(reference_clip, classnames, steps=steps,
                                                             selection_p=selection_p))
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
    _warm_up(engine, reference, [sample_views(clip, i, views, seed) for i in range(min(batch_size, samples))],
             warmup)

    for bi in range(n_batches):
        idx = list(range(bi * batch_size, min(samples, (bi + 1) * batch_size)))
        batch = torch.stack([sample_views(clip, i, views, seed) for i in idx])          # [b, V, 3, S, S]
        if device.type == "cuda":
            batch = batch.pin_memory()      # as a pinned DataLoader delivers them (the authors' and `tpt eval`'s)
        kept_views.update((i, v) for i, v in zip(idx, batch) if i < reference_samples)
        with PeakMemory(device) as mem, Timer(device) as tm:
            out, _ = engine.run_views(batch)
        eng.add(len(idx), tm.wall, tm.cpu, mem)
        eng_logits.update(zip(idx, out.logits.detach().float().cpu()))
        eng_kept.update(zip(idx, out.kept.tolist()))
        eng_loss.update(zip(idx, out.loss.tolist()))
        if flops and device.type == "cpu":
            probes.append(device_peak(device, clip.precision, seconds=0.3))
        log(f"  engine     batch {bi + 1}/{n_batches} ({len(idx)} samples): {tm.wall:.2f} s, "
            f"{len(idx) / tm.wall:.3g} samples/s, peak {mem.peak / 2**20:.0f} MiB")
        del batch, out
        for _ in range(quota[bi]):
            r = _reference_sample(reference, kept_views.pop(next_ref), ref, device)
            ref_logits[next_ref], ref_kept[next_ref], ref_loss[next_ref] = r["logits"].float(), r["kept"], r["loss"]
            log(f"  reference  sample {next_ref + 1}/{reference_samples}: {r['seconds']:.2f} s, "
                f"peak {r['peak_bytes'] / 2**20:.0f} MiB")
            next_ref += 1

    result = {
        "engine": {**dataclasses.asdict(eng), "samples_per_s": eng.samples_per_s,
                   "samples_per_cpu_s": eng.samples_per_cpu_s, "setup_s": setup_engine,
                   "stage_seconds": dict(engine.meter.totals),
                   "batch_size": batch_size, "class_chunk": class_chunk, "image_chunk": image_chunk or clip.image_chunk,
                   "fast_text": bool(fast_text and engine.prepared.encoder is not None),
                   "fast_image": bool(fast_image and (vit_supported(clip.model.visual) or resnet_supported(clip.model.visual))),
                   "jacobian": engine.prepared.jacobian is not None},
        "reference": {**dataclasses.asdict(ref), "samples_per_s": ref.samples_per_s,
                      "samples_per_cpu_s": ref.samples_per_cpu_s, "setup_s": setup_reference,
                      "precision": reference_clip.precision},
        "ratio": eng.samples_per_s / ref.samples_per_s if ref.samples else float("nan"),
        "ratio_cpu_time": eng.samples_per_cpu_s / ref.samples_per_cpu_s if ref.samples else float("nan"),
        "agreement": _agreement(eng_logits, ref_logits, eng_kept, ref_kept, eng_loss, ref_loss),
    }
    if flops:
        result.update(_limits(clip, engine, reference, views, steps, class_chunk, eng, ref, [peak_before, *probes]))
    return result


def _agreement(eng_logits: dict, ref_logits: dict, eng_kept: dict, ref_kept: dict, eng_loss: dict,
               ref_loss: dict) -> dict:
    """How far the two paths agree on the samples both ran."""
    both = sorted(set(ref_logits) & set(eng_logits))
    same_argmax = sum(int(eng_logits[i].argmax()) == int(ref_logits[i].argmax()) for i in both)
    return {"samples": len(both), "identical_argmax": same_argmax,
            "identical_argmax_share": same_argmax / len(both) if both else float("nan"),
            "identical_kept": sum(eng_kept[i] == ref_kept[i] for i in both),
            "max_abs_logit_diff": max((float((eng_logits[i] - ref_logits[i]).abs().max()) for i in both),
                                      default=float("nan")),
            "max_abs_loss_diff": max((abs(eng_loss[i] - ref_loss[i]) for i in both), default=float("nan"))}


def _limits(clip, engine, reference, views, steps, class_chunk, eng, ref, probes) -> dict:
    """FLOPs per sample of each path, the device's best measured matmul peak (of `probes` and one
    now), and the samples/s that peak would allow each path."""
    device = clip.device
    f = path_flops(clip, engine, reference, views, steps, class_chunk)
    peak = device_peak(device, clip.precision)
    for probe in probes:                    # the best of the probes before, between and after the runs
        if probe["measured_flops"] > peak["measured_flops"]:
            peak = probe
    limit_eng = peak["measured_flops"] / f["engine_per_sample"]
    limit_ref = peak["measured_flops"] / f["reference_per_sample"]
    return {"flops": f, "device_peak": peak,
            "limit": {"engine_samples_per_s": limit_eng, "reference_samples_per_s": limit_ref,
                      "engine_share_of_limit": eng.samples_per_s / limit_eng,
                      "reference_share_of_limit": ref.samples_per_s / limit_ref if ref.samples else float("nan"),
                      "flop_ratio": f["reference_per_sample"] / f["engine_per_sample"]}}


def _warm_up(engine, reference, samples: list, rounds: int) -> None:
    """Run both paths `rounds` times on `samples` (views of each), then start the stage times afresh."""
    import torch
    if rounds:
        w = torch.stack(samples)
        for _ in range(rounds):
            engine.run_views(w)
            reference.predict(w[0])
        sync(engine.clip.device)
    engine.meter.totals.clear()                 # stage times from here on


def _reference_sample(reference, views, stats: PathStats, device) -> dict:
    """The reference on one sample's views, its time and memory added to `stats`; its result with
    `seconds` and `peak_bytes`."""
    with PeakMemory(device) as mem, Timer(device) as tm:
        r = reference.predict(views)
    stats.add(1, tm.wall, tm.cpu, mem)
    return {**r, "seconds": tm.wall, "peak_bytes": mem.peak}


def _timed(make):
    """`make()` and the wall seconds it took."""
    t = time.perf_counter()
    made = make()
    return made, time.perf_counter() - t
