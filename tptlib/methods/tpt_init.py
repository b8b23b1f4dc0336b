"""Where TPT's context starts: a CoOp checkpoint's learned context (TPT + CoOp), or a CoCoOp
checkpoint's context and meta-network (TPT + CoCoOp), read weights-only."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checks import describe_names, nonfinite_tensors
from ..clip import CheckpointError, Clip


def load_prompt_checkpoint(path: str | Path) -> dict:
    """A CoOp/CoCoOp checkpoint's prompt learner state (`prompt_learner.` stripped), read weights-only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"prompt checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused the same way
        raise CheckpointError(f"cannot read {path} as a weights-only checkpoint ({type(exc).__name__}: {exc})") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict'; found {type(obj).__name__}")
    if bad := nonfinite_tensors(state):
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {describe_names(bad)}; a context "
                              "started from it gives no meaningful result")
    return {k.removeprefix("prompt_learner."): v for k, v in state.items()}


class CoCoOpMetaNet(torch.nn.Module):
    """CoCoOp's meta-network: image feature -> a shift added to every context vector."""

    def __init__(self, vis_dim: int, ctx_dim: int):
        super().__init__()
        self.linear1 = torch.nn.Linear(vis_dim, vis_dim // 16)
        self.relu = torch.nn.ReLU(inplace=True)
        self.linear2 = torch.nn.Linear(vis_dim // 16, ctx_dim)

    def forward(self, x):
        return self.linear2(self.relu(self.linear1(x)))


def checkpoint_start(clip: Clip, ckpt: str | Path, ctx_shape: tuple,
                     meta_net: bool) -> tuple[torch.Tensor, CoCoOpMetaNet | None]:
    """The context a checkpoint starts TPT from (`[n_ctx, W]`, fp32 on the model's device) and, with
    `meta_net` (TPT + CoCoOp), its meta-network, frozen. Refuses a checkpoint that does not fit
    `ctx_shape` or the model's image features."""
    state = load_prompt_checkpoint(ckpt)
    ctx = state.get("ctx")
    if not isinstance(ctx, torch.Tensor) or tuple(ctx.shape) != tuple(ctx_shape):
        raise ValueError(f"{ckpt}: expected ctx of shape {tuple(ctx_shape)} (n_ctx x text width); "
                         f"found {tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else ctx!r}")
    ctx = ctx.float().to(clip.device)
    if not meta_net:
        return ctx, None
    meta = {k.removeprefix("meta_net."): v for k, v in state.items() if k.startswith("meta_net.")}
    vis_dim = clip.embed_dim
    net = CoCoOpMetaNet(vis_dim, ctx.shape[1])
    try:
        net.load_state_dict(meta)
    except RuntimeError as exc:
        raise ValueError(f"{ckpt}: the meta-network does not fit image features of width {vis_dim}: {exc}") from exc
    return ctx, net.to(clip.device).eval().requires_grad_(False)
