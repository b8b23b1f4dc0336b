import pickle

import pytest
import torch

import tptlib as tpt
from tptlib.clip import CheckpointError


def test_random_weights_build_the_real_shapes(rn50, vitb16):
    assert rn50.image_size == 224 and vitb16.image_size == 224
    assert rn50.embed_dim == 1024 and vitb16.embed_dim == 512
    assert not any(p.requires_grad for p in vitb16.model.parameters())
    assert rn50.precision == "fp32" and rn50.logit_scale == pytest.approx(1 / 0.07, rel=1e-4)


def test_local_checkpoint_round_trip(rn50, tmp_path):
    path = tmp_path / "rn50.pt"
    torch.save(rn50.model.state_dict(), path)
    again = tpt.load_clip("RN50", pretrained=str(path))
    w = "visual.conv1.weight"
    assert torch.equal(again.model.state_dict()[w], rn50.model.state_dict()[w])


def test_checkpoint_for_another_architecture_is_refused(vitb16, tmp_path):
    path = tmp_path / "vit.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in vitb16.model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not fit the RN50 architecture") as err:
        tpt.load_clip("RN50", pretrained=str(path))
    assert "missing" in str(err.value) and "unexpected" in str(err.value)


class _NotWeights:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _NotWeights()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        tpt.load_clip("RN50", pretrained=str(path))


def test_unknown_model_tag_and_precision_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        tpt.load_clip("ViT-Q-99")
    with pytest.raises(ValueError, match="no pretrained tag"):
        tpt.load_clip("RN50", pretrained="not-a-tag")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        tpt.load_clip("RN50", precision="amp", device="cpu")
    with pytest.raises(CheckpointError, match="not found"):
        tpt.load_clip("RN50", pretrained=str(tmp_path / "missing.pt"))


def test_a_model_config_file_loads_with_the_same_random_weights_in_every_load(tmp_path):
    import torch

    import tptlib as tpt
    from _helpers import write_tiny_clip
    config = write_tiny_clip(tmp_path)
    a = tpt.load_clip(str(config))
    torch.rand(5)                                            # other draws between the loads change nothing
    b = tpt.load_clip(str(config))
    assert a.name == config.stem and a.image_size == 32
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    with pytest.raises(ValueError, match="not found"):
        tpt.load_clip(str(tmp_path / "absent.json"))
