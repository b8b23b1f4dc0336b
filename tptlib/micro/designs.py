"""micro v3 research designs: continued contrastive training of the shipped weights, one lever each.

Each design starts from the shipped V2b weights and trains on fresh samples of the training world
(data seed ``DATA_SEED``, full difficulty) with one change that aims at one property of
``tptlib.analysis.first_step``: the step's reach against the margin (the embeddings' scale), the
class-context interaction of the text tower (its depth; captions that name the picture's style),
or the agreement of crops with the whole image (more zoomed training windows). ``C0`` continues
with V2b's own recipe, so a design's effect is read against the same amount of extra training.
No design's objective contains TPT's step, an entropy on views or a peer: every one is the
contrastive loss on images and captions.

    python -m tptlib.micro.designs C2 --out /tmp/designs/C2
    tpt diagnose --pretrained /tmp/designs/C2/micro_clip.safetensors --task micro:R-dev ...

(a design with another text tower writes its open_clip config and a plain checkpoint beside the
weights: ``--model /tmp/designs/C4/micro-clip.json --pretrained /tmp/designs/C4/open_clip.safetensors``). docs/micro.md logs what each one measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import load_state_dict
from . import profiles, world
from .captions import STYLE_PREFIXES, caption_and_facts, consistent, image_facts

DATA_SEED = 7          # fresh training samples (the shipped model saw seed 0)
STEPS = 800
LR = 1e-3


@dataclass(frozen=True)
class Design:
    name: str
    lever: str                                   # the property it aims at, in words
    train: dict = field(default_factory=dict)    # extra keyword arguments of contrastive.train
    text_layers: int | None = None               # a deeper text tower (new blocks start as identity)
    zoom_p: float | None = None                  # P(zoomed training window) (V2b: profiles.ZOOM_P)
    style_p: float | None = None                 # P(sketch) = P(rendition) in training (V2b: 0.06)
    style_named: float | None = None             # P(a styled image's caption names its style)
    effect_p: float | None = None                # P(an effect) in training (V2b: 0.25)
    effect_named: float | None = None            # P(a photo with an effect is captioned with it)


DESIGNS = {d.name: d for d in [
    Design("C0", "control: V2b's recipe continued (embeddings at lr x0.1)", {"emb_lr_mult": 0.1}),
    Design("C1", "reach: embeddings at the full rate, held at RMS 0.015 (V2b's context rows: 0.024)",
           {"emb_lr_mult": 1.0, "embedding_rms": 0.015}),
    Design("C2", "class-context interaction: sketches and renditions at 15% each, their captions "
           "naming the style 90% of the time", {"emb_lr_mult": 0.1}, style_p=0.15, style_named=0.9),
    Design("C3", "view agreement: 70% of training images are zoomed windows (V2b: 40%)",
           {"emb_lr_mult": 0.1}, zoom_p=0.7),
    Design("C4", "class-context interaction: a 4-layer text tower (two new blocks, identity at start)",
           {"emb_lr_mult": 0.1}, text_layers=4),
    Design("C5", "reach, strongly: embeddings at the full rate, held at RMS 0.006 (a quarter of V2b's context)",
           {"emb_lr_mult": 1.0, "embedding_rms": 0.006}),
    Design("C6", "class-context interaction: effects (blurry, dark, bright, black and white, pixelated; blur and "
           "pixels erase the differences within a family) on 50% of training images (V2b: 25%), a photo's "
           "caption naming its effect 90% of the time", {"emb_lr_mult": 0.1},
           effect_p=0.5, effect_named=0.9),
    Design("C7", "reach and transfer together: C5's embeddings (RMS 0.006, full rate) with C4's 4-layer text tower",
           {"emb_lr_mult": 1.0, "embedding_rms": 0.006}, text_layers=4),
    Design("C8", "reach and transfer together: C5's embeddings (RMS 0.006, full rate) with C6's named effects",
           {"emb_lr_mult": 1.0, "embedding_rms": 0.006}, effect_p=0.5, effect_named=0.9),
]}


_ALL_PREFIXES = sorted({p for v in STYLE_PREFIXES.values() for p in v} | set(world.NEUTRAL_PREFIXES)
                       | set(world.CLOSEUP_PREFIXES) | {p for v in world.EFFECT_PREFIXES.values() for p in v},
                       key=len, reverse=True)


def _renamed(cap: str, prefixes: list, rng: np.random.Generator) -> str:
    """``cap`` with its opening words replaced by one of ``prefixes``."""
    phrase = next((cap[len(p) + 1:] for p in _ALL_PREFIXES if p and cap.startswith(p + " ")), cap)
    return f"{prefixes[int(rng.integers(len(prefixes)))]} {phrase}"


def _named_captions(sc, i, u_cap, design: Design, rng: np.random.Generator):
    """``caption_and_facts`` where a sketch or a rendition names its style (``style_named``) and a photo
    with an effect names the effect (``effect_named``), with the facts those words state."""
    cap, facts = caption_and_facts(sc, i, u_cap)
    style, effect = int(sc.style[i]), int(sc.effect[i])
    if style and design.style_named and facts[5] != style and rng.random() < design.style_named:
        cap, facts = _renamed(cap, STYLE_PREFIXES[style], rng), facts[:5] + [style, -1, -1]
    elif not style and effect and design.effect_named and facts[6] != effect and rng.random() < design.effect_named:
        cap, facts = _renamed(cap, world.EFFECT_PREFIXES[effect], rng), facts[:5] + [0, effect, -1]
    return cap, facts


def render_fn(design: Design):
    """The training batches of ``design``: ``(seed, indices, difficulty) -> (images, captions, positives)``."""
    if design.style_named is None and design.effect_named is None:
        return world.render_training

    def render(seed, indices, difficulty=1.0):
        indices = list(indices)
        img8, sc, capu = world._draw("train", seed, indices, difficulty, world.IMAGE_SIZE)
        rng = np.random.default_rng([seed, indices[0], 31])
        pairs = [_named_captions(sc, i, capu[i], design, rng) for i in range(len(indices))]
        return img8, [c for c, _ in pairs], consistent(image_facts(sc), torch.tensor([f for _, f in pairs]))
    return render


def _config(design: Design) -> dict:
    from . import config_path
    cfg = json.loads(Path(config_path()).read_text())
    if design.text_layers:
        cfg["text_cfg"] = {**cfg["text_cfg"], "layers": design.text_layers}
    return cfg


def _init_state(design: Design, cfg: dict) -> dict:
    """The shipped weights, in ``cfg``'s architecture: new text blocks add nothing at the start."""
    shipped = load_state_dict()
    if not design.text_layers:
        return shipped
    from .contrastive import create_model
    model, _ = create_model(0, cfg)
    state = model.state_dict()
    state.update(shipped)
    n_old = 1 + max(int(k.split(".")[2]) for k in shipped if k.startswith("transformer.resblocks."))
    for b in range(n_old, design.text_layers):
        for k in (f"transformer.resblocks.{b}.attn.out_proj.weight", f"transformer.resblocks.{b}.attn.out_proj.bias",
                  f"transformer.resblocks.{b}.mlp.c_proj.weight", f"transformer.resblocks.{b}.mlp.c_proj.bias"):
            state[k] = torch.zeros_like(state[k])
    return state


def run(name: str, out, steps: int = STEPS, lr: float = LR, threads: int = 1, progress: bool = True) -> dict:
    """Train design ``name`` into ``out`` (weights, config, curve, design.json); returns the record."""
    from safetensors.torch import save_file

    from .contrastive import train
    from .train import export_state_dict, save_curve

    design = DESIGNS[name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config(design)
    saved = dict(profiles.SPECS)
    changes = {}
    if design.zoom_p is not None:
        changes["zoom_p"] = design.zoom_p
    if design.style_p is not None:
        changes["style"] = (1.0 - 2 * design.style_p, design.style_p, design.style_p)
    if design.effect_p is not None:
        changes["effect"] = (1.0 - design.effect_p, *[design.effect_p / 5] * 5)
    if changes:
        profiles.SPECS["train"] = dataclasses.replace(profiles.SPECS["train"], **changes)
    t0 = time.time()
    try:
        model, tok, curve = train(seed=DATA_SEED, steps=steps, lr=lr, threads=threads, progress=progress,
                                  model_cfg=cfg, init_state=_init_state(design, cfg), curriculum=False,
                                  render_fn=render_fn(design), **design.train)
    finally:
        profiles.SPECS.clear()
        profiles.SPECS.update(saved)
    save_file(export_state_dict(model, tok), str(out / "micro_clip.safetensors"))
    if design.text_layers:    # another architecture: also the plain open_clip checkpoint that --model CONFIG loads
        save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
                   for k, v in model.state_dict().items()}, str(out / "open_clip.safetensors"))
    (out / "micro-clip.json").write_text(json.dumps(cfg, indent=1))
    save_curve(curve, out)
    record = {**dataclasses.asdict(design), "steps": steps, "lr": lr, "data_seed": DATA_SEED, "threads": threads,
              "train_seconds": round(time.time() - t0, 1), "final_val_top1": curve[-1]["val_top1"],
              "final_logit_scale": round(curve[-1]["logit_scale"], 3)}
    (out / "design.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tptlib.micro.designs", description=__doc__.split("\n")[0])
    ap.add_argument("design", choices=sorted(DESIGNS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.design, a.out, a.steps, a.lr, a.threads), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
