"""Geometry of the latent-space explorer, free of Qt and napari (NumPy only).

The explorer shows a **plane through the prior** p(z | image) = N(mu, diag(sigma^2)): two
latent axes ``i`` and ``j`` with coordinates ``(u, v)`` in units of the prior's sigma, so that

    z(u, v) = base,  then  z_i = mu_i + sigma_i * u,  z_j = mu_j + sigma_j * v.

``base`` holds the other coordinates: the prior mean (then ``z = mu + sigma * (u e_i + v e_j)``)
or the latent of a chosen hypothesis. A model with a one-dimensional latent gives a line
(``v`` unused). Axes are numbered from 0 in code and shown from 1 to people ("z1 / sigma").

A mixture prior (``latent_distribution = "mixture"``) also offers an oblique plane:
:meth:`LatentPlane.through_components` lays the plane through the means of its three heaviest
components (in the same sigma units, measured from the mixture's overall mean), so that the
modes the components hold, and what lies between them, are on one map.

Everything here is plain arithmetic on arrays so that it can be tested without a display:
the plane and its grid (:class:`LatentPlane`), the default choice of axes (:func:`axis_probes`,
:func:`rank_axes`), the background pictures (:func:`mosaic`, :func:`value_image`) and reading
an annotation on the encoded region of interest in world coordinates (:func:`crop_to_region`).
Placing a result layer over its image is the one placement rule of
``napari_probunet.gui.placement`` (its arithmetic: ``review.geometry.region_translate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: plane coordinates shown, in prior sigmas: -EXTENT..+EXTENT
DEFAULT_EXTENT = 3.0
#: the plane through a mixture's components widens to show the means of those holding at least
#: this weight, up to this many sigmas
VISIBLE_WEIGHT = 0.01
MAX_COMPONENT_EXTENT = 8.0
#: decoded masks per side of the background grid
DEFAULT_GRID = 9
#: the prior's contours drawn on the map (radius in sigmas)
CONTOUR_RADII = (1.0, 2.0)
#: distance (in sigmas) of the probes that rank the axes: decode at mu +- PROBE_STEP sigma e_i
PROBE_STEP = 2.0


def axis_name(axis: int) -> str:
    """How an axis is shown to people: 0 -> ``"z1"``."""
    return f"z{int(axis) + 1}"


# ----------------------------------------------------------------------------------- the plane


@dataclass(frozen=True)
class LatentPlane:
    """A plane (or, for ``axis_y=None``, a line) through the prior, in prior-sigma units.

    Attributes:
        mu, sigma: ``(d,)`` prior mean and sigma of the encoded image.
        axis_x, axis_y: the latent axes along ``u`` and ``v`` (0-based); ``axis_y`` is
            ``None`` for a line (one-dimensional latents).
        base: ``(d,)`` latent that holds the coordinates off the plane (the prior mean or a
            hypothesis's z); its ``axis_x``/``axis_y`` entries are ignored.
        extent: the map shows ``-extent..+extent`` sigmas along each axis.
        directions: ``(2, d)`` orthonormal directions of ``u`` and ``v`` in sigma units for
            an oblique plane (:meth:`through_components`), else ``None`` (the plane of
            ``axis_x`` and ``axis_y``). On an oblique plane ``base`` is the plane's point at
            ``(0, 0)``, the one nearest the prior mean.
        names: how the two directions are shown, for an oblique plane.
    """

    mu: np.ndarray
    sigma: np.ndarray
    axis_x: int
    axis_y: int | None
    base: np.ndarray
    extent: float = DEFAULT_EXTENT
    directions: np.ndarray | None = None
    names: tuple[str, str] | None = None

    @classmethod
    def through_prior(
        cls,
        mu: np.ndarray,
        sigma: np.ndarray,
        axis_x: int = 0,
        axis_y: int | None = None,
        base: np.ndarray | None = None,
        extent: float = DEFAULT_EXTENT,
    ) -> LatentPlane:
        """Validate and build a plane; ``base=None`` holds the other coordinates at ``mu``."""
        mu = np.asarray(mu, np.float32).reshape(-1)
        sigma = np.asarray(sigma, np.float32).reshape(-1)
        d = mu.shape[0]
        if sigma.shape != (d,) or d < 1:
            raise ValueError(
                f"mu and sigma must both have shape (d,), got {mu.shape}, {sigma.shape}")
        if not np.all(sigma > 0):
            raise ValueError("the prior's sigma must be positive")
        if not 0 <= axis_x < d:
            raise ValueError(f"axis_x={axis_x} is not an axis of a {d}-dimensional latent")
        if axis_y is not None and not (0 <= axis_y < d and axis_y != axis_x):
            raise ValueError(f"axis_y={axis_y} must be another axis of the {d}-dimensional latent")
        base = mu.copy() if base is None else np.asarray(base, np.float32).reshape(-1).copy()
        if base.shape != (d,):
            raise ValueError(f"base must have shape ({d},), got {base.shape}")
        if not extent > 0:
            raise ValueError("extent must be positive")
        mu.setflags(write=False)
        sigma.setflags(write=False)
        base.setflags(write=False)
        return cls(mu, sigma, int(axis_x), None if axis_y is None else int(axis_y), base,
                   float(extent))

    @classmethod
    def through_components(
        cls,
        mu: np.ndarray,
        sigma: np.ndarray,
        weights: np.ndarray,
        means: np.ndarray,
        extent: float | None = None,
    ) -> LatentPlane:
        """The plane through the means of a mixture's three heaviest components.

        ``mu``, ``sigma`` ``(d,)`` are the mixture's overall moments (the map's units),
        ``weights`` ``(K,)`` and ``means`` ``(K, d)`` its components. ``u`` runs from the
        heaviest component ``c1`` toward the second ``c2``; ``v`` toward the third ``c3``
        (its part perpendicular to ``u``). With two components, or three in a line, ``v`` is
        the latent axis most perpendicular to ``u``. ``(0, 0)`` is the plane's point nearest
        the overall mean. ``extent=None``: :data:`DEFAULT_EXTENT`, widened (in steps of half a
        sigma, up to :data:`MAX_COMPONENT_EXTENT`) until the means of those of the three that
        hold at least :data:`VISIBLE_WEIGHT` lie inside the map with a margin of half a sigma:
        the components of a trained mixture can lie further than 3 overall sigmas from its mean
        (one that lost its weight may drift anywhere, and is then left off the map's frame).
        """
        mu = np.asarray(mu, np.float64).reshape(-1)
        sigma = np.asarray(sigma, np.float64).reshape(-1)
        weights = np.asarray(weights, np.float64).reshape(-1)
        means = np.asarray(means, np.float64)
        d = mu.shape[0]
        if d < 2 or len(weights) < 2 or means.shape != (len(weights), d):
            raise ValueError("a plane through the components needs a latent of at least two "
                             f"dimensions and at least two components, got d={d}, "
                             f"weights {weights.shape}, means {means.shape}")
        order = np.argsort(-weights, kind="stable")[:3]
        white = (means[order] - mu) / sigma  # the chosen means in sigma units
        a = white[1] - white[0]
        if np.linalg.norm(a) < 1e-6:
            raise ValueError(
                "the two heaviest components have the same mean: no plane through them")
        a /= np.linalg.norm(a)
        b = white[2] - white[0] if len(order) > 2 else np.zeros(d)
        b = b - (b @ a) * a
        if np.linalg.norm(b) < 1e-6 * max(1.0, np.linalg.norm(white[0])):
            b = np.eye(d)[int(np.argmin(np.abs(a)))]
            b = b - (b @ a) * a
        b /= np.linalg.norm(b)
        offset = white[0] - (white[0] @ a) * a - (white[0] @ b) * b
        base = mu + sigma * offset
        if extent is None:
            held = weights[order] >= VISIBLE_WEIGHT
            uv = (white[held] - offset) @ np.stack([a, b]).T
            reach = float(np.abs(uv).max()) + 0.5 if uv.size else 0.0
            extent = min(MAX_COMPONENT_EXTENT, max(DEFAULT_EXTENT, math.ceil(2 * reach) / 2))
        plane = cls.through_prior(mu, sigma, 0, 1, base, extent)
        directions = np.stack([a, b]).astype(np.float32)
        directions.setflags(write=False)
        return cls(plane.mu, plane.sigma, 0, 1, plane.base, plane.extent, directions,
                   ("c1→c2", "→c3 ⟂" if len(order) > 2 else "⟂"))

    @property
    def is_oblique(self) -> bool:
        """True for a plane through a mixture's components (not along two latent axes)."""
        return self.directions is not None

    @property
    def labels(self) -> tuple[str, ...]:
        """How the map's axes are named (``"z1"``, ``"z2"``; ``"c1→c2"`` ... when oblique)."""
        if self.names is not None:
            return self.names
        return tuple(axis_name(a) for a in self.axes)

    def same_plane(self, other: LatentPlane | None) -> bool:
        """Whether ``other`` shows the same latents (so its decoded grid can be kept)."""
        if other is None or other.axes != self.axes or other.is_oblique != self.is_oblique:
            return False
        same_dirs = not self.is_oblique or np.array_equal(other.directions, self.directions)
        return same_dirs and np.array_equal(other.base, self.base) and (
            np.array_equal(other.mu, self.mu) and np.array_equal(other.sigma, self.sigma))

    @property
    def dim(self) -> int:
        """Latent dimension d."""
        return int(self.mu.shape[0])

    @property
    def is_line(self) -> bool:
        """True for a one-axis plot (one-dimensional latents)."""
        return self.axis_y is None

    @property
    def axes(self) -> tuple[int, ...]:
        return (self.axis_x,) if self.axis_y is None else (self.axis_x, self.axis_y)

    def latents(self, uv: np.ndarray) -> np.ndarray:
        """LatentPlane coordinates ``(k, 2)`` (or ``(k,)`` of ``u`` on a line) -> latents
        ``(k, d)``."""
        uv = np.asarray(uv, np.float32)
        if uv.ndim == 1:
            uv = np.stack([uv, np.zeros_like(uv)], axis=1)
        if self.directions is not None:
            return (self.base[None] + self.sigma[None] * (uv[:, :2] @ self.directions)
                    ).astype(np.float32)
        z = np.repeat(self.base[None], uv.shape[0], axis=0)
        z[:, self.axis_x] = self.mu[self.axis_x] + self.sigma[self.axis_x] * uv[:, 0]
        if self.axis_y is not None:
            z[:, self.axis_y] = self.mu[self.axis_y] + self.sigma[self.axis_y] * uv[:, 1]
        return z

    def latent(self, u: float, v: float = 0.0) -> np.ndarray:
        """The latent ``(d,)`` float32 at plane coordinates ``(u, v)``."""
        return self.latents(np.array([[u, v]], np.float32))[0]

    def coords(self, z: np.ndarray) -> np.ndarray:
        """Latent(s) ``(d,)`` or ``(k, d)`` -> plane coordinates ``(2,)`` or ``(k, 2)``.

        The projection onto the plane; on a line ``v`` is 0.
        """
        z = np.asarray(z, np.float64)
        single = z.ndim == 1
        zz = np.atleast_2d(z)
        if self.directions is not None:
            out = ((zz - self.base) / self.sigma) @ self.directions.T.astype(np.float64)
            return out[0] if single else out
        out = np.zeros((zz.shape[0], 2))
        out[:, 0] = (zz[:, self.axis_x] - self.mu[self.axis_x]) / self.sigma[self.axis_x]
        if self.axis_y is not None:
            out[:, 1] = (zz[:, self.axis_y] - self.mu[self.axis_y]) / self.sigma[self.axis_y]
        return out[0] if single else out

    def off_plane(self, z: np.ndarray) -> np.ndarray:
        """Distance (in prior sigmas) of latent(s) from the plane, over the other coordinates.

        0 when ``z`` lies in the plane; a hypothesis marker is the projection of its latent,
        and this says how far away it really is.
        """
        z = np.asarray(z, np.float64)
        zz = np.atleast_2d(z)
        if self.directions is not None:
            w = (zz - self.base) / self.sigma
            dirs = self.directions.astype(np.float64)
            dist = np.linalg.norm(w - (w @ dirs.T) @ dirs, axis=1)
            return dist[0] if z.ndim == 1 else dist
        other = np.ones(self.dim, bool)
        other[list(self.axes)] = False
        dist = np.sqrt(((((zz - self.base) / self.sigma)[:, other]) ** 2).sum(axis=1))
        return dist[0] if z.ndim == 1 else dist

    def grid_coords(self, n: int = DEFAULT_GRID) -> np.ndarray:
        """Centres of an ``n x n`` grid of cells tiling the map: ``(n*n, 2)``, row-major.

        Row 0 is the top of the map (largest ``v``), column 0 its left (smallest ``u``). On a
        line: ``(n, 2)`` along ``u`` with ``v = 0``.
        """
        n = int(n)
        if n < 1:
            raise ValueError("the grid needs at least one cell per side")
        centres = -self.extent + (np.arange(n) + 0.5) * (2 * self.extent / n)
        if self.is_line:
            return np.stack([centres, np.zeros(n)], axis=1).astype(np.float32)
        uu, vv = np.meshgrid(centres, centres[::-1])
        return np.stack([uu.ravel(), vv.ravel()], axis=1).astype(np.float32)

    def grid_latents(self, n: int = DEFAULT_GRID) -> np.ndarray:
        """Latents of :meth:`grid_coords`: ``(n*n, d)`` (``(n, d)`` on a line)."""
        return self.latents(self.grid_coords(n))

    def clamp(self, u: float, v: float = 0.0) -> tuple[float, float]:
        """Keep a point inside the map."""
        e = self.extent
        return (float(np.clip(u, -e, e)), 0.0 if self.is_line else float(np.clip(v, -e, e)))


# ------------------------------------------------------------------------ choosing the axes


def axis_probes(mu: np.ndarray, sigma: np.ndarray, step: float = PROBE_STEP) -> np.ndarray:
    """Latents ``(2d + 1, d)`` that probe each axis: ``mu``, then ``mu +- step sigma e_i``."""
    mu = np.asarray(mu, np.float32)
    sigma = np.asarray(sigma, np.float32)
    d = mu.shape[0]
    z = np.repeat(mu[None], 2 * d + 1, axis=0)
    for i in range(d):
        z[1 + 2 * i, i] += step * sigma[i]
        z[2 + 2 * i, i] -= step * sigma[i]
    return z


@dataclass(frozen=True)
class AxisScore:
    """How much the decoded segmentation changes along one latent axis."""

    axis: int
    change: float  # mean of 1 - IoU over the pairs (minus, centre), (centre, plus), (minus, plus)
    pixels: float  # fraction of pixels that differ between the decodes at minus and plus


def rank_axes(maps: np.ndarray, num_classes: int) -> list[AxisScore]:
    """Order the latent axes by how much the segmentation changes along them (most first).

    ``maps`` are the decodes of :func:`axis_probes`: ``(2d + 1, H, W)``. An axis's ``change``
    is the mean GED distance ``1 - IoU`` (mean foreground IoU, empty vs empty = 1) between the
    decodes at ``-step``, ``0`` and ``+step`` sigma, which also catches an axis along which the
    mask changes and comes back. Ties (e.g. nothing changes) go to the one with more changed
    pixels, then to the lower axis number.
    """
    from napari_probunet.review.metrics import pairwise_iou

    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] < 3 or maps.shape[0] % 2 != 1:
        raise ValueError(f"expected (2d + 1, H, W) probe decodes, got shape {maps.shape}")
    d = (maps.shape[0] - 1) // 2
    iou = pairwise_iou(maps, None, num_classes)
    scores = []
    for i in range(d):
        c, p, m = 0, 1 + 2 * i, 2 + 2 * i
        change = float(np.mean([1 - iou[m, c], 1 - iou[c, p], 1 - iou[m, p]]))
        pixels = float(np.mean(maps[p] != maps[m]))
        scores.append(AxisScore(i, change, pixels))
    return sorted(scores, key=lambda s: (-round(s.change, 9), -s.pixels, s.axis))


def focus_box(maps: np.ndarray, margin: float = 0.25, min_size: int = 16
              ) -> tuple[int, int, int, int]:
    """The part of the region worth showing in thumbnails: ``(row0, row1, col0, col1)``.

    The box around the foreground pixels of ``maps`` ``(k, H, W)`` (e.g. decodes along each
    axis at +-3 sigma) from their 1st to 99th percentile row and column (a few stray pixels do
    not count), grown by ``margin`` of its size on each side, made square where the region
    allows and at least ``min_size`` pixels; the whole region when all maps are empty.
    """
    maps = np.asarray(maps)
    h, w = maps.shape[-2:]
    count = (maps != 0).sum(axis=0)
    if not count.any():
        return 0, h, 0, w

    def bounds(weights):
        cdf = np.cumsum(weights) / weights.sum()
        return int(np.searchsorted(cdf, 0.01)), int(np.searchsorted(cdf, 0.99)) + 1

    (r0, r1), (c0, c1) = bounds(count.sum(axis=1)), bounds(count.sum(axis=0))
    side = max(r1 - r0, c1 - c0)
    side = max(int(np.ceil(side * (1 + 2 * margin))), min_size)

    def span(lo, hi, n):
        size = min(side, n)
        start = int(np.clip((lo + hi) / 2 - size / 2, 0, n - size))
        return start, start + size

    (r0, r1), (c0, c1) = span(r0, r1, h), span(c0, c1, w)
    return int(r0), int(r1), int(c0), int(c1)


# ------------------------------------------------------------------------ background pictures

#: class 0 (background) in thumbnails: a dark grey that reads as "nothing" on the dark theme
BACKGROUND_RGBA = (38, 41, 48, 255)
#: colour of the gaps between thumbnails
GAP_RGBA = (20, 22, 26, 255)

# viridis at 9 evenly spaced points (matplotlib's table), for the area map
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
], np.float64)


def thumbnail_size(shape: tuple[int, int], cell: int) -> tuple[int, int]:
    """Height and width of a thumbnail of an ``(H, W)`` map fitted into ``cell x cell`` pixels."""
    h, w = int(shape[0]), int(shape[1])
    scale = min(1.0, cell / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _thumbnail_index(shape: tuple[int, int], cell: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(shape[0]), int(shape[1])
    th, tw = thumbnail_size((h, w), cell)
    return ((np.arange(th) + 0.5) * h / th).astype(np.intp), \
        ((np.arange(tw) + 0.5) * w / tw).astype(np.intp)


def thumbnail(maps: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour thumbnail(s) of ``(..., H, W)`` maps fitting ``cell x cell`` pixels."""
    maps = np.asarray(maps)
    ri, ci = _thumbnail_index(maps.shape[-2:], cell)
    return maps[..., ri, :][..., ci]


def mosaic(labels: np.ndarray, n_rows: int, n_cols: int, colors: np.ndarray,
           cell: int = 48, gap: int = 1, underlay: np.ndarray | None = None,
           alpha: float = 0.7) -> np.ndarray:
    """Tile label maps into one RGBA picture (row-major, as :meth:`LatentPlane.grid_coords`).

    Args:
        labels: ``(k, H, W)`` label maps, ``k <= n_rows * n_cols`` (missing cells stay empty,
            so a grid can be shown while it is still being decoded).
        colors: ``(C, 4)`` RGBA (uint8, or float in [0, 1]) per class, as napari colours the
            labels; a class's alpha (0 for napari's transparent background) scales ``alpha``.
        cell: thumbnail side in pixels (nearest-neighbour subsampling, aspect kept, centred).
        gap: pixels between cells.
        underlay: ``(H, W)`` uint8 grey image drawn under the masks (the encoded region, the
            same size as the maps), or ``None`` for a plain dark background.
        alpha: opacity of the masks over the underlay.

    Returns ``(n_rows * (cell + gap) - gap, n_cols * (cell + gap) - gap, 4)`` uint8.
    """
    out = mosaic_canvas(n_rows, n_cols, cell, gap)
    paint_cells(out, labels, 0, n_cols, colors, cell, gap, underlay, alpha)
    return out


def mosaic_canvas(n_rows: int, n_cols: int, cell: int = 48, gap: int = 1) -> np.ndarray:
    """An empty :func:`mosaic`: every cell in the background colour, gaps between them."""
    out = np.empty((n_rows * (cell + gap) - gap, n_cols * (cell + gap) - gap, 4), np.uint8)
    out[:] = GAP_RGBA
    for r in range(n_rows):
        for c in range(n_cols):
            y0, x0 = r * (cell + gap), c * (cell + gap)
            out[y0:y0 + cell, x0:x0 + cell] = BACKGROUND_RGBA
    return out


def paint_cells(out: np.ndarray, labels: np.ndarray, start: int, n_cols: int,
                colors: np.ndarray, cell: int = 48, gap: int = 1,
                underlay: np.ndarray | None = None, alpha: float = 0.7) -> None:
    """Draw ``labels`` into cells ``start, start + 1, ...`` of a :func:`mosaic_canvas` ``out``.

    So a grid that arrives a row at a time costs one row of drawing per row.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    colors = np.asarray(colors)
    if colors.dtype.kind == "f":
        colors = np.clip(np.rint(colors * 255), 0, 255)
    lut = np.zeros((256, 4), np.float32)
    lut[: len(colors)] = colors[:256]
    weight = lut[:, 3:4] / 255.0 * float(alpha)
    ri, ci = _thumbnail_index(labels.shape[1:], cell)
    th, tw = len(ri), len(ci)
    if underlay is not None:
        grey = np.asarray(underlay, np.float32)[np.ix_(ri, ci)]
        base = np.repeat(grey[..., None], 3, axis=-1)
    else:
        base = np.broadcast_to(np.asarray(BACKGROUND_RGBA[:3], np.float32), (th, tw, 3))
    oy, ox = (cell - th) // 2, (cell - tw) // 2
    for i, lab in enumerate(labels):
        r, c = divmod(start + i, n_cols)
        y0, x0 = r * (cell + gap) + oy, c * (cell + gap) + ox
        if y0 + th > out.shape[0]:
            break  # more maps than cells
        lab = lab[np.ix_(ri, ci)]
        a = weight[lab]
        out[y0:y0 + th, x0:x0 + tw, :3] = np.rint(base * (1 - a) + lut[lab, :3] * a)
        out[y0:y0 + th, x0:x0 + tw, 3] = 255


def colormap_values(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Values -> RGBA uint8 ``(..., 4)`` on viridis (NaN -> the gap colour)."""
    v = np.asarray(values, np.float64)
    t = np.clip((v - vmin) / (vmax - vmin if vmax > vmin else 1.0), 0.0, 1.0)
    x = t * (len(_VIRIDIS) - 1)
    lo = np.floor(np.nan_to_num(x)).astype(int).clip(0, len(_VIRIDIS) - 2)
    frac = (np.nan_to_num(x) - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    out = np.empty(v.shape + (4,), np.uint8)
    out[..., :3] = np.rint(rgb)
    out[..., 3] = 255
    out[np.isnan(v)] = GAP_RGBA
    return out


def foreground_fraction(labels: np.ndarray) -> np.ndarray:
    """Share of pixels with a foreground class, per map: ``(k, H, W) -> (k,)``."""
    labels = np.asarray(labels)
    return (labels != 0).reshape(labels.shape[0], -1).mean(axis=1)


def value_image(values: np.ndarray, n_rows: int, n_cols: int, vmin: float = 0.0,
                vmax: float = 1.0) -> np.ndarray:
    """Per-cell values (row-major, NaN where not decoded yet) -> ``(n_rows, n_cols, 4)`` RGBA."""
    grid = np.full(n_rows * n_cols, np.nan)
    values = np.asarray(values, np.float64).reshape(-1)[: n_rows * n_cols]
    grid[: len(values)] = values
    return colormap_values(grid.reshape(n_rows, n_cols), vmin, vmax)


# ------------------------------------------------------------ the region in napari's world


def crop_to_region(
    data,
    layer_scale: Sequence[float],
    layer_translate: Sequence[float],
    image_scale: Sequence[float],
    image_translate: Sequence[float],
    roi: tuple[int, int, int, int],
    slice_index: Sequence[int] = (),
) -> tuple[np.ndarray, float]:
    """Read the part of a Labels layer that lies on the region of interest of the image.

    Layers may be positioned differently from the image (a full-size graders' layer, a
    crop-sized correction, another pixel size): each region pixel takes the layer's pixel
    whose centre is nearest to its own in world coordinates (scale and translate; napari
    aligns trailing axes). Pixels outside the layer read as 0.

    Returns ``(mask (h, w), coverage)`` where ``coverage`` is the fraction of the region the
    layer covers.
    """
    arr = data
    ndim = len(np.shape(arr))
    if ndim < 2:
        raise ValueError("a Labels layer needs at least two dimensions")
    row0, col0, h, w = (int(x) for x in roi)
    img_s = np.asarray(image_scale, np.float64)
    img_t = np.asarray(image_translate, np.float64)
    lay_s = np.asarray(layer_scale, np.float64)
    lay_t = np.asarray(layer_translate, np.float64)
    full = [*slice_index, None, None]  # image data index of each image axis (None: spatial)
    # world position of each image axis, aligned at the trailing end with the layer's axes
    index: list = []
    for k in range(ndim):
        img_axis = len(full) - ndim + k
        la_s, la_t = lay_s[k], lay_t[k]
        if img_axis < 0:  # the layer has more axes than the image: take its first slice
            index.append(np.array([0]))
            continue
        i_s, i_t = img_s[img_axis], img_t[img_axis]
        if full[img_axis] is not None:
            world = i_t + full[img_axis] * i_s
            index.append(np.array([int(np.floor((world - la_t) / la_s + 0.5))]))
        else:
            start, count = (row0, h) if img_axis == len(full) - 2 else (col0, w)
            world = i_t + (start + np.arange(count)) * i_s
            index.append(np.floor((world - la_t) / la_s + 0.5).astype(np.int64))
    shape = np.shape(arr)
    valid = [(ix >= 0) & (ix < n) for ix, n in zip(index, shape)]
    out = np.zeros((h, w), np.int64)
    if not all(v.any() for v in valid):
        return out, 0.0
    lo = [int(ix[v].min()) for ix, v in zip(index, valid)]
    hi = [int(ix[v].max()) + 1 for ix, v in zip(index, valid)]
    block = np.asarray(arr[tuple(slice(a, b) for a, b in zip(lo, hi))])
    local = [np.where(v, ix - a, 0) for ix, v, a in zip(index, valid, lo)]
    taken = block[np.ix_(*local)].reshape(h, w)
    ok = valid[-2][:, None] & valid[-1][None, :]
    for v in valid[:-2]:
        ok &= bool(v.all())
    out[ok] = taken[ok]
    return out, float(ok.mean())
