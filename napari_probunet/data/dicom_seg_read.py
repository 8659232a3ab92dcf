"""Reading a DICOM SEG onto the series it was drawn on, and finding that series on disk
(the reading half of :mod:`napari_probunet.data.dicom_seg`; no Qt, no napari, no torch).

A frame goes to the CT slice whose SOPInstanceUID its Derivation Image Sequence names; a frame
that names none (or an instance not in the series) goes to the slice at its
ImagePositionPatient along the slice normal, if one lies within a third of the slice step and
the frame's in-plane origin within half a pixel of that slice's; otherwise the SEG is refused
(it is not on the series' voxel grid). Sizes are checked before decoding: the decoded frames
(frames x rows x columns bytes, plus float32 for a FRACTIONAL SEG) against
``MAX_DECODED_BYTES`` beyond the file's size, and then the boxes of all segments before they
are allocated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import limits
from napari_probunet.data.volumes import (
    SEG_SOP_CLASS_UID,
    Volume,
    dicom_files,
    is_dicom_name,
    read_series_headers,
)
from napari_probunet.errors import DataError

#: folders (relative to the SEG file's folder) where :func:`find_series` looks first
SEARCH_FIRST = (".", "../ct", "ct")
#: at most this many files of a folder are looked into when searching for a series
_SEARCH_FILES = 5000
#: files whose headers are read first to tell whether a folder holds the series
_SNIFF_FILES = 4
#: at most this many folders are searched
_SEARCH_FOLDERS = 64


# ----------------------------------------------------------------------------- the series


def series_headers(source) -> list:
    """The headers of a series in :attr:`Volume.data` order, from ``source``: a DICOM
    :class:`~napari_probunet.data.volumes.Volume` (its folder is read again, headers only),
    a folder, a file or a list of files (:func:`read_series_headers`), or the headers
    themselves (a list of pydicom Datasets, taken as already in volume order)."""
    if isinstance(source, Volume):
        if source.format != "dicom":
            raise DataError(f"{source.path}: a DICOM SEG lies over a DICOM series; this volume "
                            f"is {source.format.upper()}. Open the DICOM series itself.")
        headers = read_series_headers(source.path)
        uid = str(source.info.get("series_uid", ""))
        if len(headers) != source.data.shape[0] or (
                uid and str(headers[0].get("SeriesInstanceUID", "")) != uid):
            raise DataError(f"{source.path}: the series on disk is no longer the one opened "
                            f"({len(headers)} files now, {source.data.shape[0]} slices then); "
                            "open the series again.")
        return headers
    if isinstance(source, Sequence) and source and not isinstance(source, (str, bytes)) \
            and all(hasattr(ds, "SOPInstanceUID") for ds in source):
        return list(source)
    return read_series_headers(source)


def _series_uid(headers: list) -> str:
    return str(headers[0].get("SeriesInstanceUID", "") or "")


# ----------------------------------------------------------------------------- header


def seg_header(path: str | os.PathLike):
    """The SEG file's dataset, pixel data not read (it is decoded later, after the size
    check); :class:`DataError` if it is not a readable DICOM SEG."""
    import pydicom

    p = Path(path)
    try:
        ds = pydicom.dcmread(p, defer_size=4096, force=is_dicom_name(p))
    except FileNotFoundError:
        raise DataError(f"{p}: no such file.") from None
    except Exception as exc:  # pydicom raises many types for a broken file
        raise DataError(f"{p}: cannot read this DICOM file ({type(exc).__name__}: {exc}); it "
                        "may be truncated.") from None
    _check_is_seg(ds, p)
    return ds


def _check_is_seg(ds, p: Path) -> None:
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID:
        raise DataError(f"{p}: not a DICOM Segmentation (SEG) object (its SOP class is "
                        f"{ds.get('SOPClassUID', 'missing')}); open it as a DICOM series.")


def _seg_and_size(source) -> tuple[Any, Path, int]:
    """``(dataset, path for messages, bytes it came from)`` of a SEG file or of a SEG
    dataset already in memory (e.g. retrieved from a PACS)."""
    if hasattr(source, "SOPClassUID"):
        where = Path(str(getattr(source, "filename", None) or "the SEG (in memory)"))
        _check_is_seg(source, where)
        return source, where, len(source.get("PixelData", b"") or b"")
    path = Path(source)
    seg = seg_header(path)
    return seg, path, os.path.getsize(path)


def referenced_series(seg) -> list[str]:
    """The SeriesInstanceUIDs the SEG's Referenced Series Sequence names (may be empty)."""
    return [str(item.get("SeriesInstanceUID", "")) for item in
            seg.get("ReferencedSeriesSequence", []) or [] if item.get("SeriesInstanceUID")]


def _check_series(seg, headers: list, where: str, path: Path) -> None:
    """Refuse a SEG drawn on another series (or, without series references, another frame
    of reference) than ``headers``."""
    uid = _series_uid(headers)
    named = referenced_series(seg)
    if named and uid not in named:
        raise DataError(
            f"{path.name} was drawn on the series {', '.join(named)}, but the series given "
            f"({where}) is {uid}: a SEG can only be shown over its own series. Open the SEG "
            "with the series it names (put that series' folder beside the SEG or in ../ct/), "
            "or fetch that series from the PACS.")
    if not named:
        frame = str(seg.get("FrameOfReferenceUID", "") or "")
        own = str(headers[0].get("FrameOfReferenceUID", "") or "")
        if frame and own and frame != own:
            raise DataError(
                f"{path.name} names no series and lies in the frame of reference {frame}, "
                f"not that of the series given ({where}: {own}); open it with its own series.")


# ----------------------------------------------------------------------------- frames


def _item(group, name: str):
    seq = group.get(name) if group is not None else None
    return seq[0] if seq else None


def _segment_of(frame, shared) -> int:
    for group in (frame, shared):
        item = _item(group, "SegmentIdentificationSequence")
        if item is not None and "ReferencedSegmentNumber" in item:
            return int(item.ReferencedSegmentNumber)
    raise DataError("a frame of the SEG names no segment (SegmentIdentificationSequence).")


def _source_uids(frame) -> list[str]:
    return [str(src.get("ReferencedSOPInstanceUID", ""))
            for der in (frame.get("DerivationImageSequence", []) or [])
            for src in (der.get("SourceImageSequence", []) or [])]


def _position(frame, shared) -> np.ndarray | None:
    for group in (frame, shared):
        item = _item(group, "PlanePositionSequence")
        if item is not None and "ImagePositionPatient" in item:
            return np.asarray([float(v) for v in item.ImagePositionPatient], float)
    return None


@dataclass
class _Grid:
    """Where the series' slices are: SOPInstanceUID -> index, the slice normal, each slice's
    position and its depth along the normal, the pixel spacing."""

    index: dict[str, int]
    normal: np.ndarray
    positions: np.ndarray  # (slices, 3) mm, LPS
    depths: np.ndarray  # (slices,) mm
    pixel: float

    @classmethod
    def of(cls, headers: list) -> _Grid:
        iop = np.asarray([float(v) for v in headers[0].get("ImageOrientationPatient",
                                                            [1, 0, 0, 0, 1, 0])], float)
        normal = np.cross(iop[:3], iop[3:])
        positions = np.asarray([[float(v) for v in ds.get("ImagePositionPatient", [0, 0, k])]
                                for k, ds in enumerate(headers)], float)
        spacing = headers[0].get("PixelSpacing") or [1.0, 1.0]
        return cls({str(ds.SOPInstanceUID): k for k, ds in enumerate(headers)}, normal,
                   positions, positions @ normal, float(min(float(s) for s in spacing)))

    def slice_of(self, frame, shared, where: str, f: int) -> int:
        for uid in _source_uids(frame):
            if uid in self.index:
                return self.index[uid]
        position = _position(frame, shared)
        if position is None:
            raise DataError(f"{where}: frame {f + 1} names no slice of the series and has no "
                            "position (ImagePositionPatient); the SEG cannot be placed.")
        gaps = np.diff(self.depths)
        tolerance = float(np.min(np.abs(gaps))) / 3 if gaps.size else 1.0
        k = int(np.argmin(np.abs(self.depths - float(position @ self.normal))))
        if (abs(self.depths[k] - float(position @ self.normal)) > tolerance or
                np.linalg.norm(position - self.positions[k]) > tolerance + self.pixel / 2):
            raise DataError(f"{where}: frame {f + 1} lies at {np.round(position, 2).tolist()} "
                            "mm, on no slice of the series (not on its voxel grid); resample "
                            "the segmentation onto the series first.")
        return k


# ----------------------------------------------------------------------------- segments


@dataclass
class SegSegment:
    """One segment of a SEG, over the series: ``crop`` (the segment's box, uint8 0/1, or
    float32 0..1 for a FRACTIONAL SEG) at ``offset`` (slice, row, column) of a volume of
    ``shape`` (slices, rows, columns), as ``Volume.data`` is ordered."""

    number: int
    label: str
    crop: np.ndarray
    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    frames: int  # how many frames of the SEG hold this segment
    description: dict[str, Any] = field(default_factory=dict)  # codes, algorithm, colour

    @property
    def mask(self) -> np.ndarray:
        """The whole ``(slices, rows, columns)`` mask (allocated on each call)."""
        full = np.zeros(self.shape, self.crop.dtype)
        s, r, c = self.offset
        d, h, w = self.crop.shape
        full[s:s + d, r:r + h, c:c + w] = self.crop
        return full

    @property
    def voxels(self) -> int:
        """Voxels in the segment (non-zero)."""
        return int(np.count_nonzero(self.crop))


@dataclass
class SegObject:
    """A SEG read over its series: its ``segments`` in segment-number order."""

    path: str
    series_uid: str  # the series it lies over
    sop_instance_uid: str
    series_description: str
    fractional: bool
    segments: list[SegSegment]
    notes: list[str] = field(default_factory=list)

    def masks(self) -> dict[str, np.ndarray]:
        """Label -> whole mask; a label used twice gets `` (segment N)`` added."""
        seen = [s.label for s in self.segments]
        return {(s.label if seen.count(s.label) == 1 else f"{s.label} (segment {s.number})"):
                s.mask for s in self.segments}


def _code(item, name: str) -> dict[str, str] | None:
    code = _item(item, name)
    if code is None:
        return None
    return {"value": str(code.get("CodeValue", "")), "scheme": str(code.get(
        "CodingSchemeDesignator", "")), "meaning": str(code.get("CodeMeaning", ""))}


def _describe(item) -> dict[str, Any]:
    algorithm = _item(item, "SegmentationAlgorithmIdentificationSequence")
    lab = item.get("RecommendedDisplayCIELabValue")
    return {"category": _code(item, "SegmentedPropertyCategoryCodeSequence"),
            "type": _code(item, "SegmentedPropertyTypeCodeSequence"),
            "algorithm_type": str(item.get("SegmentAlgorithmType", "")),
            "algorithm": None if algorithm is None else {
                "name": str(algorithm.get("AlgorithmName", "")),
                "version": str(algorithm.get("AlgorithmVersion", ""))},
            "cielab": None if lab is None else [int(v) for v in lab],
            "rgb": None if lab is None else _rgb(lab)}


def _rgb(lab) -> str | None:
    """``#rrggbb`` of a DICOM CIELab colour (RecommendedDisplayCIELabValue), or None."""
    from highdicom.color import CIELabColor

    try:
        r, g, b = CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb(clip=True)
    except (ValueError, TypeError):
        return None
    return f"#{int(r):02x}{int(g):02x}{int(b):02x}"


def _check_sizes(seg, path: Path, file_bytes: int, plane: tuple[int, int],
                 fractional: bool) -> int:
    """Frames of the SEG, after checking its declared sizes against the limits and the
    series' plane; nothing is decoded yet."""
    frames = int(seg.get("NumberOfFrames", 1) or 1)
    rows, cols = int(seg.get("Rows", 0) or 0), int(seg.get("Columns", 0) or 0)
    limits.check_plane(rows, cols, f"{path}: each SEG frame", DataError)
    segments = len(seg.get("SegmentSequence", []) or [])
    decoded = limits.array_bytes((frames, rows, cols), 5 if fractional else 1)
    limits.check_decoded(decoded, file_bytes, f"{path}: the SEG ({frames} frames "
                         f"of {rows}x{cols}, {segments} segments)", DataError)
    if (rows, cols) != plane:
        raise DataError(f"{path}: the SEG's frames are {rows}x{cols} pixels, the series' "
                        f"slices {plane[0]}x{plane[1]}: it was not drawn on this series' grid.")
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != frames or segments < 1:
        raise DataError(f"{path}: the SEG declares {frames} frames but describes "
                        f"{len(per_frame)} (PerFrameFunctionalGroupsSequence) and "
                        f"{segments} segments; the file is damaged or of a layout (tiled) "
                        "this reader does not take.")
    return frames


def _decode(seg, path: Path, frames: int) -> np.ndarray:
    try:
        pixels = seg.pixel_array
    except MemoryError:
        raise DataError(f"{path}: not enough memory to decode the SEG.") from None
    except Exception as exc:  # pydicom's decoders raise their own types
        raise DataError(f"{path}: cannot decode the SEG's frames ({type(exc).__name__}: "
                        f"{exc}); the file may be truncated.") from None
    return pixels.reshape(frames, *pixels.shape[-2:])


def read_seg(path, volume_or_series) -> SegObject:
    """The SEG at ``path`` (a file, or a pydicom Dataset of a SEG already in memory) over its
    series ``volume_or_series`` (a :class:`Volume` of it, its folder, a file or the list of
    its files, or its headers in volume order): see the module docstring.
    :class:`DataError` for a SEG of another series, off the series' grid, over the limits or
    damaged."""
    seg, path, file_bytes = _seg_and_size(path)
    headers = series_headers(volume_or_series)
    where = str(getattr(volume_or_series, "path", "") or Path(
        getattr(headers[0], "filename", "") or "series").parent)
    _check_series(seg, headers, where, path)
    plane = (int(headers[0].Rows), int(headers[0].Columns))
    fractional = str(seg.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    frames = _check_sizes(seg, path, file_bytes, plane, fractional)
    grid = _Grid.of(headers)
    shared = _item(seg, "SharedFunctionalGroupsSequence")
    per_frame = seg.PerFrameFunctionalGroupsSequence
    placed = [(_segment_of(f, shared), grid.slice_of(f, shared, str(path), i))
              for i, f in enumerate(per_frame)]
    pixels = _decode(seg, path, frames)
    shape = (len(headers), *plane)
    scale = float(seg.get("MaximumFractionalValue", 255) or 255) if fractional else 1.0
    boxes = _boxes_checked(seg, placed, pixels, (path, file_bytes), fractional)
    segments = [_segment(item, placed, pixels, shape, fractional, scale) for item in boxes]
    return SegObject(path=str(path), series_uid=_series_uid(headers),
                     sop_instance_uid=str(seg.get("SOPInstanceUID", "")),
                     series_description=str(seg.get("SeriesDescription", "") or ""),
                     fractional=fractional, segments=segments)


def _box(frame_ids: list[int], placed, pixels: np.ndarray) -> tuple[int, ...] | None:
    """``(s0, s1, r0, r1, c0, c1)`` around the non-zero pixels of ``frame_ids``, or None."""
    slices, rows, cols = [], [], []
    for f in frame_ids:
        r = np.flatnonzero(pixels[f].any(axis=1))
        if r.size:
            c = np.flatnonzero(pixels[f].any(axis=0))
            slices.append(placed[f][1])
            rows += [r[0], r[-1]]
            cols += [c[0], c[-1]]
    if not slices:
        return None
    return (int(min(slices)), int(max(slices)) + 1, int(min(rows)), int(max(rows)) + 1,
            int(min(cols)), int(max(cols)) + 1)


def _boxes_checked(seg, placed, pixels, where: tuple[Path, int], fractional: bool) -> list:
    """``(segment item, frame ids, box)`` per segment, the boxes' total size checked against
    the limits (``where``: the SEG's path and the bytes it came from)."""
    path, file_bytes = where
    out, total = [], 0
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        ids = [f for f, (n, _) in enumerate(placed) if n == number]
        box = _box(ids, placed, pixels)
        if box is not None:
            total += limits.array_bytes((box[1] - box[0], box[3] - box[2], box[5] - box[4]),
                                        4 if fractional else 1)
        out.append((item, ids, box))
    limits.check_decoded(total, file_bytes,
                         f"{path}: the boxes of its {len(out)} segments", DataError)
    return out


def _segment(entry, placed, pixels, shape, fractional: bool, scale: float) -> SegSegment:
    item, ids, box = entry
    dtype = np.float32 if fractional else np.uint8
    if box is None:  # no voxel: an empty one-voxel crop
        box = (0, 1, 0, 1, 0, 1)
    s0, s1, r0, r1, c0, c1 = box
    crop = np.zeros((s1 - s0, r1 - r0, c1 - c0), dtype)
    for f in ids:
        k = placed[f][1]
        if s0 <= k < s1:
            part = pixels[f, r0:r1, c0:c1]
            values = part.astype(np.float32) / np.float32(scale) if fractional else part != 0
            np.maximum(crop[k - s0], values.astype(dtype), out=crop[k - s0])
    number = int(item.SegmentNumber)
    return SegSegment(number=number, label=str(item.get("SegmentLabel", "") or
                                                f"segment {number}"),
                      crop=crop, offset=(s0, r0, c0), shape=tuple(shape), frames=len(ids),
                      description=_describe(item))


# ----------------------------------------------------------------------------- finding


def _header_uid(path: Path) -> tuple[str, str]:
    """``(SeriesInstanceUID, SOPClassUID)`` of a DICOM file, from its header only."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=is_dicom_name(path),
                             specific_tags=["SeriesInstanceUID", "SOPClassUID"])
    except Exception:  # unreadable: not part of any series
        return "", ""
    return str(ds.get("SeriesInstanceUID", "") or ""), str(ds.get("SOPClassUID", "") or "")


def _series_files(folder: Path, uid: str) -> list[Path]:
    """The files of series ``uid`` in ``folder`` (SEG objects left out). Quick for a folder
    of another series: only its first few files' headers are read unless one matches."""
    files = dicom_files(folder, limit=64)[:_SEARCH_FILES]
    if not any(_header_uid(f)[0] == uid for f in files[:_SNIFF_FILES]):
        if len(files) <= _SNIFF_FILES or not _mixed(files):
            return []
    found = []
    for f in files:
        series, sop = _header_uid(f)
        if series == uid and sop != SEG_SOP_CLASS_UID:
            found.append(f)
    return found


def _mixed(files: list[Path]) -> bool:
    """Whether a folder's files (first, middle, last) belong to more than one series."""
    picks = {files[0], files[len(files) // 2], files[-1]}
    return len({_header_uid(f)[0] for f in picks}) > 1


def search_folders(seg_path: str | os.PathLike) -> list[Path]:
    """Where :func:`find_series` looks, in order: the SEG's own folder, ``../ct/``, ``ct/``,
    then the other subfolders of the SEG's parent folder, then the subfolders of the SEG's
    own folder (each once, existing folders only, the first 64)."""
    here = Path(seg_path).resolve().parent
    candidates = [(here / rel).resolve() for rel in SEARCH_FIRST]
    for base in (here.parent, here):
        try:
            candidates += sorted(p for p in base.iterdir() if p.is_dir()
                                 and not p.name.startswith("."))
        except OSError:
            continue
    seen, out = set(), []
    for c in candidates:
        if c not in seen and c.is_dir():
            seen.add(c)
            out.append(c)
    return out[:_SEARCH_FOLDERS]


def find_series(seg_path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """``(files of the series the SEG names, the folders searched)``: the first folder of
    :func:`search_folders` that holds files of the SEG's referenced series (their
    SeriesInstanceUID read from the headers). No files if none was found."""
    seg = seg_header(seg_path)
    named = referenced_series(seg)
    searched = search_folders(seg_path)
    if not named:
        return [], searched
    for folder in searched:
        found = _series_files(folder, named[0])
        if found:
            return found, searched[:searched.index(folder) + 1]
    return [], searched
