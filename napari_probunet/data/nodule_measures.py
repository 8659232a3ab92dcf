"""What a radiologist reads off a nodule's 3D mask: its volume and its longest diameter.

Plain functions of a boolean mask ``(slices, rows, columns)`` and the voxel spacing
``(slice step, row spacing, column spacing)`` in mm (``Volume.spacing``), so the same numbers
come out for a radiologist's outline (:mod:`napari_probunet.data.lidc_scan`) and for a model's
hypothesis.

- :func:`nodule_volume_mm3`: voxels counted, times the voxel's volume (mm^3).
- :func:`longest_diameter_mm`: the **longest axial diameter**, as radiologists measure a
  nodule (Lung-RADS, Fleischner, RECIST): on each slice, the longest distance between two
  points of the marked region, its pixels taken as squares (edge to edge: a block of 3 x 4
  pixels measures its diagonal, 5 pixels; a disk of diameter d pixels about d); the largest
  over slices. It is not the 3D maximum Feret diameter, which a radiologist does not measure
  on thick slices.
"""

from __future__ import annotations

import numpy as np


def _spacing3(spacing) -> np.ndarray:
    s = np.asarray([float(v) for v in spacing][-3:], float)
    if s.shape != (3,) or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be three positive mm values, got {spacing!r}")
    return s


def nodule_volume_mm3(mask: np.ndarray, spacing) -> float:
    """Volume (mm^3) of a ``(Z, Y, X)`` boolean mask with voxel ``spacing`` (z, y, x) mm."""
    s = _spacing3(spacing)
    return float(np.count_nonzero(mask)) * float(np.prod(s))


def _slice_diameter(plane: np.ndarray, row_mm: float, col_mm: float) -> float:
    """Longest distance (mm) between two points of the pixels of ``plane`` (squares)."""
    from scipy.ndimage import binary_erosion

    edge = plane & ~binary_erosion(plane)  # only boundary pixels can hold the extremes
    rr, cc = np.nonzero(edge)
    corners = np.concatenate([np.stack([rr + dr, cc + dc], axis=1)
                              for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)]).astype(float)
    corners *= (row_mm, col_mm)
    corners = np.unique(corners, axis=0)
    if len(corners) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            corners = corners[ConvexHull(corners).vertices]
        except QhullError:  # all on a line: every corner stays
            pass
    diff = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def longest_diameter_mm(mask: np.ndarray, spacing) -> float:
    """Longest axial diameter (mm) of a ``(Z, Y, X)`` boolean mask (see the module
    docstring); 0 for an empty mask."""
    s = _spacing3(spacing)
    mask = np.asarray(mask, bool)
    if mask.ndim == 2:
        mask = mask[None]
    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        best = max(best, _slice_diameter(mask[z], s[1], s[2]))
    return best
