"""Contrastive training of the micro-CLIP on the micro world (``train``) and its building blocks.

Recipe: AdamW (betas 0.9/0.98, weight decay 0.1 on matrices only), linear warm-up (5% of the
steps) then cosine decay, logit scale clamped at 100, an easy-first curriculum over the first
third of training (the share of full-difficulty scenes grows linearly from 0 to 1). Defaults:
batch 128, lr 4e-3, 1500 steps, one torch thread. Measured on the shared 2-core CPU: with batch
128 the model gets twice the updates per rendered pair, and lr 4e-3 reached 81% validation
top-1 at step 450 where 2e-3 reached 75%; two torch threads were 5-10x *slower* per step than
one whenever other processes held a core (OpenMP threads waiting on each other).

Targets: a caption is a positive for every image in the batch it is true of ("a photo of a star."
describes every star scene; "a photo of three red stars." only scenes with three red stars), so
true descriptions of other images are not pushed away as negatives (false negatives). The world
knows what each caption states, which makes this exact.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from . import world

MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
ZS_TEMPLATE = "a photo of a {}."
VAL_SEED = 2          # the validation stream of the training curve (test sets use other seeds)
def normalize(img8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B,3,H,W]`` -> CLIP-normalised float (what ToTensor + Normalize give)."""
    return (img8.float() / 255.0 - MEAN) / STD


def create_model(seed: int | None = None, model_cfg: dict | None = None):
    """A fresh micro-CLIP (open_clip, from the shipped config or ``model_cfg``) and its tokenizer."""
    import open_clip

    from . import MODEL_NAME, config_path
    open_clip.add_model_config(config_path())
    if model_cfg is not None:
        open_clip.factory._MODEL_CONFIGS[MODEL_NAME] = model_cfg
    if seed is not None:
        torch.manual_seed(seed)
    import logging
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)    # "no pretrained weights" is expected here
    try:
        model = open_clip.create_model(MODEL_NAME, pretrained=None)
    finally:
        logging.getLogger().setLevel(level)
    return model, open_clip.get_tokenizer(MODEL_NAME)


def used_token_ids(tokenizer) -> torch.Tensor:
    """Token ids any caption or class name of the micro world can produce (sorted)."""
    words = world.caption_vocabulary()
    texts = [" ".join(words)] + [w + "." for w in words] + [ZS_TEMPLATE.format("x")]
    ids = tokenizer(texts).unique()
    return ids[ids != 0].sort().values


class _TokCache:
    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, texts):
        missing = [t for t in set(texts) if t not in self.cache]
        if missing:
            for t, row in zip(missing, self.tok(missing)):
                self.cache[t] = row
        return torch.stack([self.cache[t] for t in texts])


def param_groups(model, weight_decay: float, emb_lr_mult: float = 1.0, emb_own_group: bool = False):
    decay, no_decay, emb = [], [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n in ("token_embedding.weight", "positional_embedding") and (emb_lr_mult != 1.0 or emb_own_group):
            emb.append(p)
            continue
        (decay if p.ndim >= 2 and "logit_scale" not in n else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if emb:
        groups.append({"params": emb, "weight_decay": 0.0, "lr_mult": emb_lr_mult})
    return groups


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * t))


def contrastive_loss(img_f, txt_f, logit_scale, positives):
    """Symmetric InfoNCE with several positives: ``positives[i, j]`` (bool, diagonal true) says
    caption j is true of image i; each row's (column's) target spreads over its positives."""
    logits = logit_scale * img_f @ txt_f.T
    pos = positives.float()
    ti = pos / pos.sum(1, keepdim=True)
    tt = pos.T / pos.T.sum(1, keepdim=True)
    li = -(ti * F.log_softmax(logits, 1)).sum(1).mean()
    lt = -(tt * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (li + lt) / 2


@torch.no_grad()
def class_features(model, tokenizer, classnames, template=ZS_TEMPLATE):
    t = tokenizer([template.format(c) for c in classnames])
    return F.normalize(model.encode_text(t), dim=-1)


@torch.no_grad()
def image_features(model, img8: torch.Tensor, batch: int = 500):
    out = [F.normalize(model.encode_image(normalize(img8[i:i + batch])), dim=-1)
           for i in range(0, len(img8), batch)]
    return torch.cat(out)


@torch.no_grad()
def zero_shot_predict(model, tokenizer, img8, classnames):
    was = model.training
    model.eval()
    pred = (image_features(model, img8) @ class_features(model, tokenizer, classnames).T).argmax(1)
    model.train(was)
    return pred


def _compact_tokens(model, tokenizer):
    """Give ``model`` a compact token table: only the rows the micro world's texts can produce (the
    other rows would receive no gradient; they are zero in the shipped model). Ids are remapped in
    increasing order, so end-of-text stays the largest id (argmax pooling is unchanged).
    Returns ``(tokenize, restore)``: texts -> remapped ids, and the call that puts the full table
    back (with the trained rows) once training is done."""
    full_emb = model.token_embedding
    used = used_token_ids(tokenizer)
    lut = torch.zeros(full_emb.weight.shape[0], dtype=torch.long)
    lut[used] = torch.arange(1, len(used) + 1)
    compact = torch.nn.Embedding(len(used) + 1, full_emb.weight.shape[1])
    with torch.no_grad():
        compact.weight.zero_()
        compact.weight[1:] = full_emb.weight[used]
    model.token_embedding = compact
    tok_cache = _TokCache(tokenizer)

    def tokenize(texts):
        return lut[tok_cache(texts)]

    def restore():
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        emb = torch.zeros_like(full_emb.weight)
        emb[used] = sd["token_embedding.weight"][1:]
        sd["token_embedding.weight"] = emb
        model.token_embedding = full_emb
        model.load_state_dict(sd)

    return tokenize, restore


def _embedding_scale_fixer(model, embedding_rms: float | None):
    """The call that rescales every token/positional row to ``embedding_rms`` per coordinate (no-op: None)."""
    def fix():
        if embedding_rms is None:
            return
        with torch.no_grad():
            norm = embedding_rms * math.sqrt(model.token_embedding.weight.shape[1])
            for rows in (model.token_embedding.weight[1:], model.positional_embedding):
                rows.mul_(norm / rows.norm(dim=1, keepdim=True).clamp(min=1e-12))
    return fix


def _new_model(seed, model_cfg, fixed_logit_scale, init_state):
    model, tokenizer = create_model(seed, model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state)
    if fixed_logit_scale is not None:
        # CLIP's learned scale ends at its clamp, 100; TPT's entropies and confidence selection
        # are defined at that temperature, so the micro-CLIP is trained at it
        with torch.no_grad():
            model.logit_scale.fill_(math.log(fixed_logit_scale))
        model.logit_scale.requires_grad_(False)
    return model, tokenizer


def train(seed: int = 0, steps: int = 1500, batch_size: int = 128, lr: float = 4e-3,
          weight_decay: float = 0.1, warmup: int | None = None, eval_every: int = 100,
          eval_n: int = 500, threads: int | None = 1, progress: bool = True,
          log=None, fixed_logit_scale: float | None = None, model_cfg: dict | None = None,
          emb_lr_mult: float = 1.0, embedding_rms: float | None = None, render_fn=None,
          init_state: dict | None = None, curriculum: bool = True, freeze_image: bool = False):
    """Train a micro-CLIP. Returns ``(model, tokenizer, curve)``.

    model_cfg: an open_clip model config (default: the shipped ``micro-clip.json``).
    emb_lr_mult: learning-rate factor of the token and positional embeddings.
    embedding_rms: keep every token-embedding and positional-embedding row at this RMS per coordinate
        (rescaled after each step; no weight decay on them), so they learn directions, not scale.
    render_fn: ``(seed, indices, difficulty) -> (images uint8, captions, positives)``
        (default ``world.render_training``).
    init_state: a full state_dict to start from (continued training; default: from scratch).
    curriculum: easy-first scenes over the first third of the steps (False: full difficulty).
    freeze_image: keep the image tower as it is (no gradient, batch-norm statistics kept): only the
        text tower and the logit scale learn, against fixed image features (locked-image tuning).
    Deterministic given ``seed`` (and thread count).
    """
    from tqdm.auto import tqdm

    from .sets import view0_images

    if threads:
        torch.set_num_threads(threads)
    model, tokenizer = _new_model(seed, model_cfg, fixed_logit_scale, init_state)
    if freeze_image:
        model.visual.requires_grad_(False)

    def train_mode():
        model.train()
        if freeze_image:
            model.visual.eval()
    tok, restore = _compact_tokens(model, tokenizer)
    fix_embedding_scale = _embedding_scale_fixer(model, embedding_rms)
    fix_embedding_scale()
    opt = torch.optim.AdamW(param_groups(model, weight_decay, emb_lr_mult, embedding_rms is not None),
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = warmup if warmup is not None else max(1, steps // 20)
    max_scale = math.log(100.0)
    val_img, val_sc = world.render("I", VAL_SEED, range(eval_n), size=world.RAW_SIZE)
    val_img, val_y = view0_images(val_img), val_sc.label
    curve, ema = [], None
    train_mode()
    t0 = time.time()
    bar = tqdm(range(steps), desc="micro-CLIP", disable=not progress, mininterval=2.0)
    for step in bar:
        hard = min(1.0, step / max(1, steps / 3)) if curriculum else 1.0
        img8, caps, positives = (render_fn or world.render_training)(
            seed, range(step * batch_size, (step + 1) * batch_size), difficulty=hard)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup) * g["lr_mult"]
        img_f, txt_f, scale = model(normalize(img8), tok(caps))
        loss = contrastive_loss(img_f, txt_f, scale, positives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        fix_embedding_scale()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_scale)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        row = {"step": step + 1, "loss": loss.item(), "loss_ema": ema, "lr": lr_at(step, steps, lr, warmup),
               "logit_scale": float(model.logit_scale.detach().exp()), "hard_share": hard,
               "seconds": time.time() - t0, "val_top1": ""}
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            row["val_top1"] = (zero_shot_predict(model, tok, val_img, world.SHAPES) == val_y).float().mean().item()
            train_mode()
            bar.set_postfix(loss=f"{ema:.3f}", val=f"{row['val_top1']:.3f}")
            if log:
                log(f"step {step + 1} loss {ema:.3f} val_top1 {row['val_top1']:.3f} t {row['seconds']:.0f}s")
        curve.append(row)
    restore()
    model.eval()
    return model, tokenizer, curve
