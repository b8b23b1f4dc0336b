"""What one TPT step does on a task, and why: the measurements `tpt diagnose` prints.

For the first `n` samples of a task, with the views `tpt.evaluate` would make:

- **zero-shot**: view 0's top-1 with "a photo of a {}.", its ECE (15 bins) and mean confidence;
  the 80-template ensemble; the spread of top-1 over a few hand-written prompt wordings (how much
  the prompt's words matter to this model: what TPT's step exploits);
- **selection**: the top-1 of the average prediction of the views confidence selection keeps,
  against view 0 (fixed / broken, exact McNemar p): whether the signal TPT optimises towards is
  better than view 0 at all;
- **TPT**: top-1 after the step, the share of predictions it changes, fixed / broken, p;
- **geometry of the step**: view 0's top-1 margin in cosine units (logit margin / logit scale),
  how far the step moves the class text features (median 1 - cos), the median largest change of a
  view-0 logit, and, where the kept views' class differs from view 0's, how often the step moves
  view 0 towards the kept class (50% is what a step blind to the kept views would give).

One step flips a prediction when it moves the class features, in cosine, further than view 0's
top classes are apart; it helps when the kept views are better than view 0 and the step moves
view 0 towards them. The micro profile was designed by these numbers (docs/micro.md).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics
from .first_step import SUMMARY

SUMMARY_KEYS = tuple(SUMMARY)

#: prompt wordings whose spread of top-1 measures how much the words of the prompt matter
WORDINGS = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a sketch of a {}.", "a rendering of a {}.",
            "a close-up photo of a {}.", "a blurry photo of a {}.", "art of the {}.", "itap of a {}.")


def _batch(clip, task, idx, method, prepared, zero, seed: int, n_views: int) -> dict:
    """Everything `diagnose` reads from one batch of samples."""
    import torch

    from ..augment import task_views
    from ..methods.tpt_step import tune
    from ..towers import encode_images
    from .first_step import first_step

    views = torch.stack([task_views(clip, task, i, seed=seed, n_views=n_views) for i in idx])
    feats = clip.encode_views(views, encoder=lambda x: encode_images(clip.model, x))   # [B, V, D]
    out = method.run(clip, prepared, feats)
    b = {"before": out.logits_before, "after": out.logits, "view_logits": out.view_logits_before,
         "kept": out.kept, "feats0": feats[:, 0], "zero": zero[0].run(clip, zero[1], feats).logits}
    if method.steps and prepared.init_feats is not None:
        # the class features after the same step(s): how far the step moves them in cosine
        ctx = method.initial_ctx(prepared, feats)
        kept_feats = torch.gather(feats, 1, out.kept.unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        tune(clip.model, prepared.text, ctx, kept_feats, clip.logit_scale, steps=method.steps, lr=method.lr,
             weight_decay=method.weight_decay, feats0=prepared.init_feats.expand(len(idx), -1, -1))
        with torch.no_grad():
            moved = prepared.text.class_features(clip.model, ctx.detach())            # [B, C, D]
        b["dcos"] = 1 - (moved * prepared.init_feats).sum(-1)                           # [B, C]
        b["first"] = first_step(clip, method, prepared, feats)
    return b


def _zero_shot(clip, classnames, lb, f0, labels, wordings) -> dict:
    import torch
    import torch.nn.functional as F

    from ..methods import Ensemble
    from ..prompts import format_classname

    right0 = lb.argmax(1) == labels
    conf = lb.softmax(1).max(1).values
    r = {"zero_shot": 100 * right0.float().mean().item(),
         "ece": 100 * metrics.expected_calibration_error(conf.numpy(), right0.numpy()),
         "confidence": 100 * conf.mean().item()}
    ens = Ensemble().prepare(clip, classnames)
    r["ensemble"] = 100 * ((f0 @ ens.T.cpu()).argmax(1) == labels).float().mean().item()
    word_top1 = []
    with torch.no_grad():
        for w in wordings:
            tokens = clip.tokenizer([w.format(format_classname(c)) for c in classnames]).to(clip.device)
            tf = F.normalize(clip.model.encode_text(tokens).float(), dim=-1).cpu()
            word_top1.append(100 * ((f0 @ tf.T).argmax(1) == labels).float().mean().item())
    r["wording_min"], r["wording_max"] = min(word_top1), max(word_top1)
    return r


def _paired(right1, right0) -> tuple:
    """Top-1 (%) of `right1`, and fixed, broken and exact McNemar p against `right0`."""
    m = metrics.mcnemar_exact(right1.numpy(), right0.numpy())
    return 100 * right1.float().mean().item(), m.a_only, m.b_only, m.p_value


def diagnose(clip, task, n: int | None = None, method=None, seed: int = 0, n_views: int = 64,
             batch_size: int = 32, wordings=WORDINGS, progress: bool = True) -> dict:
    """The measurements above for the first `n` samples of `task` (all when None); `method` is the
    TPT to diagnose (default `TPT()`, the published settings). Returns a dict of numbers (percent
    for accuracies and shares), with the first step's properties of
    `tptlib.analysis.first_step.SUMMARY` and ZERO (`tptlib.methods.ZERO`, its defaults) on the same
    views."""
    import torch
    from tqdm.auto import tqdm

    from ..methods import TPT, ZERO
    from .first_step import concat, summarize_first_step

    method = method or TPT()
    prepared = method.prepare(clip, task.classnames)
    zero = (ZERO(),)
    zero += (zero[0].prepare(clip, task.classnames),)
    scale = clip.logit_scale
    n = len(task) if n is None else min(n, len(task))
    quiet = {} if progress else {"disable": True}
    batches = [_batch(clip, task, range(start, min(start + batch_size, n)), method, prepared, zero, seed, n_views)
               for start in tqdm(range(0, n, batch_size), unit="batch", desc=f"{task.name} diagnose", **quiet)]
    lb, la, vl, f0, lz = (torch.cat([b[k] for b in batches]).float().cpu()
                          for k in ("before", "after", "view_logits", "feats0", "zero"))
    kp = torch.cat([b["kept"] for b in batches]).cpu()                                # [N, k] view indices
    labels = torch.tensor([task.samples[i][1] for i in range(n)])

    r = {"task": task.name, "n": n, "logit_scale": scale}
    r.update(_zero_shot(clip, task.classnames, lb, f0, labels, wordings))
    right0 = lb.argmax(1) == labels
    probs = vl.softmax(-1)                                                            # [N, V, C]
    kept_avg = torch.gather(probs, 1, kp.unsqueeze(-1).expand(-1, -1, probs.shape[-1])).mean(1)
    r["kept_avg"], r["kept_fixed"], r["kept_broken"], r["kept_p"] = _paired(kept_avg.argmax(1) == labels, right0)
    r["zero"], r["zero_fixed"], r["zero_broken"], r["zero_p"] = _paired(lz.argmax(1) == labels, right0)
    r["tpt"], r["fixed"], r["broken"], r["p"] = _paired(la.argmax(1) == labels, right0)
    r["changed"] = 100 * (la.argmax(1) != lb.argmax(1)).float().mean().item()

    top2 = lb.topk(2, dim=1).values
    r["margin_cos"] = ((top2[:, 0] - top2[:, 1]) / scale).median().item()
    dcos = [b["dcos"] for b in batches if "dcos" in b]
    r["feature_1mcos"] = torch.cat(dcos).median().item() if dcos else float("nan")
    r["max_dlogit"] = (la - lb).abs().max(1).values.median().item()
    k_cls, v_cls = kept_avg.argmax(1), lb.argmax(1)
    differ = (k_cls != v_cls).nonzero(as_tuple=True)[0]
    r["n_disagree"] = int(differ.numel())
    if differ.numel():
        gap0 = lb[differ, k_cls[differ]] - lb[differ, v_cls[differ]]
        gap1 = la[differ, k_cls[differ]] - la[differ, v_cls[differ]]
        r["toward_kept"] = 100 * (gap1 > gap0).float().mean().item()
    else:
        r["toward_kept"] = float("nan")
    firsts = [b["first"] for b in batches if "first" in b]
    r.update(summarize_first_step(concat(firsts), labels) if firsts else {k: float("nan") for k in SUMMARY_KEYS})
    return r


#: the columns of `diagnosis_table`, in order, with their headers
COLUMNS = {"n": "n", "zero_shot": "zero-shot", "ece": "ECE", "ensemble": "ensemble",
           "wording_min": "wordings min", "wording_max": "wordings max", "kept_avg": "kept avg",
           "kept_fixed": "kept fixed", "kept_broken": "kept broken", "kept_p": "kept p", "tpt": "TPT",
           "changed": "changed %", "fixed": "fixed", "broken": "broken", "p": "p",
           "margin_cos": "margin (cos)", "feature_1mcos": "step 1-cos", "max_dlogit": "max |dlogit|",
           "toward_kept": "toward kept %", "zero": "ZERO", "zero_fixed": "ZERO fixed",
           "zero_broken": "ZERO broken", "zero_p": "ZERO p", "specific_share": "specific share",
           "specific_span": "specific span", "margin": "margin", "reach": "reach", "sign_cos": "cos(sign g, g)",
           "sign_toward": "sign toward %", "grad_toward": "grad toward %", "sign_fixed": "sign fixed",
           "sign_broken": "sign broken", "grad_fixed": "grad fixed", "grad_broken": "grad broken",
           "grad_specific_share": "grad specific share", "view_cos": "view cos", "transfer_cos": "transfer cos",
           "transfer_gain": "transfer gain", "pair_reach": "pair reach", "pair_flip": "pair flip %",
           "pair_transfer": "pair transfer", "pair_align": "pair align"}


def diagnosis_table(results) -> pd.DataFrame:
    """One row per `diagnose` result, indexed by task."""
    frame = pd.DataFrame([{COLUMNS[k]: r[k] for k in COLUMNS} for r in results],
                         index=pd.Index([r["task"] for r in results], name="task"))
    return frame


def share_of_zero_gain(frame: pd.DataFrame, tasks=None) -> dict:
    """TPT's gain over zero-shot as a share of ZERO's, pooled over the rows `tasks` of a
    `diagnosis_table` (default: all), on the same samples: gains in points of the pooled samples,
    fixed/broken against zero-shot and the exact McNemar p of each, and `share` = TPT's gain / ZERO's
    (NaN when ZERO gains nothing)."""
    from scipy import stats

    sub = frame if tasks is None else frame.loc[list(tasks)]
    n = int(sub["n"].sum())
    r = {"tasks": list(sub.index), "n": n}
    for key, fixed, broken in (("tpt", "fixed", "broken"), ("zero", "ZERO fixed", "ZERO broken")):
        f, b = int(sub[fixed].sum()), int(sub[broken].sum())
        r[f"{key}_fixed"], r[f"{key}_broken"] = f, b
        r[f"{key}_gain"] = 100 * (f - b) / n
        r[f"{key}_p"] = stats.binomtest(f, f + b, 0.5).pvalue if f + b else 1.0
    r["share"] = r["tpt_gain"] / r["zero_gain"] if r["zero_gain"] else float("nan")
    r["changed"] = float((sub["changed %"] * sub["n"]).sum() / n)
    return r


def shifted_tasks(frame: pd.DataFrame) -> list:
    """The rows of a `diagnosis_table` that are micro's shifted sets (V2, Sketch, R, A or their dev twins)."""
    from ..micro.sets import SHIFTED

    names = {f"micro:{s}{suffix}" for s in SHIFTED for suffix in ("", "-dev")}
    return [t for t in frame.index if t in names]


def format_pooled(frame: pd.DataFrame) -> str:
    """`share_of_zero_gain` over the shifted micro sets of `frame` as one line ("" when there are none)."""
    tasks = shifted_tasks(frame)
    if not tasks:
        return ""
    r = share_of_zero_gain(frame, tasks)
    return (f"pooled over {', '.join(t.removeprefix('micro:') for t in tasks)} (n = {r['n']}): "
            f"TPT {r['tpt_gain']:+.2f} points ({r['tpt_fixed']}/{r['tpt_broken']}, p = {r['tpt_p']:.2g}, "
            f"changed {r['changed']:.1f}%), ZERO {r['zero_gain']:+.2f} ({r['zero_fixed']}/{r['zero_broken']}, "
            f"p = {r['zero_p']:.2g}); TPT's share of ZERO's gain {r['share']:.2f}")


def format_table(frame: pd.DataFrame) -> str:
    """`diagnosis_table` as fixed-width text (accuracies and shares in %, p-values in 2 digits)."""
    def fmt(col, v):
        if col in ("n", "kept fixed", "kept broken", "fixed", "broken", "ZERO fixed", "ZERO broken", "sign fixed",
                   "sign broken", "grad fixed", "grad broken"):
            return f"{int(v)}"
        if col in ("kept p", "p", "ZERO p"):
            return f"{v:.2g}"
        if col in ("specific share", "specific span", "margin", "reach", "cos(sign g, g)", "grad specific share",
                   "view cos", "transfer cos", "transfer gain", "pair reach", "pair transfer", "pair align"):
            return "nan" if np.isnan(v) else f"{v:.3f}"
        if col == "step 1-cos":
            return f"{v:.1e}"
        if col in ("margin (cos)", "max |dlogit|"):
            return f"{v:.3f}"
        return "nan" if np.isnan(v) else f"{v:.1f}"
    cells = [[str(i)] + [fmt(c, frame.loc[i, c]) for c in frame.columns] for i in frame.index]
    head = ["task"] + list(frame.columns)
    width = [max(len(h), *(len(row[j]) for row in cells)) for j, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, width))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def plot_diagnosis(frame: pd.DataFrame, ax=None, level: float = 0.95):
    """Zero-shot, the kept views' average and TPT per task of a `diagnosis_table` (or the CSV that
    `tpt diagnose --csv` writes, read with ``index_col=0``), each with its Wilson interval; under
    each task, TPT's fixed/broken against zero-shot and the exact McNemar p."""
    from scipy import stats

    from .plots import interval_plot

    rows = []
    for task, r in frame.iterrows():
        n = int(r["n"])
        for label, col in (("zero-shot", "zero-shot"), ("kept views' average", "kept avg"), ("TPT", "TPT")):
            hits = int(round(r[col] * n / 100))
            ci = stats.binomtest(hits, n).proportion_ci(level, method="wilson")
            rows.append({"task": f"{str(task).removeprefix('micro:')}\nTPT {int(r['fixed'])}/{int(r['broken'])}, "
                                 f"p={r['p']:.2g}",
                         "top-1 (%)": 100 * hits / n, "low": 100 * ci.low, "high": 100 * ci.high, "": label})
    ax = interval_plot(pd.DataFrame(rows), x="task", y="top-1 (%)", hue="", ax=ax)
    ns = sorted({int(v) for v in frame["n"]})
    ax.set_title(f"n = {', '.join(map(str, ns))} per task; {100 * level:g}% Wilson intervals; "
                 "TPT fixed/broken against zero-shot, exact McNemar p")
    ax.set_xlabel("")
    return ax
