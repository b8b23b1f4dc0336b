import numpy as np
import pytest
import torch
from PIL import Image

from tptlib.augment import AUGMIX_OPS, apply_op, make_views, random_resized_crop_params, sample_generators


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))


def test_view_zero_is_the_preprocessed_original(image):
    from tptlib.clip import view0_transform
    views = make_views(image, index=3, n_views=5, image_size=64)
    assert views.shape == (5, 3, 64, 64)
    assert torch.equal(views[0], view0_transform(64)(image))


@pytest.mark.parametrize("size, shape", [(32, (40, 50)), (64, (300, 200)), (224, (224, 224)), (48, (17, 90))])
def test_view_zero_is_open_clips_eval_transform_to_the_bit_as_the_authors_write_it(size, shape):
    from torchvision import transforms as T

    from tptlib.clip import view0_transform
    image = Image.fromarray(np.random.default_rng(size).integers(0, 255, (*shape, 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    authors = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(),
                         T.Normalize(mean, std)])
    assert torch.equal(view0_transform(size, mean, std)(image), authors(image))


def test_views_depend_only_on_seed_and_index(image):
    a = make_views(image, index=7, seed=1, n_views=8, image_size=48, augmix=True)
    torch.manual_seed(123)
    np.random.seed(5)                              # global state must not matter
    b = make_views(image, index=7, seed=1, n_views=8, image_size=48, augmix=True)
    assert torch.equal(a, b)
    assert not torch.equal(a[1:], make_views(image, index=8, seed=1, n_views=8, image_size=48, augmix=True)[1:])
    assert not torch.equal(a[1:], make_views(image, index=7, seed=2, n_views=8, image_size=48, augmix=True)[1:])


def test_crop_parameters_follow_torchvision_ranges():
    g, _ = sample_generators(0, 0)
    areas = []
    for _ in range(500):
        i, j, h, w = random_resized_crop_params(200, 100, g)
        assert 0 <= i <= 100 - h and 0 <= j <= 200 - w
        areas.append(h * w / 20000)
    assert min(areas) >= 0.07 and max(areas) <= 1.0 and min(areas) < 0.15
    g, _ = sample_generators(0, 0)
    big = [random_resized_crop_params(200, 100, g, scale=(0.5, 1.0)) for _ in range(200)]
    assert min(h * w / 20000 for _, _, h, w in big) >= 0.45


def test_augmix_ops_are_the_tpt_set_and_mild(image):
    assert set(AUGMIX_OPS) == {"autocontrast", "equalize", "posterize", "rotate", "solarize",
                               "shear_x", "shear_y", "translate_x", "translate_y"}
    small = image.resize((48, 48))
    rng = np.random.default_rng(0)
    for op in AUGMIX_OPS:
        out = apply_op(small, op, rng)
        assert out.size == small.size
    with pytest.raises(ValueError, match="unknown AugMix op"):
        apply_op(small, "sharpness", rng)


def test_imagenet_family_views_are_plain_crops_and_cross_dataset_views_are_mixed(image):
    plain = make_views(image, index=0, n_views=4, image_size=48, augmix=False)
    mixed = make_views(image, index=0, n_views=4, image_size=48, augmix=True)
    # the crops are drawn from the same generator, so the mixing is the only difference
    assert torch.equal(plain[0], mixed[0]) and not torch.equal(plain[1:], mixed[1:])


def test_bad_view_parameters_are_refused(image):
    with pytest.raises(ValueError, match="n_views"):
        make_views(image, index=0, n_views=0)
    with pytest.raises(ValueError, match="min_scale"):
        make_views(image, index=0, min_scale=0)


def views_one_by_one(image, index, seed, n_views, image_size, augmix, mean, std, min_scale=0.08):
    """The views as TPT's pipeline writes them: each crop through torchvision's to_tensor and
    normalize on its own, each AugMix view mixed on its own (`augmix_view`)."""
    import torchvision.transforms.functional as TF

    from tptlib.augment import augmix_view, crop_flip
    from tptlib.clip import view0_transform
    image = image.convert("RGB")
    g, rng = sample_generators(seed, index)
    to_tensor = lambda im: TF.normalize(TF.to_tensor(im), mean, std)  # noqa: E731
    views = [view0_transform(image_size, mean, std)(image)]
    for _ in range(n_views - 1):
        crop = crop_flip(image, image_size, g, min_scale)
        views.append(augmix_view(crop, to_tensor, rng) if augmix else to_tensor(crop))
    return torch.stack(views)


@pytest.mark.parametrize("augmix", [False, True], ids=["crops", "augmix"])
@pytest.mark.parametrize("size, shape, min_scale", [(48, (96, 96), 0.08), (32, (40, 70), 0.5), (64, (120, 90), 0.08)])
def test_views_made_together_equal_views_made_one_by_one_to_the_bit(augmix, size, shape, min_scale):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    rng = np.random.default_rng(size)
    for index in range(6):
        image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        together = make_views(image, index=index, seed=3, n_views=24, image_size=size, augmix=augmix,
                              mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD, min_scale=min_scale)
        alone = views_one_by_one(image, index, 3, 24, size, augmix, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, min_scale)
        assert together.dtype == alone.dtype == torch.float32
        assert torch.equal(together, alone), (index, float((together - alone).abs().max()))
    assert make_views(image, index=0, n_views=1, image_size=size, augmix=augmix).shape == (1, 3, size, size)


def _test_images():
    """Images that reach every branch of the lookup-table ops: noise, flat, two-level, extremes only,
    one band flat, a gradient, and small sizes."""
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (48, 48, 3)), np.full((48, 48, 3), 7), np.full((48, 48, 3), 255),
              np.where(rng.random((48, 48, 3)) < 0.5, 10, 200), np.where(rng.random((48, 48, 3)) < 0.99, 0, 255),
              np.dstack([rng.integers(0, 256, (48, 48)), np.full((48, 48), 128), rng.integers(100, 103, (48, 48))]),
              np.broadcast_to(np.arange(48)[None, :, None] * 5, (48, 48, 3)), rng.integers(0, 256, (5, 7, 3)),
              rng.integers(0, 256, (1, 1, 3))]
    arrays += [rng.integers(lo, hi, (48, 48, 3)) for lo, hi in rng.integers(0, 256, (40, 2)) if lo < hi]
    return [Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8)) for a in arrays]


def test_augmix_ops_equal_torchvisions_to_the_bit():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from tptlib import augment_ops as ops
    bilinear = InterpolationMode.BILINEAR
    same = lambda a, b: a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()  # noqa: E731
    for im in _test_images():
        assert same(ops.autocontrast(im), TF.autocontrast(im))
        assert same(ops.equalize(im), TF.equalize(im))
        for bits in range(1, 9):
            assert same(ops.posterize(im, bits), TF.posterize(im, bits))
        for threshold in (0, 1, 100, 128, 230, 255, 256):
            assert same(ops.solarize(im, threshold), TF.solarize(im, threshold))
        for angle in (-30, -7, 0, 3, 29.5):
            assert same(ops.rotate(im, angle), TF.rotate(im, angle, interpolation=bilinear))
        for shear in (-16.7, -0.5, 0.0, 9.1):
            for sh in ([shear, 0.0], [0.0, shear]):
                assert same(ops.affine(im, [0, 0], sh, center=[0, 0]),
                            TF.affine(im, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0], shear=sh,
                                      interpolation=bilinear))
        for shift in (-15, -1, 0, 4, 16):
            for tr in ([shift, 0], [0, shift]):
                assert same(ops.affine(im, tr, [0.0, 0.0]),
                            TF.affine(im, angle=0.0, translate=tr, scale=1.0, shear=[0.0, 0.0], interpolation=bilinear))
    with pytest.raises(ValueError, match="RGB"):
        ops.equalize(Image.new("L", (4, 4)))
    with pytest.raises(ValueError, match="bits"):
        ops.posterize(_test_images()[0], 0)


def test_view_crops_equal_torchvisions_to_the_bit():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from tptlib import augment_ops as ops
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    for top, left, height, width, size in [(0, 0, 90, 120, 48), (10, 20, 48, 48, 48), (5, 7, 13, 61, 48),
                                           (80, 110, 10, 10, 224), (0, 0, 1, 1, 8)]:
        ours = ops.resized_crop(image, top, left, height, width, size)
        theirs = TF.resized_crop(image, top, left, height, width, [size, size],
                                 interpolation=InterpolationMode.BILINEAR, antialias=True)
        assert ours.size == theirs.size and ours.tobytes() == theirs.tobytes()
        assert ops.hflip(ours).tobytes() == TF.hflip(theirs).tobytes()
