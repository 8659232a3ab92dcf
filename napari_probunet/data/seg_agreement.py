"""How well a DICOM SEG agrees with the radiologists' LIDC-IDRI reading file of the same
series (no Qt, no napari, no torch).

Someone else's SEG made from the XML is a conversion to check, not a truth to trust: each
segment is matched to the radiologist's outlined nodule it overlaps most (Dice, both as voxel
masks over the series, ``Volume.data`` order), and a segment that overlaps no outline is
matched to the nearest point the radiologists marked (a small nodule < 3 mm or a
non-nodule), by the distance in voxels from the segment's centre (ties between radiologists
who marked one place broken by a hint, e.g. the radiologist a segment's label names).
``benchmarks/seg_vs_xml.py`` prints the table for a scan folder; ``docs/dicom-seg.md`` shows it
for LIDC-IDRI-0001.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_probunet.data.dicom_seg_read import SegObject
from napari_probunet.data.lidc_xml import Mark, ReadNodule


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks of one shape (non-zero = in): 2|A & B| / (|A| + |B|); 1 for two
    empty masks."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass(frozen=True)
class SegmentMatch:
    """One SEG segment and what of the reading file it matches best."""

    label: str
    voxels: int
    radiologist: int | None  # 0-based, of the matched outline or mark
    matched: str  # "outline <noduleID>", "<kind> <id>" of a mark, or "nothing"
    dice: float | None  # with the matched outline (None for a mark)
    distance_voxels: float | None  # from the segment's centre to the matched mark
    runner_up_dice: float | None = None  # the next best outline (another radiologist's)


def _full(nodule: ReadNodule, shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    z0, z1, y0, y1, x0, x1 = nodule.bbox
    out[z0:z1, y0:y1, x0:x1] = nodule.mask
    return out


def match_segments(seg: SegObject, nodules: list[ReadNodule], points: list[Mark],
                   radiologist_of: Callable[[str], int | None] | None = None
                   ) -> list[SegmentMatch]:
    """Each segment of ``seg`` matched to an outline (best Dice) or, overlapping none, to the
    nearest marked point; see the module docstring. ``radiologist_of(label)`` (0-based, or
    None) breaks ties between points several radiologists marked at the same place."""
    out = []
    for segment in seg.segments:
        mask = segment.mask != 0
        scores = sorted(((dice(mask, _full(n, mask.shape)), n) for n in nodules),
                        key=lambda sn: -sn[0])
        if scores and scores[0][0] > 0:
            best, nodule = scores[0]
            out.append(SegmentMatch(
                segment.label, segment.voxels, nodule.radiologist,
                f"outline {nodule.nodule_id}", round(best, 4), None,
                round(scores[1][0], 4) if len(scores) > 1 else None))
            continue
        hint = radiologist_of(segment.label) if radiologist_of is not None else None
        out.append(_nearest_mark(segment.label, mask, points, hint))
    return out


def _nearest_mark(label: str, mask: np.ndarray, points: list[Mark],
                  hint: int | None) -> SegmentMatch:
    voxels = int(mask.sum())
    if not voxels or not points:
        return SegmentMatch(label, voxels, None, "nothing", None, None)
    centre = np.argwhere(mask).mean(axis=0)
    distances = [float(np.linalg.norm(np.asarray(p.voxel) - centre)) for p in points]
    nearest = min(distances)
    ties = [k for k, d in enumerate(distances) if d <= nearest + 0.5]
    k = next((k for k in ties if points[k].radiologist == hint), ties[0])
    mark = points[k]
    return SegmentMatch(label, voxels, mark.radiologist, f"{mark.kind} {mark.mark_id}", None,
                        round(distances[k], 2))
