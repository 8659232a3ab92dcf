"""Every access to napari's private API, in one place and behind one version check.

napari's public API has no way to insert layers without selecting each one, nor to repaint
only a rectangle of a Labels layer without recording undo history. Both matter for speed (a
sampling run adds 16+ layers; the latent-space explorer repaints a map many times a second while
dragging), so this package reaches into napari internals here, and only here.

The rule: a private path is taken only for a napari version in :data:`TESTED` (the range this
package was tested with) and is guarded anyway (a renamed attribute means the public, slower
path, never an error). Outside the range the public path is always taken. When a napari
release is tested, widen :data:`TESTED`; when an internal moves, fix it here.

API (used by the review widget and the explorer):

- :func:`no_layer_activation` ``(layers)``: context manager; layers inserted inside it are not
  selected one by one.
- :func:`write_labels_region` ``(layer, new, r0, r1, c0, c1) -> bool``: repaint rows
  ``r0:r1`` and columns ``c0:c1`` of a 2D Labels view from ``new``; False when the fast path
  does not apply and the caller must refresh the layer itself.
- :func:`unwrap_viewer` ``(viewer)``: the viewer behind the proxy napari hands to plugins.
- :func:`displayed_texture` ``(layer)``: what a Labels layer's 2D view sends to the canvas (for
  tests and benchmarks that check a partial repaint); :func:`main_window` ``(viewer)``: the Qt
  main window (to size it for a screenshot); :func:`vispy_canvas` ``(viewer)``: the vispy
  canvas (to count its draws in a benchmark).
- :data:`NAPARI_VERSION`, :func:`private_api_supported`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import napari
import numpy as np

#: the napari versions whose internals this module was tested with: ``[low, high]`` inclusive,
#: as (major, minor)
TESTED = ((0, 5), (0, 9))


def _version_tuple(text: str) -> tuple[int, int]:
    """``"0.9.2"`` -> ``(0, 9)``; ``"0.10.0rc1"`` -> ``(0, 10)``; unparsable -> ``(0, 0)``."""
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


#: the running napari's (major, minor)
NAPARI_VERSION = _version_tuple(getattr(napari, "__version__", ""))


def private_api_supported(version: tuple[int, int] = NAPARI_VERSION) -> bool:
    """Whether napari ``version`` is one whose internals this module was tested with."""
    return TESTED[0] <= version <= TESTED[1]


_PRIVATE_OK = private_api_supported()


def unwrap_viewer(viewer):
    """The viewer behind napari's public proxy (the viewer itself when it is no proxy).

    napari hands plugin widgets a ``PublicOnlyProxy`` of the viewer, a different object for
    each widget; ``__wrapped__`` (wrapt's name, kept by every napari version so far) is the
    viewer itself, the same for all. No version gate: without it the proxy is used as is.
    """
    return getattr(viewer, "__wrapped__", viewer)


@contextmanager
def no_layer_activation(layers):
    """Insert layers into ``layers`` (a viewer's layer list) without selecting each one.

    napari selects every inserted layer, which rebuilds the layer controls each time;
    ``_activate_on_insert`` is napari's own switch for this (private: if it is renamed, or
    napari is outside :data:`TESTED`, adding just gets slower).
    """
    previous = getattr(layers, "_activate_on_insert", None) if _PRIVATE_OK else None
    if previous is not None:
        layers._activate_on_insert = False
    try:
        yield
    finally:
        if previous is not None:
            layers._activate_on_insert = previous


def write_labels_region(layer, new: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> bool:
    """Repaint rows ``r0:r1``, columns ``c0:c1`` of the Labels ``layer`` from ``new``.

    ``new`` is the ``(H, W)`` map the layer's 2D view now holds (the caller has written it into
    the layer's data already). Only the box is recoloured and sent to the canvas (napari's
    partial labels update, what its paint brush uses) without recording undo history, which
    would keep up to 100 copies of every change.

    Returns False, having changed nothing on screen, when this fast path does not apply: napari
    outside :data:`TESTED`, internals missing, the layer hidden or drawn as contours, a 3D
    display, a transposed view or another slice of a stack shown. The caller then refreshes
    the whole layer (``layer.refresh(...)``).
    """
    if not _PRIVATE_OK:
        return False
    # a layer reached through napari's plugin proxy warns on each private attribute read
    layer = getattr(layer, "__wrapped__", layer)
    lead = layer.data.ndim - 2
    try:
        if not layer.visible or layer.contour != 0 or layer._slice_input.ndisplay != 2:
            return False  # only the plain 2D display has a partial update
        displayed = layer._slice.image.view
        if (displayed.shape != new.shape
                or list(layer._slice_input.displayed) != [lead, lead + 1]
                or any(int(i) != 0 for i in layer._get_pt_not_disp().values())):
            return False  # transposed, or another slice of a stack is shown
        texture = layer.colormap._data_to_texture(new[r0:r1, c0:c1])
        refresh = layer._partial_labels_refresh
    except (AttributeError, TypeError, ValueError, IndexError):
        return False
    try:
        displayed[r0:r1, c0:c1] = texture
        layer._updated_slice = tuple([slice(0, 1)] * lead + [slice(r0, r1), slice(c0, c1)])
        # the canvas listens to labels_update directly; through the layer's event group the
        # layer list would repaint its rows on every frame for nothing (it shows no pixels)
        with layer.events.labels_update.blocker(layer.events):
            refresh()
    except (AttributeError, TypeError, ValueError, IndexError):
        return False
    return True


def displayed_texture(layer) -> np.ndarray | None:
    """The colour-mapped 2D view a Labels ``layer`` last sent to the canvas (a copy), or None
    where napari keeps it elsewhere. What :func:`write_labels_region` writes into."""
    try:
        return np.array(getattr(layer, "__wrapped__", layer)._slice.image.view, copy=True)
    except AttributeError:
        return None


def main_window(viewer):
    """The viewer's Qt main window (``QMainWindow``): napari exposes no public handle to it."""
    return unwrap_viewer(viewer).window._qt_window


def vispy_canvas(viewer):
    """The vispy ``SceneCanvas`` that draws the viewer (its ``events.draw`` counts frames)."""
    return unwrap_viewer(viewer).window._qt_viewer.canvas._scene_canvas
