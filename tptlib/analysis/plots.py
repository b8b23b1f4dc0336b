"""Figures for the notebooks (matplotlib and seaborn, imported when a figure is drawn): galleries and
grids of images, points and bars with precomputed intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd


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


def show_views(views, table: pd.DataFrame, mean, std, title: str = "", ncols: int = 8):
    """The views `[V, 3, H, W]` of one image in a grid, each titled with its entropy and prediction
    (from `view_table`: ✓ right, ✗ wrong), the kept views framed. Returns the figure."""
    titles = [f"v{r.view} H={r.entropy:.2f}\n{r.pred} {'✓' if r.correct else '✗'}" for r in table.itertuples()]
    return image_grid(denormalize(views, mean, std), titles, ncols=ncols,
                      highlight=table.index[table["kept"]].tolist(), title=title)


def reliability_diagram(bins: pd.DataFrame, ax=None, min_count: int = 10, title: str = ""):
    """A reliability diagram of one run from `tables.reliability` rows: per stage ("before" /
    "after"), accuracy against mean confidence in each bin, each point labelled with its bin's
    sample count. Bins holding fewer than `min_count` samples are left out (their accuracy is too
    noisy to read); the title says how many samples they held. Returns the axis.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    hidden = 0
    for (stage, part), color in zip(bins.groupby("stage", sort=False), sns.color_palette(n_colors=2)):
        shown = part[part["count"] >= min_count]
        hidden += int(part.loc[(part["count"] > 0) & (part["count"] < min_count), "count"].sum())
        ax.plot(shown["confidence"], shown["accuracy"], marker="o", color=color,
                label=f"{stage} (ECE {part['ece'].iloc[0]:.1f}%)")
        for _, row in shown.iterrows():
            ax.annotate(f"{int(row['count'])}", (row["confidence"], row["accuracy"]), textcoords="offset points",
                        xytext=(3, -9 if stage == "before" else 4), fontsize=6, color=color)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="confidence (probability)", ylabel="accuracy (fraction)")
    ax.set_title(f"{title}\n{hidden} sample-bins under {min_count} hidden" if hidden else title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return ax
