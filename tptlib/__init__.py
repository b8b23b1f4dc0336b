"""tptlib: test-time prompt tuning (TPT) of CLIP models, faithful and fast, with an analysis workbook.

    import tptlib as tpt
    clip = tpt.load_clip("micro")                      # or tpt.load_clip("ViT-B-16", pretrained="openai", device="cuda")
    task = tpt.load_task("micro:A")                    # or tpt.load_task("A", root="~/data")
    result = tpt.evaluate(clip, task, tpt.TPT(), out="runs/micro-A-tpt")

    pred = tpt.predict(clip, tpt.TPT(), task.classnames, tpt.task_views(clip, task, 0))   # one sample

The public names below are imported on first use, so that `import tptlib` stays light. This module
also connects what the layers may not import themselves (docs/architecture.md, "Layers"): the micro
profile registers its task names ("micro:<set>") with `tptlib.data`.
"""
from __future__ import annotations

from . import interrupts as _interrupts

if _interrupts.is_tpt_program():       # the `tpt` command: Ctrl-C and SIGTERM in one line from here on
    _interrupts.install()

from typing import TYPE_CHECKING  # noqa: E402

from .data.registry import register_paper_datasets as _register_paper_datasets
from .lazy import lazy_exports
from .micro import tasks as _micro_tasks  # noqa: F401  (registers the task names "micro:<set>")
from .version import __version__, versions

#: the micro sets shaped like a published set (docs: tptlib.micro.sets); the cross tasks have no analogue
_register_paper_datasets("micro:", {"I": "I", "V2": "V", "Sketch": "K", "R": "R", "A": "A"})

if TYPE_CHECKING:
    from . import analysis, data, metrics, micro, runs, workbook
    from .augment import make_views, task_views
    from .clip import CheckpointError, Clip, load_clip
    from .data import DatasetLayoutError, Task, check_task, list_tasks, load_task
    from .engine import Engine, predict
    from .methods import (CTPT, DMN, DPE, MTA, RTPT, TDA, TPS, TPT, ZERO, BoostAdapter, Ensemble, Method, MethodOutput,
                          Prediction, ZeroShot, make_method)
    from .objectives import entropy, marginal_entropy, select_confident
    from .prompts import PromptText, build_prompt_text
    from .reference import ReferenceTPT
    from .runs import RunResult, evaluate, load_run

# public name -> module that defines it (None: the name is the module)
_EXPORTS = {
    "load_clip": "clip", "Clip": "clip", "CheckpointError": "clip",
    "PromptText": "prompts", "build_prompt_text": "prompts",
    "make_views": "augment", "task_views": "augment",
    "entropy": "objectives", "marginal_entropy": "objectives", "select_confident": "objectives",
    "Method": "methods", "ZeroShot": "methods", "Ensemble": "methods", "TPT": "methods",
    "CTPT": "methods", "RTPT": "methods", "ZERO": "methods", "MTA": "methods", "TDA": "methods", "DMN": "methods",
    "DPE": "methods", "BoostAdapter": "methods", "TPS": "methods",
    "make_method": "methods", "Prediction": "methods", "MethodOutput": "methods",
    "Engine": "engine", "predict": "engine", "ReferenceTPT": "reference",
    "load_task": "data", "list_tasks": "data", "check_task": "data", "Task": "data",
    "DatasetLayoutError": "data",
    "evaluate": "runs", "load_run": "runs", "RunResult": "runs",
    "metrics": None, "micro": None, "data": None, "runs": None, "workbook": None, "analysis": None,
}
__all__ = ["BoostAdapter", "CTPT", "CheckpointError", "Clip", "DMN", "DPE", "DatasetLayoutError", "Engine", "Ensemble",
           "MTA", "Method", "MethodOutput", "Prediction", "PromptText", "RTPT", "ReferenceTPT", "RunResult", "TDA", "TPS", "TPT", "Task", "ZERO",
           "ZeroShot", "analysis", "build_prompt_text", "check_task", "data", "entropy", "evaluate", "list_tasks", "load_clip",
           "load_run", "load_task", "make_method", "make_views", "marginal_entropy", "metrics", "micro",
           "predict", "runs", "select_confident", "task_views", "versions", "workbook", "__version__"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
