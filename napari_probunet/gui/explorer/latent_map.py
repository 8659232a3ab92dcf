"""The latent-space map: a Qt widget painting a plane through the prior.

Decoded masks (or their foreground area) across the plane, the prior's 1- and 2-sigma
contours, a marker per hypothesis, per assessed annotation and for the current point, painted
from cached pictures. Clicks and drags are reported as signals; the explorer dock widget
(:mod:`napari_probunet.gui.explorer.widget`) decides what to decode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import (
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QPolygonF,
)
from qtpy.QtWidgets import QSizePolicy, QToolTip, QWidget

from napari_probunet.review import plane as core

#: the most map repaints per second while dragging (the napari canvas needs the CPU more)
REPAINT_HZ = 30
#: while dragging the map repaints with each new frame; without one it waits this long
_SYNC_FALLBACK_S = 0.1
#: marker hit radius in pixels
HIT_RADIUS = 8.0

#: what the map's background shows
BACKGROUNDS = ("decoded masks", "foreground area")


def _theme_colors() -> dict[str, QColor]:
    names = dict(background="#23242b", foreground="#2e333e", text="#f0f1f2",
                 primary="#424a54", highlight="#61696e", current="#4560c4",
                 error="#99121f", warning="#e3b617")
    try:
        from napari.settings import get_settings
        from napari.utils.theme import get_theme

        theme = get_theme(get_settings().appearance.theme)
        for key in names:
            value = getattr(theme, key, None)
            if value is not None:
                names[key] = value.as_hex() if hasattr(value, "as_hex") else str(value)
    except Exception:  # noqa: BLE001 - a theme we cannot read: keep the dark defaults
        pass
    return {k: QColor(v) for k, v in names.items()}


def _qimage(rgba: np.ndarray) -> QImage:
    rgba = np.ascontiguousarray(rgba)
    h, w = rgba.shape[:2]
    img = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return img.copy()  # own the pixels


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
    drags, ``hypothesis_clicked(index)``, ``annotation_clicked(index)``.
    """

    point_moved = Signal(float, float, bool)
    hypothesis_clicked = Signal(int)
    annotation_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(280, 300)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.extent = core.DEFAULT_EXTENT
        self.is_line = False
        self.axis_labels = ("z1 / \u03c3", "z2 / \u03c3")
        self.hint = "No model yet"
        self._background: QImage | None = None
        self._background_version = 0
        self.background_kind = BACKGROUNDS[0]
        self.progress: str = ""
        self.class_legend: list[tuple[str, QColor]] = []
        self.markers = MapMarkers()
        self.colors = _theme_colors()
        self.paint_count = 0
        self.paint_seconds = 0.0
        self._press: tuple[QPointF, str, int] | None = None  # (where, what, index)
        self._dragging = False
        self._last_paint = 0.0
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
    def _legend_height(self) -> int:
        return 2 * QFontMetrics(self.font()).height() + 10

    def plot_rect(self) -> QRectF:
        """The square (or, for a line, the strip) the plane is drawn in, in widget pixels."""
        fm = QFontMetrics(self.font())
        left, right, top = fm.height() + fm.horizontalAdvance("-3") + 10, 10, 8
        bottom = 2 * fm.height() + 10 + self._legend_height()
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
            return QPointF(x, self._line_baseline(r))
        return QPointF(x, r.top() + (e - v) / (2 * e) * r.height())

    def to_plane(self, pos: QPointF) -> tuple[float, float]:
        r, e = self.plot_rect(), self.extent
        u = (pos.x() - r.left()) / r.width() * 2 * e - e
        v = 0.0 if self.is_line else e - (pos.y() - r.top()) / r.height() * 2 * e
        return float(np.clip(u, -e, e)), float(np.clip(v, -e, e))

    def _line_layout(self, r: QRectF) -> tuple[QRectF, QRectF]:
        """A line plot: the strip of thumbnails on top, the prior density below."""
        cell = min(r.width() / max(1, self._line_cells), r.height() * 0.55)
        strip = QRectF(r.left(), r.top(), r.width(), cell)
        density = QRectF(r.left(), r.top() + cell + 6, r.width(), r.height() - cell - 6)
        return strip, density

    _line_cells = core.DEFAULT_GRID

    def _line_baseline(self, r: QRectF) -> float:
        return self._line_layout(r)[1].bottom() - 10

    # -- repaint throttle ------------------------------------------------------------------------
    def request_repaint(self, delay: float = 0.0) -> None:
        """Repaint after ``delay`` seconds or later, at most :data:`REPAINT_HZ` times a second."""
        if self._repaint_timer.isActive():
            return
        wait = max(delay, 1.0 / REPAINT_HZ - (time.perf_counter() - self._last_paint))
        self._repaint_timer.start(max(0, int(wait * 1000)))

    def repaint_with_frame(self, force: bool = False) -> None:
        """Repaint together with a new napari frame (one window composition for both).

        With napari's OpenGL canvas in the window, every repaint of any widget recomposes the
        whole window; repainting the map in the same event-loop pass as the canvas costs one
        composition instead of two. Within ``1 / REPAINT_HZ`` of the last repaint the map
        waits for the next frame instead (or, if none comes, for the fallback timer).
        """
        self._repaint_timer.stop()
        if force or time.perf_counter() - self._last_paint >= 1.0 / REPAINT_HZ:
            self.update()
        else:
            self._repaint_timer.start(int(_SYNC_FALLBACK_S * 1000))

    def _repaint_now(self) -> None:
        self.update()

    # -- painting --------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        t0 = time.perf_counter()
        self._last_paint = t0
        p = QPainter(self)
        try:
            p.drawPixmap(0, 0, self._static_picture())
            if not self.hint:
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                self._paint_markers(p)
        finally:
            p.end()
        self.paint_count += 1
        self.paint_seconds += time.perf_counter() - t0

    def _static_picture(self) -> QPixmap:
        """Everything but the markers, drawn once per change (a repaint then only blits it)."""
        key = (self.width(), self.height(), self.devicePixelRatioF(), self._background_version,
               self.background_kind, self.axis_labels, self.is_line, self.extent, self.hint,
               self.progress, self._line_cells, tuple(n for n, _ in self.class_legend))
        if self._static is None or self._static_key != key:
            ratio = self.devicePixelRatioF()
            pixmap = QPixmap(max(1, round(self.width() * ratio)), max(1, round(self.height() * ratio)))
            pixmap.setDevicePixelRatio(ratio)
            p = QPainter(pixmap)
            try:
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                p.setFont(self.font())
                self._paint(p)
            finally:
                p.end()
            self._static, self._static_key = pixmap, key
        return self._static

    def _paint(self, p: QPainter) -> None:
        c = self.colors
        p.fillRect(QRectF(0, 0, self.width(), self.height()), c["background"])
        r = self.plot_rect()
        if self.hint:
            p.fillRect(r, c["foreground"])
            p.setPen(c["text"])
            p.drawText(r.adjusted(12, 12, -12, -12),
                       int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), self.hint)
            return
        if self.is_line:
            self._paint_line(p, r)
        else:
            self._paint_plane(p, r)
        self._paint_axes(p, r)
        self._paint_legend(p)

    def _paint_plane(self, p: QPainter, r: QRectF) -> None:
        c = self.colors
        if self.background is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform,
                            self.background_kind != BACKGROUNDS[1])
            p.drawImage(r, self.background)
        else:
            p.fillRect(r, c["foreground"])
        # prior contours: circles of radius 1 and 2 sigma around the prior mean
        centre = self.to_pixel(0.0, 0.0)
        scale = r.width() / (2 * self.extent)
        pen = QPen(QColor(255, 255, 255, 170), 1.2, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.save()
        p.setClipRect(r)
        for radius in core.CONTOUR_RADII:
            p.drawEllipse(centre, radius * scale, radius * scale)
        p.restore()

    def _paint_line(self, p: QPainter, r: QRectF) -> None:
        c = self.colors
        strip, dens = self._line_layout(r)
        if self.background is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
            p.drawImage(strip, self.background)
        p.fillRect(dens, c["foreground"])
        e = self.extent
        base = self._line_baseline(r)
        height = dens.height() - 20

        def px(u: float) -> float:
            return r.left() + (u + e) / (2 * e) * r.width()

        for radius, alpha in zip(sorted(core.CONTOUR_RADII, reverse=True), (40, 70)):
            p.fillRect(QRectF(px(-radius), dens.top(), px(radius) - px(-radius), dens.height()),
                       QColor(255, 255, 255, alpha))
        path = QPainterPath()
        us = np.linspace(-e, e, 121)
        dens_values = np.exp(-0.5 * us**2)
        path.moveTo(px(us[0]), base - height * dens_values[0])
        for u, d in zip(us[1:], dens_values[1:]):
            path.lineTo(px(u), base - height * d)
        p.setPen(QPen(QColor(255, 255, 255, 200), 1.5))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawPath(path)
        p.setPen(QPen(c["highlight"], 1))
        p.drawLine(QPointF(r.left(), base), QPointF(r.right(), base))

    def _paint_markers(self, p: QPainter) -> None:
        m, c = self.markers, self.colors
        r = self.plot_rect()
        p.save()
        p.setClipRect(r.adjusted(-6, -6, 6, 6))
        show_numbers = len(m.hypotheses) <= 24
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        p.setFont(font)
        for u, v, weight in m.components:  # a mixture prior's components: squares, weight
            pt = self._marker_pixel(u, v)
            p.setPen(QPen(QColor(0, 0, 0, 230), 1.5))
            p.setBrush(QColor(255, 170, 60))
            p.drawRect(QRectF(pt.x() - 5, pt.y() - 5, 10, 10))
            p.setPen(QColor(255, 200, 120))
            p.drawText(pt + QPointF(7, 12), f"w {weight:.2f}")
        for k, (u, v) in enumerate(m.hypotheses):
            pt = self._marker_pixel(u, v)
            selected = k == m.selected_hypothesis
            p.setPen(QPen(QColor(0, 0, 0, 220), 1.5))
            p.setBrush(c["current"] if selected else QColor(255, 255, 255, 235))
            radius = 6.0 if selected else 4.5
            p.drawEllipse(pt, radius, radius)
            if selected:
                p.setPen(QPen(QColor(255, 255, 255), 2))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawEllipse(pt, radius + 3, radius + 3)
            if show_numbers:
                p.setPen(QColor(255, 255, 255))
                p.drawText(pt + QPointF(6, -5), str(k + 1))
        e = self.extent
        labels: list[list] = []  # [anchor, text]: annotations at one spot share a label
        for k, (name, u, v, outlier) in enumerate(m.annotations):
            pt = self._marker_pixel(u, v)
            if max(abs(u), abs(v)) > e:  # drawn at the edge; the label says how far it is
                name = f"{name} \u2192{max(abs(u), abs(v)):.1f}\u03c3"
            s = 7.5 if k == m.selected_annotation else 6.0
            diamond = QPolygonF([pt + QPointF(0, -s), pt + QPointF(s, 0), pt + QPointF(0, s),
                                 pt + QPointF(-s, 0)])
            p.setPen(QPen(QColor(0, 0, 0, 230), 1.5))
            p.setBrush(QColor(235, 70, 70) if outlier else QColor(80, 220, 220))
            p.drawPolygon(diamond)
            near = next((lab for lab in labels if abs(lab[0].x() - pt.x()) < 6
                         and abs(lab[0].y() - pt.y()) < 6), None)
            if near is None:
                labels.append([pt, name])
            else:
                near[1] += ", " + name
        p.setClipping(False)
        fm = QFontMetrics(p.font())
        p.setPen(QColor(255, 255, 255))
        for anchor, text in labels:
            width = fm.horizontalAdvance(text)
            x = anchor.x() + 9 if anchor.x() + 9 + width < self.width() - 2 else (
                anchor.x() - 9 - width)
            p.drawText(QPointF(x, anchor.y() + 4 + fm.ascent()), text)
        p.setClipRect(r.adjusted(-6, -6, 6, 6))
        if m.point is not None:
            pt = self.to_pixel(*m.point)
            yellow = QColor(255, 214, 10)
            if self.is_line:
                p.setPen(QPen(yellow, 2))
                p.drawLine(QPointF(pt.x(), r.top()), QPointF(pt.x(), r.bottom()))
            for width, color in ((4, QColor(0, 0, 0, 200)), (2, yellow)):
                p.setPen(QPen(color, width))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawEllipse(pt, 7, 7)
                p.drawLine(pt + QPointF(-12, 0), pt + QPointF(-4, 0))
                p.drawLine(pt + QPointF(4, 0), pt + QPointF(12, 0))
                p.drawLine(pt + QPointF(0, -12), pt + QPointF(0, -4))
                p.drawLine(pt + QPointF(0, 4), pt + QPointF(0, 12))
        p.restore()

    def _paint_axes(self, p: QPainter, r: QRectF) -> None:
        c = self.colors
        fm = QFontMetrics(self.font())
        p.setFont(self.font())
        p.setPen(QPen(c["highlight"], 1))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(r)
        p.setPen(c["text"])
        e = int(math.floor(self.extent))
        for t in range(-e, e + 1):
            x = self.to_pixel(t, 0).x()
            p.drawLine(QPointF(x, r.bottom()), QPointF(x, r.bottom() + 4))
            label = f"{t:+d}" if t else "0"
            p.drawText(QPointF(x - fm.horizontalAdvance(label) / 2, r.bottom() + 4 + fm.ascent()),
                       label)
            if not self.is_line:
                y = self.to_pixel(0, t).y()
                p.drawLine(QPointF(r.left() - 4, y), QPointF(r.left(), y))
                p.drawText(QPointF(r.left() - 6 - fm.horizontalAdvance(label),
                                   y + fm.ascent() / 2 - 1), label)
        xl = self.axis_labels[0]
        p.drawText(QPointF(r.center().x() - fm.horizontalAdvance(xl) / 2,
                           r.bottom() + 6 + fm.height() + fm.ascent()), xl)
        yl = "prior density" if self.is_line else self.axis_labels[1]
        ydraw = self._line_layout(r)[1] if self.is_line else r
        p.save()
        p.translate(fm.ascent() + 1, ydraw.center().y() + fm.horizontalAdvance(yl) / 2)
        p.rotate(-90)
        p.drawText(QPointF(0, 0), yl)
        p.restore()
        if self.progress:
            p.setPen(QColor(255, 255, 255, 220))
            p.drawText(QPointF(r.left() + 6, r.top() + fm.ascent() + 4), self.progress)

    def _legend_items(self) -> list[tuple[str, Callable[[QPainter, QPointF], None]]]:
        def dot(p, pt):
            p.setPen(QPen(QColor(0, 0, 0), 1))
            p.setBrush(QColor(255, 255, 255))
            p.drawEllipse(pt, 4, 4)

        def diamond(color):
            def draw(p, pt):
                p.setPen(QPen(QColor(0, 0, 0), 1))
                p.setBrush(color)
                p.drawPolygon(QPolygonF([pt + QPointF(0, -5), pt + QPointF(5, 0),
                                         pt + QPointF(0, 5), pt + QPointF(-5, 0)]))
            return draw

        def cross(p, pt):
            p.setPen(QPen(QColor(255, 214, 10), 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(pt, 4, 4)

        def ring(p, pt):
            p.setPen(QPen(QColor(255, 255, 255, 190), 1.2, Qt.PenStyle.DashLine))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(pt, 5, 5)

        def swatch(color):
            def draw(p, pt):
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(color)
                p.drawRect(QRectF(pt.x() - 5, pt.y() - 5, 10, 10))
            return draw

        items = [("hypothesis", dot), ("annotation", diamond(QColor(80, 220, 220))),
                 ("outlier", diamond(QColor(235, 70, 70))), ("current point", cross),
                 ("prior 1\u03c3, 2\u03c3" if not self.is_line else "prior \u00b11\u03c3, 2\u03c3",
                  ring)]
        if self.background_kind == BACKGROUNDS[1]:
            items += [("area 0%", swatch(QColor(68, 1, 84))), ("100%", swatch(QColor(253, 231, 37)))]
        else:
            items += [(name, swatch(color)) for name, color in self.class_legend]
        return items

    def _paint_legend(self, p: QPainter) -> None:
        fm = QFontMetrics(self.font())
        y = self.height() - self._legend_height() + fm.height() / 2 + 2
        x, x0 = 10.0, 10.0
        p.setPen(self.colors["text"])
        for text, draw in self._legend_items():
            w = 16 + fm.horizontalAdvance(text) + 12
            if x + w > self.width() - 4 and x > x0:
                x, y = x0, y + fm.height() + 4
            p.save()
            draw(p, QPointF(x + 6, y))
            p.restore()
            p.setPen(self.colors["text"])
            p.drawText(QPointF(x + 16, y + fm.ascent() / 2 - 1), text)
            x += w

    # -- mouse and keys --------------------------------------------------------------------------
    def _marker_pixel(self, u: float, v: float) -> QPointF:
        """Where a marker is drawn: its place, or the nearest edge of the map beyond it."""
        e = self.extent
        return self.to_pixel(float(np.clip(u, -e, e)), float(np.clip(v, -e, e)))

    def _hit(self, pos: QPointF) -> tuple[str, int]:
        best, what = HIT_RADIUS**2, ("", -1)
        for k, (_name, u, v, _) in enumerate(self.markers.annotations):
            d = self._marker_pixel(u, v) - pos
            if d.x() ** 2 + d.y() ** 2 <= best:
                best, what = d.x() ** 2 + d.y() ** 2, ("annotation", k)
        for k, (u, v) in enumerate(self.markers.hypotheses):
            d = self._marker_pixel(u, v) - pos
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
        gp = event.globalPosition().toPoint() if hasattr(event, "globalPosition") else event.globalPos()
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
