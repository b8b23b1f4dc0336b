"""A faithful one-sample-at-a-time TPT, structured as the authors' `tpt_classification.py`.

One `nn.Parameter` context, one AdamW whose initial state is restored for every sample, the full
context length for every class prompt, and the image encoder run on all views at every tuning step
and again on view 0 for the prediction. Used by the tests (the engine must agree with it) and by
`tpt bench` (the baseline the engine's speed is measured against).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from .clip import Clip
from .objectives import marginal_entropy
from .prompts import build_prompt_text


class ReferenceTPT:
    """The authors' loop: `predict(views)` tunes, predicts view 0, and the next call starts afresh."""

    def __init__(self, clip: Clip, classnames: list[str], steps: int = 1, lr: float = 5e-3,
                 selection_p: float = 0.1, ctx_init: str | None = "a photo of a", n_ctx: int = 4):
        self.clip, self.steps, self.selection_p = clip, steps, selection_p
        self.prompt = build_prompt_text(clip, classnames, n_ctx=n_ctx, ctx_init=ctx_init, cut=False)
        self.ctx = torch.nn.Parameter(self.prompt.init_ctx.clone())             # [n_ctx, W]
        self.ctx_init_state = self.prompt.init_ctx.clone()
        self.optimizer = torch.optim.AdamW([self.ctx], lr)
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())
        amp = clip.precision == "amp"
        self.scaler = torch.amp.GradScaler("cuda", init_scale=1000) if amp else None

    def text_features(self) -> torch.Tensor:
        return self.prompt.class_features(self.clip.model, self.ctx.unsqueeze(0))[0]      # [C, D]

    def inference(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            image_feats = F.normalize(self.clip.model.encode_image(images).float(), dim=-1)
        return self.clip.logit_scale * image_feats @ self.text_features().T

    def loss(self, kept_logits: torch.Tensor) -> torch.Tensor:
        """The loss of a step: the marginal entropy of the kept views' logits `[k, C]`."""
        return marginal_entropy(kept_logits)

    def predict(self, views: torch.Tensor) -> dict:
        """views `[V, 3, H, W]` -> logits `[C]` of view 0 after tuning, first-step loss, kept views."""
        views = views.to(self.clip.device)
        with torch.no_grad():
            self.ctx.copy_(self.ctx_init_state)
        self.optimizer.load_state_dict(self.optim_state)
        selected, first_loss = None, math.nan
        for step in range(self.steps):
            with self.clip.autocast():
                output = self.inference(views)                                          # [V, C]
                if selected is None:
                    logp = output.log_softmax(1)
                    batch_entropy = -(logp.exp() * logp).sum(1)
                    selected = torch.argsort(batch_entropy, descending=False)[:int(output.shape[0] * self.selection_p)]
                loss = self.loss(output[selected])
            if step == 0:
                first_loss = float(loss.detach())
            self.optimizer.zero_grad()
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        with torch.no_grad(), self.clip.autocast():
            logits = self.inference(views[:1])[0]
        return {"logits": logits.float().cpu(), "loss": first_loss,
                "kept": [] if selected is None else selected.tolist()}
