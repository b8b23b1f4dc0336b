"""The text memo (`tptlib.textmemo`): token rows and class features remembered in a process give
exactly what computing them again gives, and features of changed weights are computed again."""
import open_clip
import torch

from tptlib.methods.text import ensemble_features, prompt_features, templates
from tptlib.textmemo import MemoTokenizer, remembered


def test_memo_tokenizer_returns_the_tokenizers_rows_whatever_the_batch():
    raw = open_clip.get_tokenizer("ViT-B-16")
    memo = MemoTokenizer(raw)
    texts = ["a photo of a dog.", "itap of a café.", "a photo of a dog.", "  spaced   out  ", ""]
    assert torch.equal(memo(texts), raw(texts)) and memo(texts).dtype == raw(texts).dtype
    assert torch.equal(memo(texts[::-1]), raw(texts[::-1]))           # rows from the memo, another order
    assert torch.equal(memo("a photo of a dog."), raw("a photo of a dog."))
    assert torch.equal(memo(texts, context_length=12), raw(texts, context_length=12))
    assert memo([]).shape == raw([]).shape
    assert memo.context_length == raw.context_length and memo.encode("dog") == raw.encode("dog")


def test_memo_tokenizer_starts_again_when_full():
    raw = open_clip.get_tokenizer("ViT-B-16")
    memo = MemoTokenizer(raw, max_texts=3)
    for k in range(10):
        batch = [f"text {k} {j}" for j in range(2)]
        assert torch.equal(memo(batch), raw(batch))
        assert torch.equal(memo([batch[1], "again"]), raw([batch[1], "again"]))   # one known, one new: full
    assert len(memo._rows) <= 3
    many = [f"more {j}" for j in range(5)]                                     # more than it keeps at all
    assert torch.equal(memo(many), raw(many))


def test_class_features_remembered_are_those_computed_and_follow_the_weights(clip, classnames):
    tip7 = templates("tip7")
    first = ensemble_features(clip, classnames, tip7)
    again = ensemble_features(clip, classnames, tip7)
    assert torch.equal(first, again) and first.data_ptr() != again.data_ptr()   # a copy: callers may change it
    again.zero_()
    assert torch.equal(ensemble_features(clip, classnames, tip7), first)
    # the same computation by open_clip, without the memo
    fresh = open_clip.build_zero_shot_classifier(clip.model, clip.tokenizer.tokenizer, classnames, tip7,
                                                 num_classes_per_batch=1, device=clip.device, use_tqdm=False).T
    assert torch.equal(first, fresh.float().contiguous())
    proj = clip.model.text_projection
    before = prompt_features(clip, classnames)
    saved = proj.detach().clone()
    try:
        with torch.no_grad():
            proj.mul_(-1.0)                          # an in-place change of the weights
        assert torch.allclose(prompt_features(clip, classnames), -before, atol=1e-6)
        assert torch.allclose(ensemble_features(clip, classnames, tip7), -first, atol=1e-6)
    finally:
        with torch.no_grad():
            proj.copy_(saved)
    assert torch.equal(prompt_features(clip, classnames), before)


def test_remembered_keys_apart_what_was_computed_differently(clip):
    calls = []

    def compute(value):
        calls.append(value)
        return torch.full((2, 3), float(value))

    assert remembered(clip, ("k", 1), ["a", "b"], lambda: compute(1))[0, 0] == 1
    assert remembered(clip, ("k", 2), ["a", "b"], lambda: compute(2))[0, 0] == 2
    assert remembered(clip, ("k", 1), ["b", "a"], lambda: compute(3))[0, 0] == 3     # another class list
    assert remembered(clip, ("k", 1), ["a", "b"], lambda: compute(4))[0, 0] == 1
    assert calls == [1, 2, 3]
