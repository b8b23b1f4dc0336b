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


@pytest.mark.slow
def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    model, tok, curve = mtrain.train(seed=0, steps=10, batch_size=32, lr=2e-3, warmup=1,
                                     eval_every=10 ** 6, eval_n=8, progress=False, threads=None)
    losses = [r["loss"] for r in curve]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    # the returned model carries the full token table, unused rows exactly zero
    emb = model.token_embedding.weight
    used = mtrain.used_token_ids(tok)
    mask = torch.ones(emb.shape[0], dtype=torch.bool)
    mask[used] = False
    assert emb.shape[0] == 49408 and emb[mask].abs().max() == 0


@pytest.mark.slow
def test_training_is_deterministic_given_seed():
    kw = dict(seed=3, steps=2, batch_size=16, eval_every=10 ** 6, eval_n=4, progress=False, threads=None)
    a = mtrain.train(**kw)[0].state_dict()
    b = mtrain.train(**kw)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_profiles_differ_only_by_their_specs():
    from dataclasses import replace

    from tptlib.micro import profiles
    assert world.PROFILES == list(profiles.SPECS) and world.PROFILES[0] == "train"
    assert [p for p, sp in profiles.SPECS.items() if sp.zoom_p > 0] == ["train"]
    with pytest.raises(KeyError, match="unknown micro world profile 'nope'.*train, I, V2"):
        world.sample_scene("nope", torch.rand(2, world.N_COLS - 8))
    # a field of the spec is what the profile does: V2 without its rotation range draws I's rotations
    u = world.sample_uniforms("V2", 0, range(64))[:, :-8]
    wide = world.sample_scene("V2", u).rot.abs().max()
    profiles.SPECS["V2"] = replace(profiles.SPECS["V2"], rotation_deg=25.0)
    try:
        narrow = world.sample_scene("V2", u).rot.abs().max()
    finally:
        profiles.SPECS["V2"] = replace(profiles.SPECS["V2"], rotation_deg=50.0)
    assert narrow <= np.radians(25.0) + 1e-6 < np.radians(40.0) < wide


def test_renderer_digest_covers_every_module_the_world_imports(tmp_path):
    import ast
    import shutil
    from pathlib import Path

    here = Path(world.__file__).parent
    seen, todo = set(), ["world"]
    while todo:                                     # the micro modules world.py reaches, at any depth
        name = todo.pop()
        seen.add(name)
        for node in ast.walk(ast.parse((here / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                todo += [n for n in names if n not in seen and (here / f"{n}.py").is_file()]
    assert seen == set(world.RENDERER_MODULES)
    for name in world.RENDERER_MODULES:
        shutil.copy(here / f"{name}.py", tmp_path / f"{name}.py")
    assert world.renderer_digest(tmp_path) == world.renderer_digest() == msets.renderer_digest()
    (tmp_path / "layout.py").write_text((here / "layout.py").read_text() + "\n# edited\n")
    assert world.renderer_digest(tmp_path) != world.renderer_digest()


@pytest.mark.slow
def test_continued_training_starts_from_the_given_state():
    """``train(init_state=...)`` starts from that state: at lr 0 its parameters end there (used token
    rows; batch-norm statistics follow the new batches)."""
    kw = dict(steps=1, batch_size=8, eval_every=10 ** 6, eval_n=4, progress=False, threads=None)
    first = mtrain.train(seed=3, **kw)[0].state_dict()
    again, tok, curve = mtrain.train(seed=4, lr=0.0, init_state=first, curriculum=False, **kw)
    used = mtrain.used_token_ids(tok)
    for k, v in again.named_parameters():
        a, b = (v[used], first[k][used]) if k == "token_embedding.weight" else (v, first[k])
        assert torch.equal(a, b), k
    assert curve[0]["hard_share"] == 1.0
    fresh = mtrain.train(seed=4, lr=0.0, **kw)[0].state_dict()
    assert not torch.equal(fresh["text_projection"], first["text_projection"])


def test_caption_consistency_targets():
    img, caps, pos = world.render_training(0, range(64))
    assert pos.diagonal().all()
    _, sc = world.render("train", 0, range(64))
    # a caption is never true of an image of another shape
    assert not (pos & (sc.label[:, None] != sc.label[None, :])).any()


def test_caption_prefixes_name_what_the_image_is():
    _, sc, caps = world.render("train", 4, range(600), with_captions=True)
    style, effect = sc.style.tolist(), sc.effect.tolist()
    said = lambda prefixes, cap: any(cap.startswith(p + " ") for p in prefixes)  # noqa: E731
    for cap, st, ef in zip(caps, style, effect):
        if said(world.STYLE_PREFIXES[1], cap):
            assert st == 1, cap                    # "a sketch of ..." only for sketches
        if said(world.STYLE_PREFIXES[2], cap):
            assert st == 2, cap
        if said(world.STYLE_PREFIXES[0] + world.CLOSEUP_PREFIXES, cap) or "photo of" in cap:
            assert st == 0, cap                    # "a photo of ..." never for a sketch or a rendition
        for code, prefixes in world.EFFECT_PREFIXES.items():
            if said(prefixes, cap):
                assert ef == code, cap
    # every style and every effect occurs, the styles at low rates
    assert set(style) == {0, 1, 2} and set(effect) == set(range(len(world.EFFECTS)))
    assert 0.75 < style.count(0) / len(style) < 0.97
    # a photo caption is not a positive for a sketch of the same shape
    facts = world.image_facts(sc)
    photo = torch.tensor([[int(sc.label[0]), -1, -1, -1, -1, 0, -1, -1]])
    assert not world.consistent(facts[sc.style == 1], photo).any()


def test_rendering_does_not_depend_on_resolution():
    """A scene rendered at 96 px and reduced to 48 px is the scene rendered at 48 px (up to edges)."""
    small, _ = world.render("I", 3, range(24), size=48)
    big, _ = world.render("I", 3, range(24), size=96)
    reduced = torch.nn.functional.avg_pool2d(big.float(), 2)
    diff = (reduced - small.float()).abs()
    assert diff.mean() < 6 and diff.median() < 2            # 0-255 scale: edges and patterns differ slightly


def test_training_zooms_into_windows_that_keep_the_label():
    u = world.sample_uniforms("train", 5, range(400))
    sc = world.sample_scene("train", u[:, :-8])
    zoomed = sc.win_s < 1
    assert 0.2 < zoomed.float().mean() < 0.5                # ZOOM_P of the full-difficulty scenes
    w = sc.win_s * world.IMAGE_SIZE
    inside = ((sc.cx >= sc.win_x0[:, None]) & (sc.cx < (sc.win_x0 + w)[:, None])
              & (sc.cy >= sc.win_y0[:, None]) & (sc.cy < (sc.win_y0 + w)[:, None]))
    assert (inside & sc.is_target).any(1)[zoomed].all()     # a target's centre is always in the window
    assert ((sc.win_x0 >= 0) & (sc.win_x0 + w <= world.IMAGE_SIZE + 1e-4)).all()
    # the test profiles show whole scenes
    for profile in ("I", "V2", "A"):
        assert (world.sample_scene(profile, world.sample_uniforms(profile, 5, range(50))[:, :-8]).win_s == 1).all()


def test_effects_do_what_their_names_say():
    u = world.sample_uniforms("I", 6, range(300))
    sc = world.sample_scene("I", u[:, :-8])
    img = world.render_scene(sc).float()
    grey = sc.effect == world.EFFECTS.index("black and white")
    assert grey.any() and (img[grey].std(1) < 1e-6).all()           # R = G = B
    dark = sc.effect == world.EFFECTS.index("dark")
    assert dark.any() and img[dark].amax((1, 2, 3)).max() <= 0.551
    bright = sc.effect == world.EFFECTS.index("bright")
    assert bright.any() and img[bright].amin((1, 2, 3)).min() >= 0.449


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
    # micro:A was filtered against another model: a ViT, where the micro-CLIP's image tower is a ResNet
    filt = man["A_filter"]
    assert isinstance(filt["filter_model"]["vision_cfg"]["layers"], int)
    assert isinstance(man["config"]["vision_cfg"]["layers"], list)
    assert man["accuracies"]["A"]["n"] == len(filt["kept"]) and man["accuracies"]["A-dev"]["n"] == len(filt["kept_dev"])
    assert set(filt["kept"]) <= set(range(filt["pool_size"]))


def test_caption_words_all_have_trained_token_rows():
    """Every word of a caption (and the zero-shot prompt) has a token row in the shipped table."""
    tok = mtrain.create_model(None)[1]
    rows = micro.load_state_dict()["token_embedding.weight"].abs().sum(1) > 0
    _, _, caps = world.render("train", 0, range(200), with_captions=True)
    ids = tok(caps + [mtrain.ZS_TEMPLATE.format(c) for c in world.SHAPES]).unique()
    assert rows[ids[ids != 0]].all()                          # 0 is padding


def test_micro_task_renders_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    task = msets.micro_task("I", n=60)
    root = tmp_path / "micro" / world.DATA_VERSION / "I-n60"
    assert task.root == root
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(world.SHAPES)
    assert len(task) == 60 and task.classnames == world.SHAPES
    assert not task.augmix and task.min_crop_scale == msets.MIN_CROP_SCALE
    # files hold exactly the rendered pixels, at twice the model's input size
    assert task.load_image(0).size == (world.RAW_SIZE, world.RAW_SIZE) == (2 * world.IMAGE_SIZE,) * 2
    idx = task.meta["world_index"]
    img, sc = world.render("I", msets.SETS["I"].seed, idx[:5], size=world.RAW_SIZE)
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


def test_every_set_has_a_dev_twin_with_other_images(tmp_path, monkeypatch):
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    test, dev = msets.micro_task("V2", n=8), msets.micro_task("V2-dev", n=8)
    assert dev.name == "micro:V2-dev" and dev.meta["seed"] == msets.DEV_SEED != test.meta["seed"]
    assert dev.classnames == test.classnames
    assert not np.array_equal(np.array(test.load_image(0)), np.array(dev.load_image(0)))
    assert set(msets.SETS) == {n for b in msets.MICRO_TASKS + ["A-pool"] for n in (b, f"{b}-dev")}


def test_cross_task_split_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TPTLIB_CACHE", str(tmp_path))
    task = msets.micro_task("Count", n=50)
    split = json.loads((task.root / "split_micro_Count.json").read_text())
    assert len(split["test"]) == 50 and task.augmix
    assert task.classnames == world.COUNTS
    for rel, label, cname in split["test"][:5]:
        assert (task.root / "images" / rel).is_file() and world.COUNTS[label] == cname
