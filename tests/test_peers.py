"""The peers of TPT (ZERO, C-TPT, MTA, TDA, DMN-ZS): hand-made features with a known answer, and each
method against the one-sample port of its authors' code (`tptlib.reference_peers`) on the same features,
sample by sample."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import tptlib as tpt
from tptlib import reference_peers as ref
from tptlib.methods.dmn import DMN, DMNText
from tptlib.methods.tda import TDA, update_cache
from tptlib.methods.zero import ZERO

D = 16


def fake_clip(scale: float = 100.0) -> SimpleNamespace:
    """What the training-free methods read from a Clip: the logit scale (parameter and its exp)."""
    param = torch.tensor(math.log(scale))
    return SimpleNamespace(model=SimpleNamespace(logit_scale=param), logit_scale=float(param.exp()))


def basis(i: int, d: int = D) -> torch.Tensor:
    return F.one_hot(torch.tensor(i), d).float()


def view_voting(c: int, t: float) -> torch.Tensor:
    """A view feature whose cosine with class c is t/sqrt(t^2+1) and 0 with the others (class features
    are the first basis vectors; the last dimension is off-class): larger t, more confident."""
    return F.normalize(t * basis(c) + basis(D - 1), dim=0)


def class_feats(n: int) -> torch.Tensor:
    return torch.stack([basis(c) for c in range(n)])


def random_stream(n: int, v: int, c: int, seed: int, spread: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of n samples with v views clustered around random class directions, and class features."""
    g = torch.Generator().manual_seed(seed)
    classes = F.normalize(torch.randn(c, D, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    centre = classes[labels] + 0.8 * torch.randn(n, D, generator=g)
    views = centre.unsqueeze(1) + spread * torch.randn(n, v, D, generator=g)
    return F.normalize(views, dim=-1), classes


# --- ZERO -------------------------------------------------------------------------------------

def test_zero_tie_is_broken_by_the_next_most_confident_view():
    # 10 views, gamma 0.4 keeps 4: two vote class 0, two class 1 -> a tie; the fifth most confident
    # view (not kept) votes class 1, so class 1 wins and gets the +1
    votes = [(0, 9.0), (1, 8.0), (0, 7.0), (1, 6.5), (1, 5.0), (0, 4.0), (2, 3.0), (2, 2.5), (2, 2.0), (0, 1.5)]
    feats = torch.stack([view_voting(c, t) for c, t in votes]).unsqueeze(0)          # [1, 10, D]
    method, clip = ZERO(gamma=0.4), fake_clip()
    out = method.run(clip, class_feats(3), feats)
    shares = out.logits[0].exp()
    assert torch.allclose(shares, torch.tensor([2.0, 3.0, 0.0]) / 5, atol=1e-6)
    assert int(out.logits[0].argmax()) == 1
    assert out.kept[0].tolist() == [0, 1, 2, 3]
    expected = ref.zero_reference(feats[0], class_feats(3), clip.model.logit_scale, gamma=0.4)
    assert torch.equal(expected[0], torch.tensor([2.0, 3.0, 0.0]))


def test_zero_fallback_as_the_authors_wrote_it_and_as_meant():
    # the kept views tie between classes 1 and 2 and no other view votes for either: the authors'
    # `break_sample_tie` masks `~ties` (classes 4-1-1=2 and 4-1-2=1), so its argmax lands outside the tie
    votes = [(1, 9.0), (2, 8.0), (3, 3.0), (3, 1.0)]
    feats = torch.stack([view_voting(c, t) for c, t in votes])
    feats[2] = F.normalize(3.0 * basis(3) + 0.5 * basis(2) + basis(D - 1), dim=0)     # leans to 2 over 1
    clip = fake_clip()
    authors = ref.zero_reference(feats, class_feats(4), clip.model.logit_scale, gamma=0.5)[0]
    assert authors.tolist() == [0.0, 1.0, 1.0, 1.0]            # +1 went to class 3, outside the tie
    faithful = ZERO(gamma=0.5).run(clip, class_feats(4), feats.unsqueeze(0)).logits[0].exp() * 3
    assert torch.allclose(faithful, authors, atol=1e-6)
    meant = ZERO(gamma=0.5, faithful_fallback=False).run(clip, class_feats(4), feats.unsqueeze(0)).logits[0]
    assert int(meant.argmax()) == 2                              # the tied class the next view prefers


@pytest.mark.parametrize("templates", ["tpt", "tip7"])
def test_zero_names(templates):
    assert ZERO(templates=templates).name == ("zero" if templates == "tpt" else "zero+ensemble")


def test_zero_equals_the_authors_code_on_random_features():
    feats, classes = random_stream(40, 64, 7, seed=1)
    feats = (feats * 8).round() / 8                             # coarse features: exact ties among votes
    feats = F.normalize(feats, dim=-1)
    clip = fake_clip()
    out = ZERO().run(clip, classes, feats)
    n_ties = 0
    for b in range(feats.shape[0]):
        p_bar = ref.zero_reference(feats[b], classes, clip.model.logit_scale)[0]
        assert int(out.logits[b].argmax()) == int(p_bar.argmax())
        assert torch.allclose(out.logits[b].exp(), p_bar / p_bar.sum(), atol=1e-6)
        n_ties += int(p_bar.sum() > 19.5)
    assert n_ties > 0, "no tie was exercised"


# --- MTA --------------------------------------------------------------------------------------

def test_mta_mode_of_identical_views_is_that_view():
    view = F.normalize(torch.randn(D, generator=torch.Generator().manual_seed(0)), dim=0)
    feats = view.expand(1, 12, D).clone()
    feats[0, 1:] += 1e-4 * torch.randn(11, D, generator=torch.Generator().manual_seed(1))
    feats = F.normalize(feats, dim=-1)
    classes = class_feats(5)
    out = tpt.MTA().run(fake_clip(), classes, feats)
    assert (out.logits[0] - 100 * view @ classes.T).abs().max() < 1e-2


def test_mta_mode_follows_the_cluster_from_the_edge():
    # 20 views cluster around class 2; view 0, where the search starts, sits on the cluster's edge
    # leaning to class 0: the mode moves into the cluster, and the prediction with it
    g = torch.Generator().manual_seed(0)
    cluster = F.normalize(basis(2) + 0.3 * torch.randn(20, D, generator=g), dim=-1)
    feats = torch.cat([F.normalize(basis(2) + 1.2 * basis(0), dim=0).unsqueeze(0), cluster]).unsqueeze(0)
    out = tpt.MTA().run(fake_clip(), class_feats(4), feats)
    assert int(out.logits_before[0].argmax()) == 0 and int(out.logits[0].argmax()) == 2


def test_mta_equals_the_authors_code_on_random_features():
    feats, classes = random_stream(30, 64, 9, seed=2)
    clip = fake_clip(50.0)
    out = tpt.MTA().run(clip, classes, feats)
    for b in range(feats.shape[0]):
        r = ref.mta_reference(feats[b], classes, clip.model.logit_scale.exp())[0]
        assert int(out.logits[b].argmax()) == int(r.argmax())
        assert (out.logits[b] - r).abs().max() < 1e-4


# --- TDA --------------------------------------------------------------------------------------

def test_tda_cache_at_capacity_replaces_its_highest_entropy_entry():
    cache, feat = {}, torch.zeros(1, D)
    for h in (0.5, 0.2, 0.4):
        update_cache(cache, 7, (feat, h), capacity=3)
    assert [e[1] for e in cache[7]] == [0.2, 0.4, 0.5]
    update_cache(cache, 7, (feat, 0.3), capacity=3)               # full: 0.3 < 0.5 replaces 0.5
    assert [e[1] for e in cache[7]] == [0.2, 0.3, 0.4]
    update_cache(cache, 7, (feat, 0.9), capacity=3)               # more uncertain than the worst: ignored
    assert [e[1] for e in cache[7]] == [0.2, 0.3, 0.4]
    update_cache(cache, 1, (feat, 0.9), capacity=3)               # another class has its own room
    assert sorted(cache) == [1, 7]


def test_tda_negative_cache_takes_only_moderately_uncertain_samples():
    method = TDA(dataset="I")
    state = method.init_state(None)
    classes, clip = class_feats(4), fake_clip(10.0)
    confident = view_voting(0, 50.0).unsqueeze(0)                   # entropy near 0: positive cache only
    unsure = F.normalize(basis(0) + 0.7 * basis(1) + 0.5 * basis(2) + basis(3), dim=0).unsqueeze(0)
    method.step(clip, classes, state, confident)
    assert list(state.positive) == [0] and not state.negative
    method.step(clip, classes, state, unsure)
    loss = float(state.positive[0][-1][1] if len(state.positive[0]) > 1 else state.positive[0][0][1])
    normalised = loss / math.log2(4)
    assert (0.2 < normalised < 0.5) == bool(state.negative)


def tda_reference_for(method: TDA, classes: torch.Tensor, scale: float) -> ref.TDAReference:
    return ref.TDAReference(classes.T, {"shot_capacity": method.pos_capacity, "alpha": method.pos_alpha,
                                        "beta": method.pos_beta},
                            {"shot_capacity": method.neg_capacity, "alpha": method.neg_alpha, "beta": method.neg_beta,
                             "entropy_threshold": dict(zip(("lower", "upper"), method.entropy_window)),
                             "mask_threshold": dict(zip(("lower", "upper"), method.mask_window))}, scale=scale)


@pytest.mark.parametrize("dataset,views", [("A", 64), ("I", 1)])
def test_tda_equals_the_authors_code_over_a_stream(dataset, views):
    feats, classes = random_stream(80, views, 6, seed=3, spread=0.5)
    method = TDA(dataset=dataset)
    assert method.views_used(64) == views
    clip = fake_clip(20.0)
    state = method.init_state(classes)
    out = method.run_online(clip, classes, state, feats)
    authors = tda_reference_for(method, classes, clip.logit_scale)
    for b in range(feats.shape[0]):
        r = authors.step(feats[b])[0]
        assert int(out.logits[b].argmax()) == int(r.argmax())
        assert (out.logits[b] - r).abs().max() < 1e-5
    assert authors.neg_cache and state.negative, "the negative cache was never used"
    assert {c: len(v) for c, v in state.positive.items()} == {c: len(v) for c, v in authors.pos_cache.items()}


def test_tda_state_replayed_from_updates_equals_the_live_state():
    feats, classes = random_stream(30, 64, 5, seed=4, spread=0.5)
    method, clip = TDA(dataset="R"), fake_clip(20.0)
    live = method.init_state(classes)
    out = method.run_online(clip, classes, live, feats[:20])
    from tptlib.methods.online import decode_update, encode_update
    replayed = method.init_state(classes)
    for update in out.updates:
        method.apply_update(classes, replayed, decode_update(encode_update(update)))
    rest_live = method.run_online(clip, classes, live, feats[20:])
    rest_replayed = method.run_online(clip, classes, replayed, feats[20:])
    assert torch.equal(rest_live.logits, rest_replayed.logits)


@pytest.mark.parametrize("template_set", ["tpt", "tip7", "openai80"])
def test_ensemble_features_are_the_authors_per_class_loop_to_the_bit(tiny, classnames, template_set):
    from tptlib.methods.text import ensemble_features, templates
    from tptlib.prompts import format_classname
    template_list = templates(template_set)
    authors = []
    with torch.no_grad():
        for name in classnames:                       # the authors' loop: one class's templates at a time
            feats = tiny.model.encode_text(tiny.tokenizer([t.format(format_classname(name)) for t in template_list]))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            mean = feats.mean(dim=0)
            authors.append(mean / mean.norm())
    ours = ensemble_features(tiny, classnames, template_list)
    assert torch.equal(ours, torch.stack(authors)) and ours.is_contiguous()   # the layout sets later sums' bits


def test_a_task_carries_the_published_dataset_it_stands_for(tmp_path):
    from tptlib.data import registry
    from tptlib.data.base import Task

    registry.register_prefix("toyprofile:", lambda name, root=None: Task(f"toyprofile:{name}", ["a"], [], tmp_path),
                             "'toyprofile:<set>' for a test")
    registry.register_paper_datasets("toyprofile:", {"Sk": "K"})
    try:
        assert tpt.load_task("toyprofile:Sk").paper_dataset == "K"
        assert tpt.load_task("toyprofile:Other").paper_dataset is None
        assert TDA().for_task(tpt.load_task("toyprofile:Sk")) == TDA().for_dataset("K")
    finally:
        registry._PREFIXES.pop("toyprofile:")
        registry._PAPER_DATASETS.pop("toyprofile:")


def test_tda_settings_follow_the_task():
    sketch = TDA().for_dataset("K")
    assert (sketch.dataset, sketch.pos_alpha, sketch.pos_beta, sketch.templates, sketch.multiview) == \
        ("K", 2.363, 7.45, "openai80", True)
    assert TDA().for_dataset("DTD").templates == "coop:DTD" and not TDA().for_dataset("DTD").multiview
    other = TDA().for_dataset(None)
    assert (other.dataset, other.pos_alpha, other.pos_beta, other.multiview) == ("other", 2.0, 5.0, False)
    assert TDA(pos_alpha=1.5).for_dataset("A").pos_alpha == 1.5


# --- DMN --------------------------------------------------------------------------------------

def test_dmn_full_memory_replaces_its_most_uncertain_entry_and_drops_a_more_uncertain_sample():
    method = DMN(memory_size=2)
    text = class_feats(3)
    prepared = DMNText(text=text, classifier=text)
    state = method.init_state(prepared)

    def add(h, i):
        method.apply_update(prepared, state, {"feat": basis(i), "label": torch.tensor(0), "entropy": torch.tensor(h)})
    add(0.5, 4)
    add(0.3, 5)
    assert state.count.tolist() == [2, 0, 0]
    add(0.4, 6)                                                 # replaces the 0.5 entry
    assert sorted(state.entropy[0].tolist()) == pytest.approx([0.3, 0.4])
    assert {int(f.argmax()) for f in state.features[0]} == {5, 6}
    add(0.9, 7)                                                 # more uncertain than both: dropped
    assert {int(f.argmax()) for f in state.features[0]} == {5, 6}


def test_dmn_equals_the_authors_code_over_a_stream():
    feats, classes = random_stream(90, 32, 6, seed=5, spread=0.45)
    method, clip = DMN(dataset="A", memory_size=4), fake_clip(30.0)
    prepared = DMNText(text=classes, classifier=classes / classes.norm(dim=1, keepdim=True))
    state = method.init_state(prepared)
    out = method.run_online(clip, prepared, state, feats)
    authors = ref.DMNReference(classes, clip.model.logit_scale, memory_size=4)
    full = 0
    for b in range(feats.shape[0]):
        text_pred, memory_pred = authors.step(feats[b])
        mixed = (text_pred + method.weight * memory_pred)[0]
        assert int(out.logits[b].argmax()) == int(mixed.argmax())
        assert (out.logits[b].exp() * (1 + method.weight) - mixed).abs().max() < 1e-5
        full = max(full, int(authors.image_feature_count.max()))
    assert full == 4, "the memory never filled up"
    assert torch.equal(state.count, authors.image_feature_count[:, 0])


def test_dmn_settings_follow_the_task():
    assert DMN().for_dataset("A").weight == 3.0 and DMN().for_dataset("R").weight == 0.3
    assert DMN().for_dataset("DTD").templates == "coop:DTD" and DMN().for_dataset("SUN397").templates == "tip7"
    assert DMN().for_dataset(None).weight == 1.0
    assert DMN().views_used(64) == 32


# --- C-TPT ------------------------------------------------------------------------------------

def test_ctpt_with_lambda_zero_is_tpt(tiny, classnames):
    views = torch.randn(2, 16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain, _ = tpt.Engine(tiny, tpt.TPT(lr=5e-2), classnames).run_views(views)
    zero, _ = tpt.Engine(tiny, tpt.CTPT(lambda_=0.0, lr=5e-2), classnames).run_views(views)
    assert torch.equal(plain.loss, zero.loss)
    assert torch.equal(plain.logits.argmax(1), zero.logits.argmax(1))
    assert (plain.logits - zero.logits).abs().max() < 1e-3   # autograd sums a zero term: Adam's first step
    #                                                          (about lr * sign(grad)) shows float noise


def test_ctpt_spreads_the_class_features_apart(tiny, classnames):
    from tptlib.methods.ctpt import text_feature_dispersion
    from tptlib.methods.tpt_step import tune
    views = torch.randn(1, 16, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def dispersion_after(method):
        prepared = method.prepare(tiny, classnames)
        feats = tiny.encode_views(views)
        ctx = method.initial_ctx(prepared, feats)
        kept = feats[:, :4]
        tune(tiny.model, prepared.class_encoder, ctx, kept, tiny.logit_scale, steps=3, lr=5e-2, weight_decay=0.01,
             objective=method.objective)
        return float(text_feature_dispersion(prepared.class_encoder.class_features(tiny.model, ctx.detach())))
    assert dispersion_after(tpt.CTPT(lambda_=50.0)) > dispersion_after(tpt.TPT())


def test_ctpt_equals_the_authors_loop(tiny, classnames):
    views = torch.randn(3, 16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method = tpt.CTPT(lambda_=20.0, steps=2, lr=5e-2, selection_p=0.3)
    out, _ = tpt.Engine(tiny, method, classnames, batch_size=3).run_views(views)
    authors = ref.ReferenceCTPT(tiny, classnames, lambda_term=20.0, steps=2, lr=5e-2, selection_p=0.3)
    for b in range(views.shape[0]):
        r = authors.predict(views[b])
        assert out.kept[b].tolist() == r["kept"]
        assert float(out.loss[b]) == pytest.approx(r["loss"], abs=1e-4)
        assert int(out.logits[b].argmax()) == int(r["logits"].argmax())
        assert (out.logits[b] - r["logits"]).abs().max() < 1e-4


def test_ctpt_lambda_follows_the_task():
    # the authors' natural-shift script (lambda 20) runs A, V, R, K; their fine-grained script (lambda
    # 50) runs ImageNet itself and the cross-datasets (their README lists 'I' among the fine-grained sets)
    for dataset in ("A", "V", "R", "K"):
        assert tpt.CTPT().for_dataset(dataset).lambda_ == 20.0, dataset
    assert tpt.CTPT().for_dataset("I").lambda_ == 50.0
    assert tpt.CTPT().for_dataset("eurosat").lambda_ == 50.0
    assert tpt.CTPT().for_dataset(None).lambda_ == 50.0
    assert tpt.CTPT(lambda_=5.0).for_dataset("A").lambda_ == 5.0


# --- the registry -----------------------------------------------------------------------------

def test_every_peer_is_in_the_registry_with_its_kind():
    from tptlib.methods.registry import listing
    kinds = {row["name"]: row["kind"] for row in listing()}
    assert kinds == {"zeroshot": "fixed", "ensemble": "fixed", "tpt": "episodic", "tpt-coop": "episodic",
                     "tpt-cocoop": "episodic", "ctpt": "episodic", "rtpt": "episodic", "zero": "episodic", "zero-ensemble": "episodic",
                     "mta": "episodic", "tda": "online", "dmn": "online", "dpe": "online", "boostadapter": "online",
                     "tps": "episodic"}
    assert tpt.make_method("zero-ensemble").config()["templates"] == "tip7"
    with pytest.raises(ValueError, match="takes no parameter"):
        tpt.make_method("zero", lambda_=1.0)


# --- on the micro-CLIP's own features ---------------------------------------------------------

@pytest.fixture(scope="module")
def micro_a():
    """The micro-CLIP and the 64 view features of the first 16 images of micro:A."""
    clip = tpt.load_clip("micro")
    task = tpt.load_task("micro:A")
    views = torch.stack([tpt.task_views(clip, task, i) for i in range(16)])
    return clip, task, clip.encode_views(views)


@pytest.mark.slow
def test_every_peer_equals_its_authors_code_on_micro_features(micro_a):
    clip, task, feats = micro_a
    assert task.paper_dataset == "A"
    scale_param = clip.model.logit_scale.detach()
    zero = tpt.ZERO()
    out = zero.run(clip, zero.prepare(clip, task.classnames), feats)
    for b in range(len(feats)):
        p_bar = ref.zero_reference(feats[b], zero.prepare(clip, task.classnames), scale_param)[0]
        assert int(out.logits[b].argmax()) == int(p_bar.argmax())
    mta = tpt.MTA()
    out = mta.run(clip, mta.prepare(clip, task.classnames), feats)
    for b in range(len(feats)):
        r = ref.mta_reference(feats[b], mta.prepare(clip, task.classnames), scale_param.exp())[0]
        assert int(out.logits[b].argmax()) == int(r.argmax())
    tda = tpt.TDA().for_task(task)
    prepared = tda.prepare(clip, task.classnames)
    out = tda.run_online(clip, prepared, tda.init_state(prepared), feats)
    authors = tda_reference_for(tda, prepared, clip.logit_scale)
    assert [int(authors.step(feats[b])[0].argmax()) for b in range(len(feats))] == out.logits.argmax(1).tolist()
    dmn = tpt.DMN().for_task(task)
    prepared = dmn.prepare(clip, task.classnames)
    out = dmn.run_online(clip, prepared, dmn.init_state(prepared), feats[:, :32])
    authors = ref.DMNReference(prepared.text, scale_param)
    mixed = [authors.step(feats[b, :32]) for b in range(len(feats))]
    assert [int((t + dmn.weight * m).argmax()) for t, m in mixed] == out.logits.argmax(1).tolist()
