"""The base class of every method, and how `Method.predict` reaches the engine.

A method is given the model, a task's class names and the view features of a batch of samples,
and returns view 0's logits after any test-time adaptation, with diagnostics (`MethodOutput`):

    prepared = method.prepare(clip, classnames)        # the task's text side, cached
    out = method.run(clip, prepared, view_feats)       # view_feats [B, V, D] -> MethodOutput

One-sample prediction is the engine's job (`tptlib.engine.predict`: a batch of one, with the
engine's autocast, fp32 retry and out-of-memory back-off), so that there is one implementation of
each method. The engine is a layer above the methods: it is handed to this module
(`set_predictor`, done by `import tptlib`) instead of being imported here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from ..clip import Clip
    from .output import MethodOutput, Prediction

#: the engine's one-sample path: `(clip, method, classnames, views) -> Prediction`
_predictor: Callable | None = None


def set_predictor(predict: Callable) -> None:
    """Hand `Method.predict` the engine's one-sample path (`tptlib/__init__.py` does)."""
    global _predictor
    _predictor = predict


class Method:
    """Base class. Subclasses set `name` and implement `_prepare` and `run`.

    Class attributes a subclass may set: `adapts` (False for a fixed classifier, which reads view 0
    only), `tunes` (it optimises something per sample, so it has a loss), `online` (it carries state
    from one test sample to the next: `tptlib.methods.online`), `paper` (the paper, for listings).
    """

    name = "method"
    adapts = True
    tunes = False
    online = False
    paper = ""

    def __init__(self):
        self._cache: dict = {}

    def config(self) -> dict:
        """JSON-able parameters that define the method's results (stored with every run)."""
        return {"name": self.name}

    @property
    def kind(self) -> str:
        """"fixed" (no test-time adaptation), "episodic" (adapts to each sample, then resets) or
        "online" (state carried over the test stream)."""
        return "online" if self.online else "episodic" if self.adapts else "fixed"

    def views_used(self, n_views: int) -> int:
        """How many of a sample's views (the first ones, view 0 the original) the method reads when
        `n_views` are available: the engine builds and encodes only those."""
        return n_views if self.adapts else 1

    def for_task(self, task_name: str) -> "Method":
        """This method with any per-dataset default resolved for `task_name` (`tpt.evaluate` calls
        it before recording the run's parameters). Methods without per-dataset settings return self."""
        return self

    def prepare(self, clip: Clip, classnames: list[str]):
        """The task's text side for this method (computed once per model and class list)."""
        key = (id(clip.model), tuple(classnames))
        if key not in self._cache:
            self._cache = {key: self._prepare(clip, list(classnames))}
        return self._cache[key]

    def _prepare(self, clip: Clip, classnames: list[str]):
        raise NotImplementedError

    def run(self, clip: Clip, prepared, view_feats: torch.Tensor, class_chunk: int | None = None,
            loss_scale: float | None = None) -> MethodOutput:
        raise NotImplementedError

    def predict(self, clip: Clip, classnames: list[str], views: torch.Tensor) -> Prediction:
        """Adapt to one sample and predict it: views `[V, 3, H, W]`, view 0 the original.

        Runs through the engine with a batch of one (`tptlib.engine.predict`).
        """
        if _predictor is None:
            raise RuntimeError("Method.predict runs through tptlib.engine, which `import tptlib` connects")
        return _predictor(clip, self, classnames, views)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({params})"
