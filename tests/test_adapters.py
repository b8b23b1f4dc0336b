"""DPE, BoostAdapter and TPS: each against the port of its authors' code (`tptlib.reference_adapters`) on
the same features -- random streams and the micro-CLIP's own features of micro:A --, their per-dataset
settings, and the online ones' state rebuilt from their updates and resumed inside a run folder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tptlib as tpt
from test_peers import fake_clip, micro_a, random_stream  # noqa: F401
from _helpers import read_store
from test_runs import VIEWS, interrupt_at_batch
from tptlib import reference_adapters as ref
from tptlib import runs
from tptlib.methods.boostadapter import BoostAdapter, keep_latest, keep_lowest
from tptlib.methods.dpe import DPE
from tptlib.methods.online import decode_update, encode_update
from tptlib.methods.tps import TPS, TPSText

NEGATIVE = {"shot_capacity": 2, "alpha": 0.117, "beta": 1.0, "entropy_threshold": {"lower": 0.2, "upper": 0.5},
            "mask_threshold": {"lower": 0.03, "upper": 1.0}}


def dpe_reference_for(method: DPE, classes: torch.Tensor, scale: float) -> ref.DPEReference:
    return ref.DPEReference(classes.T.clone(), {"shot_capacity": method.capacity, "alpha": method.alpha,
                                                "beta": method.beta},
                            {"text": method.lr, "image": method.lr, "align": method.align}, scale=scale,
                            multiview=method.multiview, final_all_views=method.final_multiview)


def boost_reference_for(method: BoostAdapter, classes: torch.Tensor, scale: float) -> ref.BoostAdapterReference:
    return ref.BoostAdapterReference(classes.T, {"shot_capacity": method.pos_capacity, "alpha": method.pos_alpha,
                                                 "beta": method.pos_beta}, NEGATIVE, delta=method.delta, scale=scale,
                                     infer_ori_image=not method.multiview)


def check_stream(method, authors, feats: torch.Tensor, classes: torch.Tensor, tol: float):
    """Run `method` over the stream and the authors' port sample by sample: the same predictions, logits
    within `tol`. Returns the method's state."""
    clip, views = fake_clip(20.0), method.views_used(feats.shape[1])
    state = method.init_state(classes)
    out = method.run_online(clip, classes, state, feats[:, :views])
    for b in range(feats.shape[0]):
        r = authors.step(feats[b, :views])[0]
        assert int(out.logits[b].argmax()) == int(r.argmax())
        assert (out.logits[b] - r).abs().max() < tol
    return state


# --- DPE --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["A", "I", "DTD"])      # all views at the end / view 0 / the image alone
def test_dpe_equals_the_authors_code_over_a_stream(dataset):
    feats, classes = random_stream(60, 64, 6, seed=3, spread=0.5)
    method = DPE(dataset=dataset)
    authors = dpe_reference_for(method, classes, 20.0)
    state = check_stream(method, authors, feats, classes, 1e-4)
    assert 0 < state.n_avg == authors.num_avg < feats.shape[0], "the textual prototypes never or always evolved"
    assert (state.text - authors.clip_weights_global.T).abs().max() < 1e-5
    assert {c: len(v) for c, v in state.cache.items()} == {c: len(v) for c, v in authors.pos_cache.items()}


def test_dpe_prototypes_move_with_the_stream_and_replay_exactly():
    feats, classes = random_stream(40, 64, 5, seed=6, spread=0.5)
    method, clip = DPE(dataset="A"), fake_clip(20.0)
    live = method.init_state(classes)
    first = method.run_online(clip, classes, live, feats[:25])
    assert (live.text - classes).abs().max() > 1e-5                 # the textual prototypes evolved (lr 3e-4)
    replayed = method.init_state(classes)
    for update in first.updates:
        method.apply_update(classes, replayed, decode_update(encode_update(update)))
    assert torch.equal(live.text, replayed.text) and live.n_avg == replayed.n_avg
    rest_live = method.run_online(clip, classes, live, feats[25:])
    rest_replayed = method.run_online(clip, classes, replayed, feats[25:])
    assert torch.equal(rest_live.logits, rest_replayed.logits)


def test_dpe_settings_follow_the_task():
    a = DPE().for_dataset("A")
    assert (a.dataset, a.alpha, a.beta, a.lr, a.align, a.multiview, a.final_multiview, a.templates) == \
        ("A", 6.0, 5.0, 3e-4, 2.5, True, True, "tip7-tda")
    sketch = DPE().for_dataset("K")
    assert (sketch.alpha, sketch.beta, sketch.templates, sketch.final_multiview) == (7.0, 7.45, "openai80", False)
    assert DPE().for_dataset("Cars").templates == "dpe-cars" and DPE().for_dataset("Cars").views_used(64) == 1
    assert DPE().for_dataset(None).dataset == "other" and DPE().for_dataset(None).lr == 6e-4
    assert DPE(lr=1e-3).for_dataset("R").lr == 1e-3 and DPE().for_dataset("R").align == 0.0


# --- BoostAdapter -----------------------------------------------------------------------------

def test_boostadapter_caches_keep_the_lowest_entropies_and_the_latest_negatives():
    cache = {}
    for h in (0.5, 0.2, 0.4, 0.3, 0.9):
        keep_lowest(cache, 1, (None, h), capacity=3)
    assert [e[1] for e in cache[1]] == [0.2, 0.3, 0.4]
    fifo = {}
    for h in (0.5, 0.2, 0.4):
        keep_latest(fifo, 1, (None, h), capacity=2)
    assert [e[1] for e in fifo[1]] == [0.2, 0.4]                    # the oldest left, whatever its entropy


@pytest.mark.parametrize("dataset", ["A", "I", "DTD", "Food101"])
def test_boostadapter_equals_the_authors_code_over_a_stream(dataset):
    feats, classes = random_stream(60, 64, 6, seed=4, spread=0.5)
    method = BoostAdapter(dataset=dataset)
    assert method.views_used(64) == (1 if dataset == "I" else 64)
    authors = boost_reference_for(method, classes, 20.0)
    state = check_stream(method, authors, feats, classes, 1e-5)
    assert authors.neg_cache and state.negative, "the negative cache was never used"
    for mine, theirs in ((state.positive, authors.pos_cache), (state.negative, authors.neg_cache)):
        assert sorted(mine) == sorted(theirs)
        for c in mine:                      # the same entries in the same order (entropies up to rounding)
            assert [float(e[1]) for e in mine[c]] == pytest.approx([float(e[1]) for e in theirs[c]], rel=1e-4, abs=1e-6)


def test_boosting_changes_the_prediction_and_the_state_replays():
    feats, classes = random_stream(30, 64, 5, seed=7, spread=0.6)
    clip = fake_clip(20.0)
    boost, plain = BoostAdapter(dataset="A"), BoostAdapter(dataset="A", boost_views=False)
    assert (boost.run(clip, classes, feats).logits - plain.run(clip, classes, feats).logits).abs().max() > 1e-2
    live = boost.init_state(classes)
    first = boost.run_online(clip, classes, live, feats[:20])
    replayed = boost.init_state(classes)
    for update in first.updates:
        boost.apply_update(classes, replayed, decode_update(encode_update(update)))
    assert torch.equal(boost.run_online(clip, classes, live, feats[20:]).logits,
                       boost.run_online(clip, classes, replayed, feats[20:]).logits)


def test_boostadapter_settings_follow_the_task():
    a = BoostAdapter().for_dataset("A")
    assert (a.dataset, a.pos_alpha, a.pos_beta, a.delta, a.multiview, a.boost_views) == ("A", 2.0, 5.0, 3, True, True)
    i = BoostAdapter().for_dataset("I")
    assert (i.delta, i.boost_views, i.views_used(64)) == (0, False, 1)
    cars = BoostAdapter().for_dataset("Cars")
    assert (cars.delta, cars.multiview, cars.views_used(64), cars.templates) == (3, False, 64, "tip7-tda")
    other = BoostAdapter().for_dataset(None)
    assert (other.dataset, other.pos_alpha, other.delta, other.boost_views) == ("other", 2.0, 0, True)
    assert BoostAdapter(delta=5).for_dataset("A").delta == 5


# --- TPS --------------------------------------------------------------------------------------

def tps_text(prototypes: torch.Tensor) -> TPSText:
    return TPSText(prototypes=prototypes, normalised=F.normalize(prototypes, dim=-1))


@pytest.mark.parametrize("steps", [1, 3])
def test_tps_equals_the_authors_code(steps):
    feats, classes = random_stream(12, 64, 7, seed=5, spread=0.5)
    prototypes = classes * torch.linspace(0.5, 1.5, 7).unsqueeze(1)      # unnormalised, as their cached means
    # scale 20: at 50 these random views are so confident that some gradient entries are float noise, which
    # Adam's first step (about lr * sign(gradient)) turns into whole steps either way
    method, clip = TPS(steps=steps), fake_clip(20.0)
    out = method.run(clip, tps_text(prototypes), feats)
    assert (out.logits - out.logits_before).abs().max() > 0.1            # the shift moved the prediction
    for b in range(feats.shape[0]):
        r = ref.TPSReference(prototypes, clip.model.logit_scale, tta_steps=steps).predict(feats[b])[0]
        assert int(out.logits[b].argmax()) == int(r.argmax())
        assert (out.logits[b] - r).abs().max() < 1e-4


def test_tps_first_loss_is_the_marginal_entropy_of_the_kept_views():
    feats, classes = random_stream(3, 64, 4, seed=8)
    out = TPS().run(fake_clip(50.0), tps_text(classes), feats)
    for b in range(3):
        logits = 50.0 * feats[b] @ classes.T
        assert out.kept[b].tolist() == torch.argsort(tpt.entropy(logits))[:6].tolist()
        assert float(out.loss[b]) == pytest.approx(float(tpt.marginal_entropy(logits[out.kept[b]])), abs=1e-5)


def test_tps_descriptors_average_with_the_templates(tiny, classnames, tmp_path):
    import json
    table = {c: ["a long tail", "has stripes"] for c in classnames}
    path = tmp_path / "descriptors.json"
    path.write_text(json.dumps(table))
    plain, described = TPS().prepare(tiny, classnames), TPS(descriptors=str(path)).prepare(tiny, classnames)
    assert (plain.prototypes - described.prototypes).abs().max() > 1e-4
    with pytest.raises(ValueError, match="no descriptors for 1 classes"):
        path.write_text(json.dumps({c: ["x"] for c in classnames[1:]}))
        TPS(descriptors=str(path)).prepare(tiny, classnames)


# --- the registry and the micro-CLIP's features ------------------------------------------------

def test_the_new_methods_are_listed_with_their_kinds():
    from tptlib.methods.registry import listing
    kinds = {row["name"]: row for row in listing()}
    assert (kinds["dpe"]["kind"], kinds["boostadapter"]["kind"], kinds["tps"]["kind"]) == ("online", "online",
                                                                                           "episodic")
    assert {"alpha", "lr", "align"} <= set(kinds["dpe"]["per_dataset"])
    assert "delta" in kinds["boostadapter"]["per_dataset"]
    with pytest.raises(ValueError, match="takes no parameter"):
        tpt.make_method("tps", delta=1)


@pytest.mark.slow
def test_each_new_method_equals_its_authors_code_on_micro_features(micro_a):  # noqa: F811
    clip, task, feats = micro_a
    for method, port, tol in ((DPE(), dpe_reference_for, 1e-3), (BoostAdapter(), boost_reference_for, 1e-4)):
        method = method.for_task(task)
        prepared = method.prepare(clip, task.classnames)
        out = method.run_online(clip, prepared, method.init_state(prepared), feats)
        authors = port(method, prepared, clip.logit_scale)
        theirs = torch.stack([authors.step(feats[b])[0] for b in range(len(feats))])
        assert theirs.argmax(1).tolist() == out.logits.argmax(1).tolist(), method.name
        assert (theirs - out.logits).abs().max() < tol, method.name
    tps = TPS()
    prepared = tps.prepare(clip, task.classnames)
    out = tps.run(clip, prepared, feats)
    theirs = torch.stack([ref.TPSReference(prepared.prototypes, clip.model.logit_scale.detach()).predict(feats[b])[0]
                          for b in range(len(feats))])
    assert theirs.argmax(1).tolist() == out.logits.argmax(1).tolist()


# --- resumed inside a run folder ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method", [DPE(dataset="A", selection_p=0.25), BoostAdapter(dataset="A", selection_p=0.25)],
                         ids=["dpe", "boostadapter"])
def test_an_interrupted_run_resumes_to_the_uninterrupted_records(method, clip, task, tmp_path):  # noqa: F811
    reference = runs.evaluate(clip, task, method, tmp_path / "whole", n_views=VIEWS, batch_size=3, progress=False)
    with pytest.raises(KeyboardInterrupt):
        runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False,
                      on_batch=interrupt_at_batch(3))
    assert len(runs.load_run(tmp_path / "run").records) == 6
    runs.evaluate(clip, task, method, tmp_path / "run", n_views=VIEWS, batch_size=3, progress=False)
    assert read_store(tmp_path / "run" / "records.sqlite") == read_store(reference.out / "records.sqlite")
    assert math.isfinite(reference.summary["ece"])
