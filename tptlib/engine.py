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
- on CUDA, autocast (fp16 with loss scaling, the authors' setting; bf16 as an option) for the
  image tower, the fixed classifiers and the methods that tune; the training-free peers compute
  in fp32 on the (fp32) features.

Faults it absorbs: a sample whose loss or gradient is not finite under fp16 is redone in fp32 and
marked (`fp32_retry`); CUDA out-of-memory halves the class chunk, then the batch, and retries,
logging each back-off on the `tptlib.engine` logger.

Online methods (`tptlib.methods.online`) carry a state over the samples: the engine holds it
(`Engine.state`, fresh for each engine), runs each batch's samples in order on it, and returns each
sample's state update with its result; `replay(updates)` rebuilds the state of an earlier part of the
stream. A failure inside an online method leaves its state half-updated, so the engine neither backs
off nor retries then: the error propagates, and a resumed run rebuilds the state from the stored
updates.

`run_batch(views)` encodes the views and runs the method; `run_features(feats)` runs the method on
view features from elsewhere (a feature source, `tptlib.runs.source`: the cache that lets every
method share one encoding of a sample's views). Time and memory go through the `Meter` the engine
is handed (`tptlib.meter`): both record the image tower's and the method's cost of the batch in
`last_batch` (a source that read features counts what computing them cost with `meter.add`).
`on_batch(rows)`, when given, is called before each batch: raising from it stops a run between
batches (what the tests use to interrupt one).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from .clip import Clip
from .meter import Meter
from .methods.base import Method
from .methods.output import MethodOutput, Prediction

log = logging.getLogger("tptlib.engine")

#: Loss scale under fp16 autocast (the authors' GradScaler starts at 1000).
FP16_LOSS_SCALE = 1000.0


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def predict(clip: Clip, method: Method, classnames: list[str], views: torch.Tensor) -> Prediction:
    """Adapt `method` to one sample and predict it: views `[V, 3, H, W]`, view 0 the original.

    The engine with a batch of one, so a sample alone gets what it gets in any batch; this is
    `tpt.predict(clip, method, classnames, views)`.
    """
    return Engine(clip, method, classnames, batch_size=1).predict(views)


class Engine:
    """Runs `method` on batches of view stacks for one task's `classnames`."""

    def __init__(self, clip: Clip, method: Method, classnames: list[str], batch_size: int = 8,
                 class_chunk: int | None = None, image_chunk: int | None = None, fast_image: bool = True,
                 meter: Meter | None = None, on_batch: Callable[[int], None] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if class_chunk is not None and class_chunk < 1:
            raise ValueError(f"class_chunk must be >= 1 or None; got {class_chunk}")
        self.clip, self.method, self.classnames = clip, method, list(classnames)
        self.batch_size, self.class_chunk, self.image_chunk = batch_size, class_chunk, image_chunk
        self.fast_image = fast_image
        self.prepared = method.prepare(clip, self.classnames)
        self.backoffs: list[str] = []
        #: time and memory per stage ("image" tower, "method": tuning and prediction); inactive by default
        self.meter = meter if meter is not None else Meter(clip.device, active=False)
        #: called with a batch's rows before it runs (`run_batch`, `run_features`)
        self.on_batch = on_batch
        #: an online method's state over the stream (None for episodic methods)
        self.state = method.init_state(self.prepared) if method.online else None
        self._state_broken = False
        #: the last `run_batch` / `run_features`: seconds and peak bytes of the image tower and the method
        self.last_batch: dict = {}

    def encode(self, views: torch.Tensor, autocast: bool = True) -> tuple[torch.Tensor, float, int]:
        """The features `[B, V, D]` of views `[B, V, 3, H, W]` (as `run_batch` computes them), with the
        image tower's wall seconds and peak memory (bytes above the level before), counted by the meter."""
        with self.meter.stage("image", always=True) as cost:
            feats = self.clip.encode_views(views, chunk=self.image_chunk, autocast=autocast, fast=self.fast_image)
        return feats, cost.seconds, cost.peak_bytes

    def replay(self, updates) -> None:
        """Apply stored state updates (dicts of tensors, in stream order) to the online state."""
        for update in updates:
            self.method.apply_update(self.prepared, self.state, update)

    def _run_once(self, views: torch.Tensor | None, fp32: bool, feats: torch.Tensor | None = None) -> MethodOutput:
        use_autocast = not fp32
        if feats is None:
            with self.meter.stage("image"):
                feats = self.clip.encode_views(views, chunk=self.image_chunk, autocast=use_autocast,
                                               fast=self.fast_image)                                     # [B, V, D]
        loss_scale = FP16_LOSS_SCALE if (use_autocast and self.clip.precision == "amp") else None

        # the training-free peers (ZERO, MTA, TDA, DMN) compute in fp32 on fp32 features: their votes,
        # modes and caches are cheap, and ZERO's zero temperature is float32's epsilon (see its docstring)
        in_autocast = use_autocast and (self.method.tunes or not self.method.adapts)

        with self.meter.stage("method"), self.clip.autocast(enabled=in_autocast):
            if not self.method.online:
                return self.method.run(self.clip, self.prepared, feats, class_chunk=self.class_chunk,
                                       loss_scale=loss_scale)
            try:
                return self.method.run_online(self.clip, self.prepared, self.state, feats, class_chunk=self.class_chunk,
                                              loss_scale=loss_scale)
            except BaseException:
                self._state_broken = True
                raise

    def _run_backoff(self, views: torch.Tensor | None, fp32: bool, feats: torch.Tensor | None = None) -> MethodOutput:
        """`_run_once`, halving the class chunk and then the batch on out-of-memory (views or, given
        `feats`, precomputed view features)."""
        if self._state_broken:
            raise RuntimeError("this engine's online state was left half-updated by an earlier failure; "
                               "start a new engine (a resumed run rebuilds the state from the stored updates)")
        while True:
            try:
                return self._run_once(views, fp32, feats)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc) or self._state_broken:
                    raise
                if self.clip.device.type == "cuda":
                    torch.cuda.empty_cache()
                n_classes = len(self.classnames)
                current = self.class_chunk or n_classes
                if current > 1:
                    self.class_chunk = max(1, current // 2)
                    msg = f"out of memory with class_chunk={current}; retrying with class_chunk={self.class_chunk}"
                elif (views if feats is None else feats).shape[0] > 1:
                    n = (views if feats is None else feats).shape[0]
                    half = n // 2
                    msg = f"out of memory at class_chunk=1 with batch {n}; splitting into {half}+{n - half}"
                    log.warning(msg)
                    self.backoffs.append(msg)
                    part = lambda t, sl: None if t is None else t[sl]  # noqa: E731
                    return MethodOutput.cat([self._run_backoff(part(views, slice(None, half)), fp32,
                                                               part(feats, slice(None, half))),
                                             self._run_backoff(part(views, slice(half, None)), fp32,
                                                               part(feats, slice(half, None)))])
                else:
                    raise
                log.warning(msg)
                self.backoffs.append(msg)

    def run_views(self, views: torch.Tensor | None, feats: torch.Tensor | None = None) -> tuple[MethodOutput, torch.Tensor]:
        """Run the method on views `[B, V, 3, H, W]` (or on their features `feats` `[B, V, D]`);
        returns the output and a `[B]` fp32-retry mask. With `feats`, an fp32 redo re-runs the method
        only (the features stay those given)."""
        n = (views if feats is None else feats).shape[0]
        out = self._run_backoff(views, fp32=False, feats=feats)
        retried = torch.zeros(n, dtype=torch.bool)
        # an online method's state has already moved on past these samples: no redo (they stay marked)
        if (out.nonfinite is not None and bool(out.nonfinite.any()) and self.clip.autocast_dtype is not None
                and not self.method.online):
            idx = out.nonfinite.nonzero().flatten()
            log.warning("non-finite loss under %s for %d sample(s) of the batch; redoing them in fp32",
                        self.clip.precision, len(idx))
            redo = self._run_backoff(None if views is None else views[idx], fp32=True,
                                     feats=None if feats is None else feats[idx])
            keep = (~out.nonfinite).nonzero().flatten()
            order = torch.empty(n, dtype=torch.long)
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
        return self._results(views, None)

    def run_features(self, feats: torch.Tensor) -> list[dict]:
        """Per-sample results for view features `[B, V, D]` from elsewhere (a feature source, which
        counts what computing them cost with `meter.add("image", ...)`)."""
        return self._results(None, feats)

    def _results(self, views, feats) -> list[dict]:
        n = (views if feats is None else feats).shape[0]
        if self.on_batch is not None:
            self.on_batch(n)
        try:
            out, retried = self.run_views(views, feats)
        finally:
            measured = self.meter.take_batch()
        self.last_batch = {"n": n, **measured}
        share = (measured["image_seconds"] + measured["method_seconds"]) / n
        view_preds = out.view_logits_before.argmax(-1).cpu() if out.view_logits_before is not None else None
        results = []
        for b in range(n):
            results.append({
                "logits": out.logits[b].detach().float().cpu(),
                "logits_before": out.logits_before[b].detach().float().cpu(),
                "loss": float(out.loss[b]),
                "kept": [k for k in out.kept[b].tolist() if k >= 0],
                "view_preds": [] if view_preds is None else view_preds[b].tolist(),
                "fp32_retry": bool(retried[b]),
                "nonfinite": out.nonfinite is not None and bool(out.nonfinite[b]),
                "seconds": share,
                "update": None if out.updates is None else out.updates[b],
            })
        return results
