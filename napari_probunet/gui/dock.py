"""What the dock widgets share: the viewer's review state, and a frame that scrolls.

:func:`get_state` gives every widget of one viewer the same
:class:`~napari_probunet.review.state.ReviewState`. :func:`scrolling_content`: docked one under
the other (what the Plugins menu does) or in a short window, a widget scrolls instead of
squeezing its rows or forcing the window taller than the screen.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
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


def scrolling_content(widget: QWidget, min_width: int = 0) -> QWidget:
    """Give ``widget`` a vertical scroll area of at least :data:`MIN_DOCK_HEIGHT` pixels and
    return the widget to lay the content out in."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea()
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
