"""SigLIP as a backbone: open_clip's CustomTextCLIP with a non-causal text tower that pools its last
position, a logit bias, and (in SigLIP's own configs) a Hugging Face tokenizer without a start token.

SigLIP's tokenizer cannot be loaded offline (it needs `transformers` and files from the Hugging Face hub):
`load_clip` refuses it with a clear message, and the tests build the architecture from open_clip's
ViT-B-16-SigLIP config with CLIP's tokenizer instead (the vocabulary sized to it; the config's file name
avoids "siglip", which open_clip reads as asking for SigLIP's tokenizer), and exercise the
layout without a start token with a tokenizer that drops CLIP's [SOS], as SigLIP's has none.
"""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import tptlib as tpt
from _helpers import make_eurosat
from tptlib import cli
from tptlib.prompts import build_prompt_text, start_tokens, text_tower

CLASSES = ["dog", "cat", "golden retriever", "river bank"]


def siglip_config(path: Path, tiny: bool) -> Path:
    """open_clip's ViT-B-16-SigLIP config with CLIP's tokenizer (no hf_tokenizer_name, its vocabulary);
    `tiny`: a 2-layer text tower of width 64 and a small open_clip ViT image tower (timm's SigLIP ViT
    cannot be shrunk through a config)."""
    cfg = json.loads(json.dumps(open_clip.get_model_config("ViT-B-16-SigLIP")))
    text = cfg["text_cfg"]
    text.pop("hf_tokenizer_name"), text.pop("tokenizer_kwargs")
    text["vocab_size"] = 49408
    if tiny:
        cfg["embed_dim"] = 32
        text.update(width=64, heads=2, layers=2, context_length=24)
        cfg["vision_cfg"] = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32}
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    return tpt.load_clip(str(siglip_config(tmp_path_factory.mktemp("cfg") / "sigmoid-tiny.json", tiny=True)))


class NoStartTokenizer:
    """CLIP's tokenizer without its [SOS] (the tokens shifted left, padded at the end): SigLIP's layout."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, texts):
        tokens = self.inner(texts)
        return torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)


def test_siglip_tokenizer_is_refused_with_what_it_needs():
    with pytest.raises(ValueError, match="Hugging Face tokenizer 'timm/ViT-B-16-SigLIP' cannot be loaded here"):
        tpt.load_clip("ViT-B-16-SigLIP")


def test_the_siglip_text_tower_is_read_as_such(tiny_siglip):
    tower = text_tower(tiny_siglip.model)
    assert tower.module is tiny_siglip.model.text
    assert (tower.pool, tower.causal, tower.cuttable) == ("last", False, False)
    assert float(tiny_siglip.model.logit_bias) == -10.0 and tiny_siglip.embed_dim == 32


@pytest.mark.parametrize("start", [1, 0], ids=["with-sos", "siglip-layout"])
def test_the_prompt_learner_gives_encode_text_at_the_initial_context(tiny_siglip, start):
    clip = tiny_siglip
    if start == 0:
        clip = type(clip)(**{**clip.__dict__, "tokenizer": NoStartTokenizer(clip.tokenizer)})
    assert start_tokens(clip) == start
    prompt = build_prompt_text(clip, CLASSES)
    assert prompt.n_ctx == 4 and prompt.prefix.shape[1] == start
    assert prompt.tokens.shape[1] == 24 and prompt.eot.tolist() == [23] * 4   # whole sequence, last position pooled
    ctx = prompt.init_ctx.unsqueeze(0).clone().requires_grad_(True)
    feats = prompt.class_features(clip.model, ctx)[0]
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    assert (feats - expected).abs().max() < 1e-5
    feats.sum().backward()                                          # the context reaches the pooled position
    assert ctx.grad.abs().max() > 0
    assert tpt.TPT().prepare(clip, CLASSES).encoder is None          # the CLIP fast path declines this tower


@pytest.mark.parametrize("method", ["tpt", "zeroshot", "zero", "tda", "tps"])
def test_methods_run_on_the_tiny_siglip(tiny_siglip, method):
    views = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    settings = {"tda": {"dataset": "A", "selection_p": 0.25}, "zeroshot": {}, "zero": {}}.get(method, {"selection_p": 0.25})
    made = tpt.make_method(method, **settings)
    out, _ = tpt.Engine(tiny_siglip, made, CLASSES).run_views(views)
    assert out.logits.shape == (2, 4) and torch.isfinite(out.logits).all()


@pytest.mark.slow
def test_tpt_eval_runs_tpt_and_zero_on_the_vitb16_siglip_architecture(tmp_path, capsys):
    config = siglip_config(tmp_path / "sigmoid-b16-clip-tokenizer.json", tiny=False)
    root = make_eurosat(tmp_path / "data", n=2)
    for method in ("tpt", "zero"):
        out = tmp_path / method
        args = ["eval", "--model", str(config), "--pretrained", "none", "--task", "eurosat", "--root", str(root),
                "--method", method, "--limit", "1", "--views", "2" if method == "tpt" else "4", "--out", str(out),
                "--no-progress"]                 # ZERO keeps int(0.3 * views) views: at least one
        assert cli.main(args + (["--set", "selection_p=0.5"] if method == "tpt" else [])) == 0
        text = capsys.readouterr().out
        assert f"{method} on eurosat with sigmoid-b16-clip-tokenizer (random weights)" in text
        assert "1 of 1 recorded, 0 errors" in text and "ECE" in text
