"""The latent-space map: a Qt widget painting a plane through the prior.

Decoded masks (or their foreground area) across the plane, the prior's 1- and 2-sigma
contours, a marker per hypothesis, per assessed annotation and for the current point, painted
from cached pictures. Clicks and drags are reported as signals; the explorer dock widget
(:mod:`napari_probunet.gui.explorer.widget`) decides what to decode. The drawing itself is in
:mod:`napari_probunet.gui.explorer.painting`; this widget keeps the geometry (plane coordinates
to pixels and back), the picture cache, the repaint throttle, and the mouse and keys.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QFontMetrics, QImage, QPainter, QPixmap
from qtpy.QtWidgets import QSizePolicy, QToolTip, QWidget

from napari_probunet.gui.explorer.painting import (
    BACKGROUNDS,
    legend_lines,
    paint_markers,
    paint_static,
    theme_colors,
)
from napari_probunet.review import plane as core

__all__ = ["BACKGROUNDS", "HIT_RADIUS", "REPAINT_HZ", "SYNC_FALLBACK_S", "LatentMap",
           "MapMarkers"]

#: the most map repaints per second while dragging (the napari canvas needs the CPU more)
REPAINT_HZ = 30
#: while dragging the map repaints with each new frame; without one it waits this long
SYNC_FALLBACK_S = 0.1
#: marker hit radius in pixels
HIT_RADIUS = 8.0
#: how far the current point's marker (a crosshair of arms 12 px, pen 4 px) reaches from it
POINT_REACH = 16.0


@dataclass
class MapMarkers:
    """What the map draws on top of its background, in plane coordinates."""

    hypotheses: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (k, 2)
    hypothesis_off_plane: np.ndarray = field(default_factory=lambda: np.zeros(0))
    selected_hypothesis: int | None = None
    annotations: list[tuple[str, float, float, bool]] = field(default_factory=list)
    selected_annotation: int | None = None
    point: tuple[float, float] | None = None
    # mixture prior only: (u, v, weight) of each component's mean
    components: list[tuple[float, float, float]] = field(default_factory=list)


class LatentMap(QWidget):
    """The painted map of a plane (or line) through the prior.

    Coordinates are plane coordinates ``(u, v)`` in prior sigmas; :meth:`to_pixel` and
    :meth:`to_plane` convert. Signals: ``point_moved(u, v, final)`` while the user clicks or
    drags, ``hypothesis_clicked(index)``, ``annotation_clicked(index)``, ``repainting()``.
    """

    point_moved = Signal(float, float, bool)
    #: a repaint of the map is about to be asked for (what else changes on screen with it
    #: then shares its window composition)
    repainting = Signal()
    hypothesis_clicked = Signal(int)
    annotation_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(280, 300)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setCursor(Qt.CursorShape.CrossCursor)
        # every paint covers the whole widget (paint_static fills it): Qt then repaints none of
        # the dock's widgets under it, which it did for each frame of a drag
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.extent = core.DEFAULT_EXTENT
        self.is_line = False
        self.axis_labels = ("z1 / \u03c3", "z2 / \u03c3")
        self.hint = "No model yet"
        self.line_cells = core.DEFAULT_GRID  # thumbnails in a line plot's strip (the grid's n)
        self._background: QImage | None = None
        self._background_version = 0
        self.background_kind = BACKGROUNDS[0]
        self.progress: str = ""
        self.class_legend: list[tuple[str, QColor]] = []
        self.markers = MapMarkers()
        self.colors = theme_colors()
        self.paint_count = 0
        self.paint_seconds = 0.0
        self._press: tuple[QPointF, str, int] | None = None  # (where, what, index)
        self._dragging = False
        self._last_paint = 0.0
        self._whole_dirty = True  # a repaint must cover more than the current point's marker
        self._point_painted: QRectF | None = None  # where the point's marker was last painted
        self._static: QPixmap | None = None
        self._static_key: tuple = ()
        self._repaint_timer = QTimer(self)
        self._repaint_timer.setSingleShot(True)
        self._repaint_timer.timeout.connect(self._repaint_now)

    @property
    def background(self) -> QImage | None:
        """The picture under the plane: decoded masks or their area, one cell per grid point."""
        return self._background

    @background.setter
    def background(self, image: QImage | None) -> None:
        self._background = image
        self._background_version += 1

    # -- geometry ------------------------------------------------------------------------------
    def legend_height(self) -> int:
        """Pixels below the axes reserved for the legend: as many lines as it wraps onto at
        this width (it took 3 at 1366x768 with 2 reserved, and ran into the status line)."""
        fm = QFontMetrics(self.font())
        return legend_lines(self) * (fm.height() + 4) + 6

    def plot_rect(self) -> QRectF:
        """The square (or, for a line, the strip) the plane is drawn in, in widget pixels."""
        fm = QFontMetrics(self.font())
        left, right, top = fm.height() + fm.horizontalAdvance("-3") + 10, 10, 8
        bottom = 2 * fm.height() + 10 + self.legend_height()
        w = max(10.0, self.width() - left - right)
        h = max(10.0, self.height() - top - bottom)
        if self.is_line:
            return QRectF(left, top, w, h)
        side = min(w, h)
        return QRectF(left + (w - side) / 2, top + (h - side) / 2, side, side)

    def to_pixel(self, u: float, v: float = 0.0) -> QPointF:
        r, e = self.plot_rect(), self.extent
        x = r.left() + (u + e) / (2 * e) * r.width()
        if self.is_line:
            return QPointF(x, self.line_baseline(r))
        return QPointF(x, r.top() + (e - v) / (2 * e) * r.height())

    def to_plane(self, pos: QPointF) -> tuple[float, float]:
        r, e = self.plot_rect(), self.extent
        u = (pos.x() - r.left()) / r.width() * 2 * e - e
        v = 0.0 if self.is_line else e - (pos.y() - r.top()) / r.height() * 2 * e
        return float(np.clip(u, -e, e)), float(np.clip(v, -e, e))

    def line_layout(self, r: QRectF) -> tuple[QRectF, QRectF]:
        """A line plot: the strip of thumbnails on top, the prior density below."""
        cell = min(r.width() / max(1, self.line_cells), r.height() * 0.55)
        strip = QRectF(r.left(), r.top(), r.width(), cell)
        density = QRectF(r.left(), r.top() + cell + 6, r.width(), r.height() - cell - 6)
        return strip, density

    def line_baseline(self, r: QRectF) -> float:
        """The y of a line plot's density axis (the current point's marker sits on it)."""
        return self.line_layout(r)[1].bottom() - 10

    # -- repaint throttle ------------------------------------------------------------------------
    def request_repaint(self, delay: float = 0.0, point_only: bool = False) -> None:
        """Repaint after ``delay`` seconds or later, at most :data:`REPAINT_HZ` times a second.

        ``point_only``: only the current point moved (a drag): the repaint covers its marker's
        old and new places, not the whole map."""
        self._whole_dirty |= not point_only
        if self._repaint_timer.isActive():
            return
        wait = max(delay, 1.0 / REPAINT_HZ - (time.perf_counter() - self._last_paint))
        self._repaint_timer.start(max(0, int(wait * 1000)))

    def repaint_with_frame(self, force: bool = False, point_only: bool = False) -> None:
        """Repaint together with a new napari frame (one window composition for both).

        With napari's OpenGL canvas in the window, every repaint of any widget recomposes the
        whole window; repainting the map in the same event-loop pass as the canvas costs one
        composition instead of two. Within ``1 / REPAINT_HZ`` of the last repaint the map
        waits for the next frame instead (or, if none comes, for the fallback timer).
        ``point_only`` as for :meth:`request_repaint`.
        """
        self._whole_dirty |= not point_only
        self._repaint_timer.stop()
        if force or time.perf_counter() - self._last_paint >= 1.0 / REPAINT_HZ:
            self._repaint_now()
        else:
            self._repaint_timer.start(int(SYNC_FALLBACK_S * 1000))

    def _repaint_now(self) -> None:
        self.repainting.emit()
        old, new = self._point_painted, self.point_rect()
        if self._whole_dirty or old is None or new is None:
            self.update()
        else:
            self.update(old.united(new).toAlignedRect())

    def point_rect(self) -> QRectF | None:
        """The rectangle the current point's marker covers (None without a point or plane)."""
        if self.markers.point is None or self.hint:
            return None
        pt, reach = self.to_pixel(*self.markers.point), POINT_REACH
        if self.is_line:  # its vertical line spans the plot
            r = self.plot_rect()
            return QRectF(pt.x() - reach, r.top() - reach, 2 * reach, r.height() + 2 * reach)
        return QRectF(pt.x() - reach, pt.y() - reach, 2 * reach, 2 * reach)

    # -- painting --------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        t0 = time.perf_counter()
        self._last_paint = t0
        if event.rect().contains(self.rect()):
            self._whole_dirty = False
        self._point_painted = self.point_rect()
        p = QPainter(self)
        try:
            p.drawPixmap(0, 0, self._static_picture())
            if not self.hint:
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                paint_markers(self, p)
        finally:
            p.end()
        self.paint_count += 1
        self.paint_seconds += time.perf_counter() - t0

    def _static_picture(self) -> QPixmap:
        """Everything but the markers, drawn once per change (a repaint then only blits it)."""
        key = (self.width(), self.height(), self.devicePixelRatioF(), self._background_version,
               self.background_kind, self.axis_labels, self.is_line, self.extent, self.hint,
               self.progress, self.line_cells, tuple(n for n, _ in self.class_legend))
        if self._static is None or self._static_key != key:
            ratio = self.devicePixelRatioF()
            pixmap = QPixmap(max(1, round(self.width() * ratio)),
                             max(1, round(self.height() * ratio)))
            pixmap.setDevicePixelRatio(ratio)
            p = QPainter(pixmap)
            try:
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                p.setFont(self.font())
                paint_static(self, p)
            finally:
                p.end()
            self._static, self._static_key = pixmap, key
        return self._static

    # -- mouse and keys --------------------------------------------------------------------------
    def marker_pixel(self, u: float, v: float) -> QPointF:
        """Where a marker is drawn: its place, or the nearest edge of the map beyond it."""
        e = self.extent
        return self.to_pixel(float(np.clip(u, -e, e)), float(np.clip(v, -e, e)))

    def _hit(self, pos: QPointF) -> tuple[str, int]:
        best, what = HIT_RADIUS**2, ("", -1)
        for k, (_name, u, v, _) in enumerate(self.markers.annotations):
            d = self.marker_pixel(u, v) - pos
            if d.x() ** 2 + d.y() ** 2 <= best:
                best, what = d.x() ** 2 + d.y() ** 2, ("annotation", k)
        for k, (u, v) in enumerate(self.markers.hypotheses):
            d = self.marker_pixel(u, v) - pos
            if d.x() ** 2 + d.y() ** 2 <= best:
                best, what = d.x() ** 2 + d.y() ** 2, ("hypothesis", k)
        return what

    @staticmethod
    def _pos(event) -> QPointF:
        return event.position() if hasattr(event, "position") else QPointF(event.pos())

    def mousePressEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self.hint or event.button() != Qt.MouseButton.LeftButton:
            return super().mousePressEvent(event)
        pos = self._pos(event)
        what, index = self._hit(pos)
        self._press = (pos, what, index)
        self._dragging = not what
        if what == "hypothesis":
            self.hypothesis_clicked.emit(index)
        elif what == "annotation":
            self.annotation_clicked.emit(index)
        else:
            self.point_moved.emit(*self.to_plane(pos), False)
        event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        pos = self._pos(event)
        if self._press is None or not (event.buttons() & Qt.MouseButton.LeftButton):
            self._hover(pos, event)
            return
        if not self._dragging:
            d = pos - self._press[0]
            if abs(d.x()) + abs(d.y()) < 5:
                return
            self._dragging = True
        self.point_moved.emit(*self.to_plane(pos), False)
        event.accept()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802 - Qt API
        if self._press is not None and self._dragging:
            self.point_moved.emit(*self.to_plane(self._pos(event)), True)
        self._press, self._dragging = None, False
        event.accept()

    def _hover(self, pos: QPointF, event) -> None:
        if self.hint:
            return
        what, k = self._hit(pos)
        m = self.markers
        if what == "hypothesis":
            u, v = m.hypotheses[k]
            off = m.hypothesis_off_plane[k] if k < len(m.hypothesis_off_plane) else 0.0
            text = f"hypothesis {k + 1}: ({u:+.2f}, {v:+.2f})\u03c3"
            if off > 1e-3:
                text += f"\n{off:.2f}\u03c3 off this plane (shown: its projection)"
            text += "\nclick: show its layer"
        elif what == "annotation":
            name, u, v, outlier = m.annotations[k]
            text = f"{name}: posterior mean ({u:+.2f}, {v:+.2f})\u03c3"
            if outlier:
                text += "\nflagged as an outlier"
        else:
            QToolTip.hideText()
            return
        if hasattr(event, "globalPosition"):
            gp = event.globalPosition().toPoint()
        else:  # Qt 5
            gp = event.globalPos()
        QToolTip.showText(gp, text, self)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt API
        point = self.markers.point or (0.0, 0.0)
        step = 0.5 if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else 0.1
        moves = {Qt.Key.Key_Left: (-step, 0), Qt.Key.Key_Right: (step, 0),
                 Qt.Key.Key_Up: (0, step), Qt.Key.Key_Down: (0, -step)}
        key = event.key()
        if key in moves and not self.hint:
            du, dv = moves[key]
            e = self.extent
            u = float(np.clip(point[0] + du, -e, e))
            v = 0.0 if self.is_line else float(np.clip(point[1] + dv, -e, e))
            self.point_moved.emit(u, v, True)
        elif key == Qt.Key.Key_Home and not self.hint:
            self.point_moved.emit(0.0, 0.0, True)
        else:
            super().keyPressEvent(event)
