"""The image and region of interest a review samples, read from the viewer's layers.

Helpers shared by the review's parts (not a part): a :class:`SamplingRun` (a sample's or a
refinement's), which layers are images to segment, the chosen image by name, and
:func:`resolve_roi`, the ROI ``(row0, col0, height, width)`` of the plane on screen for the
review's :class:`~napari_probunet.review.inputs.InputChoice`: the whole image, the bounding box
of a drawn rectangle, or the last click's crop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Shapes

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane
from napari_probunet.gui.review.common import WHOLE_IMAGE_LIMIT
from napari_probunet.review.geometry import bounding_roi
from napari_probunet.review.inputs import InputChoice
from napari_probunet.review.jobs import SamplingJob
from napari_probunet.review.provenance import Provenance


@dataclass
class SamplingRun:
    """One sampling run (a sample, or a refinement by clicks) as the GUI sees it: the job,
    and where its results go (what the hypothesis layers and the correction read)."""

    job: SamplingJob
    plane: ImagePlane  # the image layer's plane (compared with removed layers)
    placement: dict[str, Any]  # of the hypothesis layers (the stack's for "All slices")
    started: float


class TooLarge(UserError):
    """The whole image is too large to segment at once: click the lesion instead."""


def image_layers(viewer) -> list[Image]:
    """The image layers one can segment (not the review's own uncertainty maps)."""
    return [layer for layer in viewer.layers
            if isinstance(layer, Image)
            and Provenance.from_metadata(layer.metadata).kind != "uncertainty"]


def find_image(viewer, name: str | None) -> Image | None:
    """The image layer called ``name`` (None if there is none)."""
    for layer in image_layers(viewer):
        if layer.name == name:
            return layer
    return None


def shapes_layer(viewer, name: str | None) -> Shapes | None:
    """The Shapes layer called ``name`` (None if there is none)."""
    for layer in viewer.layers:
        if isinstance(layer, Shapes) and layer.name == name:
            return layer
    return None


def resolve_roi(viewer, choice: InputChoice, layer, plane: ImagePlane):
    """The ROI of ``plane`` (of image ``layer``) for ``choice``'s region mode, or a UserError
    that says what to do (:class:`TooLarge` for a whole image over
    :data:`WHOLE_IMAGE_LIMIT` pixels)."""
    h, w = plane.shape
    if choice.mode == "whole":
        if h * w > WHOLE_IMAGE_LIMIT:
            raise TooLarge(
                f"'{layer.name}' is {h}x{w} pixels, too large to segment whole. The region "
                "is now 'Click on the lesion': click the lesion in the viewer (or draw a "
                "rectangle)")
        return (0, 0, h, w)
    if choice.mode == "click":
        click = choice.click
        if click is None or click[:2] != (layer.name, plane.index):
            raise UserError("Click on the lesion in the viewer first (the region is "
                            "'Click on the lesion')")
        return click[2]
    return _rectangle_roi(shapes_layer(viewer, choice.shapes), layer, plane)


def _rectangle_roi(shapes: Shapes | None, layer, plane: ImagePlane):
    if shapes is None or len(shapes.data) == 0:
        raise UserError("Draw a rectangle around the lesion in a Shapes layer first (the "
                        "region is 'Rectangle')")
    selected = sorted(shapes.selected_data)
    vertices = shapes.data[selected[-1] if selected else -1]
    world = np.array([shapes.data_to_world(v) for v in vertices])
    data = np.array([layer.world_to_data(p) for p in world])
    roi = bounding_roi(data, plane.shape)
    if roi is None:
        raise UserError(f"the rectangle in '{shapes.name}' lies outside '{layer.name}'")
    if roi[2] * roi[3] > WHOLE_IMAGE_LIMIT:
        raise UserError(f"the rectangle covers {roi[2]}x{roi[3]} pixels, too many; draw a "
                        "smaller one around the lesion or click on it")
    return roi
