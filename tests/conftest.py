import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

CLASSNAMES = ["goldfish", "great white shark", "hammerhead shark", "tench", "american black bear",
              "red-breasted merganser", "toy poodle"]


@pytest.fixture(scope="session")
def rn50():
    """The real RN50 architecture with seeded random weights (no download)."""
    import tptlib as tpt
    torch.manual_seed(0)
    return tpt.load_clip("RN50", pretrained=None)


@pytest.fixture(scope="session")
def vitb16():
    import tptlib as tpt
    torch.manual_seed(0)
    return tpt.load_clip("ViT-B-16", pretrained=None)


@pytest.fixture(scope="session")
def tiny():
    """A small open_clip CLIP (ModifiedResNet image tower, 32 px) for fast algorithm tests."""
    import open_clip

    from tptlib.clip import Clip, view0_transform
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=64,
                           vision_cfg={"layers": [1, 1, 1, 1], "width": 16, "head_width": 16, "image_size": 32},
                           text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2})
    model.eval().requires_grad_(False)
    return Clip(model=model, tokenizer=open_clip.get_tokenizer("RN50"), preprocess=view0_transform(32), name="tiny",
                pretrained=None, device=torch.device("cpu"), precision="fp32", image_size=32,
                mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="session")
def classnames():
    return list(CLASSNAMES)
