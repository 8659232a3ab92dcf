"""LIDC-IDRI reading files: the radiologists' outlines of one CT series, as voxel masks.

An LIDC-IDRI reading file is an XML document (namespace ``http://www.nih.gov``, root
``LidcReadMessage`` or ``IdriReadMessage``) with one ``readingSession`` per radiologist:

- ``unblindedReadNodule`` (a nodule of 3 mm or more): one ``roi`` per slice, each with the
  slice's ``imageSOP_UID`` (its SOPInstanceUID), ``imageZposition`` (mm), ``inclusion``
  (``TRUE``: the outline encloses nodule; ``FALSE``: it encloses a hole cut out of the
  nodule on that slice) and ``edgeMap`` points (``xCoord`` = column, ``yCoord`` = row) tracing
  the outline pixel by pixel. Such a nodule whose every outline is a single point is a small
  nodule (< 3 mm): kept as a :class:`Mark`, no mask.
- ``nonNodule``: one point (``locus``) on one slice: kept as a :class:`Mark`.

:func:`read_reading_file` reads one file against the DICOM series it describes (a
:class:`~napari_probunet.data.volumes.Volume` from ``read_dicom_series``) and gives a
:class:`Reading`: the radiologists in file order, each outlined nodule as a boolean mask
cropped to its bounding box, aligned voxel for voxel with ``Volume.data`` (slices, rows,
columns), and the points.

**Slices** are found by ``imageSOP_UID`` among the series' SOPInstanceUIDs
(``Volume.slice_uids``); an ROI whose UID is not in the series falls back to
``imageZposition``: the slice whose ``ImagePositionPatient`` z is nearest, if it is within half
the slice step. Otherwise the ROI is left out and a note says it is "on a slice the series
lacks".

**Filling** (:func:`fill_outline`): the polygon through the outline points is filled and the
outline's own pixels (the straight segments between consecutive points, closed) are added, as
the nodule's edge pixels (issue #26's convention). An ``inclusion=FALSE`` outline removes the
pixels strictly inside it (its outline pixels stay, the nodule's edge around the hole); holes
are cut after every inclusion of that slice is filled. With ``include_outline=False`` the
outline pixels are left out instead (and a hole takes its outline with it): pylidc's default
and the LIDC-IDRI slices set's masks, which it then equals voxel for voxel on LIDC-IDRI-0001.

**Safety.** The file's size is checked against ``MAX_XML_BYTES`` before it is parsed; it is
parsed by ``defusedxml`` (no entity declarations, no external entities or DTDs fetched: no
"billion laughs", no XXE); the bytes of the masks it describes are checked against
``MAX_DECODED_BYTES`` before any is allocated (:mod:`napari_probunet.limits`). Every problem
with a file is a :class:`ReadingFileError` naming the file, the problem and the way out:
:func:`napari_probunet.data.lidc_scan.read_scan_folder` turns it into a note and opens the
scan without that file's outlines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_probunet import limits
from napari_probunet.data.volumes import Volume
from napari_probunet.errors import DataError

#: the XML namespace of LIDC-IDRI reading files
NAMESPACE = "http://www.nih.gov"
#: the root elements of CT reading files (the IDRI sites wrote the second)
ROOTS = ("LidcReadMessage", "IdriReadMessage")
#: the radiologists' characteristics of a nodule (integers, LIDC's rating scales)
CHARACTERISTICS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
                   "lobulation", "spiculation", "texture", "malignancy")


class ReadingFileError(DataError):
    """An LIDC reading file that cannot be used with this series; the message says why."""


@dataclass(frozen=True)
class Radiologist:
    """One reading session of a reading file."""

    index: int  # 0-based, in file order (continued across the files of a scan)
    name: str  # "radiologist 1", ...
    servicing_id: str | None  # servicingRadiologistID as written (anonymised), if any
    reading_file: str  # the reading file's path


@dataclass(frozen=True)
class Mark:
    """A point a radiologist marked: a small nodule (< 3 mm) or a non-nodule."""

    radiologist: int  # Radiologist.index
    kind: str  # "small nodule" or "non-nodule"
    mark_id: str  # noduleID / nonNoduleID as written
    voxel: tuple[int, int, int]  # (slice, row, column) in Volume.data


@dataclass
class ReadNodule:
    """One radiologist's outlined nodule (an ``unblindedReadNodule``), filled."""

    radiologist: int  # Radiologist.index
    nodule_id: str  # noduleID as written
    bbox: tuple[int, int, int, int, int, int]  # (z0, z1, y0, y1, x0, x1), half-open voxels
    mask: np.ndarray  # (z1 - z0, y1 - y0, x1 - x0) bool, the nodule within bbox
    slices: tuple[int, ...]  # the slices it was outlined on (inclusion outlines), ascending
    characteristics: dict[str, int] = field(default_factory=dict)


@dataclass
class Reading:
    """What one reading file says about one series (see the module docstring)."""

    path: str
    series_uid: str | None  # the file's SeriesInstanceUid
    radiologists: list[Radiologist]
    nodules: list[ReadNodule]  # outlined nodules, in file order
    points: list[Mark]
    notes: list[str]  # what the user should know (outlines left out, and why)


# ----------------------------------------------------------------------------- parsing


@dataclass
class _Outline:
    """One ``roi`` as written; ``points`` (K, 2) int (row, column)."""

    z_position: float | None
    sop_uid: str | None
    inclusion: bool
    points: np.ndarray


@dataclass
class _Session:
    servicing_id: str | None
    nodules: list[tuple[str, list[_Outline], dict[str, int]]]  # (id, outlines, ratings)
    non_nodules: list[tuple[str, _Outline]]  # (id, the point as a one-point outline)


def _local(tag: str) -> tuple[str, str]:
    """``(namespace, local name)`` of an ElementTree tag."""
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _children(element, name: str) -> list:
    return [c for c in element if isinstance(c.tag, str) and _local(c.tag)[1] == name]


def _text(element, name: str) -> str | None:
    found = _children(element, name)
    text = found[0].text if found else None
    return text.strip() if text is not None and text.strip() else None


def _parse_xml(path: Path):
    """The root element of ``path``, parsed safely (see the module docstring)."""
    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise ReadingFileError(f"{path}: cannot read this file ({exc.strerror}).") from None
    limits.check("MAX_XML_BYTES", size, f"{path}: the XML file ({size:,} bytes)",
                 ReadingFileError)
    try:
        return SafeET.parse(str(path)).getroot()
    except DefusedXmlException as exc:
        raise ReadingFileError(
            f"{path}: the XML declares entities or a DTD ({type(exc).__name__}), which an "
            "LIDC reading file never does; refused for safety. Use the reading file as "
            "published by LIDC-IDRI.") from None
    except SyntaxError as exc:  # ElementTree's ParseError
        raise ReadingFileError(
            f"{path}: not well-formed XML ({exc}); the file may be truncated or edited by "
            "hand; download the reading file again.") from None
    except OSError as exc:
        raise ReadingFileError(f"{path}: cannot read this file ({exc}).") from None


def _check_root(root, path: Path) -> None:
    ns, name = _local(root.tag)
    if name not in ROOTS or ns not in (NAMESPACE, ""):
        raise ReadingFileError(
            f"{path}: not an LIDC-IDRI reading file: its root element is <{name}>"
            f"{f' in namespace {ns}' if ns else ''}, not <LidcReadMessage> (namespace "
            f"{NAMESPACE}); only LIDC-IDRI XML reading files go in annotations/.")
    if not _children(root, "readingSession"):
        other = "CXRreadingSession" if _children(root, "CXRreadingSession") else None
        why = (" (it holds chest radiograph readings, CXRreadingSession, not CT)" if other
               else "")
        raise ReadingFileError(
            f"{path}: an LIDC-IDRI XML file without any CT reading session (readingSession)"
            f"{why}; nothing to outline on this series. Move it out of annotations/.")


def _int(value: str | None, what: str, path: Path) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise ReadingFileError(f"{path}: {what} is {value!r}, not a whole number; the file is "
                               "damaged: download the reading file again.") from None


def _float(value: str | None) -> float | None:
    try:
        out = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _points(elements: list, what: str, path: Path) -> np.ndarray:
    """(K, 2) int64 (row, column) of ``edgeMap``/``locus`` elements."""
    out = np.empty((len(elements), 2), np.int64)
    for k, e in enumerate(elements):
        out[k, 0] = _int(_text(e, "yCoord"), f"{what}, point {k + 1}: yCoord", path)
        out[k, 1] = _int(_text(e, "xCoord"), f"{what}, point {k + 1}: xCoord", path)
    return out


def _outline(roi, what: str, path: Path, point_tag: str = "edgeMap") -> _Outline:
    inclusion = (_text(roi, "inclusion") or "TRUE").upper() != "FALSE"
    return _Outline(z_position=_float(_text(roi, "imageZposition")),
                    sop_uid=_text(roi, "imageSOP_UID"), inclusion=inclusion,
                    points=_points(_children(roi, point_tag), what, path))


def _ratings(nodule) -> dict[str, int]:
    found = _children(nodule, "characteristics")
    out: dict[str, int] = {}
    for name in CHARACTERISTICS if found else ():
        value = _float(_text(found[0], name))
        if value is not None:
            out[name] = int(value)
    return out


def _sessions(root, path: Path) -> list[_Session]:
    sessions = []
    for s, session in enumerate(_children(root, "readingSession")):
        nodules = []
        for n, nodule in enumerate(_children(session, "unblindedReadNodule")):
            nodule_id = _text(nodule, "noduleID") or f"nodule {n + 1}"
            what = f"reading session {s + 1}, nodule {nodule_id!r}"
            outlines = [_outline(roi, f"{what}, roi {k + 1}", path)
                        for k, roi in enumerate(_children(nodule, "roi"))]
            nodules.append((nodule_id, outlines, _ratings(nodule)))
        non_nodules = []
        for n, mark in enumerate(_children(session, "nonNodule")):
            mark_id = _text(mark, "nonNoduleID") or f"non-nodule {n + 1}"
            what = f"reading session {s + 1}, non-nodule {mark_id!r}"
            non_nodules.append((mark_id, _outline(mark, what, path, point_tag="locus")))
        sessions.append(_Session(_text(session, "servicingRadiologistID"), nodules,
                                 non_nodules))
    return sessions


# ----------------------------------------------------------------------------- slices


class SliceFinder:
    """Which slice of a series an ROI is on: by SOPInstanceUID, else by z position."""

    def __init__(self, volume: Volume) -> None:
        self.by_uid = {uid: k for k, uid in enumerate(volume.slice_uids) if uid}
        positions = volume.slice_positions
        self.z = None if positions is None else np.asarray(positions, float)[:, 2]
        steps = np.abs(np.diff(self.z)) if self.z is not None and len(self.z) > 1 else None
        self.half_step = float(np.median(steps)) / 2 if steps is not None else 0.0
        if self.half_step <= 1e-6:  # one slice, or not axial: z tells no slices apart
            self.z = None

    def find(self, sop_uid: str | None, z_position: float | None) -> int | None:
        """The slice index, or None if the series lacks that slice."""
        if sop_uid and sop_uid in self.by_uid:
            return self.by_uid[sop_uid]
        if self.z is None or z_position is None:
            return None
        k = int(np.argmin(np.abs(self.z - z_position)))
        return k if abs(self.z[k] - z_position) <= self.half_step + 1e-3 else None


# ----------------------------------------------------------------------------- filling


def outline_pixels(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of the closed outline through the points ``(rows[k], cols[k])``: straight
    segments between consecutive points and from the last back to the first."""
    from skimage.draw import line

    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if len(rows) == 1:
        return rows.copy(), cols.copy()
    rr, cc = [], []
    for k in range(len(rows)):
        j = (k + 1) % len(rows)
        r, c = line(int(rows[k]), int(cols[k]), int(rows[j]), int(cols[j]))
        rr.append(r)
        cc.append(c)
    return np.concatenate(rr), np.concatenate(cc)


def fill_outline(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int],
                 with_outline: bool = True) -> np.ndarray:
    """``shape`` bool mask of the region an outline encloses: the polygon through the
    points ``(rows, cols)`` filled, with the outline's own pixels (``with_outline``) or
    without them (the strict inside, as a hole is cut). What lies outside ``shape`` is
    dropped."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    if len(rows) >= 3:
        rr, cc = polygon(np.asarray(rows, float), np.asarray(cols, float), shape)
        mask[rr, cc] = True
    rr, cc = outline_pixels(rows, cols)
    keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    mask[rr[keep], cc[keep]] = with_outline
    return mask


def _nodule_mask(placed: list[tuple[int, _Outline]], include_outline: bool = True
                 ) -> tuple[tuple, np.ndarray, tuple]:
    """``(bbox, mask, slices)`` of one nodule from its outlines placed on slices; the outline
    pixels are nodule pixels (``include_outline``) or not (LIDC's instruction, pylidc)."""
    included = [(k, o) for k, o in placed if o.inclusion]
    z0 = min(k for k, _ in included)
    z1 = max(k for k, _ in included) + 1
    points = np.concatenate([o.points for _, o in included])
    y0, x0 = points.min(axis=0)
    y1, x1 = points.max(axis=0) + 1
    mask = np.zeros((z1 - z0, y1 - y0, x1 - x0), bool)
    for k, o in included:
        mask[k - z0] |= fill_outline(o.points[:, 0] - y0, o.points[:, 1] - x0, mask.shape[1:],
                                     with_outline=include_outline)
    for k, o in placed:
        if not o.inclusion and z0 <= k < z1:  # the hole: its outline is the nodule's edge
            mask[k - z0] &= ~fill_outline(o.points[:, 0] - y0, o.points[:, 1] - x0,
                                          mask.shape[1:], with_outline=not include_outline)
    slices = tuple(sorted({k for k, _ in included}))
    return (int(z0), int(z1), int(y0), int(y1), int(x0), int(x1)), mask, slices


# ----------------------------------------------------------------------------- reading


def _series_check(root, path: Path, volume: Volume) -> str | None:
    """The file's SeriesInstanceUid; refuse one that names another series."""
    header = _children(root, "ResponseHeader")
    uid = _text(header[0], "SeriesInstanceUid") if header else None
    ours = str(volume.info.get("series_uid", "") or "")
    if uid and ours and uid != ours:
        raise ReadingFileError(
            f"{path}: this reading file describes another series (SeriesInstanceUid {uid}), "
            f"not the one in the scan's ct/ folder ({ours}); put it beside its own series.")
    return uid


class _Placer:
    """Puts outlines on slices, leaving out (with a note) those the series cannot hold."""

    def __init__(self, volume: Volume, path: Path) -> None:
        self.finder, self.shape, self.path = SliceFinder(volume), volume.data.shape, path
        self.missing: list[str] = []
        self.outside: list[str] = []

    def place(self, outline: _Outline, what: str) -> int | None:
        k = self.finder.find(outline.sop_uid, outline.z_position)
        if k is None:
            z = "?" if outline.z_position is None else f"{outline.z_position:g}"
            self.missing.append(f"{what} (z {z} mm)")
            return None
        pts = outline.points
        if len(pts) == 0 or pts.min() < 0 or pts[:, 0].max() >= self.shape[1] or \
                pts[:, 1].max() >= self.shape[2]:
            self.outside.append(what)
            return None
        return k

    def notes(self) -> list[str]:
        out = []
        for items, problem in ((self.missing, "on a slice the series lacks (neither its "
                                "imageSOP_UID nor its imageZposition is in ct/)"),
                               (self.outside, "empty or outside the slice's "
                                f"{self.shape[1]}x{self.shape[2]} pixels")):
            if items:
                listed = "; ".join(items[:4]) + (f"; and {len(items) - 4} more"
                                                 if len(items) > 4 else "")
                out.append(f"{self.path}: {len(items)} outline(s) left out, {problem}: "
                           f"{listed}.")
        return out


def _check_mask_bytes(nodules: list[tuple], path: Path) -> None:
    """Refuse (before allocating) masks whose bounding boxes add up beyond the limit."""
    total = 0
    for placed in nodules:
        included = [(k, o) for k, o in placed if o.inclusion]
        if included:
            pts = np.concatenate([o.points for _, o in included])
            span = pts.max(axis=0) - pts.min(axis=0) + 1
            depth = max(k for k, _ in included) - min(k for k, _ in included) + 1
            total += int(depth) * int(span[0]) * int(span[1])
    limits.check_decoded(total, os.path.getsize(path),
                         f"{path}: the masks of its {len(nodules)} outlined nodules",
                         ReadingFileError)


def read_reading_file(xml_path: str | os.PathLike, volume: Volume,
                      first_radiologist: int = 0, include_outline: bool = True) -> Reading:
    """One LIDC-IDRI reading file read against ``volume`` (its DICOM series): see the module
    docstring. Radiologists are numbered from ``first_radiologist`` (0-based; named
    ``radiologist <index + 1>``). ``include_outline=False`` leaves the outline pixels out of
    the masks (LIDC's instruction to its readers, pylidc's default, the LIDC-IDRI slices
    set). :class:`ReadingFileError` for a file that cannot be used."""
    path = Path(xml_path)
    root = _parse_xml(path)
    _check_root(root, path)
    series_uid = _series_check(root, path, volume)
    sessions = _sessions(root, path)
    placer = _Placer(volume, path)
    radiologists, outlined, points = [], [], []
    for s, session in enumerate(sessions):
        r = first_radiologist + s
        radiologists.append(Radiologist(r, f"radiologist {r + 1}", session.servicing_id,
                                        str(path)))
        for nodule_id, outlines, ratings in session.nodules:
            what = f"radiologist {r + 1}, nodule {nodule_id!r}"
            placed = [(k, o) for k, o in ((placer.place(o, what), o) for o in outlines)
                      if k is not None]
            if not any(len(o.points) > 1 for o in outlines):  # a small nodule: points
                points += [Mark(r, "small nodule", nodule_id, _voxel(k, o)) for k, o in placed]
            elif any(o.inclusion for _, o in placed):
                outlined.append((r, nodule_id, placed, ratings))
        for mark_id, mark in session.non_nodules:
            k = placer.place(mark, f"radiologist {r + 1}, non-nodule {mark_id!r}")
            if k is not None:
                points.append(Mark(r, "non-nodule", mark_id, _voxel(k, mark)))
    limits.check("MAX_OUTLINED_NODULES", len(outlined),
                 f"{path}: its outlined nodules ({len(outlined):,})", ReadingFileError)
    _check_mask_bytes([placed for _, _, placed, _ in outlined], path)
    nodules = []
    for r, nodule_id, placed, ratings in outlined:
        bbox, mask, slices = _nodule_mask(placed, include_outline)
        nodules.append(ReadNodule(r, nodule_id, bbox, mask, slices, ratings))
    return Reading(str(path), series_uid, radiologists, nodules, points, placer.notes())


def _voxel(k: int, outline: _Outline) -> tuple[int, int, int]:
    row, col = outline.points[0]
    return int(k), int(row), int(col)
