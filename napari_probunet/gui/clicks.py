"""The points layer of inside/outside clicks, shared by the review's *Refine by clicks*
(:mod:`napari_probunet.gui.review.prompts`) and the Nodule widget's
(:mod:`napari_probunet.gui.nodule.prompts`).

A napari Points layer in add mode, as micro-sam's point prompts: a click adds an **inside**
point (lesion: a white disc with a black rim), a Shift+click an **outside** one (background: a
black cross with a white rim). The two differ in shape as well as in colour, and neither colour
is the hypotheses' cyan or a radiologist's (:mod:`napari_probunet.gui.palette`). Each point's
kind is its ``positive`` feature.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.layers import Points

#: inside (lesion) and outside (background) points: fill, border, symbol
INSIDE = ("#ffffff", "#000000", "disc")
OUTSIDE = ("#000000", "#ffffff", "x")


def clicks_layer(name: str, ndim: int, place: dict, size: float,
                 outside: Callable[[], bool], changed: Callable[[object], None]) -> Points:
    """An empty clicks layer placed by ``place`` (layer keywords), points ``size`` data pixels
    wide; ``outside()`` says whether a plain click is an outside one (a ticked box), and
    ``changed(event)`` hears every change of the points."""
    layer = Points(np.empty((0, ndim)), ndim=ndim, name=name, size=size, border_width=0.15,
                   border_width_is_relative=True, features={"positive": np.zeros(0, bool)},
                   feature_defaults={"positive": True}, face_color=INSIDE[0],
                   border_color=INSIDE[1], symbol=INSIDE[2], metadata={"kind": "clicks"},
                   **place)

    def on_press(layer, event) -> None:  # before napari's add: the kind of the next point
        next_kind(layer, not ("Shift" in set(event.modifiers) or outside()))

    layer.mouse_drag_callbacks.insert(0, on_press)
    layer.events.data.connect(changed)
    return layer


def next_kind(layer: Points, inside: bool) -> None:
    """The next point added to ``layer`` is an inside (or an outside) click."""
    fill, border, symbol = INSIDE if inside else OUTSIDE
    layer.selected_data = set()  # napari applies the current style to selected points
    layer.feature_defaults = {"positive": inside}
    layer.current_face_color, layer.current_border_color = fill, border
    layer.current_symbol = symbol


def add_point(layer: Points, coords, inside: bool) -> None:
    """Add a click at data ``coords`` (a script's or a test's click)."""
    next_kind(layer, inside)
    layer.add(np.asarray(coords, float).reshape(1, layer.ndim))


def points(layer: Points | None) -> tuple[np.ndarray, np.ndarray]:
    """``(coordinates (k, ndim) float, inside (k,) bool)`` of the clicks (empty without a
    layer)."""
    if layer is None or not len(layer.data):
        return np.empty((0, 0 if layer is None else layer.ndim)), np.zeros(0, bool)
    return np.asarray(layer.data, float), np.asarray(layer.features["positive"], bool)


def clear(layer: Points | None) -> None:
    """Remove every click."""
    if layer is not None and len(layer.data):
        layer.data = np.empty((0, layer.ndim))
        layer.features = {"positive": np.zeros(0, bool)}


def is_change(event) -> bool:
    """A data event that changed the points (not the "adding"/"removing" before it)."""
    return str(getattr(event, "action", "changed")) in ("added", "removed", "changed")
