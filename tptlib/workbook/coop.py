"""A CoOp context learnt in minutes on a CPU: the starting point of TPT + CoOp on the micro profile.

CoOp (Zhou et al., 2022) learns the prompt's context vectors on a few labelled images per class
(16 shots) with the cross-entropy of the zero-shot classifier, everything else frozen; TPT + CoOp
then starts each test image's step from that context instead of "a photo of a". `train_coop` does
this on view 0 of the first `shots` images of each class of a labelled task (on the micro profile
the in-distribution set's dev twin, `micro:I-dev`, never a test set); `save_coop` writes the
checkpoint `tpt.TPT(coop_ckpt=...)` reads.
"""
from __future__ import annotations

import os
from pathlib import Path


def few_shot(task, shots: int) -> list[int]:
    """The first `shots` sample indices of each class of `task`, in sample order."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1; got {shots}")
    taken: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(task.samples):
        if len(taken.setdefault(int(label), [])) < shots:
            taken[int(label)].append(i)
    short = {task.classnames[c]: len(v) for c, v in taken.items() if len(v) < shots}
    missing = [c for k, c in enumerate(task.classnames) if k not in taken]
    if short or missing:
        raise ValueError(f"{task.name} has fewer than {shots} images of some classes: {short or missing}")
    return sorted(i for v in taken.values() for i in v)


def longest_context(clip, classnames: list[str], wanted: int) -> int:
    """The most context vectors, at most `wanted`, that leave room for every class's prompt in the
    model's text context ("X ... X <class>."): CoOp's 16 need a context of at least 16 + the longest
    class name + 3 tokens, more than micro-CLIP's 20."""
    from ..prompts import build_prompt_text
    if wanted < 1:
        raise ValueError(f"wanted must be >= 1 context vector; got {wanted}")
    for n in range(wanted, 0, -1):
        try:
            build_prompt_text(clip, classnames, n_ctx=n, ctx_init=None)
            return n
        except ValueError:
            continue
    raise ValueError(f"no context vector fits before the longest of {len(classnames)} class prompts in this model's text context")


def train_coop(clip, task, shots: int = 16, ctx_init: str | None = "a photo of a", steps: int = 300, lr: float = 1e-2,
               seed: int = 0, n_ctx: int = 4) -> dict:
    """Learn the context on `shots` images per class of `task` (view 0, the eval transform).

    The context starts as the phrase `ctx_init`'s token embeddings, or with `ctx_init` None as
    `n_ctx` random N(0, 0.02^2) vectors drawn from `seed` (CoOp's generic start). Full-batch AdamW
    on the cross-entropy of `logit_scale * f^T w_c(ctx)`, the image features fixed.
    Returns `{"ctx": [n_ctx, W] tensor, "loss": [steps] list, "train_top1": before/after percent}`.
    """
    import torch
    import torch.nn.functional as F

    from ..prompts import build_prompt_text
    torch.manual_seed(seed)
    idx = few_shot(task, shots)
    labels = torch.tensor([task.samples[i][1] for i in idx], device=clip.device)
    with torch.no_grad():
        images = torch.stack([clip.preprocess(task.load_image(i)) for i in idx]).to(clip.device)
        feats = F.normalize(clip.model.encode_image(images).float(), dim=-1)                   # [N, D]
    prompt = build_prompt_text(clip, task.classnames, n_ctx=n_ctx, ctx_init=ctx_init or None,
                               generator=torch.Generator().manual_seed(seed))
    ctx = prompt.init_ctx.clone().requires_grad_(True)                                      # [n_ctx, W]
    optimizer = torch.optim.AdamW([ctx], lr=lr, weight_decay=0.0)

    def logits():
        return clip.logit_scale * feats @ prompt.class_features(clip.model, ctx.unsqueeze(0))[0].T

    with torch.no_grad():
        before = 100 * float((logits().argmax(-1) == labels).float().mean())
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(logits(), labels)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        after = 100 * float((logits().argmax(-1) == labels).float().mean())
    return {"ctx": ctx.detach().cpu(), "loss": losses, "train_top1": (before, after), "n": len(idx)}


def save_coop(ctx, folder: str | Path) -> Path:
    """Write `{"ctx": ctx}` (atomically) as `folder/coop-<digest of ctx>.pt`, the checkpoint
    `tpt.TPT(coop_ckpt=...)` reads; the name changes with the context, so runs keyed by the path
    never mix two contexts."""
    import hashlib

    import torch
    ctx = ctx.detach().cpu().float().contiguous()
    path = Path(folder) / f"coop-{hashlib.sha1(ctx.numpy().tobytes()).hexdigest()[:10]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    torch.save({"ctx": ctx}, tmp)
    os.replace(tmp, path)
    return path
