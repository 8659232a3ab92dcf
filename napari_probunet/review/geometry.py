"""Where the review happens in an image: the region of interest and the maps laid over it.

Pure array geometry (no Qt, no napari): ROIs ``(row0, col0, height, width)`` in a plane's data
pixels, centred on a click or around a drawn rectangle; the offset that moves an ROI-sized
layer onto its ROI (:func:`region_translate`, the arithmetic of the one placement rule in
``napari_probunet.gui.placement``); and the reshaping between ROI-sized 2D maps and layer data
with a length-1 axis per leading (stack) axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Roi = tuple[int, int, int, int]


def centred_roi(row: float, col: float, size: int, shape: tuple[int, int]) -> Roi:
    """A ``size`` x ``size`` ROI ``(row, col, height, width)`` centred on a point, inside
    ``shape``."""
    rois = []
    for centre, extent in ((row, shape[0]), (col, shape[1])):
        side = min(int(size), int(extent))
        start = int(round(centre - side / 2))
        rois.append((int(np.clip(start, 0, extent - side)), side))
    (r0, h), (c0, w) = rois
    return (r0, c0, h, w)


def bounding_roi(points: np.ndarray, shape: tuple[int, int]) -> Roi | None:
    """The ROI of the pixels inside a polygon's bounding box (points in plane data coordinates)."""
    pts = np.asarray(points, float)[:, -2:]
    lo = np.floor(pts.min(axis=0) + 0.5).astype(int)  # pixel i covers [i - 0.5, i + 0.5)
    hi = np.ceil(pts.max(axis=0) - 0.5).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape) - 1)
    if np.any(hi < lo):
        return None
    return (int(lo[0]), int(lo[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))


def region_key(index: Sequence[int], roi: Roi | None = None) -> tuple:
    """The data index of plane ``index`` of an image array, or of its ``roi`` only."""
    key = tuple(int(i) for i in index)
    if roi is None:
        return key
    r0, c0, h, w = roi
    return key + (slice(r0, r0 + h), slice(c0, c0 + w))


def stack_key(index: Sequence[int], roi: Roi) -> tuple:
    """The data index of ``roi`` in every slice of the stack axis (the last leading axis, the
    one just before the rows and columns; any other leading axes stay at ``index``)."""
    r0, c0, h, w = roi
    return tuple(int(i) for i in index[:-1]) + (slice(None), slice(r0, r0 + h), slice(c0, c0 + w))


def region_translate(translate: Sequence[float], linear: np.ndarray, index: Sequence[int],
                     roi: Roi) -> np.ndarray:
    """Translate of an ROI-sized layer whose data pixel ``(…, 0, 0)`` lands on the image's
    pixel ``(*index, row0, col0)``.

    ``translate`` and ``linear`` (``(nd, nd)``: scale, rotate and shear composed, as napari
    composes them) are the image layer's; the layer gets the same linear part. With no
    rotation or shear this is ``translate + offset * scale``.
    """
    offset = np.array([*index, roi[0], roi[1]], float)
    translate = np.asarray(translate, float)
    if offset.shape != translate.shape:
        raise ValueError(
            f"the image layer has {translate.shape[0]} dimensions but the region has "
            f"{offset.shape[0]} (slice {tuple(index)}, rows, columns)")
    return translate + np.asarray(linear, float) @ offset


def embed(map2d: np.ndarray, index: Sequence[int]) -> np.ndarray:
    """A 2D map with a length-1 axis for each leading axis of plane ``index`` of a stack."""
    return map2d.reshape((1,) * len(index) + map2d.shape)


def as_2d(data) -> np.ndarray:
    """The 2D map of an ROI layer's data (drops the length-1 leading axes)."""
    a = np.asarray(data)
    return a.reshape(a.shape[-2:])
