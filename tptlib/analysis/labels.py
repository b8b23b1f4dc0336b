"""How runs are named in tables: the papers' row labels for methods, column labels for tasks, the
published table's backbone names."""
from __future__ import annotations


#: Row labels of the papers' tables for the library's method names.
METHOD_LABELS = {"zeroshot": "CLIP zero-shot", "ensemble": "Ensemble", "tpt": "TPT",
                 "tpt+coop": "TPT+CoOp", "tpt+cocoop": "TPT+CoCoOp", "ctpt": "C-TPT", "rtpt": "R-TPT", "zero": "ZERO",
                 "zero+ensemble": "ZERO+Ensemble", "mta": "MTA", "tda": "TDA", "dmn": "DMN-ZS", "dpe": "DPE",
                 "boostadapter": "BoostAdapter", "tps": "TPS"}
#: The order rows appear in (as in the TPT paper's Table 1, then the peers); other labels follow in first-seen order.
METHOD_ORDER = ["CLIP zero-shot", "Ensemble", "CoOp", "CoCoOp", "TPT", "TPT+CoOp", "TPT+CoCoOp", "C-TPT", "R-TPT", "ZERO",
                "ZERO+Ensemble", "MTA", "TPS", "TDA", "DMN-ZS", "BoostAdapter", "DPE"]
#: open_clip model names -> the backbone names of `published_results.csv`.
PAPER_BACKBONES = {"RN50": "RN50", "ViT-B-16": "ViT-B/16", "ViT-B/16": "ViT-B/16"}


def task_label(name: str) -> str:
    """A task's column label: the name without the `micro:` prefix ("micro:V2" -> "V2", "A" -> "A")."""
    return name.split(":", 1)[1] if name.lower().startswith("micro:") else name


def method_label(result) -> str:
    """The table row of a run: the paper's name, plus any setting that differs from the method's
    default for that task (its authors' per-dataset values count as the default).

    `TPT(steps=4)` -> "TPT (steps=4)"; `TPT()` -> "TPT"; `ZeroShot()` -> "CLIP zero-shot";
    `TDA(pos_alpha=1.5)` -> "TDA (pos_alpha=1.5)"; an online run with another stream seed gets "seed s".
    """
    from ..methods.registry import METHODS, default_config
    method = result.params["method"]
    label = METHOD_LABELS.get(method["name"], method["name"])
    default = default_config(method["name"], method["config"]) if method["name"] in METHODS else {}
    # a default of None is resolved per task or model (TPT's n_ctx: the phrase's token count)
    changed = [f"{k}={v}" for k, v in method["config"].items()
               if default.get(k) is not None and k != "name" and v != default[k]]
    stream = result.params.get("stream")
    if stream is not None and stream["seed"] != result.params["seed"]:
        changed.append(f"stream seed {stream['seed']}")
    if changed:
        label += f" ({', '.join(changed)})"
    return label


def order_methods(labels) -> list[str]:
    labels = list(dict.fromkeys(labels))
    known = [m for m in METHOD_ORDER if m in labels]
    return known + [m for m in labels if m not in known]


def paper_backbone(model: str) -> str | None:
    """The published table's backbone for an open_clip model name, or None when it has none.

    "ViT-B-16", "ViT-B-16-quickgelu" -> "ViT-B/16"; "RN50" -> "RN50"; "micro" -> None.
    """
    return PAPER_BACKBONES.get(model.removesuffix("-quickgelu"))
