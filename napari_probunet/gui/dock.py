"""The dock widgets' shared frame: content in a vertical scroll area.

Docked one under the other (what the Plugins menu does) or in a short window, a widget then
scrolls instead of squeezing its rows or forcing the window taller than the screen.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: the docks' minimum height; their content scrolls below it
MIN_DOCK_HEIGHT = 300


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
