"""The library's version, and the versions of the packages a result depends on."""
from __future__ import annotations

__version__ = "0.1.0"


def versions() -> dict:
    """Versions of the packages a result depends on (printed by every notebook's first cell)."""
    import platform

    import numpy
    import open_clip
    import torch
    import torchvision
    return {"tptlib": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "open_clip": open_clip.__version__,
            "numpy": numpy.__version__, "cuda": torch.version.cuda if torch.cuda.is_available() else None}
