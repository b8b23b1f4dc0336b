"""Analysis helpers the notebooks share: the papers' table layout, published numbers, paired
comparisons, TPT's flips, per-class deltas, calibration and the views confidence selection kept.

Every function reads run results (`tpt.evaluate` / `tpt.load_run`) or their `records` and returns
a pandas DataFrame, so that a notebook cell is one call and one table. Accuracies are in percent,
as in the papers; error rows (unreadable images) are left out everywhere, as in `summary`.

    import tptlib as tpt
    from tptlib import analysis
    frame = analysis.run_frame([zs, ens, tpt_run])          # one row per run
    analysis.paper_table(frame, ["I"], ["A", "V", "R", "K"])   # Table 1 layout
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from . import metrics
from .nested import differences

# ------------------------------------------------------------------------------------------------
# names

#: Row labels of the papers' tables for the library's method names.
METHOD_LABELS = {"zeroshot": "CLIP zero-shot", "ensemble": "Ensemble", "tpt": "TPT",
                 "tpt+coop": "TPT+CoOp", "tpt+cocoop": "TPT+CoCoOp"}
#: The order rows appear in (as in the TPT paper's Table 1); other labels follow in first-seen order.
METHOD_ORDER = ["CLIP zero-shot", "Ensemble", "CoOp", "CoCoOp", "TPT", "TPT+CoOp", "TPT+CoCoOp"]
#: open_clip model names -> the backbone names of `published_results.csv`.
PAPER_BACKBONES = {"RN50": "RN50", "ViT-B-16": "ViT-B/16", "ViT-B/16": "ViT-B/16"}
#: The flip kinds of `flip_kind`, in display order.
FLIP_KINDS = ["wrong→right", "right→wrong", "stayed right", "stayed wrong"]


def task_label(name: str) -> str:
    """A task's column label: the name without the `micro:` prefix ("micro:V2" -> "V2", "A" -> "A")."""
    return name.split(":", 1)[1] if name.lower().startswith("micro:") else name


def method_label(result) -> str:
    """The table row of a run: the paper's name, plus any TPT setting that differs from the default.

    `TPT(steps=4)` -> "TPT (steps=4)"; `TPT()` -> "TPT"; `ZeroShot()` -> "CLIP zero-shot".
    """
    from .methods import TPT
    method = result.params["method"]
    label = METHOD_LABELS.get(method["name"], method["name"])
    if method["name"].startswith("tpt"):
        default = TPT().config()
        changed = [f"{k}={v}" for k, v in method["config"].items()
                   if k in default and k != "name" and v != default[k]]
        if changed:
            label += f" ({', '.join(changed)})"
    return label


def _order_methods(labels) -> list[str]:
    labels = list(dict.fromkeys(labels))
    known = [m for m in METHOD_ORDER if m in labels]
    return known + [m for m in labels if m not in known]


# ------------------------------------------------------------------------------------------------
# published numbers


def published_results(backbone: str | None = None) -> pd.DataFrame:
    """The published top-1 table shipped with the library (`tptlib/resources/published_results.csv`).

    Columns: backbone, method, task, top1 (percent), source, status ("verified" or "restated").
    backbone: keep one backbone; open_clip names are accepted ("ViT-B-16" -> "ViT-B/16").
    """
    text = resources.files("tptlib").joinpath("resources/published_results.csv").read_text()
    rows = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    frame = pd.read_csv(io.StringIO("\n".join(rows)), dtype={"top1": float}, quoting=csv.QUOTE_MINIMAL)
    frame = frame.rename(columns={"dataset": "task"})
    if backbone is None:
        return frame
    name = paper_backbone(backbone) or backbone
    kept = frame[frame["backbone"] == name].reset_index(drop=True)
    if kept.empty:
        raise ValueError(f"no published numbers for backbone {backbone!r}; "
                         f"the table holds {sorted(frame['backbone'].unique())}")
    return kept


def paper_backbone(model: str) -> str | None:
    """The published table's backbone for an open_clip model name, or None when it has none.

    "ViT-B-16", "ViT-B-16-quickgelu" -> "ViT-B/16"; "RN50" -> "RN50"; "micro" -> None.
    """
    return PAPER_BACKBONES.get(model.removesuffix("-quickgelu"))


# ------------------------------------------------------------------------------------------------
# tables


def run_frame(results, labels=None) -> pd.DataFrame:
    """One row per run: task, method, n, top1 with its 95% Wilson interval, ECE, seconds per sample.

    labels: row labels for the runs (default: `method_label`). Columns `top1_before`/`ece_before`
    are view 0 with the initial prompt (equal to top1/ece for methods that do not tune).
    `classes_seen` of `n_classes`: how many classes the scored samples cover (a `limit` that cuts a
    class-sorted task covers only its first classes).
    """
    results = list(results)
    labels = list(labels) if labels is not None else [method_label(r) for r in results]
    rows = []
    for result, label in zip(results, labels, strict=True):
        s = result.summary
        low, high = s["top1_ci"]
        rows.append({"task": task_label(s["task"]), "method": label, "n": s["n_scored"],
                     "top1": s["top1"], "low": low, "high": high, "ece": s["ece"],
                     "top1_before": s["top1_before"], "ece_before": s["ece_before"],
                     "seconds_per_sample": s["seconds_per_sample"], "n_errors": s["n_errors"],
                     "classes_seen": int(_scored(result.records)["label"].nunique()),
                     "n_classes": result.params["task"]["n_classes"]})
    return pd.DataFrame(rows)


def paper_table(frame: pd.DataFrame, tasks, ood_tasks=None, value: str = "top1") -> pd.DataFrame:
    """The papers' layout: one row per method, one column per task, then Average (and OOD Average).

    frame: long rows with columns method, task and `value` (`run_frame`, `published_results`).
    tasks: the columns before the OOD ones (Table 1: the in-distribution task; Table 2: all).
    ood_tasks: Table 1's shifted tasks; adds "OOD Average" over them. "Average" is over every
    column. A method missing a task gets NaN there and in the averages that need it; a method
    with none of the tasks is left out.
    """
    ood = list(ood_tasks or [])
    columns = [*tasks, *ood]
    wide = frame.pivot_table(index="method", columns="task", values=value, aggfunc="first")
    wide = wide.reindex(index=_order_methods(frame["method"]), columns=columns).dropna(how="all")
    wide["Average"] = wide[columns].mean(axis=1, skipna=False)
    if ood:
        wide["OOD Average"] = wide[ood].mean(axis=1, skipna=False)
    wide.columns.name, wide.index.name = None, None
    return wide


def interval_table(frame: pd.DataFrame, tasks, digits: int = 1) -> pd.DataFrame:
    """Method x task cells "top1 [low, high]" (text) from `run_frame` rows, for quoting."""
    cells = frame.assign(cell=[f"{t:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                               for t, lo, hi in zip(frame["top1"], frame["low"], frame["high"])])
    wide = cells.pivot_table(index="method", columns="task", values="cell", aggfunc="first")
    wide = wide.reindex(index=_order_methods(frame["method"]), columns=list(tasks))
    wide.columns.name, wide.index.name = None, None
    return wide


def head(result, n: int):
    """The run restricted to its first `n` samples (idx < n), with the summary recomputed.

    A run with limit=n holds exactly these samples (views are seeded per sample), so a short run
    of one method can be compared with the head of a longer run of another on the same images.
    """
    from .runs import RunResult, summarize
    records = result.records[result.records["idx"] < n].reset_index(drop=True)
    head = {k: result.summary[k] for k in ("task", "method", "model", "pretrained") if k in result.summary}
    return RunResult(out=result.out, params=result.params, records=records,
                     summary={**head, **summarize(records, min(n, result.summary.get("n_expected", n)))})


# ------------------------------------------------------------------------------------------------
# paired comparisons


def _scored(records: pd.DataFrame) -> pd.DataFrame:
    return records[records["error"].isna()]


def compare_runs(a, b, seed: int = 0) -> dict:
    """Accuracy of run `a` minus run `b` on the samples both scored: paired bootstrap and McNemar.

    Returns task, n, delta, low, high (percentage points, 95% paired bootstrap), a_only and b_only
    (samples only `a` / only `b` got right) and p_value (exact McNemar).
    """
    ra = _scored(a.records).set_index("idx")["correct"]
    rb = _scored(b.records).set_index("idx")["correct"]
    common = ra.index.intersection(rb.index)
    if common.empty:
        raise ValueError(f"{a.out} and {b.out} share no scored sample")
    ca, cb = ra.loc[common].to_numpy(dtype=bool), rb.loc[common].to_numpy(dtype=bool)
    diff = metrics.paired_bootstrap(ca, cb, seed=seed)
    test = metrics.mcnemar_exact(ca, cb)
    return {"task": task_label(a.summary["task"]), "n": len(common), "delta": 100 * diff.difference,
            "low": 100 * diff.low, "high": 100 * diff.high, "a_only": test.a_only, "b_only": test.b_only,
            "p_value": test.p_value}


def prediction_agreement(a, b) -> dict:
    """How far two runs of the same task agree, sample by sample (same `idx` = same image and views).

    For checking that a change of speed or precision (batch size, `--precision bf16`, another
    device, the engine against the reference) leaves predictions alone: the share of samples with
    the same top-1 class, the largest and the mean |logit difference|, the accuracy of each run and
    the paired accuracy difference (`compare_runs`); and the top-1 agreement and largest logit
    difference of view 0 before adaptation (`*_before`), which tell a change in the encoders from
    one in the tuning step. Refuses runs of different tasks or sample listings. `differences`
    lists the parameters in which the two runs differ.
    """
    ta, tb = a.params["task"], b.params["task"]
    for key in ("name", "samples"):
        if key in ta and key in tb and ta[key] != tb[key]:
            what = "tasks" if key == "name" else "sample listings (same task name, other images or order)"
            raise ValueError(f"{a.out} and {b.out} are runs of different {what}: "
                             f"task.{key} {ta[key]!r} against {tb[key]!r}")
    ra, rb = _scored(a.records).set_index("idx"), _scored(b.records).set_index("idx")
    common = ra.index.intersection(rb.index).sort_values()
    if common.empty:
        raise ValueError(f"{a.out} and {b.out} share no scored sample")
    la = np.stack(ra.loc[common, "logits"].to_list()).astype(np.float64)
    lb = np.stack(rb.loc[common, "logits"].to_list()).astype(np.float64)
    if la.shape != lb.shape:
        raise ValueError(f"{a.out} and {b.out} have logits over {la.shape[1]} and {lb.shape[1]} classes")
    diff = np.abs(la - lb)
    same = la.argmax(1) == lb.argmax(1)
    worst = int(np.argmax(diff.max(1)))
    # the same for view 0 before adaptation: separates a change in the encoders from one in the step
    ba = np.stack(ra.loc[common, "logits_before"].to_list()).astype(np.float64)
    bb = np.stack(rb.loc[common, "logits_before"].to_list()).astype(np.float64)
    same_before = ba.argmax(1) == bb.argmax(1)
    paired = compare_runs(a, b)
    return {"task": task_label(ta["name"]), "n": len(common), "same_top1": int(same.sum()),
            "same_top1_pct": 100 * float(same.mean()), "changed_idx": [int(i) for i in common[~same]],
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "worst_idx": int(common[worst]),
            "same_top1_before": int(same_before.sum()), "max_abs_logit_diff_before": float(np.abs(ba - bb).max()),
            "top1_a": 100 * float(ra.loc[common, "correct"].astype(bool).mean()),
            "top1_b": 100 * float(rb.loc[common, "correct"].astype(bool).mean()),
            "delta": paired["delta"], "low": paired["low"], "high": paired["high"],
            "a_only": paired["a_only"], "b_only": paired["b_only"], "p_value": paired["p_value"],
            "differences": [list(d) for d in differences(a.params, b.params)]}


# ------------------------------------------------------------------------------------------------
# what TPT changed, per sample and per class


def flip_kind(records: pd.DataFrame) -> pd.Series:
    """Per scored row: "wrong→right", "right→wrong", "stayed right" or "stayed wrong".

    Before = view 0 with the initial prompt (`correct_before`), after = after adaptation (`correct`).
    """
    rows = _scored(records)
    before, after = rows["correct_before"].to_numpy(dtype=bool), rows["correct"].to_numpy(dtype=bool)
    kind = np.select([~before & after, before & ~after, before & after],
                     FLIP_KINDS[:3], default=FLIP_KINDS[3])
    return pd.Series(pd.Categorical(kind, categories=FLIP_KINDS), index=rows.index, name="flip")


def flip_counts(results) -> pd.DataFrame:
    """Per run (task): how many samples each flip kind holds, the net gain and its percent."""
    rows = []
    for result in results:
        counts = flip_kind(result.records).value_counts().reindex(FLIP_KINDS, fill_value=0)
        n = int(counts.sum())
        net = int(counts["wrong→right"] - counts["right→wrong"])
        rows.append({"task": task_label(result.summary["task"]), "n": n, **counts.to_dict(),
                     "net": net, "net_points": 100 * net / n if n else float("nan")})
    return pd.DataFrame(rows)


def per_class_deltas(records: pd.DataFrame, classnames) -> pd.DataFrame:
    """Per true class: n, accuracy before/after (percent), delta (points), samples gained and lost.

    Sorted by delta, biggest loss first.
    """
    rows = _scored(records).assign(flip=flip_kind(records))
    rows = rows.assign(before=rows["correct_before"].astype(float), after=rows["correct"].astype(float),
                       gained=rows["flip"] == "wrong→right", lost=rows["flip"] == "right→wrong")
    out = rows.groupby("label").agg(n=("idx", "size"), top1_before=("before", "mean"), top1=("after", "mean"),
                                    gained=("gained", "sum"), lost=("lost", "sum"))
    out[["top1_before", "top1"]] *= 100
    out["delta"] = out["top1"] - out["top1_before"]
    out.insert(0, "class", [classnames[int(i)] for i in out.index])
    return out.reset_index(drop=True).sort_values(["delta", "class"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# calibration, confidence selection


def reliability(result, n_bins: int = 15) -> pd.DataFrame:
    """Reliability-diagram bins of view 0 before and after adaptation, from the stored logits.

    Long rows: stage ("before" / "after"), then `metrics.reliability_table`'s columns, plus the
    stage's ECE (percent) on every row.
    """
    rows = _scored(result.records)
    parts = []
    for stage, column, correct in (("before", "logits_before", "correct_before"), ("after", "logits", "correct")):
        conf, _ = metrics.softmax_confidence(np.stack(rows[column].to_list()))
        hits = rows[correct].to_numpy(dtype=bool)
        table = metrics.reliability_table(conf, hits, n_bins)
        ece = 100 * metrics.expected_calibration_error(conf, hits, n_bins)
        parts.append(table.assign(stage=stage, ece=ece))
    return pd.concat(parts, ignore_index=True)[["stage", "lower", "upper", "count", "confidence",
                                                  "accuracy", "gap", "ece"]]


def kept_views(results) -> pd.DataFrame:
    """Per run (task): were the views confidence selection kept right more often than views at large?

    Columns (percent over scored samples): `view0` (view 0, initial prompt), `all_views` (every view's
    argmax, initial prompt), `kept_views` (the kept views, `kept_correct`), `tpt` (after adaptation),
    and `kept_all_wrong` (samples none of whose kept views was right).
    """
    out = []
    for result in results:
        rows = _scored(result.records)
        labels = rows["label"].to_numpy()
        view_acc = [np.mean(np.asarray(v) == y) if len(v) else np.nan for v, y in zip(rows["view_preds"], labels)]
        kept = rows["kept_correct"]
        out.append({"task": task_label(result.summary["task"]), "n": len(rows),
                    "view0": 100 * rows["correct_before"].astype(float).mean(),
                    "all_views": 100 * float(np.nanmean(view_acc)) if len(rows) else float("nan"),
                    "kept_views": 100 * kept.mean(), "tpt": 100 * rows["correct"].astype(float).mean(),
                    "kept_all_wrong": 100 * float((kept == 0).mean())})
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------------------------
# pictures


def view0_image(task, i: int, size: int):
    """Sample i as view 0 sees it before normalisation: shorter side resized to `size`, centre crop."""
    from PIL import Image, ImageOps
    return ImageOps.fit(task.load_image(i), (size, size), method=Image.BICUBIC)


def gallery(task, rows: pd.DataFrame, size: int, ncols: int = 6, title: str = ""):
    """A grid of view-0 images with the label and the predictions before -> after in each title.

    rows: records rows (columns idx, label, pred_before, pred). Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    n = max(len(rows), 1)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols, 2.4 * nrows), squeeze=False)
    names = task.classnames
    for ax, (_, row) in zip(axes.flat, rows.iterrows()):
        ax.imshow(view0_image(task, int(row["idx"]), size))
        ax.set_title(f"#{int(row['idx'])} label: {names[int(row['label'])]}\n"
                     f"{names[int(row['pred_before'])]} → {names[int(row['pred'])]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if rows.empty:
        axes.flat[0].text(0.5, 0.5, "no samples of this kind", ha="center", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def interval_plot(frame: pd.DataFrame, x: str, y: str, hue: str, low: str = "low", high: str = "high",
                  ax=None, dodge: float = 0.6):
    """Points with error bars from precomputed intervals (seaborn would bootstrap rows instead).

    One colour per `hue` value (seaborn's current palette), dodged around each `x` position.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    ax = ax if ax is not None else plt.subplots(figsize=(10, 4))[1]
    xs, hues = list(dict.fromkeys(frame[x])), list(dict.fromkeys(frame[hue]))
    step = dodge / max(len(hues), 1)
    for k, (name, color) in enumerate(zip(hues, sns.color_palette(n_colors=len(hues)))):
        sub = frame[frame[hue] == name]
        pos = np.array([xs.index(v) for v in sub[x]]) + (k - (len(hues) - 1) / 2) * step
        err = np.clip([sub[y] - sub[low], sub[high] - sub[y]], 0, None)   # 100% vs. 99.999..% upper ends
        ax.errorbar(pos, sub[y], yerr=err, fmt="o", capsize=3, color=color, label=name)
    ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=x, ylabel=y)
    ax.legend(title=hue)
    return ax


def interval_bars(frame: pd.DataFrame, x: str, y: str, hue: str, low: str = "low", high: str = "high", ax=None):
    """Grouped seaborn bars of `y` with error bars from precomputed intervals (`low`, `high`)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    ax = ax if ax is not None else plt.subplots(figsize=(10, 4))[1]
    sns.barplot(frame, x=x, y=y, hue=hue, errorbar=None, ax=ax)
    for bars, (_, sub) in zip(ax.containers, frame.groupby(hue, sort=False)):
        centres = [bar.get_x() + bar.get_width() / 2 for bar in bars]
        err = np.clip([sub[y] - sub[low], sub[high] - sub[y]], 0, None)   # 100% vs. 99.999..% upper ends
        ax.errorbar(centres, sub[y], yerr=err, fmt="none", color="black", capsize=3, linewidth=1)
    return ax

# ------------------------------------------------------------------------------------------------
# the views of one image, confidence selection over cached view logits


def denormalize(views, mean, std) -> np.ndarray:
    """Normalised views `[..., 3, H, W]` -> displayable images `[..., H, W, 3]` in [0, 1]."""
    import torch
    x = torch.as_tensor(views).detach().float().cpu()
    m = torch.tensor(mean, dtype=x.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(3, 1, 1)
    return (x * s + m).clamp(0, 1).movedim(-3, -1).numpy()


def image_grid(images, titles=None, ncols: int = 8, highlight=(), title: str = "", size: float = 1.35,
               highlight_color: str = "tab:red"):
    """Images `[N, H, W, 3]` in a grid, one title each; panels in `highlight` get a thick frame.

    Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    images = list(images)
    nrows = max(1, -(-len(images) // ncols))
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.2 + 0.16 * lines) * nrows + 0.4),
                             squeeze=False)
    marked = set(int(i) for i in highlight)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(images):
            ax.axis("off")
            continue
        ax.imshow(images[k])
        if titles is not None:
            ax.set_title(titles[k], fontsize=7)
        for spine in ax.spines.values():
            spine.set_visible(k in marked)
            spine.set(color=highlight_color, linewidth=3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def view_logits(clip, task, indices, method=None, seed: int = 0, n_views: int = 64, batch_size: int = 16,
                progress: bool = True):
    """Logits of every view of the given samples under a fixed classifier: `([N, V, C] tensor, [N] labels)`.

    method: a method whose `view_logits_before` is the classifier (default `ZeroShot()`; `TPT()`
    gives the same numbers with its initial context). Views are `task_views(..., seed)`, the ones
    `evaluate` uses with the same seed.
    """
    import torch
    from tqdm.auto import tqdm

    from .augment import task_views
    from .engine import Engine
    from .methods import ZeroShot
    engine = Engine(clip, method or ZeroShot(), task.classnames, batch_size=batch_size)
    indices = [int(i) for i in indices]
    parts = []
    quiet = {} if progress else {"disable": True}          # when shown, TQDM_DISABLE=1 still silences it
    for start in tqdm(range(0, len(indices), batch_size), unit="batch", desc=f"{task.name} views", **quiet):
        batch = indices[start:start + batch_size]
        views = torch.stack([task_views(clip, task, i, seed=seed, n_views=n_views) for i in batch])
        out, _ = engine.run_views(views)
        parts.append(out.view_logits_before.float().cpu())
    labels = np.array([task.samples[i][1] for i in indices], dtype=np.int64)
    return torch.cat(parts), labels


def selected_prediction(view_logits, selection_p: float):
    """TPT's averaged prediction: mean softmax of the int(V * p) lowest-entropy views `[..., V, C] -> [..., C]`."""
    import torch

    from .objectives import select_confident
    kept = select_confident(view_logits, selection_p)                             # [..., k]
    probs = view_logits.float().softmax(-1)
    picked = torch.gather(probs, -2, kept.unsqueeze(-1).expand(*kept.shape, probs.shape[-1]))
    return picked.mean(-2)


def selection_curve(view_logits, labels, ratios) -> pd.DataFrame:
    """Accuracy of the averaged prediction over the kept views, per selection ratio rho.

    Columns: rho, k (views kept of V), top1 with its 95% Wilson interval (low, high), percent.
    """
    from .objectives import n_selected
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
    from .objectives import entropy, select_confident
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


# ------------------------------------------------------------------------------------------------
# TPT on one image, step by step


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

    from .methods.tpt_step import tune
    from .objectives import marginal_entropy, select_confident
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
    from .objectives import entropy, select_confident
    pred = logits.argmax(-1).tolist()
    kept = set(select_confident(logits, selection_p).tolist())
    return pd.DataFrame({"view": range(len(pred)), "entropy": entropy(logits).tolist(),
                         "pred": [classnames[p] for p in pred], "correct": [p == int(label) for p in pred],
                         "kept": [v in kept for v in range(len(pred))]})


def show_views(views, table: pd.DataFrame, mean, std, title: str = "", ncols: int = 8):
    """The views `[V, 3, H, W]` of one image in a grid, each titled with its entropy and prediction
    (from `view_table`: ✓ right, ✗ wrong), the kept views framed. Returns the figure."""
    titles = [f"v{r.view} H={r.entropy:.2f}\n{r.pred} {'✓' if r.correct else '✗'}" for r in table.itertuples()]
    return image_grid(denormalize(views, mean, std), titles, ncols=ncols,
                      highlight=table.index[table["kept"]].tolist(), title=title)
