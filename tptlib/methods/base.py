"""The base class of every method.

A method is a frozen dataclass whose fields are its parameters (`tptlib.methods.params`: each with
its type, its valid range and how a run records it). It is given the model, a task's class names
and the view features of a batch of samples, and returns view 0's logits after any test-time
adaptation, with diagnostics (`MethodOutput`):

    prepared = method.prepare(clip, classnames)        # the task's text side, cached
    out = method.run(clip, prepared, view_feats)       # view_feats [B, V, D] -> MethodOutput

One-sample prediction is the engine's job, `tpt.predict(clip, method, classnames, views)`
(`tptlib.engine.predict`: a batch of one, with the engine's autocast, fp32 retry and out-of-memory
back-off), so that there is one implementation of each method.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from . import params

if TYPE_CHECKING:
    import torch

    from ..clip import Clip
    from ..data.base import Task
    from .output import MethodOutput

#: what `for_task` records as the dataset of a task with no published counterpart
OTHER_DATASET = "other"


def kind_of(cls) -> str:
    """"fixed" (no test-time adaptation), "episodic" (adapts to each sample, then resets) or
    "online" (state carried over the test stream), from a method class's attributes."""
    return "online" if cls.online else "episodic" if cls.adapts else "fixed"


@dataclass(frozen=True, kw_only=True)
class Method:
    """Base class. Subclasses are `@dataclass(frozen=True, kw_only=True)`, declare their parameters
    as fields with `params.param(...)`, set `name` and implement `_prepare` and `run`.

    Class attributes a subclass may set: `adapts` (False for a fixed classifier, which reads view 0
    only), `tunes` (it optimises something per sample, so it has a loss), `online` (it carries state
    from one test sample to the next: `tptlib.methods.online`), `paper` (the paper, for listings).
    A method with per-dataset settings has a `dataset` field and fields whose `per_dataset` rule
    gives the authors' value for it when None is given.
    """

    name: ClassVar[str] = "method"
    adapts: ClassVar[bool] = True
    tunes: ClassVar[bool] = False
    online: ClassVar[bool] = False
    paper: ClassVar[str] = ""

    def __post_init__(self):
        params.validate(self)
        self.check()
        object.__setattr__(self, "_cache", {})

    def check(self) -> None:
        """Checks that involve several parameters (ValueError); each one's own range is its field's."""

    def config(self) -> dict:
        """JSON-able parameters that define the method's results (stored with every run): its fields
        as `tptlib.methods.params.config` records them."""
        return params.config(self)

    @property
    def kind(self) -> str:
        """The class's kind, or "online" for an instance that carries state (`TPT(reset=False)`)."""
        return "online" if self.online else kind_of(type(self))

    def views_used(self, n_views: int) -> int:
        """How many of a sample's views (the first ones, view 0 the original) the method reads when
        `n_views` are available: the engine builds and encodes only those."""
        return n_views if self.adapts else 1

    def check_views(self, n_views: int) -> None:
        """Refuse (ValueError) `n_views` views per sample when the method cannot work with the ones it
        reads: a confidence selection (its `selection_p`) that would keep none of them."""
        from ..objectives import n_selected
        used = self.views_used(n_views)
        ratio = getattr(self, "selection_p", None)
        if ratio is not None and (self.tunes or used > 1):
            n_selected(used, ratio)

    def for_dataset(self, dataset: str | None) -> "Method":
        """This method with its per-dataset settings taken for the published `dataset` ("A",
        "Flower102", or None for a task with none: the method's documented fallback). Settings given
        explicitly are kept; a method without a `dataset` field, or whose dataset is set, is returned as is."""
        if "dataset" not in params.specs(self) or self.dataset is not None:
            return self
        return dataclasses.replace(self, dataset=dataset or OTHER_DATASET,
                                   **{name: None for name in self._per_dataset})

    def for_task(self, task: Task) -> "Method":
        """This method with any per-dataset default resolved for `task` (by the published dataset
        the task carries, `task.paper_dataset`)."""
        return self.for_dataset(task.paper_dataset)

    def bind(self, clip: Clip, task: Task) -> "Method":
        """The method as it runs on `task` with `clip`: per-dataset settings resolved (`for_task`)
        and anything a parameter resolves to with this model (TPT's context length); what a run
        records and runs. Refuses (ValueError) a parameter that would be ignored."""
        return self.for_task(task)

    def prepare(self, clip: Clip, classnames: list[str]):
        """The task's text side for this method (computed once per model and class list)."""
        key = (id(clip.model), tuple(classnames))
        if key not in self._cache:
            object.__setattr__(self, "_cache", {key: self._prepare(clip, list(classnames))})
        return self._cache[key]

    def _prepare(self, clip: Clip, classnames: list[str]):
        raise NotImplementedError

    def run(self, clip: Clip, prepared, view_feats: torch.Tensor, class_chunk: int | None = None,
            loss_scale: float | None = None) -> MethodOutput:
        raise NotImplementedError
