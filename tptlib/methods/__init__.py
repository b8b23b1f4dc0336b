"""Methods: one module per family, one registry. Given the model, a task's class names and the view
features of a batch of samples, a method returns view 0's logits (after any test-time adaptation)
and diagnostics.

    base       Method (the interface; `predict` for one sample)
    output     MethodOutput (a batch), Prediction (one sample)
    online     OnlineMethod: state carried over the test stream, updates that replay it
    text       template sets, template-ensemble class features, the published dataset of a task
    fixed      ZeroShot, Ensemble: fixed classifiers
    tpt        TPT (+ CoOp / CoCoOp starts: tpt_init; its step: tpt_step)
    ctpt       CTPT: TPT + text feature dispersion (episodic)
    rtpt       RTPT: TPT on the mean entropy, reliability-weighted view ensemble (episodic)
    zero       ZERO: vote of the confident views at zero temperature (episodic, no gradient)
    mta        MTA: MeanShift mode of the view embeddings (episodic, no gradient)
    tda        TDA: positive and negative caches (online)
    dmn        DMN: the zero-shot dual memory network (online)
    dpe        DPE: dual prototypes evolved over the stream (online)
    boostadapter  BoostAdapter: TDA's caches plus boosting samples from the image's own views (online)
    tps        TPS: a per-class shift of the prototypes tuned on the views (episodic)
    registry   the methods by name: make_method, METHODS

    params     param(): a parameter as a dataclass field (type, range, how a run records it)

Every method is a frozen dataclass whose fields are its parameters, and works on a batch:
`run(clip, prepared, view_feats [B, V, D])`. The one-sample call `tpt.predict(clip, method,
classnames, views)` goes through the engine with a batch of one, so there is a single
implementation of each method. To add a method: a module here (or anywhere) and a row in `registry`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .base import Method
    from .boostadapter import BoostAdapter
    from .ctpt import CTPT
    from .dmn import DMN
    from .dpe import DPE
    from .fixed import Ensemble, ZeroShot
    from .mta import MTA
    from .online import OnlineMethod
    from .output import MethodOutput, Prediction
    from .rtpt import RTPT
    from .registry import METHODS, MethodInfo, make_method
    from .tda import TDA
    from .tps import TPS
    from .tpt import TPT
    from .zero import ZERO

_EXPORTS = {"Method": "base", "MethodOutput": "output", "Prediction": "output", "ZeroShot": "fixed",
            "Ensemble": "fixed", "TPT": "tpt", "CTPT": "ctpt", "RTPT": "rtpt", "ZERO": "zero", "MTA": "mta", "TDA": "tda",
            "DMN": "dmn", "DPE": "dpe", "BoostAdapter": "boostadapter", "TPS": "tps", "OnlineMethod": "online", "METHODS": "registry", "MethodInfo": "registry",
            "make_method": "registry"}
__all__ = ["BoostAdapter", "CTPT", "DMN", "DPE", "Ensemble", "METHODS", "MTA", "Method", "MethodInfo", "MethodOutput", "OnlineMethod",
           "Prediction", "RTPT", "TDA", "TPS", "TPT", "ZERO", "ZeroShot", "make_method"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
