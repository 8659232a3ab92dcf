"""Torch-free helpers on images and label maps, importable by every layer (no torch, no Qt).

:func:`as_model_image` brings a user's 2D image to what a model takes; :func:`image_signature`
identifies an image's pixels in provenance records; :func:`pixel_disagreement` measures where
hypotheses disagree. :mod:`napari_probunet.session` uses them; the review, training and GUI
code import them from here at module level without loading torch.
"""

from __future__ import annotations

import hashlib

import numpy as np

from napari_probunet.errors import InputError


def image_signature(image: np.ndarray) -> str:
    """``sha256:<hex>`` over shape, dtype and bytes: identifies an image in provenance records."""
    a = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{a.shape}|{a.dtype.str}|".encode())
    h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def pixel_disagreement(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pixel disagreement of ``(n, H, W)`` label maps: ``1 - (share of the majority class)``.

    0 where all samples agree; at most ``1 - 1/num_classes``. Returned as float32 ``(H, W)``.
    """
    labels = np.asarray(labels)
    if labels.shape[0] == 0:
        raise InputError("no samples to measure disagreement on")
    counts = np.stack([(labels == c).sum(axis=0) for c in range(num_classes)])
    return (1.0 - counts.max(axis=0) / labels.shape[0]).astype(np.float32)


def as_model_image(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Validate a user's 2D image and bring it to ``(H, W, in_channels)`` (raw intensities)."""
    a = np.asarray(image)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"the image has dtype {a.dtype}; expected integer or floating-point "
                         "pixels")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]  # drop alpha
    if a.ndim == 2:
        a = a[..., None]
    elif not (a.ndim == 3 and a.shape[-1] == 3):
        raise InputError(
            "expected a 2D grey (H, W) or RGB (H, W, 3) image, got shape "
            f"{tuple(np.shape(image))}; "
            "for a 3D stack take one slice (the plugin uses the current slice)"
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"the image is empty (shape {tuple(np.shape(image))})")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise InputError(
            f"the image contains {bad} NaN or infinite pixel(s); replace them (e.g. with the "
            "background value) before segmenting"
        )
    channels = a.shape[-1]
    if channels == in_channels:
        return a
    if in_channels == 3 and channels == 1:
        return np.repeat(a, 3, axis=-1)
    if in_channels == 1 and channels == 3:
        grey = a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if np.issubdtype(a.dtype, np.integer):  # stay in the dtype's range for the preprocessing
            grey = np.rint(grey).astype(a.dtype)
        return grey[..., None]
    raise InputError(f"the model takes {in_channels}-channel images; this one has {channels}")
