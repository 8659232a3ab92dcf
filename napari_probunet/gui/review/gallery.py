"""The review widget's Gallery: all hypotheses at a glance, to show, mark and pick from.

A collapsible box under the Sampling box: one thumbnail per hypothesis (the region in grey,
the hypothesis as a fill with a contour, :mod:`.thumbnails`) in a scrolling grid, the shown
hypothesis highlighted. Click (or the arrow keys in the grid) shows a hypothesis, as the
navigation does; ``.``/``,`` step in hypothesis order there too; double-click or Enter makes it
the best fit (the controller's ``use_as_best_fit``). Right-click, the buttons, or the keys
``S`` and ``X`` shortlist or reject one: shortlisted thumbnails get a gold frame and star (and
their layer joins the viewer), rejected ones are dimmed and crossed out, and *Hide rejected*
takes them out of the grid. *Order*: seed order, or grouped by similarity
(:func:`napari_probunet.review.ordering.similarity_order`).

Building stays off the critical path: the thumbnails of all ``N`` are composed with NumPy in
one go (milliseconds) when the hypotheses arrive; turning them into icons runs in batches of
about 20 ms per event-loop turn, the shown hypothesis first.

API (``widget.gallery``): :attr:`thumbnails` (one ``QImage`` per hypothesis, ``None`` until
drawn), :attr:`pending`, :meth:`select`, :meth:`mark`, :attr:`marks`, :attr:`order` /
:meth:`set_order`, :attr:`hide_rejected` / :meth:`set_hide_rejected`, :meth:`displayed`.
"""

from __future__ import annotations

import time
from contextlib import suppress

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.gui.review import thumbnails
from napari_probunet.gui.review.common import HYPOTHESIS_COLOURS, KEY_NEXT, KEY_PREVIOUS
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.ordering import ORDERS, ordered

MARKS = ("shortlist", "reject")
ORDER_LABELS = {"seed": "Seed order", "similarity": "Grouped by similarity"}
_STYLE = """
QListWidget::item { border: 2px solid transparent; border-radius: 3px; }
QListWidget::item:selected { border: 3px solid #ffffff; background: rgba(80, 150, 255, 60); }
"""


def _later(func) -> None:
    """Call ``func`` on the next event-loop turn, unless its widgets are gone by then."""
    def call():
        with suppress(RuntimeError):  # a deleted Qt object: the widget went away
            func()

    QTimer.singleShot(0, call)


class _Grid(QListWidget):
    """The thumbnails' grid, with the gallery's keys."""

    def __init__(self, gallery: Gallery) -> None:
        super().__init__()
        self.gallery = gallery

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        g, text = self.gallery, event.text()
        c = g.controller
        actions = {KEY_NEXT: c.next_hypothesis, KEY_PREVIOUS: c.previous_hypothesis,
                   "s": lambda: g.toggle(g.current, "shortlist"),
                   "x": lambda: g.toggle(g.current, "reject")}
        if text.lower() in actions:
            actions[text.lower()]()
        elif event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            c.use_as_best_fit(g.current)
        else:
            super().keyPressEvent(event)


class Gallery:
    """The Gallery box of the review."""

    #: thumbnail side in pixels
    SIZE = 80
    #: time budget of one batch of icons (seconds), then Qt gets the event loop back
    BATCH_S = 0.02

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.state = controller.state
        self.marks: dict[int, str] = {}
        self.order = "seed"
        self.hide_rejected = False
        self.thumbnails: list[QImage | None] = []
        #: seconds spent building the gallery (composing and drawing), summed over batches
        self.build_seconds = 0.0
        self._hypotheses = None  # the state's Hypotheses the gallery shows
        #: the part of the region the thumbnails show, ``(r0, r1, c0, c1)``
        self.box_shown: tuple[int, int, int, int] | None = None
        self._rgb: np.ndarray | None = None
        self._areas: np.ndarray | None = None
        self._orders: dict[str, np.ndarray] = {}
        self._items: dict[int, QListWidgetItem] = {}
        self._todo: list[int] = []
        self._syncing = False
        blank = QPixmap(self.SIZE, self.SIZE)
        blank.fill(QColor(40, 40, 40))
        self._blank = QIcon(blank)
        self.box = self._build()
        c = controller
        c.hook_all(((c.hypotheses_changed, self.rebuild),
                    (c.encoded_changed, self.rebuild), (c.model_changed, self.rebuild),
                    (c.current_changed, self.on_current_changed),
                    (c.layers_changed, self._update_summary)))
        self.rebuild()

    # ------------------------------------------------------------------ the box
    def _build(self) -> QGroupBox:
        box = QGroupBox("Gallery")
        lay = QVBoxLayout(box)
        head = QHBoxLayout()
        self.toggle_button = QToolButton()
        self.toggle_button.setCheckable(True)
        self.toggle_button.setChecked(True)
        self.toggle_button.setArrowType(Qt.ArrowType.DownArrow)
        self.toggle_button.setToolTip("Show or hide the thumbnails")
        self.toggle_button.toggled.connect(self.set_expanded)
        self.summary = QLabel("No hypotheses yet")
        self.summary.setWordWrap(True)
        head.addWidget(self.toggle_button)
        head.addWidget(self.summary, 1)
        lay.addLayout(head)
        self.content = QWidget()
        inner = QVBoxLayout(self.content)
        inner.setContentsMargins(0, 0, 0, 0)
        inner.addLayout(self._build_options())
        inner.addWidget(self._build_grid())
        inner.addLayout(self._build_buttons())
        lay.addWidget(self.content)
        return box

    def _build_options(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.order_combo = QComboBox()
        for key in ORDERS:
            self.order_combo.addItem(ORDER_LABELS[key], key)
        self.order_combo.setToolTip("Seed order (1, 2, 3, … as drawn), or similar hypotheses "
                                    "next to each other (empty ones first)")
        self.order_combo.currentIndexChanged.connect(
            lambda _: self.set_order(self.order_combo.currentData()))
        self.hide_rejected_check = QCheckBox("Hide rejected")
        self.hide_rejected_check.toggled.connect(self.set_hide_rejected)
        row.addWidget(self.order_combo, 1)
        row.addWidget(self.hide_rejected_check)
        return row

    def _build_grid(self) -> QListWidget:
        grid = self.grid = _Grid(self)
        grid.setViewMode(QListView.ViewMode.IconMode)
        grid.setIconSize(QSize(self.SIZE, self.SIZE))
        grid.setGridSize(QSize(self.SIZE + 10, self.SIZE + 22))
        grid.setResizeMode(QListView.ResizeMode.Adjust)
        grid.setMovement(QListView.Movement.Static)
        grid.setWrapping(True)
        grid.setUniformItemSizes(True)
        grid.setSpacing(2)
        grid.setMinimumHeight(2 * (self.SIZE + 22) + 8)
        grid.setStyleSheet(_STYLE)
        grid.setToolTip("All thumbnails show the same part of the region, around the "
                        "hypotheses.\nClick: show · double-click or Enter: use as best fit · "
                        "right-click, S, X: shortlist, reject · arrows, '.' ',': move")
        grid.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        grid.customContextMenuRequested.connect(self._context_menu)
        grid.currentItemChanged.connect(lambda item, _: self._on_item(item))
        grid.itemClicked.connect(self._on_item)
        grid.itemDoubleClicked.connect(
            lambda item: self.controller.use_as_best_fit(self._index(item)))
        return grid

    def _build_buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.shortlist_button = QPushButton("★ Shortlist")
        self.shortlist_button.setToolTip("Shortlist the shown hypothesis, or take it off the "
                                         "shortlist (key in the grid: S); its layer joins the "
                                         "layer list")
        self.shortlist_button.clicked.connect(lambda: self.toggle(self.current, "shortlist"))
        self.reject_button = QPushButton("✕ Reject")
        self.reject_button.setToolTip("Reject the shown hypothesis, or take the mark back "
                                      "(key in the grid: X)")
        self.reject_button.clicked.connect(lambda: self.toggle(self.current, "reject"))
        self.add_layers_button = QPushButton("Add all layers")
        self.add_layers_button.setToolTip(
            "Put every hypothesis's layer into the layer list (with many hypotheses they join "
            "only when shown or shortlisted)")
        self.add_layers_button.clicked.connect(self.add_all_layers)
        for b in (self.shortlist_button, self.reject_button, self.add_layers_button):
            row.addWidget(b)
        return row

    def set_expanded(self, on: bool) -> None:
        """Show or hide the thumbnails (the box's arrow)."""
        self.toggle_button.blockSignals(True)
        self.toggle_button.setChecked(on)
        self.toggle_button.blockSignals(False)
        self.toggle_button.setArrowType(
            Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.content.setVisible(on)

    # ------------------------------------------------------------------ state
    @property
    def current(self) -> int:
        """The hypothesis shown (0-based)."""
        return self.controller.current

    @property
    def count(self) -> int:
        return len(self.thumbnails)

    @property
    def pending(self) -> int:
        """How many thumbnails are still to be drawn."""
        return len(self._todo)

    def displayed(self) -> list[int]:
        """The hypotheses in the grid, in its order, without the hidden (rejected) ones."""
        return [self._index(self.grid.item(r)) for r in range(self.grid.count())
                if not self.grid.item(r).isHidden()]

    def rebuild(self, *_) -> None:
        """Take the state's hypotheses (new ones drop the marks) and fill the grid."""
        if self.controller.closed:
            return
        hyp = self.state.hypotheses
        if hyp is not self._hypotheses:
            self.marks = {}
        self._hypotheses = hyp
        self._orders = {}
        self._todo = []
        if hyp is None or len(hyp.labels) == 0:
            self.thumbnails, self._rgb, self._areas = [], None, None
            self._fill()
            return
        t0 = time.perf_counter()
        labels = np.asarray(hyp.labels)
        enc = self.state.encoded
        image = getattr(enc, "image", None)
        if image is None or np.shape(image)[:2] != labels.shape[1:]:
            image = None
        self.box_shown = thumbnails.focus(labels)
        self._rgb = thumbnails.render(image, labels, self.SIZE, HYPOTHESIS_COLOURS,
                                      self.box_shown)
        self._areas = np.count_nonzero(labels.reshape(len(labels), -1), axis=1)
        self.thumbnails = [None] * len(labels)
        self._fill()
        first = self.current if 0 <= self.current < len(labels) else 0
        self._todo = [first] + [i for i in self._order() if i != first]
        self.build_seconds += time.perf_counter() - t0
        self._draw_batch()

    def _order(self) -> np.ndarray:
        hyp = self._hypotheses
        if self.order not in self._orders:
            num_classes = self.state.model.config.num_classes if self.state.model else 2
            num_classes = max(num_classes, int(np.max(hyp.labels, initial=0)) + 1)
            self._orders[self.order] = ordered(np.asarray(hyp.labels), self.order, num_classes)
        return self._orders[self.order]

    def _fill(self) -> None:
        """(Re)create the grid's items in the current order."""
        self._syncing = True
        try:
            self.grid.clear()
            self._items = {}
            if self.thumbnails:
                for i in self._order():
                    i = int(i)
                    item = QListWidgetItem(self._icon(i), str(i + 1))
                    item.setData(Qt.ItemDataRole.UserRole, i)
                    item.setTextAlignment(Qt.AlignmentFlag.AlignHCenter)
                    self._items[i] = item
                    self.grid.addItem(item)
                    self._describe(i)
        finally:
            self._syncing = False
        self._apply_filter()
        self.on_current_changed()

    def _draw_batch(self) -> None:
        """Draw thumbnails for about :attr:`BATCH_S`, then give Qt the event loop back."""
        if self.controller.closed or not self._todo:
            return
        t0 = time.perf_counter()
        rgb = self._rgb
        while self._todo and time.perf_counter() - t0 < self.BATCH_S:
            i = self._todo.pop(0)
            self.thumbnails[i] = thumbnails.to_qimage(rgb[i])
            self._redraw(i)
        self.build_seconds += time.perf_counter() - t0
        if self._todo:
            _later(self._draw_batch)

    def _icon(self, i: int) -> QIcon:
        image = self.thumbnails[i] if i < len(self.thumbnails) else None
        if image is None:
            return self._blank
        return QIcon(thumbnails.decorate(image, self.marks.get(i), self.SIZE))

    def _redraw(self, i: int) -> None:
        item = self._items.get(i)
        if item is not None:
            item.setIcon(self._icon(i))
            self._describe(i)

    def _describe(self, i: int) -> None:
        item = self._items[i]
        mark = {"shortlist": " · shortlisted", "reject": " · rejected"}.get(self.marks.get(i), "")
        empty = " · empty" if self._areas[i] == 0 else ""
        item.setText(f"{i + 1}{empty}{' ★' if self.marks.get(i) == 'shortlist' else ''}")
        item.setToolTip(f"Hypothesis {i + 1} · {int(self._areas[i])} px{mark}\nClick: show · "
                        "double-click: use as best fit · right-click: mark")

    def _index(self, item) -> int:
        return int(item.data(Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ actions
    def select(self, index: int) -> None:
        """Show hypothesis ``index`` (as a click on its thumbnail)."""
        self.controller.show_hypothesis(int(index))

    def mark(self, index: int, mark: str | None) -> None:
        """Shortlist (``"shortlist"``) or reject (``"reject"``) hypothesis ``index``, or clear
        its mark (``None``). A shortlisted hypothesis's layer joins the viewer."""
        if mark not in (*MARKS, None):
            raise ValueError(f"unknown mark {mark!r}; expected one of {MARKS} or None")
        index = int(index)
        if not 0 <= index < self.count:
            return
        if mark is None:
            self.marks.pop(index, None)
        else:
            self.marks[index] = mark
        if mark == "shortlist":
            self.controller.want_layer(index)
        self._redraw(index)
        self._apply_filter()
        self._update_summary()

    def toggle(self, index: int, mark: str) -> None:
        """Set ``mark`` on hypothesis ``index``, or clear it if it has that mark already."""
        self.mark(index, None if self.marks.get(index) == mark else mark)

    def set_order(self, order: str) -> None:
        """``"seed"`` or ``"similarity"``."""
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
        self.order = order
        k = self.order_combo.findData(order)
        if self.order_combo.currentIndex() != k:
            self.order_combo.setCurrentIndex(k)  # comes back here
            return
        if self._todo:  # draw the rest in the new order
            self._todo = [int(i) for i in self._order() if int(i) in set(self._todo)]
        self._fill()

    def set_hide_rejected(self, on: bool) -> None:
        """Take the rejected hypotheses out of the grid (or put them back)."""
        self.hide_rejected = bool(on)
        if self.hide_rejected_check.isChecked() != self.hide_rejected:
            self.hide_rejected_check.setChecked(self.hide_rejected)
        self._apply_filter()

    def add_all_layers(self) -> None:
        """Put every hypothesis's layer into the viewer (a few per event-loop turn)."""
        self.controller.want_all_layers()
        self._update_summary()

    def scroll_to_current(self) -> None:
        item = self._items.get(self.current)
        if item is not None:
            self.grid.scrollToItem(item)

    def _apply_filter(self) -> None:
        for i, item in self._items.items():
            item.setHidden(self.hide_rejected and self.marks.get(i) == "reject")

    def _context_menu(self, pos) -> None:
        item = self.grid.itemAt(pos)
        if item is None:
            return
        i = self._index(item)
        menu = QMenu(self.grid)
        menu.addAction(f"Show hypothesis {i + 1}", lambda: self.select(i))
        menu.addAction("Use as best fit", lambda: self.controller.use_as_best_fit(i))
        menu.addSeparator()
        for mark, text in (("shortlist", "Shortlist"), ("reject", "Reject")):
            action = menu.addAction(text, lambda m=mark: self.toggle(i, m))
            action.setCheckable(True)
            action.setChecked(self.marks.get(i) == mark)
        menu.addAction("Clear the mark", lambda: self.mark(i, None)).setEnabled(i in self.marks)
        menu.exec(self.grid.viewport().mapToGlobal(pos))

    # ------------------------------------------------------------------ the shown hypothesis
    def _on_item(self, item) -> None:
        """The user clicked a thumbnail or moved with the arrow keys: show that hypothesis."""
        if self._syncing or item is None:
            return
        i = self._index(item)
        layers = self.state.hypothesis_layers
        shown = i < len(layers) and layers[i].visible and layers[i] in self.viewer.layers
        if i != self.current or not shown:
            self.select(i)

    def on_current_changed(self, index: int | None = None) -> None:
        """The shown hypothesis changed (anywhere; ``index`` from the state's event, which may
        reach the gallery before the widget): move the highlight to it."""
        item = self._items.get(self.current if index is None else int(index))
        self._syncing = True
        try:
            if item is None:
                self.grid.setCurrentItem(None)
            elif self.grid.currentItem() is not item:
                self.grid.setCurrentItem(item)
            if item is not None:
                self.grid.scrollToItem(item)
        finally:
            self._syncing = False
        self._update_summary()
        if index is not None:  # a layer may join once the widget has heard of it too
            _later(self._update_summary)

    def _update_summary(self) -> None:
        if self.controller.closed:
            return
        n = self.count
        has = n > 0
        for b in (self.shortlist_button, self.reject_button):
            b.setEnabled(has)
        deferred = self.controller.layers_deferred
        self.add_layers_button.setVisible(deferred > 0)
        if not has:
            self.summary.setText("No hypotheses yet")
            return
        marks = list(self.marks.values())
        parts = [f"{n} hypotheses", f"★ {marks.count('shortlist')}", f"✕ {marks.count('reject')}"]
        if deferred:
            parts.append(f"layers in the list: {n - deferred} of {n}")
        self.summary.setText(" · ".join(parts))
