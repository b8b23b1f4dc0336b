"""Methods: one module per family, one registry. Given the model, a task's class names and the view
features of a batch of samples, a method returns view 0's logits (after any test-time adaptation)
and diagnostics.

    base       Method (the interface; `predict` for one sample)
    output     MethodOutput (a batch), Prediction (one sample)
    fixed      ZeroShot, Ensemble: fixed classifiers
    tpt        TPT (+ CoOp / CoCoOp starts: tpt_init; its step: tpt_step)
    registry   the methods by name: make_method, METHODS

Every method works on a batch: `run(clip, prepared, view_feats [B, V, D])`. The one-sample call
`method.predict(clip, classnames, views)` goes through the engine with a batch of one, so there is a
single implementation of each method. To add a method: a module here and an entry in `registry`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .base import Method
    from .fixed import Ensemble, ZeroShot
    from .output import MethodOutput, Prediction
    from .registry import METHODS, MethodInfo, make_method
    from .tpt import TPT

_EXPORTS = {"Method": "base", "MethodOutput": "output", "Prediction": "output", "ZeroShot": "fixed",
            "Ensemble": "fixed", "TPT": "tpt", "METHODS": "registry", "MethodInfo": "registry",
            "make_method": "registry"}
__all__ = ["Ensemble", "METHODS", "Method", "MethodInfo", "MethodOutput", "Prediction", "TPT", "ZeroShot",
           "make_method"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
