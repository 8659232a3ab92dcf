"""What the dock widgets share: the viewer's review state, a frame that scrolls, and what
docking does to the viewer.

:func:`get_state` gives every widget of one viewer the same
:class:`~napari_probunet.review.state.ReviewState`. :func:`scrolling_content`: docked one under
the other (what the Plugins menu does) or in a short window, a widget scrolls instead of
squeezing its rows or forcing the window taller than the screen. :func:`on_docked` (each
widget calls it when it is made): the radiologists' masks are drawn as outlines
(:func:`outline_graders`), and the image is fitted again to the canvas that the dock made
narrower (:func:`refit_after_docking`).
"""

from __future__ import annotations

import weakref
from contextlib import suppress

import numpy as np
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from napari_probunet.gui.napari_compat import unwrap_viewer
from napari_probunet.review.state import ReviewState, state_for

#: the docks' minimum height; their content scrolls below it
MIN_DOCK_HEIGHT = 300


def get_state(viewer) -> ReviewState:
    """The :class:`ReviewState` of ``viewer`` (one per viewer, created on first use).

    Widgets receive napari's public proxy of the viewer; the state is keyed by the viewer
    itself, so every widget of one viewer finds the same state whichever proxy asks.
    """
    return state_for(unwrap_viewer(viewer))


class _VerticalScroll(QScrollArea):
    """A scroll area that scrolls vertically only and asks for the width its content needs:
    without this a dock may be made narrower than its content, which is then cut off on the
    right (there is no horizontal scroll bar to reach it)."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 (Qt's name)
        super().setWidget(widget)
        widget.installEventFilter(self)  # its layout changes: ask for a new width

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _with_content_width(self, hint: QSize, content_hint: QSize) -> QSize:
        extra = self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()
        return QSize(max(hint.width(), content_hint.width() + extra), hint.height())

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        content = self.widget()
        return hint if content is None else self._with_content_width(
            hint, content.minimumSizeHint())

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        content = self.widget()
        return hint if content is None else self._with_content_width(hint, content.sizeHint())


def scrolling_content(widget: QWidget, min_width: int = 0) -> QWidget:
    """Give ``widget`` a vertical scroll area of at least :data:`MIN_DOCK_HEIGHT` pixels and
    return the widget to lay the content out in."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = _VerticalScroll()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setMinimumHeight(MIN_DOCK_HEIGHT)
    content = QWidget()
    if min_width:
        content.setMinimumWidth(min_width)
    scroll.setWidget(content)
    outer.addWidget(scroll)
    return content


# ----------------------------------------------------------------------------- on docking

#: the outline width (data pixels) of a grader's mask: napari's Labels ``contour``; planes
#: wider than :data:`WIDE_PLANE` get :data:`WIDE_CONTOUR` (see :func:`contour_width`)
GRADER_CONTOUR = 1
#: a plane this many pixels wide (a 512x512 CT slice) is shown at about one screen pixel per
#: data pixel on a 1366x768 laptop: a 1-pixel outline is then a hairline, so it gets 2
WIDE_PLANE = 384
WIDE_CONTOUR = 2
#: after docking, the canvas is fitted again at these delays (ms): the first once Qt has
#: laid the dock out, the later ones in case the window manager resizes the window after it
REFIT_DELAYS_MS = (0, 150, 600)

_outlined_viewers: weakref.WeakSet = weakref.WeakSet()
#: grader layers already given their outline once: the user's later choice is never undone
_outlined_layers: weakref.WeakSet = weakref.WeakSet()


#: napari titles a plugin's dock "<widget> (<package>)"; its tab drops the package
PACKAGE = "napari-probunet"


def on_docked(viewer, widget: QWidget | None = None) -> None:
    """What a widget does when it is made (just before napari docks it): the viewer's graders
    as outlines, the image fitted to the narrower canvas, and ``widget``'s dock title short."""
    viewer = unwrap_viewer(viewer)
    outline_graders(viewer)
    refit_after_docking(viewer)
    if widget is not None:
        ref = weakref.ref(widget)
        QTimer.singleShot(0, lambda: short_dock_title(ref()))


def short_dock_title(widget: QWidget | None) -> str | None:
    """Drop napari's `` (napari-probunet)`` from the title of the dock holding ``widget``:
    with both widgets tabbed (as ``launch`` docks them), "Probabilistic U-Net (napari-..." and
    "Latent-space explorer (napari-..." were cut off at 1400x900. Only the dock's window
    title (its tab, its floating window) changes; napari's own name for it (menus, saved
    positions) stays. Returns the new title, or None where the widget is in no dock."""
    from qtpy.QtWidgets import QDockWidget

    with suppress(RuntimeError):  # the widget was deleted meanwhile
        dock = widget
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parentWidget()
        if dock is None:
            return None
        title, suffix = dock.windowTitle(), f" ({PACKAGE})"
        if title.endswith(suffix):
            dock.setWindowTitle(title[: -len(suffix)])
        return dock.windowTitle()
    return None


def is_alive(qobject) -> bool:
    """Whether a Qt object still exists: a result of a background job can arrive after its
    widget was closed and deleted (with any Qt binding, touching a deleted object raises
    RuntimeError)."""
    try:
        qobject.objectName()
    except RuntimeError:
        return False
    return True


def is_grader_layer(layer) -> bool:
    """A radiologist's (grader's) mask: a Labels layer whose ``metadata["kind"]`` is
    ``"grader"`` (the samples, the multi-rater case reader, a bundle's graders)."""
    from napari.layers import Labels

    meta = getattr(layer, "metadata", None) or {}
    return isinstance(layer, Labels) and meta.get("kind") == "grader"


def outline(layer) -> bool:
    """Draw a grader layer as an outline (``contour``), once: a layer outlined before, or
    whose contour is already set, is left as it is. Returns whether it was changed.

    napari's Labels constructor takes no ``contour``, so the layer data tuples of the readers
    and samples cannot ask for it; this runs when the layer joins a viewer instead."""
    if not is_grader_layer(layer) or layer in _outlined_layers:
        return False
    _outlined_layers.add(layer)
    if layer.contour:
        return False
    layer.contour = contour_width(layer)
    return True


def contour_width(layer) -> int:
    """The outline width for grader ``layer``: :data:`GRADER_CONTOUR` data pixels, or
    :data:`WIDE_CONTOUR` where its plane is wider than :data:`WIDE_PLANE` pixels (so that the
    outline stays readable at 1366x768, where such a plane shows at ~1 screen px per pixel)."""
    side = max(int(n) for n in layer.data.shape[-2:])
    return WIDE_CONTOUR if side > WIDE_PLANE else GRADER_CONTOUR


def outline_graders(viewer) -> None:
    """Outline the viewer's grader layers now and each one that joins it later (once per
    viewer, whichever widget asks first; the watch costs nothing once the widgets close)."""
    viewer = unwrap_viewer(viewer)
    for layer in list(viewer.layers):
        outline(layer)
    if viewer in _outlined_viewers:
        return
    _outlined_viewers.add(viewer)

    def on_inserted(event) -> None:
        outline(event.value)

    viewer.layers.events.inserted.connect(on_inserted)


def at_home(viewer) -> bool:
    """Whether the camera still looks at the centre of the layers (where napari put it when
    the first layer arrived): a user who panned or zoomed about a point has moved it."""
    if not len(viewer.layers) or any(viewer.scene.camera.angles):
        return False  # nothing to fit, or a 3D view the user turned
    world = np.asarray(viewer.layers.extent.world, float)
    shown = list(viewer.dims.displayed)
    centre = (world[0, shown] + world[1, shown]) / 2
    camera = np.asarray(viewer.scene.camera.center, float)[-len(shown):]
    step = np.asarray(viewer.layers.extent.step, float)[shown]
    return bool(np.all(np.abs(camera - centre) <= 0.5 * step))


def refit_after_docking(viewer, delays_ms=REFIT_DELAYS_MS) -> None:
    """Fit the layers to the canvas again once the dock has taken its width, unless the user
    has moved the camera: napari fits the image when it is opened, to the canvas of that
    moment, and keeps the zoom when a dock makes the canvas narrower (the image then runs off
    its sides)."""
    ref = weakref.ref(unwrap_viewer(viewer))

    def refit() -> None:
        v = ref()
        with suppress(RuntimeError):  # the viewer's window was closed meanwhile
            if v is not None and at_home(v):
                v.reset_view()

    for ms in delays_ms:
        QTimer.singleShot(int(ms), refit)
