"""Every access to napari's private API, in one place and behind one version check.

napari's public API has no way to insert layers without selecting each one, which matters for
speed (a sampling run adds 16+ layers), so this package reaches into napari internals here, and
only here. (The latent-space explorer's live drag needs none: it writes its frames with the
public ``Labels.data_setitem``, :func:`napari_probunet.gui.explorer.layer.write_labels`.)

The rule: a private path is taken only for a napari version in :data:`TESTED` (the range this
package was tested with) and is guarded anyway (a renamed attribute means the public, slower
path, never an error). Outside the range the public path is always taken. When a napari
release is tested, widen :data:`TESTED`; when an internal moves, fix it here.

API (used by the review widget and the explorer):

- :func:`no_layer_activation` ``(layers)``: context manager; layers inserted inside it are not
  selected one by one.
- :func:`unwrap_viewer` ``(viewer)``: the viewer behind the proxy napari hands to plugins.
- :func:`displayed_texture` ``(layer)``: what a Labels layer's 2D view sends to the canvas (for
  tests that check a partial repaint); :func:`main_window` ``(viewer)``: the Qt
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


def displayed_texture(layer) -> np.ndarray | None:
    """The colour-mapped 2D view a Labels ``layer`` last sent to the canvas (a copy), or None
    where napari keeps it elsewhere. What a partial labels update writes into."""
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
