"""Text the runs of one process share: token rows and class features, computed once.

    clip.tokenizer = MemoTokenizer(open_clip.get_tokenizer(name))   # what `load_clip` hands out
    feats = remembered(clip, ("ensemble", "openai", 10), classnames, compute)

A notebook runs a dozen methods on a dozen tasks: the same 80 templates on ImageNet's 1000 class
names are tokenized and encoded by the prompt ensemble, then again by TPS, and again on ImageNet-V2
and -Sketch, which share ImageNet's names. Tokenizing is most of that cost (open_clip's tokenizer
cleans each text with ftfy before its BPE), so both are kept here for the process:

- `MemoTokenizer` keeps the token row of every text it has tokenized. open_clip's tokenizers
  (CLIP's BPE and the Hugging Face ones, padded to the context length) encode each text on its
  own, so a text's row does not depend on the batch it came in with, and the memo returns exactly
  what the tokenizer returns (`tests/test_textmemo.py`).
- `remembered` keeps a class-feature tensor per model, key and class list. The key says how the
  features were computed (template set, batching); the model's weights are part of it through
  their version counters, which torch increments at every in-place change (`load_state_dict`,
  `copy_`, an optimiser step), so features of changed weights are computed again.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

#: token rows kept per tokenizer before the memo starts again (ImageNet's 1000 names x 80 templates
#: is 80,000 rows: about 25 MB as int32 at CLIP's context length 77)
MAX_TEXTS = 1 << 17
#: class-feature tensors kept per model
MAX_FEATURES = 64


class MemoTokenizer:
    """`tokenizer(texts)` with every text's row remembered; other attributes are the tokenizer's."""

    def __init__(self, tokenizer: Callable, max_texts: int = MAX_TEXTS):
        self.tokenizer = tokenizer
        self.max_texts = max_texts
        self._rows: dict[tuple[str, int | None], torch.Tensor] = {}
        self._dtype = None

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return self._tokenize(texts, context_length)
        unique = list(dict.fromkeys(texts))
        missing = [t for t in unique if (t, context_length) not in self._rows]
        if len(self._rows) + len(missing) > self.max_texts:
            self._rows.clear()                   # start again, keeping this call's texts
            missing = unique
        if missing:
            rows = self._tokenize(missing, context_length)
            self._dtype = rows.dtype
            for text, row in zip(missing, rows.to(torch.int32)):
                self._rows[(text, context_length)] = row
        return torch.stack([self._rows[(t, context_length)] for t in texts]).to(self._dtype)

    def _tokenize(self, texts: list[str], context_length: int | None) -> torch.Tensor:
        """The tokenizer itself (its own default context length unless one is given)."""
        if context_length is None:
            return self.tokenizer(texts)
        return self.tokenizer(texts, context_length=context_length)

    def __getattr__(self, name):
        if name == "tokenizer":             # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __repr__(self) -> str:
        return f"MemoTokenizer({self.tokenizer!r}, {len(self._rows)} texts)"


_FEATURES: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def weights_version(model: torch.nn.Module) -> tuple:
    """The version counters of the model's parameters and buffers: another tuple once any changed in place."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


def remembered(clip, key: tuple, classnames, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`compute()`, the class features `[C, D]` of `classnames` computed as `key` says, once per
    model, weights, device, key and class list in this process (a clone is returned, so a caller
    may change it in place)."""
    store = _FEATURES.setdefault(clip.model, {})
    full = (weights_version(clip.model), str(clip.device), clip.precision, key, tuple(classnames))
    if full not in store:
        if len(store) >= MAX_FEATURES:
            store.clear()
        store[full] = compute().detach()
    return store[full].clone()
