"""What a radiologist reads off a nodule's 3D mask: its volume and its longest diameter, in mm.

Plain functions of a ``(Z, Y, X)`` mask (any non-zero voxel is nodule) and the scan's voxel
spacing ``(dz, dy, dx)`` in mm, so that the radiologists' outlines (read from their reading
files) and the model's hypotheses are measured by the same rule.

- **Volume**: the number of nodule voxels times the voxel volume ``dz * dy * dx`` (mm^3), the
  convention of LIDC's own volume figures (voxel counting, no partial voxels).
- **Longest axial diameter**: on each axial slice, the largest distance between two nodule
  pixels' centres, plus one pixel (so a single pixel measures one pixel across), in mm from
  ``dy, dx``; the largest over the slices. This is how a radiologist measures a nodule on the
  slice where it looks largest (RECIST, Lung-RADS); :func:`longest_3d_diameter_mm` is the same
  over all voxels in 3D.
"""

from __future__ import annotations

import numpy as np

from napari_probunet.errors import InputError

#: pixels on a hull beyond which the pairwise distance search is done on the hull only
_HULL_MIN_POINTS = 64


def check_spacing(spacing) -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats ``(dz, dy, dx)`` in mm, or an error."""
    try:
        s = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise InputError(f"the voxel spacing {spacing!r} is not three numbers (dz, dy, dx) in "
                         "mm") from None
    if len(s) != 3 or not all(np.isfinite(v) and v > 0 for v in s):
        raise InputError(f"the voxel spacing {spacing!r} must be three positive numbers "
                         "(dz, dy, dx) in mm; check the scan's header")
    return s


def nodule_volume_mm3(mask: np.ndarray, spacing) -> float:
    """Volume of the non-zero voxels of a ``(Z, Y, X)`` mask in mm^3."""
    dz, dy, dx = check_spacing(spacing)
    return float(np.count_nonzero(mask)) * dz * dy * dx


def _max_distance(points: np.ndarray) -> float:
    """Largest distance between two of ``points`` ``(P, k)`` (mm); 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    if len(points) > _HULL_MIN_POINTS:
        from scipy.spatial import ConvexHull, QhullError  # lazy: scipy.spatial is slow to import

        try:
            points = points[ConvexHull(points).vertices]
        except (QhullError, ValueError):  # collinear or coplanar: every point stays
            pass
    best = 0.0
    for start in range(0, len(points), 512):  # bounded memory for large, flat sets
        d = points[start:start + 512, None, :] - points[None, :, :]
        best = max(best, float(np.sqrt((d * d).sum(-1)).max()))
    return best


def _edge_points(mask2d: np.ndarray) -> np.ndarray:
    """Row, column of the pixels of a 2D mask that touch the background (the farthest pair of a
    set is always on its edge)."""
    m = mask2d.astype(bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    return np.argwhere(m & ~inner).astype(np.float64)


def longest_axial_diameter_mm(mask: np.ndarray, spacing) -> float:
    """The longest in-slice diameter of a ``(Z, Y, X)`` mask in mm (0 for an empty mask)."""
    _, dy, dx = check_spacing(spacing)
    mask = np.asarray(mask)
    best = 0.0
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        pts = _edge_points(mask[z]) * (dy, dx)
        best = max(best, _max_distance(pts) + min(dy, dx))
    return best


def longest_3d_diameter_mm(mask: np.ndarray, spacing) -> float:
    """The longest distance between two voxels of a ``(Z, Y, X)`` mask, plus one voxel, in mm."""
    dz, dy, dx = check_spacing(spacing)
    mask = np.asarray(mask)
    pts = [np.column_stack([np.full(len(p), z, np.float64), p])
           for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
           for p in [_edge_points(mask[z])]]
    if not pts:
        return 0.0
    return _max_distance(np.concatenate(pts) * (dz, dy, dx)) + min(dz, dy, dx)


def z_gaps(mask: np.ndarray) -> int:
    """Slices of a ``(Z, Y, X)`` mask that are empty between two non-empty ones (0 when the
    nodule's slices are contiguous, or it is empty)."""
    filled = np.flatnonzero(np.asarray(mask).reshape(len(mask), -1).any(axis=1))
    if len(filled) < 2:
        return 0
    return int(filled[-1] - filled[0] + 1 - len(filled))
