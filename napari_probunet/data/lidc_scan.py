"""A whole CT scan with the radiologists' LIDC-IDRI reading files: one 3D mask per radiologist
per nodule, aligned voxel for voxel with the series.

:func:`read_scan_folder` reads a **scan folder**::

    <scan>/ct/*.dcm                 the DICOM series (read_dicom_series: HU, spacing, affine)
    <scan>/annotations/*.xml        zero or more LIDC-IDRI reading files (lidc_xml)

into a :class:`Scan`: the :class:`~napari_probunet.data.volumes.Volume`, the radiologists of
every reading file (numbered across the files in name order: ``radiologist 1`` ...), the
:class:`Nodule` s, the marked points (small nodules < 3 mm and non-nodules) and notes. A
reading file that cannot be used (another series, malformed XML, not a reading file, over a
limit) becomes a note naming the file and the problem; the scan still opens, with the other
files' outlines. Only a missing or unreadable ``ct/`` series is an error.

**Which outlines are the same nodule.** The radiologists read independently, so each names
their nodules their own way; the grouping is the LIDC practice of pylidc's
``Scan.cluster_annotations`` (annotations closer than a tolerance are one nodule), done on the
filled masks: the distance between two radiologists' nodules is the smallest distance in mm
between a voxel of one and a voxel of the other (voxel centres, with the series' spacing; 0
when they overlap). Pairs within ``tolerance_mm`` (default: the largest voxel spacing, the
slice step on LIDC scans, so outlines that overlap, touch, or lie on neighbouring slices are
linked) are joined closest first, and two groups are never joined if one radiologist has a
nodule in each: **one radiologist's two nodules are never one nodule** (pylidc lowers its
tolerance until no group has more than four annotations instead). A nodule outlined by one
radiologist only is a nodule of its own. Nodules are numbered along the scan (by the slice,
row and column of their centre).

**Storage.** A :class:`Nodule` keeps its masks cropped to its bounding box (the union over
the radiologists, plus :data:`CROP_MARGIN` voxels, clipped to the scan): ``masks`` is
``(R, dz, dy, dx)`` bool for all R radiologists of the scan, all False for a radiologist who
did not outline it. :meth:`Nodule.full_mask` gives one radiologist's mask at the scan's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_probunet import limits
from napari_probunet.data.lidc_xml import Mark, Radiologist, ReadNodule, read_reading_file
from napari_probunet.data.measure import longest_axial_diameter_mm, nodule_volume_mm3
from napari_probunet.data.volumes import Volume, read_dicom_series
from napari_probunet.errors import DataError, UserError

#: voxels added around a nodule's bounding box (slices, rows, columns), clipped to the scan
CROP_MARGIN = (1, 8, 8)
#: the scan folder's parts
CT_FOLDER, ANNOTATIONS_FOLDER = "ct", "annotations"

Box = tuple[int, int, int, int, int, int]  # (z0, z1, y0, y1, x0, x1), half-open voxels


@dataclass
class Nodule:
    """One nodule as the radiologists outlined it (see the module docstring)."""

    index: int  # 0-based, along the scan; shown as "nodule <index + 1>"
    bbox: Box  # where masks sit in the scan
    masks: np.ndarray  # (R, dz, dy, dx) bool, one per radiologist of the scan
    reader_ids: tuple[int, ...]  # radiologists (0-based) who outlined it
    nodule_ids: dict[int, str]  # radiologist -> their noduleID in the reading file
    scan_shape: tuple[int, int, int]  # (slices, rows, columns) of the scan
    spacing: tuple[float, float, float]  # mm (slice step, row, column)
    characteristics: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def union(self) -> np.ndarray:
        """``(dz, dy, dx)`` bool: voxels any radiologist marked."""
        return self.masks.any(axis=0)

    @property
    def centroid_voxel(self) -> tuple[float, float, float]:
        """Centre (slice, row, column; scan voxels) of the radiologists' union."""
        idx = np.argwhere(self.union).mean(axis=0)
        return tuple(float(i + o) for i, o in zip(idx, self.bbox[0::2]))

    def slices(self, r: int) -> tuple[int, ...]:
        """Scan slices on which radiologist ``r``'s mask is not empty."""
        return tuple(int(k) + self.bbox[0] for k in np.flatnonzero(self.masks[r].any((1, 2))))

    def full_mask(self, r: int) -> np.ndarray:
        """Radiologist ``r``'s mask at the scan's size ``(slices, rows, columns)`` bool."""
        out = np.zeros(self.scan_shape, bool)
        z0, z1, y0, y1, x0, x1 = self.bbox
        out[z0:z1, y0:y1, x0:x1] = self.masks[r]
        return out

    def volume_mm3(self, r: int) -> float:
        """Radiologist ``r``'s volume of this nodule (mm^3; 0 if they did not outline it)."""
        return nodule_volume_mm3(self.masks[r], self.spacing)

    def diameter_mm(self, r: int) -> float:
        """Radiologist ``r``'s longest axial diameter (mm; :mod:`napari_probunet.data.measure`:
        the same rule as a hypothesis is measured by)."""
        return longest_axial_diameter_mm(self.masks[r], self.spacing)

    def describe(self) -> str:
        z, y, x = self.centroid_voxel
        return (f"nodule {self.index + 1}: outlined by {len(self.reader_ids)} of "
                f"{self.masks.shape[0]} radiologists, centre slice {z:.0f}, row {y:.0f}, "
                f"column {x:.0f}")


@dataclass
class Scan:
    """A scan folder read (see the module docstring)."""

    volume: Volume
    nodules: list[Nodule]
    radiologists: list[Radiologist]
    points: list[Mark]  # small nodules (< 3 mm) and non-nodules, as marked
    notes: list[str]  # what the user should know: files left out, outlines left out
    source: str  # the scan folder
    reading_files: list[str] = field(default_factory=list)  # the files read, in order
    problems: list[str] = field(default_factory=list)  # the notes that say something was
    # left out: a reading file, outlines, the series' own problems (a warning, not a remark)

    @property
    def name(self) -> str:
        return Path(self.source).name

    def radiologist_mask(self, r: int) -> np.ndarray:
        """``(slices, rows, columns)`` bool: every nodule radiologist ``r`` outlined."""
        out = np.zeros(self.volume.data.shape, bool)
        for n in self.nodules:
            z0, z1, y0, y1, x0, x1 = n.bbox
            out[z0:z1, y0:y1, x0:x1] |= n.masks[r]
        return out


# ----------------------------------------------------------------------------- grouping


def _overlap(a: Box, b: Box) -> bool:
    return all(a[2 * i] < b[2 * i + 1] and b[2 * i] < a[2 * i + 1] for i in range(3))


def _grow(box: Box, by, shape=None) -> Box:
    out = []
    for i in range(3):
        lo, hi = box[2 * i] - int(by[i]), box[2 * i + 1] + int(by[i])
        if shape is not None:
            lo, hi = max(0, lo), min(int(shape[i]), hi)
        out += [lo, hi]
    return tuple(out)


def _place(n: ReadNodule, box: Box) -> np.ndarray:
    """``n``'s mask in the frame of ``box`` (which contains ``n.bbox``)."""
    out = np.zeros((box[1] - box[0], box[3] - box[2], box[5] - box[4]), bool)
    z0, z1, y0, y1, x0, x1 = n.bbox
    out[z0 - box[0]:z1 - box[0], y0 - box[2]:y1 - box[2], x0 - box[4]:x1 - box[4]] = n.mask
    return out


def nodule_distance_mm(a: ReadNodule, b: ReadNodule, spacing, within: float) -> float:
    """Smallest distance (mm) between a voxel of ``a`` and one of ``b`` (0 if they
    overlap); ``inf`` when it is certainly over ``within`` (their boxes too far apart)."""
    from scipy.ndimage import distance_transform_edt

    reach = [int(np.ceil(within / float(s))) + 1 for s in spacing]
    if not _overlap(_grow(a.bbox, reach), b.bbox):
        return float("inf")
    box = tuple(f(a.bbox[i], b.bbox[i]) for i, f in zip(range(6), (min, max) * 3))
    ma, mb = _place(a, box), _place(b, box)
    if not ma.any() or not mb.any():
        return float("inf")
    if (ma & mb).any():
        return 0.0
    dist = distance_transform_edt(~ma, sampling=[float(s) for s in spacing])
    return float(dist[mb].min())


def _candidates(nodules: list[ReadNodule], spacing, tolerance_mm: float) -> np.ndarray:
    """(P, 2) pairs ``i < j`` of two radiologists' nodules whose boxes, grown by the
    tolerance, overlap (the only ones that can be within it)."""
    if len(nodules) < 2:
        return np.zeros((0, 2), int)
    reach = np.array([int(np.ceil(tolerance_mm / float(s))) + 1 for s in spacing])
    boxes = np.array([n.bbox for n in nodules]).reshape(-1, 3, 2)
    lo, hi = boxes[:, :, 0], boxes[:, :, 1]
    near = np.all((lo[:, None] - reach < hi[None]) & (lo[None] < hi[:, None] + reach), axis=2)
    readers = np.array([n.radiologist for n in nodules])
    near &= readers[:, None] != readers[None]
    return np.argwhere(np.triu(near, k=1))


def _groups(nodules: list[ReadNodule], spacing, tolerance_mm: float) -> list[list[int]]:
    """Indices of ``nodules`` that are one nodule each (see the module docstring)."""
    pairs = []
    for i, j in _candidates(nodules, spacing, tolerance_mm):
        d = nodule_distance_mm(nodules[i], nodules[j], spacing, tolerance_mm)
        if d <= tolerance_mm:
            pairs.append((d, int(i), int(j)))
    group = list(range(len(nodules)))
    members = {i: [i] for i in group}
    for _, i, j in sorted(pairs):
        gi, gj = group[i], group[j]
        if gi == gj:
            continue
        readers_i = {nodules[k].radiologist for k in members[gi]}
        if readers_i & {nodules[k].radiologist for k in members[gj]}:
            continue  # never two nodules of one radiologist in one group
        for k in members[gj]:
            group[k] = gi
        members[gi] += members.pop(gj)
    return [sorted(m) for m in members.values()]


def group_nodules(nodules: list[ReadNodule], n_radiologists: int,
                  scan_shape: tuple[int, int, int], spacing, tolerance_mm: float | None = None,
                  margin=CROP_MARGIN, what: str = "the reading files") -> list[Nodule]:
    """The radiologists' outlined nodules grouped into :class:`Nodule` s (see the module
    docstring), numbered along the scan. The masks' bytes are checked against
    ``MAX_DECODED_BYTES`` before they are allocated."""
    spacing = tuple(float(s) for s in spacing)
    tol = max(spacing) if tolerance_mm is None else float(tolerance_mm)
    limits.check("MAX_OUTLINED_NODULES", len(nodules),
                 f"{what}: the outlined nodules ({len(nodules):,})", DataError)
    found = []
    for members in _groups(nodules, spacing, tol):
        box = nodules[members[0]].bbox
        for k in members[1:]:
            box = tuple(f(box[i], nodules[k].bbox[i]) for i, f in zip(range(6), (min, max) * 3))
        found.append((members, _grow(box, margin, scan_shape)))
    total = sum(n_radiologists * (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4]) for _, b in found)
    limits.check_decoded(total, 0, f"{what}: the masks of {len(found)} nodules", DataError)
    out = []
    for members, box in found:
        masks = np.zeros((n_radiologists, box[1] - box[0], box[3] - box[2], box[5] - box[4]),
                         bool)
        for k in members:
            masks[nodules[k].radiologist] |= _place(nodules[k], box)
        readers = tuple(sorted({nodules[k].radiologist for k in members}))
        out.append(Nodule(
            index=0, bbox=box, masks=masks, reader_ids=readers,
            nodule_ids={nodules[k].radiologist: nodules[k].nodule_id for k in members},
            scan_shape=tuple(int(s) for s in scan_shape), spacing=spacing,
            characteristics={nodules[k].radiologist: dict(nodules[k].characteristics)
                             for k in members}))
    out.sort(key=lambda n: tuple(round(c, 3) for c in n.centroid_voxel))
    for i, n in enumerate(out):
        n.index = i
    return out


# ----------------------------------------------------------------------------- the folder


def is_scan_folder(folder: str | os.PathLike) -> bool:
    """A folder with a ``ct/`` subfolder (the series; ``annotations/`` may hold reading
    files). Quick: only looks at the names."""
    folder = Path(folder)
    return folder.is_dir() and (folder / CT_FOLDER).is_dir()


def reading_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The ``*.xml`` files of ``annotations/`` (name order) and notes on the other files."""
    annotations = folder / ANNOTATIONS_FOLDER
    if not annotations.is_dir():
        return [], [f"{folder}: no {ANNOTATIONS_FOLDER}/ folder, so no radiologists' "
                    "outlines; put the LIDC reading files (*.xml) in "
                    f"{annotations} to see them."]
    files = sorted(p for p in annotations.iterdir()
                   if p.is_file() and not p.name.startswith("."))
    xml = [p for p in files if p.suffix.lower() == ".xml"]
    others = [p.name for p in files if p.suffix.lower() != ".xml"]
    notes = [f"{annotations}: {len(others)} file(s) that are not LIDC reading files (*.xml) "
             f"were not read ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
             "only the XML reading files give the outlines here."] if others else []
    return xml, notes


def read_scan_folder(folder: str | os.PathLike, tolerance_mm: float | None = None,
                     include_outline: bool = True) -> Scan:
    """A scan folder (see the module docstring) as a :class:`Scan`. ``include_outline``:
    see :func:`napari_probunet.data.lidc_xml.read_reading_file`. :class:`DataError` only
    when the folder has no ``ct/`` or its series cannot be read."""
    folder = Path(folder)
    if not is_scan_folder(folder):
        raise DataError(
            f"{folder}: not a scan folder: it has no {CT_FOLDER}/ subfolder. A scan folder "
            f"holds {CT_FOLDER}/ (the DICOM series) and {ANNOTATIONS_FOLDER}/ (LIDC reading "
            "files, *.xml); to see a series alone, open its own folder.")
    volume = read_dicom_series(folder / CT_FOLDER)
    files, remarks = reading_files(folder)
    problems = list(volume.notes)
    radiologists: list[Radiologist] = []
    outlined: list[ReadNodule] = []
    points: list[Mark] = []
    read: list[str] = []
    for path in files:
        try:
            reading = read_reading_file(path, volume, len(radiologists), include_outline)
        except UserError as exc:
            problems.append(f"{exc} The scan opened without this file's outlines.")
            continue
        read.append(str(path))
        radiologists += reading.radiologists
        outlined += reading.nodules
        points += reading.points
        problems += reading.notes
    try:
        nodules = group_nodules(outlined, len(radiologists), volume.data.shape,
                                volume.spacing, tolerance_mm,
                                what=str(folder / ANNOTATIONS_FOLDER))
    except UserError as exc:  # together over a limit that each file kept to
        problems.append(f"{exc} The scan opened without the radiologists' outlines.")
        nodules = []
    return Scan(volume, nodules, radiologists, points, problems + remarks, str(folder), read,
                problems)
