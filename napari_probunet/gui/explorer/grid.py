"""The map's background grid: decoded masks across the plane, arriving a row at a time.

No Qt and no napari here: :class:`BackgroundGrid` keeps the decoded thumbnails and their
foreground areas as they arrive from the worker and draws the background picture (RGBA) the
map shows, drawing only the cells that arrived since the last picture.
"""

from __future__ import annotations

import time

import numpy as np

from napari_probunet.review import plane as core

#: opacity of masks drawn over the image in the thumbnails (napari's Labels default)
MASK_ALPHA = 0.7
#: the largest thumbnail side in pixels
MAX_CELL = 64


def grey(image: np.ndarray) -> np.ndarray:
    """The region's pixels as 8-bit grey (1st..99th percentile), for thumbnail underlays."""
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1) if a.shape[-1] >= 3 else a[..., 0]
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)


class BackgroundGrid:
    """``n x n`` decoded masks across a plane (``n`` along a line), kept as thumbnails.

    Thumbnails show the focus box (where the masks are, :func:`~core.focus_box`) over the
    encoded region in grey; each cell also keeps its foreground share for the area map.

    Attributes:
        n: cells per side (the "Grid" spin box).
        labels: ``(cells, th, tw)`` uint8 thumbnails (zeros until decoded), or None.
        area: ``(cells,)`` foreground share (NaN until decoded).
        done: cells decoded so far (rows arrive in order).
        seconds: how long the last complete grid took, from :meth:`start` to its last row.
        focus: ``(row0, row1, col0, col1)`` of the region the thumbnails show.
        underlay: ``(H, W)`` uint8 grey region under the masks, or None.
    """

    def __init__(self, n: int = core.DEFAULT_GRID) -> None:
        self.n = int(n)
        self.labels: np.ndarray | None = None
        self.area: np.ndarray | None = None
        self.done = 0
        self.seconds: float | None = None
        self.focus: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.underlay: np.ndarray | None = None
        self._cell = MAX_CELL
        self._underlay_thumb: np.ndarray | None = None
        self._mosaic: np.ndarray | None = None
        self._started = 0.0

    def start(self, plane: core.LatentPlane) -> np.ndarray:
        """Begin a new grid over ``plane``; return its latents ``(cells, d)``, row-major."""
        latents = plane.grid_latents(self.n)
        r0, r1, c0, c1 = self.focus
        self._cell = int(min(MAX_CELL, max(r1 - r0, c1 - c0)))
        th, tw = core.thumbnail_size((r1 - r0, c1 - c0), self._cell)
        self.labels = np.zeros((len(latents), th, tw), np.uint8)
        self.area = np.full(len(latents), np.nan)
        self._underlay_thumb = (None if self.underlay is None else
                                core.thumbnail(self.underlay[r0:r1, c0:c1], self._cell))
        self.done = 0
        self._mosaic = None  # drawn incrementally as rows arrive
        self._started = time.perf_counter()
        return latents

    def add(self, start: int, labels: np.ndarray) -> tuple[int, int]:
        """Decoded maps ``(k, H, W)`` for cells ``start..start + k``; returns that range."""
        r0, r1, c0, c1 = self.focus
        stop = start + len(labels)
        self.labels[start:stop] = core.thumbnail(labels[:, r0:r1, c0:c1], self._cell)
        self.area[start:stop] = core.foreground_fraction(labels)
        self.done = max(self.done, stop)
        if self.done >= len(self.labels):
            self.seconds = time.perf_counter() - self._started
        return start, stop

    def progress(self) -> str:
        """The line the map shows while the grid is decoded ("" once it is complete)."""
        total = 0 if self.labels is None else len(self.labels)
        return f"decoding the map {self.done}/{total}\u2026" if self.done < total else ""

    def area_picture(self, is_line: bool) -> np.ndarray:
        """The foreground share per cell on viridis, scaled to the largest: ``(rows, cols, 4)``."""
        rows, cols = (1, self.n) if is_line else (self.n, self.n)
        frac = self.area[: self.done]
        return core.value_image(frac, rows, cols, 0.0, max(1e-6, float(frac.max(initial=0))))

    def mask_picture(self, is_line: bool, colors: np.ndarray,
                     new: tuple[int, int] | None = None) -> np.ndarray:
        """The thumbnails tiled in class ``colors`` ``(C, 4)``; ``new``: only these cells
        arrived since the last picture (the others are kept)."""
        rows, cols = (1, self.n) if is_line else (self.n, self.n)
        if new is None or self._mosaic is None:
            self._mosaic, new = core.mosaic_canvas(rows, cols, self._cell), (0, self.done)
        core.paint_cells(self._mosaic, self.labels[new[0]:new[1]], new[0], cols, colors,
                         self._cell, underlay=self._underlay_thumb, alpha=MASK_ALPHA)
        return self._mosaic
