"""Fixtures shared by the test files, and what the markers mean.

Markers (pyproject.toml): `notebooks` - starts a Jupyter kernel (a notebook run through papermill);
`slow` - seconds to a minute of work without a kernel (every test on the real RN50 or ViT-B/16
architecture, the `rn50` and `vitb16` fixtures, is marked so here, whether it takes the fixture
or a parameter that names it). `make test` runs everything, in two processes
(pytest-xdist, `--dist loadfile`: the tests of one file stay in one process, in order);
`make test-fast` deselects both markers.

The model fixtures: `tiny` and `tiny_vit` (tiny open_clip CLIPs, `_helpers.tiny_clip`), `rn50` and
`vitb16` (the real architectures, seeded random weights); `weights` and `clip` (the micro-CLIP
architecture with seeded random weights, as a safetensors file and loaded). `data_root` and `task`:
a fake EuroSAT of `EUROSAT_SAMPLES` images (a module constant, default 12; `EUROSAT_CORRUPT`: the
samples stored truncated), one per test module.
"""
import os

import pytest
import torch

from _helpers import make_eurosat, random_micro_weights, tiny_clip

os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two processes on two cores: one thread each, the kernels they start included
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

CLASSNAMES = ["goldfish", "great white shark", "hammerhead shark", "tench", "american black bear",
              "red-breasted merganser", "toy poodle"]


def pytest_collection_modifyitems(items):
    """The tests that start kernels first, then the slow ones (stable). Under xdist (`make test`:
    `--dist loadfile --no-loadscope-reorder`) files go to the processes in the order of their first
    test, so the longest work starts at once and the short tests fill in at the end instead of
    leaving one process waiting behind the other."""
    real = {"rn50", "vitb16"}
    for item in items:     # the real architectures (seconds per test on a CPU) are slow wherever they are used
        spec = getattr(item, "callspec", None)
        named = {v for v in spec.params.values() if isinstance(v, str)} if spec else set()
        if real & (set(getattr(item, "fixturenames", ())) | named):        # as a fixture or a fixture's name
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: (item.get_closest_marker("notebooks") is None, item.get_closest_marker("slow") is None))


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
    return tiny_clip("resnet")


@pytest.fixture(scope="session")
def tiny_vit():
    """A small open_clip CLIP with a ViT image tower (class-token pooling), 32 px."""
    return tiny_clip("vit")


@pytest.fixture(scope="session")
def classnames():
    return list(CLASSNAMES)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """The micro-CLIP architecture with seeded random weights, as a safetensors file."""
    return random_micro_weights(tmp_path_factory.mktemp("weights") / "micro_random.safetensors")


@pytest.fixture(scope="session")
def clip(weights):
    """`weights` loaded (fast on a CPU; the runs test bookkeeping, not accuracy)."""
    import tptlib as tpt
    return tpt.load_clip("micro", pretrained=str(weights))


@pytest.fixture(scope="module")
def data_root(request, tmp_path_factory):
    """A fake EuroSAT of the test module's EUROSAT_SAMPLES images (default 12), EUROSAT_CORRUPT truncated."""
    return make_eurosat(tmp_path_factory.mktemp("data"), n=getattr(request.module, "EUROSAT_SAMPLES", 12),
                        corrupt=getattr(request.module, "EUROSAT_CORRUPT", ()))


@pytest.fixture(scope="module")
def task(data_root):
    from tptlib.data import load_task
    return load_task("eurosat", data_root)
