"""tptlib: test-time prompt tuning (TPT) of CLIP models, faithful and fast, with an analysis workbook.

    import tptlib as tpt
    clip = tpt.load_clip("micro")                      # or tpt.load_clip("ViT-B-16", pretrained="openai", device="cuda")
    task = tpt.load_task("micro:A")                    # or tpt.load_task("A", root="~/data")
    result = tpt.evaluate(clip, task, tpt.TPT(), out="runs/micro-A-tpt")
"""
from __future__ import annotations

import importlib

from .version import __version__, versions

# public name -> module that defines it (imported on first use, so `import tptlib` stays light)
_EXPORTS = {
    "load_clip": "clip", "Clip": "clip", "CheckpointError": "clip",
    "PromptText": "prompts", "build_prompt_text": "prompts",
    "make_views": "augment", "task_views": "augment",
    "entropy": "objectives", "marginal_entropy": "objectives", "select_confident": "objectives",
    "Method": "methods", "ZeroShot": "methods", "Ensemble": "methods", "TPT": "methods",
    "make_method": "methods", "Prediction": "methods", "MethodOutput": "methods",
    "Engine": "engine", "ReferenceTPT": "reference",
    "load_task": "data", "list_tasks": "data", "check_task": "data", "Task": "data",
    "DatasetLayoutError": "data",
    "evaluate": "runs", "load_run": "runs", "RunResult": "runs",
    "metrics": None, "micro": None, "data": None, "runs": None, "workbook": None, "analysis": None,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tptlib' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name] or name}", __name__)
    value = module if _EXPORTS[name] is None else getattr(module, name)
    globals()[name] = value
    return value
