"""The engine: runs a method over batches of samples, fast and without changing a prediction.

What it does for speed, each exact in mathematics and checked against the one-sample reference
(`tptlib.reference`) by the tests:
- image features of a sample's views are computed once and reused for every tuning step and for
  the final prediction (the authors' loop encodes the views again at each step and view 0 again
  for the prediction);
- a ViT image tower runs its attention through `scaled_dot_product_attention`, and in its last
  block only the pooled class token gets a query, an MLP and `ln_post` (`tptlib.towers.encode_images`;
  the other tokens still give their keys and values);
- the text sequence is cut after the longest end-of-text token (`tptlib.prompts`), and TPT's
  text path computes the shared [SOS]+context prefix once per sample and runs the classes in
  length buckets (`tptlib.towers.PrefixEncoder`);
- B samples run together, one context each (`[B, n_ctx, D]`): one AdamW over the batched context
  is B independent AdamW runs, since AdamW is elementwise and each sample's loss depends only on
  its own context;
- classes can go through the text tower in chunks (`class_chunk`), bounding memory at 1000
  classes with the same gradient;
- on CUDA, autocast (fp16 with loss scaling, the authors' setting; bf16 as an option).

Faults it absorbs: a sample whose loss or gradient is not finite under fp16 is redone in fp32 and
marked (`fp32_retry`); CUDA out-of-memory halves the class chunk, then the batch, and retries,
logging each back-off on the `tptlib.engine` logger.
"""
from __future__ import annotations

import logging
import time

import torch

from .clip import Clip
from .methods.base import Method
from .methods.output import MethodOutput, Prediction
from .towers import encode_images

log = logging.getLogger("tptlib.engine")

#: Loss scale under fp16 autocast (the authors' GradScaler starts at 1000).
FP16_LOSS_SCALE = 1000.0


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def predict(clip: Clip, method: Method, classnames: list[str], views: torch.Tensor) -> Prediction:
    """Adapt `method` to one sample and predict it: views `[V, 3, H, W]`, view 0 the original.

    The engine with a batch of one, so a sample alone gets what it gets in any batch; this is what
    `method.predict(clip, classnames, views)` runs.
    """
    return Engine(clip, method, classnames, batch_size=1).predict(views)


class Engine:
    """Runs `method` on batches of view stacks for one task's `classnames`."""

    def __init__(self, clip: Clip, method: Method, classnames: list[str], batch_size: int = 8,
                 class_chunk: int | None = None, image_chunk: int = 256, fast_image: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1 or None; got {class_chunk}")
        self.clip, self.method, self.classnames = clip, method, list(classnames)
        self.batch_size, self.class_chunk, self.image_chunk = batch_size, class_chunk, image_chunk
        self.fast_image = fast_image
        self.prepared = method.prepare(clip, self.classnames)
        self.backoffs: list[str] = []
        #: set to a dict to have wall seconds added up per stage ("image" tower, "method": tuning and
        #: prediction), the device synchronised between them (`tpt bench` does; costs a sync per call)
        self.stage_seconds: dict[str, float] | None = None

    def _clock(self, stage: str | None = None, since: float = 0.0) -> float:
        """Synchronise the device and return the time; with `stage`, add the time since `since` to it."""
        if self.clip.device.type == "cuda":
            torch.cuda.synchronize(self.clip.device)
        now = time.perf_counter()
        if stage is not None:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - since
        return now

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.clip.model, images, self.fast_image)

    def _run_once(self, views: torch.Tensor, fp32: bool) -> MethodOutput:
        use_autocast = not fp32
        timed = self.stage_seconds is not None
        t = self._clock() if timed else 0.0
        feats = self.clip.encode_views(views, chunk=self.image_chunk, autocast=use_autocast,
                                       encoder=self._encode_images)                             # [B, V, D]
        t = self._clock("image", t) if timed else 0.0
        loss_scale = FP16_LOSS_SCALE if (use_autocast and self.clip.precision == "amp") else None
        with self.clip.autocast(enabled=use_autocast):
            out = self.method.run(self.clip, self.prepared, feats, class_chunk=self.class_chunk,
                                  loss_scale=loss_scale)
        if timed:
            self._clock("method", t)
        return out

    def _run_backoff(self, views: torch.Tensor, fp32: bool) -> MethodOutput:
        """`_run_once`, halving the class chunk and then the batch on out-of-memory."""
        while True:
            try:
                return self._run_once(views, fp32)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                if self.clip.device.type == "cuda":
                    torch.cuda.empty_cache()
                n_classes = len(self.classnames)
                current = self.class_chunk or n_classes
                if current > 1:
                    self.class_chunk = max(1, current // 2)
                    msg = f"out of memory with class_chunk={current}; retrying with class_chunk={self.class_chunk}"
                elif views.shape[0] > 1:
                    half = views.shape[0] // 2
                    msg = f"out of memory at class_chunk=1 with batch {views.shape[0]}; splitting into {half}+{views.shape[0] - half}"
                    log.warning(msg)
                    self.backoffs.append(msg)
                    return MethodOutput.cat([self._run_backoff(views[:half], fp32),
                                             self._run_backoff(views[half:], fp32)])
                else:
                    raise
                log.warning(msg)
                self.backoffs.append(msg)

    def run_views(self, views: torch.Tensor) -> tuple[MethodOutput, torch.Tensor]:
        """Run the method on views `[B, V, 3, H, W]`; returns the output and a `[B]` fp32-retry mask."""
        out = self._run_backoff(views, fp32=False)
        retried = torch.zeros(views.shape[0], dtype=torch.bool)
        if out.nonfinite is not None and bool(out.nonfinite.any()) and self.clip.autocast_dtype is not None:
            idx = out.nonfinite.nonzero().flatten()
            log.warning("non-finite loss under %s for %d sample(s) of the batch; redoing them in fp32",
                        self.clip.precision, len(idx))
            redo = self._run_backoff(views[idx], fp32=True)
            keep = (~out.nonfinite).nonzero().flatten()
            order = torch.empty(views.shape[0], dtype=torch.long)
            order[keep] = torch.arange(len(keep))
            order[idx] = torch.arange(len(idx)) + len(keep)
            out = MethodOutput.cat([out.select(keep), redo], order=order)
            retried[idx] = True
        return out, retried

    def predict(self, views: torch.Tensor) -> Prediction:
        """One sample: views `[V, 3, H, W]` -> its `Prediction`."""
        out, retried = self.run_views(views.unsqueeze(0))
        return Prediction(out.logits[0], out.logits_before[0], float(out.loss[0]), out.kept[0].tolist(),
                          None if out.view_logits_before is None else out.view_logits_before[0],
                          bool(retried[0]))

    def run_batch(self, views: torch.Tensor) -> list[dict]:
        """Per-sample results for views `[B, V, 3, H, W]` (the record fields `tptlib.runs` stores, and
        `nonfinite`: the loss or gradient was not finite at a tuning step, after any fp32 retry)."""
        start = time.perf_counter()
        out, retried = self.run_views(views)
        if self.clip.device.type == "cuda":
            torch.cuda.synchronize(self.clip.device)
        share = (time.perf_counter() - start) / views.shape[0]
        view_preds = out.view_logits_before.argmax(-1).cpu() if out.view_logits_before is not None else None
        results = []
        for b in range(views.shape[0]):
            results.append({
                "logits": out.logits[b].detach().float().cpu(),
                "logits_before": out.logits_before[b].detach().float().cpu(),
                "loss": float(out.loss[b]),
                "kept": out.kept[b].tolist(),
                "view_preds": [] if view_preds is None else view_preds[b].tolist(),
                "fp32_retry": bool(retried[b]),
                "nonfinite": out.nonfinite is not None and bool(out.nonfinite[b]),
                "seconds": share,
            })
        return results
