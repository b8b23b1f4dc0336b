"""The shipped build of the micro-CLIP (``tpt micro build``): train, filter A, export, measure.

``build(out_dir, seed=0, steps=...)`` trains from scratch (``contrastive.train``, deterministic
given ``seed``), trains the A filter model (``FILTER``: another architecture, on another sample of
the training world), filters the ``A`` pools against it, measures zero-shot accuracy on every set
(test and dev), and writes ``micro_clip.safetensors``, ``manifest.json``, ``curve.csv`` and
``curve.png``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from pathlib import Path

import torch

from .. import metrics
from . import world
from .contrastive import (MEAN, STD, VAL_SEED, ZS_TEMPLATE, class_features, contrastive_loss,  # noqa: F401
                          create_model, image_features, lr_at, normalize, param_groups, train,
                          used_token_ids, zero_shot_predict)

DEFAULT_STEPS = 2500
DEFAULT_LR = 4e-3
#: learning-rate factor of the token and positional embeddings: they keep the scale of their
#: initialisation (RMS ~0.02 per coordinate), so the prompt context that TPT tunes is small
#: against Adam's first step (lr per coordinate), see docs/micro.md
EMB_LR_MULT = 0.1
#: alternative recipe (None: off): every token/positional row held at this RMS per coordinate
EMBEDDING_RMS = None

#: the A filter model: a ViT image tower (the micro-CLIP's is a ResNet) and a one-layer text tower,
#: trained on another sample of the training world (seed 1) for fewer steps. ImageNet-A was
#: filtered against a ResNet-50 and CLIP ViT-B/16 still gets 48% of it; a filter that is another
#: model keeps images that are hard in general without keeping only what the micro-CLIP gets wrong.
FILTER = {"seed": 1, "steps": 800,
          "vision_cfg": {"image_size": 48, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
          "text_cfg": {"layers": 1}}


def export_state_dict(model, tokenizer) -> dict:
    """The state_dict to ship: the token embedding reduced to the rows the micro world uses, floats
    stored in float16 (``load_state_dict`` returns them as float32; the manifest's accuracies are
    measured on the weights as loaded)."""
    sd = {k: (v.half() if v.is_floating_point() else v).detach().clone().contiguous()
          for k, v in model.state_dict().items()}
    used = used_token_ids(tokenizer)
    emb = sd.pop("token_embedding.weight")
    sd["token_embedding.rows"] = used.to(torch.int64)
    sd["token_embedding.weight_rows"] = emb[used].contiguous()
    return sd


def save_curve(curve, out_dir: Path):
    out_dir = Path(out_dir)
    keys = list(curve[0].keys())
    with open(out_dir / "curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(curve)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:     # matplotlib is an optional (notebooks) dependency
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["step"] for r in curve], [r["loss_ema"] for r in curve], color="C0", label="loss (EMA)")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss", color="C0")
    ax2 = ax.twinx()
    ev = [r for r in curve if r["val_top1"] != ""]
    ax2.plot([r["step"] for r in ev], [r["val_top1"] for r in ev], "o-", color="C1", label="zero-shot top-1")
    ax2.set_ylabel("zero-shot top-1 (validation)", color="C1")
    ax2.set_ylim(0, 1)
    ax.set_title("micro-CLIP training")
    fig.tight_layout()
    fig.savefig(out_dir / "curve.png", dpi=100)
    plt.close(fig)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(path) -> str:
    """A digest of the weights' tensors (names, dtypes, shapes, bytes), independent of the file header.

    The file's own sha256 also covers the safetensors header, whose metadata order is not fixed, so
    two bit-identical trainings can differ there; this digest is what `tpt micro build` reproduces.
    """
    from safetensors.torch import load_file
    h = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def filter_config() -> dict:
    """The open_clip config of the A filter model: the shipped config with ``FILTER``'s towers."""
    from . import config_path
    cfg = json.loads(Path(config_path()).read_text())
    for tower in ("vision_cfg", "text_cfg"):
        cfg[tower] = {**cfg[tower], **FILTER[tower]}
    return cfg


def build(out_dir, seed: int = 0, steps: int | None = None, batch_size: int = 128, lr: float = DEFAULT_LR,
          eval_every: int = 100, threads: int | None = 1, progress: bool = True, log=print,
          emb_lr_mult: float = EMB_LR_MULT, embedding_rms: float | None = EMBEDDING_RMS) -> dict:
    """Train the micro-CLIP and the A filter model, then ``finish``: the shipped files in ``out_dir``.

    Writes ``train_state.pt`` (both state_dicts, the curve) after training, then calls
    ``finish(out_dir)``, which can be rerun on its own. Returns the manifest.
    """
    steps = steps or DEFAULT_STEPS
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model, tokenizer, curve = train(seed=seed, steps=steps, batch_size=batch_size, lr=lr,
                                    emb_lr_mult=emb_lr_mult, embedding_rms=embedding_rms,
                                    eval_every=eval_every, threads=threads,
                                    progress=progress, log=log)
    train_seconds = time.time() - t0
    save_curve(curve, out_dir)
    log(f"A filter model: {FILTER['steps']} steps on training seed {FILTER['seed']}")
    t1 = time.time()
    filt, _, _ = train(seed=FILTER["seed"], steps=FILTER["steps"], batch_size=batch_size, lr=lr,
                       emb_lr_mult=emb_lr_mult, embedding_rms=embedding_rms, model_cfg=filter_config(), eval_every=FILTER["steps"],
                       threads=threads, progress=progress, log=log)
    torch.save({"final": model.state_dict(), "filter": filt.state_dict(), "curve": curve,
                "meta": {"seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
                         "emb_lr_mult": emb_lr_mult, "embedding_rms": embedding_rms, "train_seconds": train_seconds,
                         "filter_seconds": time.time() - t1, "threads": threads}},
               out_dir / "train_state.pt")
    return finish(out_dir, log=log)


def a_filter(filter_model, tokenizer, log=print) -> dict:
    """The pool indices of ``A-pool`` and ``A-pool-dev`` that the filter model gets wrong."""
    from . import sets as msets

    out = {}
    for pool, key in (("A-pool", "kept"), ("A-pool-dev", "kept_dev")):
        img, sc = msets.render_arrays(pool, range(msets.SETS[pool].n))
        wrong = zero_shot_predict(filter_model, tokenizer, msets.view0_images(img), world.SHAPES) != sc.label
        out[key] = wrong.nonzero(as_tuple=True)[0].tolist()
        out[f"filter_model_{key.replace('kept', 'pool')}_top1"] = round(float((~wrong).float().mean()), 4)
        log(f"A filter: {pool} {len(out[key])} of {len(wrong)} kept")
    return out


def finish(out_dir, log=print, keep_state: bool = False) -> dict:
    """From ``train_state.pt``: filter the A pools, export the weights, measure, write the manifest."""
    from safetensors.torch import save_file

    from . import MODEL_NAME, config_path
    from . import load_state_dict as _load
    from . import sets as msets

    out_dir = Path(out_dir)
    st = torch.load(out_dir / "train_state.pt", weights_only=False)
    meta, curve = st["meta"], st["curve"]
    seed, steps, batch_size = meta["seed"], meta["steps"], meta["batch_size"]
    model, tokenizer = create_model(None)
    model.load_state_dict(st["final"])
    model.eval()
    filt, _ = create_model(None, filter_config())
    filt.load_state_dict(st["filter"])
    filt.eval()
    kept = a_filter(filt, tokenizer, log=log)

    sd = export_state_dict(model, tokenizer)
    wpath = out_dir / "micro_clip.safetensors"
    save_file(sd, str(wpath), metadata={"model": MODEL_NAME, "seed": str(seed), "steps": str(steps)})

    # measure the shipped weights exactly as loaded
    final, _ = create_model(None)
    final.load_state_dict(_load(wpath))
    final.eval()
    accuracies = measure_sets(final, tokenizer, kept, log=log)
    pool = msets.SETS["A-pool"]
    manifest = {
        "model": MODEL_NAME,
        "config": json.loads(Path(config_path()).read_text()),
        "seed": seed, "steps": steps, "batch_size": batch_size, "lr": meta["lr"],
        "emb_lr_mult": meta["emb_lr_mult"],
        "data_version": world.DATA_VERSION,
        "image_size": world.IMAGE_SIZE,
        "raw_size": world.RAW_SIZE,
        "weights": wpath.name,
        "sha256": sha256(wpath),
        "tensors_sha256": tensors_sha256(wpath),
        "token_rows": int(len(sd["token_embedding.rows"])),
        "train_seconds": round(meta["train_seconds"], 1),
        "filter_seconds": round(meta["filter_seconds"], 1),
        "torch_threads": meta["threads"],
        "zero_shot_template": ZS_TEMPLATE,
        "final_val_top1": curve[-1]["val_top1"],
        "final_logit_scale": round(curve[-1]["logit_scale"], 3),
        "accuracies": accuracies,
        "A_filter": {
            "description": (f"A-pool ({pool.n} images of profile 'A', seed {pool.seed}; A-pool-dev: seed "
                            f"{msets.DEV_SEED}) filtered against a different model: a ViT image tower and a "
                            f"one-layer text tower trained for {FILTER['steps']} steps on training seed "
                            f"{FILTER['seed']} (tptlib.micro.train.FILTER); an image is kept when that "
                            f"model's zero-shot top-1 ('{ZS_TEMPLATE}') is wrong."),
            "filter_model": FILTER,
            "pool_size": pool.n,
            **kept,
        },
        "sets": {name: msets.SETS[name].describe() for name in msets.SETS},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if not keep_state:
        (out_dir / "train_state.pt").unlink()
    log(f"wrote {wpath} ({wpath.stat().st_size / 1e6:.1f} MB) and manifest.json")
    return manifest


def measure_sets(model, tokenizer, kept: dict, log=print) -> dict:
    """Zero-shot top-1 ("a photo of a {}.") of view 0 on every micro set, test and dev, with n and
    95% Wilson intervals. ``kept``: the A filter's pool indices (``a_filter``)."""
    from . import sets as msets

    accuracies = {}
    for base in msets.MICRO_TASKS + ["A-pool"]:
        for name in (base, f"{base}-dev"):
            idx = {"A": kept["kept"], "A-dev": kept["kept_dev"]}.get(name, range(msets.SETS[name].n))
            img, sc = msets.render_arrays(name, idx)
            y = msets.labels_of(name, sc)
            pred = zero_shot_predict(model, tokenizer, msets.view0_images(img), msets.SETS[name].classnames)
            ci = metrics.accuracy_ci(pred == y)
            accuracies[name] = {"n": len(y), "top1": round(ci.estimate, 4), "ci95": [round(ci.low, 4), round(ci.high, 4)],
                                "chance": round(1 / len(msets.SETS[name].classnames), 4)}
            log(f"zero-shot {name:11s} n={len(y):5d} top1={ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
    return accuracies


def main(argv=None) -> int:
    """``tpt micro build`` / ``python -m tptlib.micro.train``."""
    from . import weights_dir
    ap = argparse.ArgumentParser(prog="tpt micro build", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(weights_dir()), help="output folder (default: the package's weights/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared 2-core machine: with 2, OpenMP "
                         "threads wait on each other whenever another process holds a core)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    build(a.out, seed=a.seed, steps=a.steps, batch_size=a.batch_size, lr=a.lr, threads=a.threads,
          progress=not a.no_progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
