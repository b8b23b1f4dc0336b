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
