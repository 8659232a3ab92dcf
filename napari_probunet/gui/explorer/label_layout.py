"""Where the explorer map's text labels go: beside their markers, inside the map, never on
top of one another.

Plain geometry (boxes are ``(x0, y0, x1, y1)`` in widget pixels, y down), no Qt: the painter
(:mod:`napari_probunet.gui.explorer.painting`) measures the texts and draws them where
:func:`place_labels` says. Labels are placed in the order given (the most important first:
the radiologists' annotations, then the mixture components, then the hypothesis numbers),
each at the first of :data:`OFFSETS` (right, left, above, below, then the same further out)
whose box lies inside ``bounds``, overlaps no label placed before and, if such a place
exists, no marker. A label with no free place is left out (the legend, the table and the
tooltips still name its marker): two labels on top of each other are what made the map
unreadable.
"""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]

#: candidate places, as (dx, dy) multiples of the gap, for the label's box corner nearest
#: the marker: right-up, right-down, left-up, left-down, above, below; then twice as far
_DIRECTIONS = ((1, -1), (1, 1), (-1, -1), (-1, 1), (0, -1), (0, 1), (1, 0), (-1, 0))
OFFSETS = tuple((dx * k, dy * k) for k in (1, 2.5) for dx, dy in _DIRECTIONS)


def _start(c: float, extent: float, d: float, gap: float) -> float:
    """Where a label of ``extent`` starts along one axis: past ``c`` by ``gap`` on side ``d``
    (its sign), or centred on ``c`` when ``d`` is 0."""
    if d > 0:
        return c + gap * d
    if d < 0:
        return c + gap * d - extent
    return c - extent / 2


def _box_at(anchor: tuple[float, float], size: tuple[float, float], direction, gap: float) -> Box:
    """The label box of ``size`` (w, h) on side ``direction`` (dx, dy) of ``anchor``."""
    (x, y), (w, h), (dx, dy) = anchor, size, direction
    x0, y0 = _start(x, w, dx, gap), _start(y, h, dy, gap)
    return (x0, y0, x0 + w, y0 + h)


def overlap(a: Box, b: Box) -> float:
    """The area two boxes share (0 when they only touch)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def inside(box: Box, bounds: Box) -> bool:
    return (box[0] >= bounds[0] and box[1] >= bounds[1] and box[2] <= bounds[2]
            and box[3] <= bounds[3])


def place_labels(labels: Sequence[tuple[tuple[float, float], tuple[float, float]]],
                 bounds: Box, markers: Sequence[Box] = (), gap: float = 6.0,
                 ) -> list[Box | None]:
    """The box of each label ``(anchor (x, y), size (w, h))``, or None where none fits.

    Every box lies inside ``bounds`` and overlaps no other; it avoids the ``markers``' boxes
    where it can (a label may cover a marker when every free place is taken, never a label).
    """
    placed: list[Box] = []
    out: list[Box | None] = []
    for anchor, size in labels:
        best, best_cost = None, None
        for direction in OFFSETS:
            box = _box_at(anchor, size, direction, gap)
            if not inside(box, bounds) or any(overlap(box, p) > 0 for p in placed):
                continue
            cost = sum(overlap(box, m) for m in markers)
            if best_cost is None or cost < best_cost:
                best, best_cost = box, cost
                if cost == 0:
                    break
        out.append(best)
        if best is not None:
            placed.append(best)
    return out
