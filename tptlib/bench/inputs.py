"""What both paths of the benchmark get: class names from ImageNet's lists and views of synthetic images."""
from __future__ import annotations


def bench_classnames(n: int) -> tuple[list[str], str]:
    """The first `n` of ImageNet-A's 200 class names (n <= 200) or of ImageNet's 1000."""
    from ..data.catalog import imagenet_classnames
    if n <= 200:
        return imagenet_classnames("A")[:n], "ImageNet-A"
    names = imagenet_classnames("I")
    if n > len(names):
        raise ValueError(f"--classes at most {len(names)} (ImageNet's classes); got {n}")
    return names[:n], "ImageNet"


def synthetic_image(index: int, seed: int):
    """A smooth random RGB image (PIL, 320x256) for sample `index`: low-resolution noise upsampled."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng([seed, index, 7])
    small = rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)
    fine = rng.integers(-24, 25, size=(256, 320, 3))
    big = np.asarray(Image.fromarray(small).resize((320, 256), Image.BICUBIC), dtype=np.int64)
    return Image.fromarray(np.clip(big + fine, 0, 255).astype(np.uint8))


def sample_views(clip, index: int, n_views: int, seed: int):
    """The views `[n_views, 3, S, S]` of synthetic image `index` for `clip`'s input size (crop + flip)."""
    from ..augment import make_views
    return make_views(synthetic_image(index, seed), index=index, seed=seed, n_views=n_views,
                      image_size=clip.image_size, augmix=False, mean=clip.mean, std=clip.std)
