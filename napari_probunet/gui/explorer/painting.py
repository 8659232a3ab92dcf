"""How the latent map is drawn: the background, the prior's contours, axes, legend and markers.

Plain functions over a :class:`~napari_probunet.gui.explorer.latent_map.LatentMap` ``m`` and a
``QPainter``: the map keeps the geometry (:meth:`~LatentMap.plot_rect`,
:meth:`~LatentMap.to_pixel`), the cache and the mouse; this module only paints.
:func:`paint_static` draws everything but the markers (cached as a picture by the map),
:func:`paint_markers` the markers on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPainterPath, QPen, QPolygonF

from napari_probunet.gui.explorer.label_layout import place_labels
from napari_probunet.review import plane as core

#: what the map's background shows
BACKGROUNDS = ("decoded masks", "foreground area")

#: marker colours that do not follow the napari theme (they sit on the decoded masks)
_WHITE, _YELLOW = QColor(255, 255, 255), QColor(255, 214, 10)
_ANNOTATION, _OUTLIER = QColor(80, 220, 220), QColor(235, 70, 70)


def theme_colors() -> dict[str, QColor]:
    """napari's current theme colours by name (the dark defaults where it cannot be read)."""
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


def qimage(rgba: np.ndarray) -> QImage:
    """An ``(H, W, 4)`` uint8 RGBA array as a QImage that owns its pixels."""
    rgba = np.ascontiguousarray(rgba)
    h, w = rgba.shape[:2]
    img = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return img.copy()  # own the pixels


# --------------------------------------------------------------- everything but the markers


def paint_static(m, p: QPainter) -> None:
    """The background, contours, axes and legend of map ``m`` (or its hint when it has none)."""
    c = m.colors
    opaque = QColor(c["background"])
    opaque.setAlpha(255)  # the map is an opaque widget: nothing under it is painted
    p.fillRect(QRectF(0, 0, m.width(), m.height()), opaque)
    r = m.plot_rect()
    if m.hint:
        p.fillRect(r, c["foreground"])
        p.setPen(c["text"])
        p.drawText(r.adjusted(12, 12, -12, -12),
                   int(Qt.AlignmentFlag.AlignCenter) | int(Qt.TextFlag.TextWordWrap), m.hint)
        return
    if m.is_line:
        _paint_line(m, p, r)
    else:
        _paint_plane(m, p, r)
    _paint_axes(m, p, r)
    _paint_legend(m, p)


def _paint_plane(m, p: QPainter, r: QRectF) -> None:
    if m.background is not None:
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform,
                        m.background_kind != BACKGROUNDS[1])
        p.drawImage(r, m.background)
    else:
        p.fillRect(r, m.colors["foreground"])
    # prior contours: circles of radius 1 and 2 sigma around the prior mean
    centre = m.to_pixel(0.0, 0.0)
    scale = r.width() / (2 * m.extent)
    pen = QPen(QColor(255, 255, 255, 170), 1.2, Qt.PenStyle.DashLine)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.save()
    p.setClipRect(r)
    for radius in core.CONTOUR_RADII:
        p.drawEllipse(centre, radius * scale, radius * scale)
    p.restore()


def _paint_line(m, p: QPainter, r: QRectF) -> None:
    """A line plot: the strip of thumbnails, the prior's density and its 1- and 2-sigma bands."""
    strip, dens = m.line_layout(r)
    if m.background is not None:
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        p.drawImage(strip, m.background)
    p.fillRect(dens, m.colors["foreground"])
    e = m.extent
    base = m.line_baseline(r)
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
    p.setPen(QPen(m.colors["highlight"], 1))
    p.drawLine(QPointF(r.left(), base), QPointF(r.right(), base))


def _paint_axes(m, p: QPainter, r: QRectF) -> None:
    c = m.colors
    fm = QFontMetrics(m.font())
    p.setFont(m.font())
    p.setPen(QPen(c["highlight"], 1))
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawRect(r)
    p.setPen(c["text"])
    e = int(math.floor(m.extent))
    step = 1 if e <= 4 else 2  # a widened map (a mixture's far components): every second tick
    for t in range(-(e - e % step), e + 1, step):
        x = m.to_pixel(t, 0).x()
        p.drawLine(QPointF(x, r.bottom()), QPointF(x, r.bottom() + 4))
        label = f"{t:+d}" if t else "0"
        p.drawText(QPointF(x - fm.horizontalAdvance(label) / 2, r.bottom() + 4 + fm.ascent()),
                   label)
        if not m.is_line:
            y = m.to_pixel(0, t).y()
            p.drawLine(QPointF(r.left() - 4, y), QPointF(r.left(), y))
            p.drawText(QPointF(r.left() - 6 - fm.horizontalAdvance(label),
                               y + fm.ascent() / 2 - 1), label)
    xl = m.axis_labels[0]
    p.drawText(QPointF(r.center().x() - fm.horizontalAdvance(xl) / 2,
                       r.bottom() + 6 + fm.height() + fm.ascent()), xl)
    yl = "prior density" if m.is_line else m.axis_labels[1]
    ydraw = m.line_layout(r)[1] if m.is_line else r
    p.save()
    p.translate(fm.ascent() + 1, ydraw.center().y() + fm.horizontalAdvance(yl) / 2)
    p.rotate(-90)
    p.drawText(QPointF(0, 0), yl)
    p.restore()
    if m.progress:
        p.setPen(QColor(255, 255, 255, 220))
        p.drawText(QPointF(r.left() + 6, r.top() + fm.ascent() + 4), m.progress)


def _legend_items(m) -> list[tuple[str, Callable[[QPainter, QPointF], None]]]:
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
        p.setPen(QPen(_YELLOW, 2))
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

    items = [("hypothesis", dot), ("annotation", diamond(_ANNOTATION)),
             ("outlier", diamond(_OUTLIER)), ("current point", cross),
             ("prior 1\u03c3, 2\u03c3" if not m.is_line else "prior \u00b11\u03c3, 2\u03c3",
              ring)]
    if m.background_kind == BACKGROUNDS[1]:
        items += [("area 0%", swatch(QColor(68, 1, 84))), ("100%", swatch(QColor(253, 231, 37)))]
    else:
        items += [(name, swatch(color)) for name, color in m.class_legend]
    return items


def legend_layout(m) -> list[tuple[float, int, str, Callable]]:
    """Where the legend's items go at the map's width: ``(x, line, text, draw)``, wrapped
    onto as many lines as the width needs (the map reserves them: :func:`legend_lines`)."""
    fm = QFontMetrics(m.font())
    x, x0, line = 10.0, 10.0, 0
    out = []
    for text, draw in _legend_items(m):
        w = 16 + fm.horizontalAdvance(text) + 12
        if x + w > m.width() - 4 and x > x0:
            x, line = x0, line + 1
        out.append((x, line, text, draw))
        x += w
    return out


def legend_lines(m) -> int:
    """How many lines the legend takes at the map's width (kept per width and items: the map
    asks on every repaint)."""
    key = (m.width(), m.font().key(), m.is_line, m.background_kind,
           tuple(n for n, _ in m.class_legend))
    cached = getattr(m, "_legend_lines", None)
    if cached is None or cached[0] != key:
        layout = legend_layout(m)
        cached = (key, 1 + max((line for _x, line, _t, _d in layout), default=0))
        m._legend_lines = cached
    return cached[1]


def _paint_legend(m, p: QPainter) -> None:
    fm = QFontMetrics(m.font())
    top = m.height() - m.legend_height() + fm.height() / 2 + 2
    p.setPen(m.colors["text"])
    for x, line, text, draw in legend_layout(m):
        y = top + line * (fm.height() + 4)
        p.save()
        draw(p, QPointF(x + 6, y))
        p.restore()
        p.setPen(m.colors["text"])
        p.drawText(QPointF(x + 16, y + fm.ascent() / 2 - 1), text)


# ------------------------------------------------------------------------------- the markers


def paint_markers(m, p: QPainter) -> None:
    """The markers of map ``m``: hypotheses, mixture components (above the hypotheses: on the
    plane through them they are what the map is about), annotations, the point; then their
    labels, placed inside the map where they overlap no other label
    (:func:`~napari_probunet.gui.explorer.label_layout.place_labels`)."""
    r = m.plot_rect()
    p.save()
    p.setClipRect(r.adjusted(-6, -6, 6, 6))
    font = QFont(m.font())
    font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
    p.setFont(font)
    numbers = _paint_hypotheses(m, p)
    components = _paint_components(m, p)
    annotations = [(pt, text, _WHITE) for pt, text in _paint_annotations(m, p)]
    if m.markers.point is not None:
        _paint_point(m, p, r)
    p.setClipping(False)
    _paint_labels(m, p, r, annotations + components + numbers, _marker_boxes(m))
    p.restore()


def _marker_boxes(m) -> list[tuple[float, float, float, float]]:
    """The boxes the markers cover (labels avoid them where they can)."""
    mk = m.markers
    spots = [m.marker_pixel(u, v) for u, v in mk.hypotheses]
    spots += [m.marker_pixel(u, v) for u, v, _w in mk.components]
    spots += [m.marker_pixel(u, v) for _n, u, v, _o in mk.annotations]
    # (not the current point: it moves on every frame of a drag, the labels should not)
    return [(pt.x() - 6, pt.y() - 6, pt.x() + 6, pt.y() + 6) for pt in spots]


def _paint_labels(m, p: QPainter, r: QRectF, labels: list, markers: list) -> None:
    """Draw ``labels`` ``[(anchor, text, colour)]`` (most important first) where
    :func:`place_labels` puts them, inside the plot ``r``."""
    fm = QFontMetrics(p.font())
    key = (tuple((pt.x(), pt.y(), text) for pt, text, _c in labels), tuple(markers),
           (r.left(), r.top(), r.right(), r.bottom()), fm.height())
    placed = getattr(m, "_placed_labels", None)
    if placed is None or placed[0] != key:  # placed once while only the point moves (a drag)
        sizes = [((pt.x(), pt.y()), (fm.horizontalAdvance(text) + 2, fm.height()))
                 for pt, text, _c in labels]
        placed = m._placed_labels = (key, place_labels(sizes, key[2], markers))
    for (_pt, text, colour), box in zip(labels, placed[1]):
        if box is None:
            continue
        p.setPen(QColor(0, 0, 0, 200))  # a dark halo: readable on light and dark cells
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            p.drawText(QPointF(box[0] + 1 + dx, box[1] + fm.ascent() + dy), text)
        p.setPen(colour)
        p.drawText(QPointF(box[0] + 1, box[1] + fm.ascent()), text)


def _paint_components(m, p: QPainter) -> list:
    """A mixture prior's components: squares, named c1, c2, ... (heaviest first) with their
    weight; returns their labels ``[(anchor, text, colour)]``."""
    labels = []
    for k, (u, v, weight) in enumerate(m.markers.components):
        pt = m.marker_pixel(u, v)
        p.setPen(QPen(QColor(0, 0, 0, 230), 1.5))
        p.setBrush(QColor(255, 170, 60))
        p.drawRect(QRectF(pt.x() - 6, pt.y() - 6, 12, 12))
        labels.append((pt, f"c{k + 1} {weight:.2f}", QColor(255, 200, 120)))
    return labels


def _paint_hypotheses(m, p: QPainter) -> list:
    """White dots (the selected one ringed); returns their numbers from 1 as labels
    ``[(anchor, text, colour)]`` (none above 24 hypotheses)."""
    markers = m.markers
    show_numbers = len(markers.hypotheses) <= 24
    labels = []
    for k, (u, v) in enumerate(markers.hypotheses):
        pt = m.marker_pixel(u, v)
        selected = k == markers.selected_hypothesis
        p.setPen(QPen(QColor(0, 0, 0, 220), 1.5))
        p.setBrush(m.colors["current"] if selected else QColor(255, 255, 255, 235))
        radius = 6.0 if selected else 4.5
        p.drawEllipse(pt, radius, radius)
        if selected:
            p.setPen(QPen(_WHITE, 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawEllipse(pt, radius + 3, radius + 3)
        if show_numbers:
            labels.append((pt, str(k + 1), _WHITE))
    if markers.selected_hypothesis is not None and labels:  # the selected one's number first
        k = markers.selected_hypothesis
        if 0 <= k < len(labels):
            labels.insert(0, labels.pop(k))
    return labels


def _paint_annotations(m, p: QPainter) -> list[list]:
    """Diamonds (red for outliers); returns their labels, ``[anchor, text]``, one per spot."""
    markers, e = m.markers, m.extent
    labels: list[list] = []  # annotations at one spot share a label
    for k, (name, u, v, outlier) in enumerate(markers.annotations):
        pt = m.marker_pixel(u, v)
        if max(abs(u), abs(v)) > e:  # drawn at the edge; the label says how far it is
            name = f"{name} \u2192{max(abs(u), abs(v)):.1f}\u03c3"
        s = 7.5 if k == markers.selected_annotation else 6.0
        diamond = QPolygonF([pt + QPointF(0, -s), pt + QPointF(s, 0), pt + QPointF(0, s),
                             pt + QPointF(-s, 0)])
        p.setPen(QPen(QColor(0, 0, 0, 230), 1.5))
        p.setBrush(_OUTLIER if outlier else _ANNOTATION)
        p.drawPolygon(diamond)
        near = next((lab for lab in labels if abs(lab[0].x() - pt.x()) < 6
                     and abs(lab[0].y() - pt.y()) < 6), None)
        if near is None:
            labels.append([pt, name])
        else:
            near[1] += ", " + name
    return labels


def _paint_point(m, p: QPainter, r: QRectF) -> None:
    """The current point: a yellow crosshair (and a vertical line on a line plot)."""
    pt = m.to_pixel(*m.markers.point)
    if m.is_line:
        p.setPen(QPen(_YELLOW, 2))
        p.drawLine(QPointF(pt.x(), r.top()), QPointF(pt.x(), r.bottom()))
    for width, color in ((4, QColor(0, 0, 0, 200)), (2, _YELLOW)):
        p.setPen(QPen(color, width))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(pt, 7, 7)
        p.drawLine(pt + QPointF(-12, 0), pt + QPointF(-4, 0))
        p.drawLine(pt + QPointF(4, 0), pt + QPointF(12, 0))
        p.drawLine(pt + QPointF(0, -12), pt + QPointF(0, -4))
        p.drawLine(pt + QPointF(0, 4), pt + QPointF(0, 12))
