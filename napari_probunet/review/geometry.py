"""Where the review happens in an image layer: its 2D plane and the region of interest.

GUI-free helpers of the review widget (they read napari layers and the viewer's dims, but
import no Qt): the plane shown now (the current slice of a stack), ROIs centred on a click or
around a drawn rectangle, and the layer keyword arguments that place an ROI-sized result
exactly over the image's ROI (scale, translate, rotate, shear, affine, units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probunet.errors import InputError


@dataclass(frozen=True)
class Plane:
    """The 2D plane of an image layer under review.

    ``index`` holds the data indices of the leading (non-spatial) axes of a stack (``()`` for a
    2D image), ``shape`` the plane's rows and columns.
    """

    layer: Any
    index: tuple[int, ...]
    shape: tuple[int, int]

    def _array(self):
        data = self.layer.data
        return data[0] if self.layer.multiscale else data

    def read(self, roi=None) -> np.ndarray:
        """The plane's pixels (``(H, W)`` or ``(H, W, C)``), or those of ``roi`` only."""
        key = self.index
        if roi is not None:
            r0, c0, h, w = roi
            key = key + (slice(r0, r0 + h), slice(c0, c0 + w))
        return np.asarray(self._array()[key])


def current_plane(layer, viewer) -> Plane:
    """The plane of ``layer`` shown in ``viewer`` now (the current slice of a 3D/4D stack)."""
    nd = layer.ndim  # spatial axes (an RGB layer's colour axis is not one)
    if nd < 2:
        raise InputError(f"'{layer.name}' is not an image with rows and columns (it has {nd} axis)")
    if nd > 2 and viewer.dims.ndisplay == 3:
        raise InputError(
            f"'{layer.name}' is shown in 3D. The review works on one 2D slice: switch the viewer "
            "to 2D (the 2D/3D button or Ctrl+Y) and choose the slice with the slider"
        )
    world_nd = viewer.dims.ndim
    if set(viewer.dims.displayed) != {world_nd - 2, world_nd - 1}:
        raise InputError(
            "the viewer shows the image's axes rolled or transposed; the review needs the last "
            "two axes (rows and columns) on screen: use the 'roll' button back to the start"
        )
    shape = tuple(int(s) for s in layer.level_shapes[0][:nd]) if layer.multiscale else tuple(
        int(s) for s in layer.data.shape[:nd])
    index: tuple[int, ...] = ()
    if nd > 2:
        pos = np.asarray(layer.world_to_data(viewer.dims.point))[: nd - 2]
        index = tuple(int(np.clip(round(float(p)), 0, s - 1)) for p, s in zip(pos, shape[:-2]))
    return Plane(layer=layer, index=index, shape=(shape[-2], shape[-1]))


def centred_roi(row: float, col: float, size: int, shape: tuple[int, int]):
    """A ``size`` x ``size`` ROI ``(row, col, height, width)`` centred on a point, inside ``shape``."""
    rois = []
    for centre, extent in ((row, shape[0]), (col, shape[1])):
        side = min(int(size), int(extent))
        start = int(round(centre - side / 2))
        rois.append((int(np.clip(start, 0, extent - side)), side))
    (r0, h), (c0, w) = rois
    return (r0, c0, h, w)


def bounding_roi(points: np.ndarray, shape: tuple[int, int]):
    """The ROI of the pixels inside a polygon's bounding box (points in plane data coordinates)."""
    pts = np.asarray(points, float)[:, -2:]
    lo = np.floor(pts.min(axis=0) + 0.5).astype(int)  # pixel i covers [i - 0.5, i + 0.5)
    hi = np.ceil(pts.max(axis=0) - 0.5).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(shape) - 1)
    if np.any(hi < lo):
        return None
    return (int(lo[0]), int(lo[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))


def placement(layer, plane: Plane, roi) -> dict[str, Any]:
    """Layer keyword arguments that put an ROI-sized array exactly over the image's ROI."""
    from napari.utils.transforms import Affine

    offset = np.array([*plane.index, roi[0], roi[1]], float)
    linear = Affine(scale=layer.scale, rotate=layer.rotate, shear=layer.shear).linear_matrix
    kwargs: dict[str, Any] = {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in np.asarray(layer.translate) + linear @ offset),
    }
    if not np.allclose(layer.rotate, np.eye(layer.ndim)):
        kwargs["rotate"] = np.asarray(layer.rotate)
    if np.any(np.asarray(layer.shear) != 0):
        kwargs["shear"] = np.asarray(layer.shear)
    if not np.allclose(layer.affine.affine_matrix, np.eye(layer.ndim + 1)):
        kwargs["affine"] = layer.affine
    units = getattr(layer, "units", None)
    if units is not None:
        kwargs["units"] = units
    return kwargs


def embed(plane2d: np.ndarray, plane: Plane) -> np.ndarray:
    """A 2D map with a length-1 axis for each leading axis of the plane's stack."""
    return plane2d.reshape((1,) * len(plane.index) + plane2d.shape)


def as_2d(data) -> np.ndarray:
    """The 2D map of an ROI layer's data (drops the length-1 leading axes)."""
    a = np.asarray(data)
    return a.reshape(a.shape[-2:])


def current_plane_shape(layer) -> tuple[int, int]:
    """Rows and columns of an image layer's planes."""
    shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
    return int(shape[layer.ndim - 2]), int(shape[layer.ndim - 1])
