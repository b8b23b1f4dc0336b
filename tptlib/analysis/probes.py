"""Probes of the model on a few images: the logits of every view, confidence selection over them, and
TPT's steps on one image (its context and loss after each step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import metrics


def sample_view_logits(clip, task, indices, method=None, seed: int = 0, n_views: int = 64, batch_size: int = 16,
                       progress: bool = True, feature_cache=None):
    """Logits of every view of the given samples under a fixed classifier: `([N, V, C] tensor, [N] labels)`.
    (`tpt.workbook.view_logits` is these for a task's first samples, kept beside the runs.)

    method: a method whose `view_logits_before` is the classifier (default `ZeroShot()`; `TPT()`
    gives the same numbers with its initial context). Views are `task_views(..., seed)`, the ones
    `evaluate` uses with the same seed. feature_cache: the runs' feature cache folder
    (`tptlib.runs.features`): samples whose view features are there are not encoded again, and
    those encoded here are added to it (`tptlib.runs.source.FeatureSource`).
    """
    import torch
    from tqdm.auto import tqdm

    from ..engine import Engine
    from ..methods import ZeroShot
    from ..runs.features import FeatureCache
    from ..runs.source import FeatureSource
    engine = Engine(clip, method or ZeroShot(), task.classnames, batch_size=batch_size)
    source = FeatureSource(engine, FeatureCache(feature_cache, clip, task, seed) if feature_cache is not None else None)
    indices = [int(i) for i in indices]
    parts = []
    quiet = {} if progress else {"disable": True}          # when shown, TQDM_DISABLE=1 still silences it
    for start in tqdm(range(0, len(indices), batch_size), unit="batch", desc=f"{task.name} views", **quiet):
        feats = source.features(task, indices[start:start + batch_size], seed, n_views)
        out, _ = engine.run_views(None, feats=feats)
        parts.append(out.view_logits_before.float().cpu())
    labels = np.array([task.samples[i][1] for i in indices], dtype=np.int64)
    return torch.cat(parts), labels


def selected_prediction(view_logits, selection_p: float):
    """TPT's averaged prediction: mean softmax of the int(V * p) lowest-entropy views `[..., V, C] -> [..., C]`."""
    import torch

    from ..objectives import select_confident
    kept = select_confident(view_logits, selection_p)                             # [..., k]
    probs = view_logits.float().softmax(-1)
    picked = torch.gather(probs, -2, kept.unsqueeze(-1).expand(*kept.shape, probs.shape[-1]))
    return picked.mean(-2)


def selection_curve(view_logits, labels, ratios) -> pd.DataFrame:
    """Accuracy of the averaged prediction over the kept views, per selection ratio rho.

    Columns: rho, k (views kept of V), top1 with its 95% Wilson interval (low, high), percent.
    """
    from ..objectives import n_selected
    labels = np.asarray(labels)
    rows = []
    for rho in ratios:
        pred = selected_prediction(view_logits, rho).argmax(-1).numpy()
        ci = metrics.accuracy_ci(pred == labels)
        rows.append({"rho": float(rho), "k": n_selected(view_logits.shape[-2], rho), "top1": 100 * ci.estimate,
                     "low": 100 * ci.low, "high": 100 * ci.high})
    return pd.DataFrame(rows)


def confident_views(view_logits, labels, selection_p: float = 0.1) -> pd.DataFrame:
    """Per sample: view 0 against the most confident (lowest-entropy) view and the kept views.

    Columns: view0_pred, view0_entropy, view0_correct, top_view (index of the lowest-entropy
    view), top_pred, top_entropy, top_correct, kept_correct (fraction of the kept views whose
    argmax is the label), selected_correct (the averaged prediction over the kept views).
    """
    from ..objectives import entropy, select_confident
    labels = np.asarray(labels)
    ent = entropy(view_logits).numpy()                                          # [N, V]
    preds = view_logits.argmax(-1).numpy()                                      # [N, V]
    kept = select_confident(view_logits, selection_p).numpy()                   # [N, k]
    top = kept[:, 0]
    rows = np.arange(len(labels))
    return pd.DataFrame({
        "label": labels, "view0_pred": preds[:, 0], "view0_entropy": ent[:, 0], "view0_correct": preds[:, 0] == labels,
        "top_view": top, "top_pred": preds[rows, top], "top_entropy": ent[rows, top],
        "top_correct": preds[rows, top] == labels,
        "kept_correct": (np.take_along_axis(preds, kept, 1) == labels[:, None]).mean(1),
        "selected_correct": selected_prediction(view_logits, selection_p).argmax(-1).numpy() == labels,
    })


@dataclass
class TPTTrace:
    """What TPT did to one image: the kept views, the loss and the context at every step.

    ctx: `[steps + 1, n_ctx, W]`, the context before the first step and after each step.
    losses: the marginal entropy of the kept views before each step and after the last (steps + 1).
    logits_before / logits: view 0 with the initial / the tuned context `[C]`.
    view_logits: every view with the initial context `[V, C]`; kept: the views selection kept.
    """

    kept: list
    losses: list
    ctx: object
    logits_before: object
    logits: object
    view_logits: object

    def ctx_movement(self, names=None) -> pd.DataFrame:
        """Per step and context vector: the L2 norm of its change from the initial context.

        names: a label per context vector (e.g. the init words); default "ctx 0", "ctx 1", ...
        """
        delta = (self.ctx[1:] - self.ctx[0]).norm(dim=-1)                        # [steps, n_ctx]
        names = list(names) if names is not None else [f"ctx {j}" for j in range(delta.shape[1])]
        return pd.DataFrame([{"step": s + 1, "vector": names[j], "change": float(delta[s, j]),
                              "initial_norm": float(self.ctx[0, j].norm())}
                             for s in range(delta.shape[0]) for j in range(delta.shape[1])])


def tpt_trace(clip, method, classnames, views) -> TPTTrace:
    """Run `method` (a `TPT`) on one image's views `[V, 3, H, W]`, keeping the context after each step.

    The same selection, loss and AdamW steps as `TPT.run` (`tptlib.methods.tpt_step.tune`), for a batch
    of one in fp32 on the plain text path, so the result matches `method.predict` (which a notebook
    can assert).
    """
    import torch

    from ..methods.tpt_step import tune
    from ..objectives import marginal_entropy, select_confident
    model, scale = clip.model, clip.logit_scale
    prepared = method.prepare(clip, classnames)
    prompt = prepared.prompt
    feats = clip.encode_views(views.unsqueeze(0), autocast=False)                 # [1, V, D]
    ctx = method.initial_ctx(prepared, feats)                                       # [1, n_ctx, W]
    with torch.no_grad():
        view_logits = scale * feats @ prompt.class_features(model, ctx).transpose(1, 2)   # [1, V, C]
        kept = select_confident(view_logits, method.selection_p)
    kept_feats = feats[:, kept[0]]
    history, losses = [ctx.detach().clone()], []

    def record(step, tuned, loss):                  # after each step: the loss before it, the context after it
        losses.append(float(loss[0].detach()))
        history.append(tuned.detach().clone())

    tune(model, prompt, ctx, kept_feats, scale, steps=method.steps, lr=method.lr,
         weight_decay=method.weight_decay, on_step=record)
    with torch.no_grad():
        final = prompt.class_features(model, ctx.detach())                          # [1, C, D]
        losses.append(float(marginal_entropy(scale * kept_feats @ final.transpose(1, 2))[0]))
        logits = scale * feats[:, 0] @ final[0].T
    return TPTTrace(kept=kept[0].tolist(), losses=losses, ctx=torch.cat(history).cpu(),
                    logits_before=view_logits[0, 0].cpu(), logits=logits[0].cpu(),
                    view_logits=view_logits[0].cpu())


def view_table(logits, label: int, classnames, selection_p: float = 0.1) -> pd.DataFrame:
    """One image's views `[V, C]` logits as rows: view, entropy (nats), pred (class name), correct, kept.

    Sorted by view index; `kept` marks the int(V * p) lowest-entropy views TPT would tune on.
    """
    from ..objectives import entropy, select_confident
    pred = logits.argmax(-1).tolist()
    kept = set(select_confident(logits, selection_p).tolist())
    return pd.DataFrame({"view": range(len(pred)), "entropy": entropy(logits).tolist(),
                         "pred": [classnames[p] for p in pred], "correct": [p == int(label) for p in pred],
                         "kept": [v in kept for v in range(len(pred))]})
