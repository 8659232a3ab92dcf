"""Augmentation moves image and masks together and never invents a label value."""

from __future__ import annotations

import numpy as np
import pytest

from napari_probunet.data import Augmentation, augment, make_case


def _blobs(shape=(48, 48), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A piecewise-constant image and the label map it shows (classes 0..3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint8)
    for cls in (1, 2, 3):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        labels[(y - cy) ** 2 + (x - cx) ** 2 < rng.uniform(16, 60)] = cls
    return labels.astype(np.float32) * 10.0, labels


def test_none_changes_nothing():
    image, labels = _blobs()
    out_image, out_masks = augment(image, labels[None], np.random.default_rng(0),
                                   Augmentation.none())
    assert np.array_equal(out_image, image) and np.array_equal(out_masks, labels[None])


@pytest.mark.parametrize("shape", [(48, 48), (40, 56)])
def test_masks_stay_class_valued_and_shapes_are_kept(shape):
    image, labels = _blobs(shape)
    masks = np.stack([labels, (labels > 1).astype(np.uint8), np.zeros_like(labels)])
    rng = np.random.default_rng(1)
    for _ in range(30):
        out_image, out_masks = augment(image, masks, rng, Augmentation.real_data())
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_masks.shape == masks.shape and out_masks.dtype == np.uint8
        for before, after in zip(masks, out_masks):
            assert set(np.unique(after)) <= set(np.unique(before))
        assert not out_masks[2].any()


def test_image_and_every_mask_get_the_same_transform():
    _, labels = _blobs()
    mask = (labels > 0).astype(np.uint8)  # the mask is the thresholded image
    image = mask.astype(np.float32) * 10.0
    rng = np.random.default_rng(2)
    changed = 0
    for _ in range(30):
        out_image, out_masks = augment(image, np.stack([mask, mask]), rng, Augmentation())
        seen = out_image > 5.0
        agree = np.mean(seen == out_masks[0])
        assert agree > 0.99  # only pixels on an interpolated edge may differ
        for shift in ((0, 1), (1, 0), (0, -1), (-1, 0)):  # and any misalignment is worse
            assert np.mean(seen == np.roll(out_masks[0], shift, (0, 1))) < agree
        assert np.array_equal(out_masks[0], out_masks[1])
        changed += not np.array_equal(out_masks[0], mask)
    assert changed > 20


def test_flips_and_quarter_turns_are_exact():
    image, labels = _blobs()
    aug = Augmentation(p_affine=0.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        out_image, out_masks = augment(image, labels[None], rng, aug)
        assert np.array_equal(out_image / 10.0, out_masks[0])


def test_on_a_lesion_case_and_an_rgb_image():
    case = make_case("lesions", 0, 0)
    out_image, out_masks = augment(case.image, case.masks, np.random.default_rng(4),
                                   Augmentation(p_affine=1.0))
    assert out_masks.shape == case.masks.shape and out_image.shape == case.image.shape
    rgb = np.stack([case.image] * 3, -1)
    out_rgb, _ = augment(rgb, case.masks, np.random.default_rng(4), Augmentation(p_affine=1.0))
    assert out_rgb.shape == rgb.shape
    assert np.allclose(out_rgb[..., 1], out_image, atol=1e-6)


def test_deterministic_for_a_seed_and_intensity_off_by_default():
    image, labels = _blobs()
    a = augment(image, labels, np.random.default_rng(5), Augmentation())
    b = augment(image, labels, np.random.default_rng(5), Augmentation())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[1].ndim == 2
    still = Augmentation(flip=False, rot90=False, p_affine=0.0)
    assert np.array_equal(augment(image, labels, np.random.default_rng(0), still)[0], image)
    bright = Augmentation(flip=False, rot90=False, p_affine=0.0, contrast=(1.2, 1.2))
    out = augment(image, labels, np.random.default_rng(0), bright)[0]
    assert np.isclose(out.max(), 36.0) and np.isclose(out.min(), 0.0)
