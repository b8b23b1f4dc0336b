"""The micro profile: renderer, training step, shipped weights, rendered sets."""
import json

import numpy as np
import pytest
import torch

from tptlib import micro
from tptlib.micro import sets as msets
from tptlib.micro import train as mtrain
from tptlib.micro import world


def test_render_deterministic_per_index_and_batch_independent():
    a, sa = world.render("I", 7, range(12))
    b, _ = world.render("I", 7, range(12))
    assert torch.equal(a, b)
    c, sc = world.render("I", 7, [5, 3])
    assert torch.equal(c[0], a[5]) and torch.equal(c[1], a[3])
    assert sc.label.tolist() == [sa.label[5].item(), sa.label[3].item()]
    # different indices, seeds and profiles give different images
    assert not torch.equal(a[0], a[1])
    d, _ = world.render("I", 8, range(12))
    assert not torch.equal(a, d)
    e, _ = world.render("V2", 7, range(12))
    assert not torch.equal(a, e)
    assert a.dtype == torch.uint8 and a.shape == (12, 3, world.IMAGE_SIZE, world.IMAGE_SIZE)


@pytest.mark.parametrize("profile", world.PROFILES)
def test_every_profile_renders_with_labels(profile):
    img, sc, caps = world.render(profile, 0, range(16), with_captions=True)
    assert img.shape[0] == 16 and len(caps) == 16
    assert sc.label.min() >= 0 and sc.label.max() < len(world.SHAPES)
    assert (sc.count >= 1).all()
    for cap, lab in zip(caps, sc.label.tolist()):        # captions always name the shape
        assert world.SHAPES[lab] in cap or world.SHAPE_PLURALS[lab] in cap


def test_captions_name_other_attributes_rarely():
    _, sc, caps = world.render("I", 0, range(400), with_captions=True)
    with_colour = sum(any(f" {c} " in f" {x} " for c in world.COLOURS) for x in caps) / len(caps)
    assert 0.1 < with_colour < 0.4


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model, tok, curve, _ = mtrain.train(seed=0, steps=10, batch_size=32, lr=2e-3, warmup=1,
                                        eval_every=10 ** 6, eval_n=8, progress=False, threads=None)
    losses = [r["loss"] for r in curve]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # the returned model carries the full token table, unused rows exactly zero
    emb = model.token_embedding.weight
    used = mtrain.used_token_ids(tok)
    mask = torch.ones(emb.shape[0], dtype=torch.bool)
    mask[used] = False
    assert emb.shape[0] == 49408 and emb[mask].abs().max() == 0


def test_training_is_deterministic_given_seed():
    kw = dict(seed=3, steps=2, batch_size=16, eval_every=10 ** 6, eval_n=4, progress=False, threads=None)
    a = mtrain.train(**kw)[0].state_dict()
    b = mtrain.train(**kw)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_caption_consistency_targets():
    img, caps, pos = world.render_training(0, range(64))
    assert pos.diagonal().all()
    _, sc = world.render("train", 0, range(64))
    # a caption is never true of an image of another shape
    assert not (pos & (sc.label[:, None] != sc.label[None, :])).any()


def test_shipped_weights_match_manifest_and_load():
    import open_clip

    man = micro.manifest()
    assert mtrain.sha256(micro.weights_path()) == man["sha256"]
    assert mtrain.tensors_sha256(micro.weights_path()) == man["tensors_sha256"]
    assert micro.weights_path().stat().st_size <= 10 * 1024 * 1024
    assert man["data_version"] == world.DATA_VERSION
    assert man["config"] == json.loads(micro.config_path().read_text())
    open_clip.add_model_config(micro.config_path())
    model = open_clip.create_model(micro.MODEL_NAME, pretrained=None)
    res = model.load_state_dict(micro.load_state_dict(), strict=True)
    assert not res.missing_keys and not res.unexpected_keys
    tok = open_clip.get_tokenizer(micro.MODEL_NAME)
    assert tok(["a photo of a star."]).shape == (1, 20)
    assert man["accuracies"]["I"]["n"] >= 1000


def test_micro_task_renders_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    task = msets.micro_task("I", n=60)
    root = tmp_path / "micro" / world.DATA_VERSION / "I-n60"
    assert task.root == root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(world.SHAPES)
    assert len(task) == 60 and task.classnames == world.SHAPES
    assert not task.augmix and task.min_crop_scale == msets.MIN_CROP_SCALE
    # files hold exactly the rendered pixels, labels match the renderer
    idx = task.meta["world_index"]
    img, sc = world.render("I", msets.SETS["I"].seed, idx[:5])
    for k in range(5):
        pil = task.load_image(k)
        assert torch.equal(torch.from_numpy(np.array(pil)).permute(2, 0, 1), img[k])
        assert task.samples[k][1] == sc.label[k].item()
    per_class = {c: len(list((root / c).glob("*.png"))) for c in world.SHAPES}
    assert sum(per_class.values()) == 60
    # a second call reads the cache (no re-render)
    stamp = (root / "set.json").stat().st_mtime_ns
    again = msets.micro_task("I", n=60)
    assert (root / "set.json").stat().st_mtime_ns == stamp and len(again) == 60
    # an edited renderer (same DATA_VERSION) renders the set again instead of serving old images
    assert json.loads((root / "set.json").read_text())["renderer"] == msets.renderer_digest()
    monkeypatch.setattr(msets, "renderer_digest", lambda: "edited-renderer")
    msets.micro_task("I", n=60)
    assert json.loads((root / "set.json").read_text())["renderer"] == "edited-renderer"
    assert (root / "set.json").stat().st_mtime_ns != stamp


def test_micro_tasks_refuse_options_of_real_datasets(tmp_path, monkeypatch, capsys):
    from tptlib import cli, load_task
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    with pytest.raises(TypeError, match=r"micro:A.*\['split_dir'\]"):
        load_task("micro:A", split_dir=tmp_path)
    status = cli.main(["eval", "--task", "micro:Count", "--split-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert status == 2 and "micro sets accept none" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "micro").exists()    # refused before any work


def test_cross_task_split_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    task = msets.micro_task("Count", n=50)
    split = json.loads((task.root / "split_micro_Count.json").read_text())
    assert len(split["test"]) == 50 and task.augmix
    assert task.classnames == world.COUNTS
    for rel, label, cname in split["test"][:5]:
        assert (task.root / "images" / rel).is_file() and world.COUNTS[label] == cname
