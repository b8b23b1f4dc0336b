"""What a notebook runs on: the `micro` (offline default) and `paper` profiles, and their tasks."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Profile:
    """What a notebook runs on: the model and the tasks of the paper's two tables.

    On the `paper` profile the task lists hold only the datasets found under `data_root`; `missing`
    maps each dataset that is not there to the reason its loader gave, so a notebook can run the
    tasks that are present and say which are not.
    """

    name: str
    model: str
    pretrained: str | None
    data_root: str | None
    device: str
    id_task: str | None             # the in-distribution task (ImageNet / micro:I); None when missing
    ood_tasks: list[str]            # natural distribution shifts (Table 1)
    cross_tasks: list[str]          # other label sets (Table 2)
    missing: dict[str, str] = field(default_factory=dict)    # task -> why it is not available
    _loaded: dict = field(default_factory=dict, repr=False)  # task -> Task, loaded once per profile

    @property
    def tasks(self) -> list[str]:
        return [*([self.id_task] if self.id_task else []), *self.ood_tasks, *self.cross_tasks]

    def load_clip(self, precision: str = "auto"):
        from ..clip import load_clip
        return load_clip(self.model, pretrained=self.pretrained, device=self.device, precision=precision)

    def load_task(self, name: str):
        """The task `name` of this profile (loaded once, then reused)."""
        if name not in self._loaded:
            from ..data import load_task
            self._loaded[name] = load_task(name, root=None if name.startswith("micro:") else self.data_root)
        return self._loaded[name]

    def load_tasks(self, names=None, default=None) -> dict:
        """`{name: Task}` for `names`, or for `default` (the profile's tasks) when `names` is None.

        The defaults are the tasks that are present; a task named explicitly is loaded as asked, so
        a missing one raises its loader's error.
        """
        chosen = list(names) if names is not None else list(self.tasks if default is None else default)
        return {name: self.load_task(name) for name in chosen}

    def task_name(self, short: str | None) -> str | None:
        """A task named the same way on both profiles ("A", "Count") as this profile names it
        ("micro:A" / "A"); None when the profile has no such task or it is missing."""
        if not short:
            return None
        for name in self.tasks:
            if _short(name).lower() == str(short).lower() or name.lower() == str(short).lower():
                return name
        return None

    def focus_task(self, short: str | None, fallback=None) -> tuple[str, str]:
        """The task a notebook looks at closely: `short` when the profile has it, else the first of
        `fallback` (default: the natural shifts, then every task). Returns `(name, note)`; the note
        says why another task was taken, or is empty."""
        name = self.task_name(short)
        if name:
            return name, ""
        pool = list(fallback if fallback is not None else [*self.ood_tasks, *self.tasks])
        if not pool:
            raise ValueError(f"profile {self.name} has no task to look at")
        why = ("is missing under data_root" if self.name == "paper" and short and _short(short) in self.missing
               else "is not a task of this profile")
        return pool[0], (f"{short} {why}; using {_short(pool[0])} instead" if short else "")

    def describe(self, clip, task_names, limit, seed) -> str:
        """The lines a notebook prints after loading: model, weights, tasks, and what is missing."""
        weights = clip.pretrained or ("the shipped micro-CLIP weights" if self.name == "micro"
                                      else "random weights (shape-only run)")
        lines = [f"profile {self.name}: model {clip.name} with {weights} on {clip.device}",
                 f"tasks: {[_short(t) for t in task_names]} | first {limit} samples each, seed {seed}"]
        if self.missing:
            lines.append(f"not found under data_root {self.data_root}, skipped: {sorted(self.missing)}")
        return "\n".join(lines)

    def missing_table(self):
        """One row per dataset of the profile that is not under `data_root`, with the reason."""
        import pandas as pd
        return pd.DataFrame([{"task": t, "reason": r.split(" (Looked in")[0]} for t, r in self.missing.items()],
                            columns=["task", "reason"])


PAPER_ID = "I"
PAPER_OOD = ["A", "V", "R", "K"]
PAPER_CROSS = ["Flower102", "DTD", "Pets", "Cars", "UCF101", "Caltech101", "Food101", "SUN397", "Aircraft", "eurosat"]


def _short(name: str) -> str:
    return name.split(":", 1)[1] if name.lower().startswith("micro:") else name


def profile(name: str = "micro", model: str | None = None, pretrained: str | None = None,
            data_root: str | None = None, device: str | None = None) -> Profile:
    """The `micro` (offline default) or `paper` profile, with any notebook parameter overriding it.

    The paper profile loads each of its 15 datasets under `data_root` once: the ones whose folder
    is not there (or does not match the dataset's layout) are left out of the task lists and named,
    with the loader's reason, in `Profile.missing`; a root holding none of them is an error.
    """
    device = device or ("cuda" if _cuda_available() else "cpu")
    if name == "micro":
        from ..micro import sets
        return Profile("micro", model or "micro", pretrained, data_root, device, "micro:I",
                       [f"micro:{t}" for t in sets.SHIFTED],
                       [f"micro:{t}" for t in sets.MICRO_TASKS if t not in ("I", "A-pool", *sets.SHIFTED)])
    if name == "paper":
        if not data_root:
            raise ValueError("the paper profile needs data_root: the folder holding ImageNet, imagenet-a, ... "
                             "(see `tpt data check`)")
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise ValueError(f"data_root {str(root)!r} is not an existing folder")
        prof = Profile("paper", model or "ViT-B-16", pretrained if model else (pretrained or "openai"),
                       str(root), device, PAPER_ID, list(PAPER_OOD), list(PAPER_CROSS))
        from ..data import DatasetLayoutError
        for task in [PAPER_ID, *PAPER_OOD, *PAPER_CROSS]:
            try:
                prof.load_task(task)
            except DatasetLayoutError as exc:
                prof.missing[task] = str(exc)
        if len(prof.missing) == len(PAPER_OOD) + len(PAPER_CROSS) + 1:
            raise ValueError(f"none of the paper profile's datasets was found under {root}; e.g. "
                             f"{prof.missing['A']} (`tpt data list` prints the expected folders)")
        prof.id_task = None if PAPER_ID in prof.missing else PAPER_ID
        prof.ood_tasks = [t for t in PAPER_OOD if t not in prof.missing]
        prof.cross_tasks = [t for t in PAPER_CROSS if t not in prof.missing]
        return prof
    raise ValueError(f"profile must be 'micro' or 'paper'; got {name!r}")


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


