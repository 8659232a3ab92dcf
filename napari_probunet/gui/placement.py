"""The one placement rule: put an ROI-sized result layer exactly over its image's region.

Hypotheses, the uncertainty map, the correction and the explorer's map are **ROI-sized**
layers (memory does not grow with the image). Each one is placed over the image with the image
layer's own transform: the same scale, rotate, shear and affine, and the translate moved by the
ROI's offset along the image's (rotated, sheared) axes, so its data pixel ``(…, 0, 0)`` lands
on the image's pixel ``(*index, row0, col0)``. A result for slice 7 of a stack has a length-1
leading axis per stack axis and shows on slice 7 only.

API (the review widget and the latent-space explorer use these, and nothing else, to place
and move their layers):

- :func:`placement` ``(image, roi, index=()) -> dict``: layer keyword arguments (``scale``,
  ``translate`` and, when not the identity, ``rotate``, ``shear``, ``affine``; ``units``
  when the image has them) for ``Labels(data, **place)`` / ``viewer.add_labels``.
- :func:`fallback_placement` ``(image | None, roi) -> dict``: the ROI at the origin of the
  image's last two axes (scale and translate only), for an image that is gone or whose axes
  do not match the region's.
- :func:`is_placed` ``(layer, place) -> bool``: whether ``layer`` already sits where
  ``place`` says (the "already placed?" check).
- :func:`move_to` ``(layer, place)``: move a layer there, setting only what differs (each
  setter makes napari recompute extents and redraw).
- :class:`ImagePlane`, :func:`current_plane` ``(layer, viewer)``, :func:`plane_shape` ``(layer)``:
  the 2D plane of an image layer under review (the slice on screen), read on the GUI thread.

The arithmetic is :func:`napari_probunet.review.geometry.region_translate` (no napari).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.utils.transforms import Affine

from napari_probunet.errors import InputError
from napari_probunet.review.geometry import Roi, region_key, region_translate, stack_key

# ------------------------------------------------------------------ the plane under review


@dataclass(frozen=True)
class ImagePlane:
    """The 2D plane of an image layer under review.

    ``index`` holds the data indices of the leading (non-spatial) axes of a stack (``()`` for a
    2D image), ``shape`` the plane's rows and columns. Read it on the GUI thread and hand the
    arrays to worker threads.
    """

    layer: Any
    index: tuple[int, ...]
    shape: tuple[int, int]

    def array(self):
        """The layer's full-resolution data (the first level of a multiscale image)."""
        data = self.layer.data
        return data[0] if self.layer.multiscale else data

    def read(self, roi: Roi | None = None) -> np.ndarray:
        """The plane's pixels (``(H, W)`` or ``(H, W, C)``), or those of ``roi`` only."""
        return np.asarray(self.array()[region_key(self.index, roi)])

    def read_stack(self, roi: Roi) -> np.ndarray:
        """``roi`` in every slice of the stack axis: ``(K, h, w)`` or ``(K, h, w, C)``."""
        return np.asarray(self.array()[stack_key(self.index, roi)])


def plane_shape(layer) -> tuple[int, int]:
    """Rows and columns of an image layer's planes."""
    shape = layer.level_shapes[0] if layer.multiscale else layer.data.shape
    return int(shape[layer.ndim - 2]), int(shape[layer.ndim - 1])


def current_plane(layer, viewer) -> ImagePlane:
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
    return ImagePlane(layer=layer, index=index, shape=(shape[-2], shape[-1]))


# ------------------------------------------------------------------ the rule


def placement(image, roi: Roi, index: tuple[int, ...] = ()) -> dict[str, Any]:
    """Layer keyword arguments that put an ROI-sized array exactly over ``roi`` of plane
    ``index`` of the ``image`` layer (only ``roi[0]``, ``roi[1]`` matter)."""
    linear = Affine(scale=image.scale, rotate=image.rotate, shear=image.shear).linear_matrix
    kwargs: dict[str, Any] = {
        "scale": tuple(float(s) for s in image.scale),
        "translate": tuple(float(t) for t in region_translate(image.translate, linear, index, roi)),
    }
    if not np.allclose(image.rotate, np.eye(image.ndim)):
        kwargs["rotate"] = np.asarray(image.rotate)
    if np.any(np.asarray(image.shear) != 0):
        kwargs["shear"] = np.asarray(image.shear)
    if not np.allclose(image.affine.affine_matrix, np.eye(image.ndim + 1)):
        kwargs["affine"] = image.affine
    units = getattr(image, "units", None)
    if units is not None:
        kwargs["units"] = units
    return kwargs


def fallback_placement(image, roi: Roi) -> dict[str, Any]:
    """The ROI at the origin of the ``image``'s last two axes (unit scale when ``image`` is
    None): for an image that is gone, or whose axes do not line up with the region."""
    scale = np.ones(2) if image is None else np.asarray(image.scale, float)[-2:]
    translate = np.zeros(2) if image is None else np.asarray(image.translate, float)[-2:]
    return {"scale": scale, "translate": region_translate(translate, np.diag(scale), (), roi)}


def _target(place: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rotate, shear, affine matrix)`` of a placement, the identity where it has none."""
    nd = len(place["scale"])
    rotate = np.asarray(place.get("rotate", np.eye(nd)))
    shear = place.get("shear")
    shear = np.zeros(nd * (nd - 1) // 2) if shear is None else np.asarray(shear)
    affine = place.get("affine")
    matrix = np.eye(nd + 1) if affine is None else np.asarray(
        getattr(affine, "affine_matrix", affine))
    return rotate, shear, matrix


def is_placed(layer, place: dict[str, Any]) -> bool:
    """Whether ``layer`` already sits where ``place`` (from :func:`placement`) puts it."""
    if len(place["scale"]) != layer.ndim:
        return False
    rotate, shear, matrix = _target(place)
    return (np.allclose(layer.scale, place["scale"])
            and np.allclose(layer.translate, place["translate"])
            and np.allclose(layer.rotate, rotate)
            and np.allclose(np.asarray(layer.shear), shear)
            and np.allclose(layer.affine.affine_matrix, matrix))


def move_to(layer, place: dict[str, Any]) -> None:
    """Move ``layer`` to ``place``, touching only what changes (each setter makes napari
    recompute extents and redraw)."""
    if not np.allclose(layer.scale, place["scale"]):
        layer.scale = place["scale"]
    if not np.allclose(layer.translate, place["translate"]):
        layer.translate = place["translate"]
    rotate, _, matrix = _target(place)
    if not np.allclose(layer.rotate, rotate):
        layer.rotate = rotate
    shear = place.get("shear")
    if shear is not None or np.any(np.asarray(layer.shear) != 0):
        layer.shear = shear if shear is not None else np.zeros_like(np.asarray(layer.shear))
    if not np.allclose(layer.affine.affine_matrix, matrix):
        layer.affine = matrix
