"""Training augmentation: one random geometric transform applied identically to an image and
every grader's mask, plus optional intensity changes to the image.

Geometry: random flips, right-angle rotations (odd quarter turns only for square images, so
shapes never change), then, with probability ``p_affine``, one affine resampling combining a
small rotation, an isotropic scale and a translation about the image centre. Images are
resampled bilinearly, masks by nearest neighbour, both with the same reflecting border, so
masks stay exactly class-valued and aligned with the image.

Intensity (image only) works relative to the image's own range ``[lo, hi]`` (its min and max),
so it means the same for 0..255 JPEGs and 0..1.3 synthetic images: a contrast factor about
``lo``, a shift in units of ``hi - lo`` and a gamma on ``(x - lo) / (hi - lo)``. The defaults
leave intensities alone: in the synthetic ``lesions`` set absolute contrast *is* what sets the
mode probabilities, so changing it teaches the model the wrong calibration. Switch intensity
augmentation on for real data (``Augmentation.real_data()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Augmentation:
    """Ranges of the random augmentation; the defaults are geometric only.

    Attributes:
        enabled: ``False`` makes :func:`augment` return its inputs unchanged.
        flip: random vertical and horizontal flips (each with probability 1/2).
        rot90: random quarter turns (odd ones only on square images).
        rotate_degrees: small rotation drawn from ``U[-d, d]`` degrees; 0 disables.
        scale: isotropic zoom factor range; ``(1, 1)`` disables. ``> 1`` enlarges.
        translate: shift range as a fraction of the image size, ``U[-t, t]`` per axis.
        p_affine: probability of the affine step (rotation, scale, translation).
        contrast: image contrast factor range about its minimum; ``(1, 1)`` disables.
        shift: intensity shift range in units of the image's range; ``(0, 0)`` disables.
        gamma: gamma range on the image's normalised intensities; ``(1, 1)`` disables.
    """

    enabled: bool = True
    flip: bool = True
    rot90: bool = True
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    p_affine: float = 0.75
    contrast: tuple[float, float] = (1.0, 1.0)
    shift: tuple[float, float] = (0.0, 0.0)
    gamma: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def none(cls) -> Augmentation:
        """No augmentation at all."""
        return cls(enabled=False)

    @classmethod
    def real_data(cls) -> Augmentation:
        """Geometric plus mild intensity augmentation, for real scans (not ``lesions``)."""
        return cls(contrast=(0.9, 1.1), shift=(-0.05, 0.05), gamma=(0.8, 1.25))


def _affine(aug: Augmentation, rng: np.random.Generator, shape: tuple[int, int]):
    """``(matrix, offset)`` mapping output to input pixel coordinates, or ``None``."""
    if rng.random() >= aug.p_affine:
        return None
    angle = np.deg2rad(rng.uniform(-aug.rotate_degrees, aug.rotate_degrees))
    zoom = rng.uniform(*aug.scale)
    shift = rng.uniform(-aug.translate, aug.translate, 2) * np.array(shape)
    if angle == 0 and zoom == 1 and not shift.any():
        return None
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = np.array([[cos, -sin], [sin, cos]]) / zoom
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    offset = centre - matrix @ centre - shift
    return matrix, offset


def _intensity(image: np.ndarray, rng: np.random.Generator, aug: Augmentation) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo
    if span <= 0:
        return image
    gamma = rng.uniform(*aug.gamma)
    contrast = rng.uniform(*aug.contrast)
    shift = rng.uniform(*aug.shift)
    out = (image - lo) / span
    if gamma != 1:
        out = np.power(out, gamma)
    out = lo + span * (contrast * out + shift)
    return out.astype(np.float32)


def augment(
    image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, aug: Augmentation
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random augmentation to ``image`` and all ``masks`` alike.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` float image.
        masks: ``(R, H, W)`` (or a single ``(H, W)``) integer class labels.
        rng: the random generator (the only source of randomness).
        aug: the ranges.

    Returns:
        ``(image, masks)`` with the input shapes; image float32, masks of the input dtype and
        only of values already present in each mask.
    """
    image = np.asarray(image)
    masks = np.asarray(masks)
    single = masks.ndim == 2
    if single:
        masks = masks[None]
    if masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks {masks.shape} do not match the image {image.shape}")
    if not aug.enabled:
        return image.astype(np.float32, copy=False), masks[0] if single else masks
    h, w = image.shape[:2]
    if aug.flip:
        if rng.random() < 0.5:
            image, masks = image[::-1], masks[:, ::-1]
        if rng.random() < 0.5:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
    if aug.rot90:
        k = int(rng.integers(4)) if h == w else 2 * int(rng.integers(2))
        if k:
            image, masks = np.rot90(image, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
    image = np.ascontiguousarray(image, dtype=np.float32)
    masks = np.ascontiguousarray(masks)
    transform = _affine(aug, rng, (h, w))
    if transform is not None:
        from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

        matrix, offset = transform
        if image.ndim == 2:
            image = ndimage.affine_transform(image, matrix, offset, order=1, mode="reflect")
        else:
            image = np.stack([ndimage.affine_transform(image[..., c], matrix, offset, order=1,
                                                       mode="reflect")
                              for c in range(image.shape[-1])], axis=-1)
        masks = np.stack([ndimage.affine_transform(m, matrix, offset, order=0, mode="reflect",
                                                   output=masks.dtype) for m in masks])
    if aug.contrast != (1.0, 1.0) or aug.shift != (0.0, 0.0) or aug.gamma != (1.0, 1.0):
        image = _intensity(image, rng, aug)
    return image, masks[0] if single else masks
