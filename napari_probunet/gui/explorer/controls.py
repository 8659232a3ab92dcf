"""The explorer's controls: which plane to show above the map, the buttons below it.

:class:`PlaneControls` creates the axis, "others at", background and grid-size controls in one
grid layout (:attr:`PlaneControls.layout`, added to the dock's layout as is) and knows how to
fill the axis lists from a ranking, which axes are chosen, and which controls a model allows.
:class:`MapPanel` is the map with its status line (:class:`StatusLine`) and buttons.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.gui.explorer.latent_map import BACKGROUNDS, LatentMap
from napari_probunet.review import plane as core

HOLD_PRIOR, HOLD_HYPOTHESIS = "prior mean", "selected hypothesis"
#: the last entry of the horizontal list for a mixture prior: the oblique plane (", c3" added
#: when there are three components or more)
THROUGH_COMPONENTS = "components c1, c2"


class PlaneControls:
    """The axis combos, "Auto", "Others at", "Show" and "Grid" (see the module docstring)."""

    def __init__(self, grid_n: int) -> None:
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip(
            "the two axes along which this image's segmentation changes most")
        self.hold_combo = QComboBox()
        self._y_before_oblique = 1  # the vertical axis to show again after the oblique plane
        self.hold_combo.addItems([HOLD_PRIOR, HOLD_HYPOTHESIS])
        self.hold_combo.setToolTip("where the latent coordinates that are not on the map are held")
        self.background_combo = QComboBox()
        self.background_combo.addItems(list(BACKGROUNDS))
        self.grid_spin = QSpinBox()
        self.grid_spin.setRange(3, 21)
        self.grid_spin.setSingleStep(2)
        self.grid_spin.setValue(grid_n)
        self.grid_spin.setToolTip("decoded masks per side of the background grid")
        axes = self.layout = QGridLayout()
        # four columns at most: the explorer shares a ~400 px dock with the review widget
        # (five columns in one row were cut off on the right there)
        axes.addWidget(QLabel("Horizontal"), 0, 0)
        axes.addWidget(self.x_combo, 0, 1, 1, 2)
        axes.addWidget(self.auto_button, 0, 3)
        axes.addWidget(QLabel("Vertical"), 1, 0)
        axes.addWidget(self.y_combo, 1, 1, 1, 2)
        axes.addWidget(QLabel("Others at"), 2, 0)
        axes.addWidget(self.hold_combo, 2, 1, 1, 3)
        axes.addWidget(QLabel("Show"), 3, 0)
        axes.addWidget(self.background_combo, 3, 1)
        axes.addWidget(QLabel("Grid"), 3, 2)
        axes.addWidget(self.grid_spin, 3, 3)

    @property
    def widgets(self) -> tuple:
        return (self.x_combo, self.y_combo, self.hold_combo, self.background_combo,
                self.grid_spin, self.auto_button)

    @property
    def holds_hypothesis(self) -> bool:
        """Whether the coordinates off the plane are held at the selected hypothesis."""
        return self.hold_combo.currentText() == HOLD_HYPOTHESIS

    @property
    def background(self) -> str:
        """What the map's background shows (one of :data:`BACKGROUNDS`)."""
        return self.background_combo.currentText()

    def fill_axes(self, d: int, ranking: list[core.AxisScore], components: int = 0) -> None:
        """List the ``d`` latent axes (their ranking as tooltips) and choose the top two;
        enable what a ``d``-dimensional latent allows. A mixture prior of ``components >= 2``
        also gets :data:`THROUGH_COMPONENTS` at the end of the horizontal list."""
        order = [s.axis for s in ranking]
        scores = {s.axis: s for s in ranking}
        for combo in (self.x_combo, self.y_combo):
            combo.blockSignals(True)
            combo.clear()
            for i in range(d):
                combo.addItem(core.axis_name(i))
                s = scores.get(i)
                if s is not None:
                    combo.setItemData(
                        i, f"change along {core.axis_name(i)} at \u00b1{core.PROBE_STEP:g}\u03c3: "
                        f"{s.change:.2f} (1 - IoU), {s.pixels:.1%} of pixels",
                        Qt.ItemDataRole.ToolTipRole)
            combo.blockSignals(False)
        if components >= 2 and d > 1:
            self.x_combo.addItem(THROUGH_COMPONENTS + (", c3" if components > 2 else ""))
            self.x_combo.setItemData(
                d, "an oblique plane through the means of the three heaviest mixture "
                "components (c1 to c2 across, toward c3 up)", Qt.ItemDataRole.ToolTipRole)
        self.x_combo.setCurrentIndex(order[0])
        if d > 1:
            self.y_combo.setCurrentIndex(order[1])
        self.y_combo.setEnabled(d > 1)
        self.x_combo.setEnabled(d > 1)
        self.auto_button.setEnabled(d > 1)
        self.hold_combo.setEnabled(d > 2)
        self.background_combo.setEnabled(True)
        self.grid_spin.setEnabled(True)

    @property
    def through_components(self) -> bool:
        """Whether the oblique plane through a mixture's components is chosen."""
        return self.x_combo.currentText().startswith(THROUGH_COMPONENTS)

    def sync_plane_kind(self, d: int) -> None:
        """The vertical axis and "Others at" mean nothing on the oblique plane: disable them
        there, enable them again on a plane of two axes."""
        oblique = self.through_components
        self.y_combo.setEnabled(d > 1 and not oblique)
        self.hold_combo.setEnabled(d > 2 and not oblique)
        if oblique and self.y_combo.currentIndex() >= 0:  # shown empty: no axis is up
            self._y_before_oblique = self.y_combo.currentIndex()
            self.y_combo.setCurrentIndex(-1)
        elif not oblique and self.y_combo.currentIndex() < 0 and d > 1:
            x = self.x_combo.currentIndex()
            y = self._y_before_oblique
            self.y_combo.setCurrentIndex(y if y != x else next(i for i in range(d) if i != x))

    def chosen_axes(self, d: int) -> tuple[int, int | None]:
        """The axes chosen for a ``d``-dimensional latent: two different ones, or one and None."""
        x = self.x_combo.currentIndex() if self.x_combo.count() else 0
        x = x if x < d else 0  # the oblique entry: the plane is not one of axes
        y = (self.y_combo.currentIndex() if self.y_combo.count() else 1) if d > 1 else None
        if y is not None and y < 0:  # shown empty on the oblique plane
            y = self._y_before_oblique if self._y_before_oblique < d else 1
        if y == x:
            y = next(i for i in range(d) if i != x)
        return x, y

    def keep_two_axes(self, which: str, old_x: int, old_y: int | None) -> None:
        """After the user chose axis ``which`` (``"x"`` or ``"y"``): if both now name the same
        axis, the other one takes the chosen one's old axis (a swap)."""
        if self.through_components:
            return
        if self.x_combo.currentIndex() == self.y_combo.currentIndex():
            if which == "x":
                self.y_combo.setCurrentIndex(old_x)
            else:
                self.x_combo.setCurrentIndex(old_y)


class MapPanel(QWidget):
    """The map, the status line under it and the buttons "Use as best fit", "Prior mean" and
    "Open review widget" (the top part of the explorer's splitter)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__()
        top_layout = QVBoxLayout(self)
        top_layout.setContentsMargins(0, 0, 0, 0)
        self.map = LatentMap(parent)
        top_layout.addWidget(self.map, stretch=1)
        self.status = StatusLine()
        top_layout.addWidget(self.status)
        buttons = QHBoxLayout()
        self.best_fit_button = QPushButton("Use as best fit")
        self.best_fit_button.setToolTip(
            "make the segmentation at the current point the editable correction (z is recorded)")
        self.centre_button = QPushButton("Prior mean")
        self.centre_button.setToolTip("go back to the centre of the map (Home key)")
        self.open_review_button = QPushButton("Open review widget")
        self.open_review_button.setToolTip("load a model and encode an image region there")
        for button in (self.best_fit_button, self.centre_button, self.open_review_button):
            buttons.addWidget(button)
        top_layout.addLayout(buttons)


class StatusLine(QWidget):
    """The line under the map: word-wrapped, selectable text (``setText``, ``text``) whose
    change lays the window out again only when it needs another number of lines.

    A ``QLabel`` in a layout asks every parent up to the main window to lay out again on each
    ``setText``; while dragging (4 status updates a second) each of those repainted most of the
    window, recomposed through napari's OpenGL canvas on its own. Here the label sits in this
    holder, which has no layout: the holder's fixed height follows the label's lines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.label = QLabel("", self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self._fit()

    def text(self) -> str:
        return self.label.text()

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        self.label.setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        width = max(1, self.width())
        height = self.label.heightForWidth(width)
        if height < 0:
            height = self.label.sizeHint().height()
        if height != self.maximumHeight():
            self.setFixedHeight(height)  # another line count: a relayout, rarely
        self.label.setGeometry(0, 0, width, height)
