"""CT volumes as radiologists hold them: a DICOM series (pydicom) or a NIfTI volume (nibabel),
in Hounsfield units, with the spacing and the orientation of the scanner kept.

- :func:`read_dicom_series`: a folder of one series (``*.dcm``, ``*.dicom`` or files that
  begin with the DICOM preamble, as scanners write them), one file of a series (the whole series
  of that file is read, from its folder) or a list of files. Slices are sorted by their
  ``ImagePositionPatient`` along the slice normal (the cross product of the two directions of
  ``ImageOrientationPatient``), ``RescaleSlope``/``RescaleIntercept`` are applied (Hounsfield
  units for CT: int16 when that is exact, else float32), the spacing is ``PixelSpacing`` and
  the distance between slice positions.
- :func:`read_nifti_volume`: a NIfTI file with its axes reversed to (slices, rows, columns),
  its voxel spacing and the affine of its header.

Both give a :class:`Volume`. Its ``affine`` maps a voxel index of ``data`` (slice, row,
column, 1) to millimetres in the patient frame, RAS+ as NIfTI and nibabel use it (DICOM's
LPS frame is ``diag(-1, -1, 1, 1) @ affine``, :attr:`Volume.lps_affine`).
:meth:`Volume.source` is the record a layer keeps so that an export can write a corrected
slice back into the whole volume, aligned: the file's own affine and shape (for DICOM, those
of the NIfTI a converter would write) and the axes that turn the file's array into ``data``.

Every refusal is a :class:`~napari_probunet.errors.DataError` that names the problem and the
way out: no DICOM files, several series in one folder, a file without pixel data, slices of
different sizes or orientations, several slices at one position, a compressed transfer syntax
that pydicom cannot decode with the packages installed. Sizes are checked against
:mod:`napari_probunet.limits` from the headers, before any pixel is decoded.

The model needs no window: the bundled LIDC model stretches each crop's own minimum..maximum
(``docs/lidc.md``, "Hounsfield units"), so the data stay in HU and only the display uses
:data:`LUNG_WINDOW`.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import limits
from napari_probunet.data import formats
from napari_probunet.errors import DataError

#: the display window for lung CT (width 1500 HU, level -600 HU: -1350..150 HU)
LUNG_WINDOW = {"name": "lung", "width": 1500.0, "level": -600.0}
#: file names taken as DICOM without looking inside (others need the "DICM" preamble)
DICOM_SUFFIXES = formats.DICOM.suffixes
#: LPS (DICOM) <-> RAS (NIfTI): the first two axes flip
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the file array's axes, in the order of the layer's data (slices, rows, columns)
REVERSED_3D = (2, 1, 0)
#: how many files of a folder are looked into for the preamble when deciding if it is DICOM
_SNIFF = 64


def window_limits(window: dict[str, Any] = LUNG_WINDOW) -> tuple[float, float]:
    """``(low, high)`` HU of a window given by its ``width`` and ``level``."""
    half = float(window["width"]) / 2
    return float(window["level"]) - half, float(window["level"]) + half


@dataclass
class Volume:
    """A scan in napari's axis order, with where its voxels are in the patient."""

    data: np.ndarray  # (slices, rows, columns), HU for CT
    spacing: tuple[float, ...]  # mm per voxel along each axis of data
    affine: np.ndarray  # (4, 4): data index (slice, row, column, 1) -> RAS+ mm (for a
    # NIfTI of other than 3 axes: its spatial axes, reversed, e.g. (y, x, z) of a 2-D one)
    name: str
    path: str
    format: str  # "dicom" or "nifti"
    file_shape: tuple[int, ...]  # the array as the file (or a NIfTI converter) stores it
    file_affine: np.ndarray  # (4, 4): file index -> RAS+ mm (the NIfTI header's affine)
    axes: tuple[int, ...]  # data = np.transpose(file array, axes)
    units: str | None = None  # "HU" when the values are Hounsfield units
    info: dict[str, Any] = field(default_factory=dict)  # series description, uid, ...
    notes: list[str] = field(default_factory=list)  # what the user should know
    # DICOM only, one entry per slice of data (in data order): each slice's SOPInstanceUID and
    # ImagePositionPatient (LPS mm, (slices, 3)); kept out of info so source() stays small
    slice_uids: tuple[str, ...] = ()
    slice_positions: np.ndarray | None = None

    @property
    def lps_affine(self) -> np.ndarray:
        """:attr:`affine` in DICOM's LPS patient frame."""
        return LPS_TO_RAS @ self.affine

    def source(self) -> dict[str, Any]:
        """The record a layer keeps (JSON types): ``format``, ``path``, ``shape`` and
        ``affine`` of the file's array (write ``np.transpose(data, axes)`` with that affine to
        get a NIfTI aligned with the original), ``axes``, ``layer_affine`` (this volume's
        :attr:`affine`), ``frame`` (``"RAS"``), ``spacing``, ``units`` and the series info."""
        return {
            "format": self.format, "path": self.path,
            "shape": [int(s) for s in self.file_shape],
            "affine": np.asarray(self.file_affine, float).tolist(),
            "axes": [int(a) for a in self.axes],
            "layer_shape": [int(s) for s in self.data.shape],
            "layer_affine": np.asarray(self.affine, float).tolist(),
            "frame": "RAS", "spacing": [float(s) for s in self.spacing], "units": self.units,
            **self.info,
        }

    def describe(self) -> str:
        """One line for a notification: what was opened."""
        shape = " x ".join(str(s) for s in self.data.shape[1:])
        spacing = " x ".join(f"{s:.3g}" for s in self.spacing)
        units = f", {self.units}" if self.units else ""
        return (f"{self.name}: {self.data.shape[0]} slices of {shape}, spacing {spacing} mm "
                f"({self.format.upper()}{units})")


def looks_like_ct(data: np.ndarray) -> bool:
    """Whether values look like CT Hounsfield units (air near -1000 present, nothing far
    below the -3024 HU scanners use outside the field of view). A sample is read, not all."""
    step = max(1, data.shape[0] // 16) if data.ndim == 3 else 1
    sample = np.asarray(data[::step])
    if sample.size == 0 or sample.dtype.kind not in "iuf":
        return False
    low, high = float(np.min(sample)), float(np.max(sample))
    return -3100.0 <= low <= -700.0 and high > -200.0


# ----------------------------------------------------------------------------- finding files


def has_dicom_preamble(path: Path) -> bool:
    """Whether ``path`` begins with DICOM's 128-byte preamble and ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_name(path: str | os.PathLike) -> bool:
    """A ``.dcm``/``.dicom`` file name (any case)."""
    return str(path).lower().endswith(DICOM_SUFFIXES)


#: SOP Class UID of DICOM Segmentation Storage (a SEG: not an image slice of a series)
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"


def is_seg_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Segmentation object (SEG): its SOP Class UID, from the
    header only (no pixel data read); False for anything unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=is_dicom_name(path),
                             specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not DICOM, unreadable: not a SEG
        return False
    return (str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID
            or str(ds.get("Modality", "")) == "SEG")


def dicom_files(folder: Path, limit: int | None = None) -> list[Path]:
    """The DICOM files directly in ``folder``: named ``*.dcm``/``*.dicom`` or beginning with
    the DICOM preamble (hidden files and ``DICOMDIR`` left out); with ``limit``, at most that
    many files without a DICOM name are looked into."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    found, sniffed = [], 0
    for p in entries:
        if p.name.startswith(".") or p.name.upper() == "DICOMDIR" or not p.is_file():
            continue
        if is_dicom_name(p):
            found.append(p)
        elif limit is None or sniffed < limit:
            sniffed += 1
            if has_dicom_preamble(p):
                found.append(p)
    return found


def dicom_subfolders(folder: Path, limit: int = 50) -> list[Path]:
    """Subfolders of ``folder`` (the first ``limit``) that hold DICOM files themselves."""
    try:
        subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    return [s for s in subs[:limit] if dicom_files(s, limit=_SNIFF)]


def is_dicom_folder(folder: str | os.PathLike) -> bool:
    """A folder with DICOM files in it, or in its subfolders (so that opening it explains
    which series to choose). Quick: looks into at most a few dozen files per folder."""
    folder = Path(folder)
    return folder.is_dir() and bool(dicom_files(folder, limit=_SNIFF)
                                    or dicom_subfolders(folder, limit=20))


# ----------------------------------------------------------------------------- DICOM headers


def header_number(ds, key: str, default: float) -> float:
    """A numeric header value (``"2"``, ``2``, ``"2.5"``), or ``default`` when it is missing,
    empty, not a number or not finite: a damaged header value is not worth a refusal."""
    try:
        value = ds.get(key, default)
        number = default if value is None or value == "" else float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


def header_int(ds, key: str, default: int) -> int:
    """:func:`header_number` as an integer (a fraction is cut)."""
    number = header_number(ds, key, default)
    return int(number) if abs(number) < 2**62 else default



def _dcmread(path: Path):
    """The dataset of one file, pixel data deferred (read when it is decoded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(path, defer_size=4096)
        except InvalidDicomError:
            if not is_dicom_name(path):
                raise
            ds = pydicom.dcmread(path, defer_size=4096, force=True)  # no preamble (old files)
            if "Rows" not in ds and "PixelData" not in ds and "SOPClassUID" not in ds:
                raise
            return ds
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no DICOM header); remove it from the "
                        "folder or choose the folder of one series.") from None
    except Exception as exc:  # pydicom raises many types for a broken file
        raise DataError(f"{path}: cannot read this DICOM file ({type(exc).__name__}: {exc}); "
                        "it may be truncated; remove it or re-export the series.") from None


def _series_label(uid: str, datasets: list) -> str:
    description = str(datasets[0].get("SeriesDescription", "") or "").strip()
    modality = str(datasets[0].get("Modality", "") or "").strip()
    what = ", ".join(x for x in (modality, repr(description) if description else "") if x)
    return f"{uid} ({len(datasets)} files{', ' + what if what else ''})"


def _one_series(datasets: list, where: str, chosen: str | None) -> tuple[list, list[str]]:
    """The datasets of one series (``chosen``'s uid, else the only one); refuse a mix."""
    groups: dict[str, list] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)"),
                          []).append(ds)
    if chosen is not None:
        others = len(datasets) - len(groups[chosen])
        notes = [f"{others} file(s) of other series in the folder were left out"] if others else []
        return groups[chosen], notes
    if len(groups) > 1:
        listed = "; ".join(_series_label(uid, g) for uid, g in
                           sorted(groups.items(), key=lambda kv: -len(kv[1])))
        raise DataError(
            f"{where} mixes {len(groups)} DICOM series (SeriesInstanceUID): {listed}. Choose "
            "one: put each series in its own folder and open that folder, or open one file "
            "of the series you want (its series is then read from the folder).")
    return next(iter(groups.values())), []


def _check_decodable(series: list, where: str) -> None:
    """Refuse a transfer syntax pydicom cannot decode here, naming what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, ImplicitVRLittleEndian

    syntaxes = {UID(str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID",
                                                         ImplicitVRLittleEndian)))
                for ds in series}
    for ts in sorted(syntaxes):
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise DataError(
                f"{where}: the pixel data use the transfer syntax {ts} ({ts.name}), which "
                "pydicom cannot decode; convert the series to uncompressed DICOM (e.g. "
                "`gdcmconv --raw`) or to NIfTI (e.g. `dcm2niix`) and open that.") from None
        if not decoder.is_available:
            raise DataError(
                f"{where}: the pixel data are compressed as {ts.name} ({ts}), and no decoder "
                f"for it is installed; install one: {_install_hint(decoder)} (then reopen), or "
                "convert the series to uncompressed DICOM (`gdcmconv --raw`) or NIfTI "
                "(`dcm2niix`).")


def _install_hint(decoder) -> str:
    """``pip install ...`` for the first plugin pydicom lists as missing for ``decoder``."""
    options = []
    for line in decoder.missing_dependencies:  # "pylibjpeg - requires pylibjpeg>=2.0 and ..."
        plugin, _, needs = line.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", n.strip(), maxsplit=1)[0]
                 for n in needs.replace(",", " and ").split(" and ") if n.strip()]
        names = ["python-gdcm" if n == "gdcm" else n for n in names if n != "numpy"]
        if names:
            options.append(f"`pip install {' '.join(names)}`")
    options.sort(key=lambda o: "gdcm" in o)  # pip wheels of pylibjpeg first
    return " or ".join(options[:2]) or "a pydicom pixel-data plugin (pylibjpeg or python-gdcm)"


def _check_slices(series: list, where: str) -> tuple[int, int]:
    """Refuse files without pixels, multi-frame, colour or differently sized slices;
    the ``(rows, columns)`` of the series."""
    for ds in series:
        name = Path(getattr(ds, "filename", "") or where).name
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            sop = ds.get("SOPClassUID")
            kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
            raise DataError(
                f"{where}: {name} has no pixel data{kind}, so it is not an image slice; "
                "remove it from the folder (or choose the folder of the image series).")
        if "NumberOfFrames" in ds and header_number(ds, "NumberOfFrames", -1) == -1:
            del ds["NumberOfFrames"]  # text where a count should be: one frame, as without it
        frames = header_int(ds, "NumberOfFrames", 1)
        if frames > 1:
            raise DataError(
                f"{where}: {name} is a multi-frame (enhanced) DICOM image of "
                f"{frames} frames, which this reader does not take yet; "
                "convert it to NIfTI (e.g. `dcm2niix`) and open the .nii.gz.")
        if header_int(ds, "SamplesPerPixel", 1) not in (0, 1):
            raise DataError(f"{where}: {name} is a colour image; a CT series is greyscale.")
    sizes = Counter((header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)) for ds in series)
    if len(sizes) > 1:
        listed = ", ".join(f"{n} of {r}x{c}" for (r, c), n in sizes.most_common())
        raise DataError(
            f"{where}: the slices have different sizes ({listed} rows x columns); a volume "
            "needs one size. Move the odd files (often a localizer or a reformat) out of the "
            "folder and open it again.")
    rows, cols = next(iter(sizes))
    if rows < 1 or cols < 1:
        raise DataError(f"{where}: the slices declare {rows}x{cols} pixels; nothing to show.")
    return rows, cols


# ----------------------------------------------------------------------------- geometry


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _geometry(series: list, where: str) -> tuple[list, np.ndarray, tuple, list[str]]:
    """Slices sorted along their normal, the LPS affine of (slice, row, column), the spacing
    and notes. Without positions: ``InstanceNumber`` order and a note."""
    notes: list[str] = []
    first = series[0]
    pixel = _floats(first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or (), 2)
    if pixel is None or np.any(pixel <= 0):
        pixel = np.ones(2)
        notes.append("no PixelSpacing: 1 mm pixels assumed")
    orientations = [_floats(ds.get("ImageOrientationPatient") or (), 6) for ds in series]
    positions = [_floats(ds.get("ImagePositionPatient") or (), 3) for ds in series]
    declared = header_number(first, "SpacingBetweenSlices", 0) or header_number(
        first, "SliceThickness", 0)
    declared = declared if declared > 0 else 1.0
    if any(o is None for o in orientations) or any(p is None for p in positions):
        series = sorted(series, key=lambda ds: header_int(ds, "InstanceNumber", 0))
        notes.append("no ImagePositionPatient/ImageOrientationPatient: slices in "
                     f"InstanceNumber order, {declared:g} mm apart, orientation unknown")
        lps = np.eye(4)  # taken as axial: columns to the left, rows to the back, slices up
        lps[:3, :3] = [[0, 0, pixel[1]], [0, pixel[0], 0], [declared, 0, 0]]
        return series, lps, (declared, float(pixel[0]), float(pixel[1])), notes
    iop = orientations[0]
    if any(not np.allclose(o, iop, atol=1e-3) for o in orientations):
        raise DataError(f"{where}: the slices have different orientations "
                        "(ImageOrientationPatient), e.g. a reformat mixed in; put each "
                        "orientation's slices in its own folder.")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    depth = np.array([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(depth, kind="stable")
    series = [series[i] for i in order]
    depth, positions = depth[order], [positions[i] for i in order]
    gaps = np.diff(depth)
    if gaps.size and np.min(gaps) < 1e-3:
        repeated = int(np.sum(gaps < 1e-3)) + 1
        raise DataError(
            f"{where}: {repeated} slices share a position, so the series holds several "
            "volumes (time points, echoes or a repeated acquisition); put each volume's files "
            "in its own folder (or open a NIfTI from `dcm2niix`).")
    spacing = float(np.median(gaps)) if gaps.size else declared
    if gaps.size and float(np.max(np.abs(gaps - spacing))) > 0.1 * spacing + 1e-3:
        notes.append(f"the slices are unevenly spaced ({np.min(gaps):.3g} to "
                     f"{np.max(gaps):.3g} mm; missing slices?); shown {spacing:.3g} mm apart")
    step = ((positions[-1] - positions[0]) / (len(series) - 1) if len(series) > 1
            else normal * spacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = step, col_dir * pixel[0], row_dir * pixel[1]
    lps[:3, 3] = positions[0]
    return series, lps, (spacing, float(pixel[0]), float(pixel[1])), notes


# ----------------------------------------------------------------------------- DICOM pixels


#: the largest magnitude a rescaled value may take (float32's range, with room)
_MAX_RESCALED = 1e30


def _rescale(ds, where: str) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``: 1 and 0 where missing or not numbers; a
    :class:`DataError` where they would take the values beyond float32's range."""
    slope = header_number(ds, "RescaleSlope", 1.0) or 1.0
    intercept = header_number(ds, "RescaleIntercept", 0.0)
    # the stored values are at most 32-bit: 2**32 bounds their magnitude
    if abs(slope) * 2.0**32 + abs(intercept) > _MAX_RESCALED:
        name = Path(getattr(ds, "filename", "") or where).name
        raise DataError(f"{where}: {name} declares RescaleSlope {slope:g} and RescaleIntercept "
                        f"{intercept:g}, which take the pixel values beyond what a volume "
                        "holds; the header is damaged: fix these two values or re-export "
                        "the series.")
    return slope, intercept


def _pixels(series: list, rows: int, cols: int, where: str) -> np.ndarray:
    """The rescaled stack: int16 while exact, float32 as soon as a value or a rescale is not."""
    scales = [_rescale(ds, where) for ds in series]
    exact = all(float(s).is_integer() and float(i).is_integer()
                and abs(s) < 2**31 and abs(i) < 2**31 for s, i in scales)
    out = np.empty((len(series), rows, cols), np.int16 if exact else np.float32)
    info = np.iinfo(np.int16)
    for k, (ds, (slope, intercept)) in enumerate(zip(series, scales)):
        name = Path(getattr(ds, "filename", "") or where).name
        try:
            raw = ds.pixel_array
        except MemoryError:
            raise DataError(f"{where}: not enough memory to decode {name}.") from None
        except Exception as exc:  # pydicom's decoders raise their own types
            raise DataError(f"{where}: cannot decode the pixels of {name} "
                            f"({type(exc).__name__}: {exc}); the file may be truncated or "
                            "damaged; remove it or re-export the series.") from None
        if raw.shape != (rows, cols):
            raise DataError(f"{where}: {name} holds pixels of shape {raw.shape}, not the "
                            f"{rows}x{cols} its header declares; the file is damaged.")
        if out.dtype == np.int16:
            values = raw.astype(np.int64) * int(slope) + int(intercept)
            if values.size and (values.min() < info.min or values.max() > info.max):
                out = out.astype(np.float32)
            out[k] = values
        else:
            out[k] = raw.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return out


def _series_datasets(paths: list[Path], where: str) -> tuple[list, list[str], Path]:
    """The datasets of the series that ``paths`` name (a folder, one file or several files),
    the notes so far, and the folder."""
    if len(paths) == 1 and paths[0].is_dir():
        folder, files, chosen = paths[0], dicom_files(paths[0]), None
    else:
        folder, files, chosen = paths[0].parent, paths, None
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: no such file.")
        if len(paths) == 1:
            chosen = str(_dcmread(paths[0]).get("SeriesInstanceUID", "") or
                         "(no SeriesInstanceUID)")
            files = [p for p in dicom_files(folder) if p != paths[0]] + paths
    if not files:
        subs = dicom_subfolders(folder)
        hint = (f"; its subfolders {', '.join(s.name for s in subs[:6])}"
                f"{' ...' if len(subs) > 6 else ''} hold DICOM files: open one of them (one "
                "series per folder)") if subs else "; choose the folder that holds one series"
        raise DataError(f"{where}: no DICOM files (looked for *.dcm, *.dicom and files "
                        f"that begin with the DICOM preamble){hint}.")
    datasets = [_dcmread(f) for f in files]
    images = [ds for ds in datasets if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS_UID]
    left_out = len(datasets) - len(images)  # a SEG beside its series is not a slice of it
    if left_out and images and (chosen is None or any(
            str(ds.get("SeriesInstanceUID", "")) == chosen for ds in images)):
        datasets = images
    else:
        left_out = 0
    series, notes = _one_series(datasets, where, chosen)
    if left_out:
        notes.append(f"{left_out} DICOM SEG file(s) in the folder left out (open a SEG "
                     "file itself to see its segments over this series)")
    return series, notes, folder


def _where(paths: list[Path]) -> str:
    if not paths:
        raise DataError("no DICOM files given; choose the folder of one series.")
    return str(paths[0] if len(paths) == 1 else paths[0].parent)


def read_series_headers(path: str | os.PathLike | list) -> list:
    """The pydicom datasets of the DICOM series at ``path`` (as :func:`read_dicom_series`
    takes it), pixel data not decoded, in the order of :attr:`Volume.data`'s slices (sorted
    along the slice normal): ``headers[k]`` is the file of ``volume.data[k]``. The same
    refusals as :func:`read_dicom_series`. Used to write and read DICOM SEG over the series
    (:mod:`napari_probunet.data.dicom_seg`)."""
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    where = _where(paths)
    series, _, _ = _series_datasets(paths, where)
    _check_slices(series, where)
    return _geometry(series, where)[0]


def read_dicom_series(path: str | os.PathLike | list) -> Volume:
    """The DICOM series at ``path`` (see the module docstring) as a :class:`Volume` in HU."""
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    if not paths:
        raise DataError("no DICOM files given; choose the folder of one series.")
    where = str(paths[0] if len(paths) == 1 else paths[0].parent)
    series, notes, folder = _series_datasets(paths, where)
    rows, cols = _check_slices(series, where)
    limits.check_plane(rows, cols, f"{where}: each DICOM slice", DataError)
    file_bytes = sum(os.path.getsize(ds.filename) for ds in series
                     if isinstance(getattr(ds, "filename", None), str))
    limits.check_decoded(limits.array_bytes((len(series), rows, cols), 4), file_bytes,
                         f"{where}: the DICOM series ({len(series)} slices of {rows}x{cols})",
                         DataError)
    _check_decodable(series, where)
    series, lps, spacing, more = _geometry(series, where)
    data = _pixels(series, rows, cols, where)
    first = series[0]
    modality = str(first.get("Modality", "") or "")
    hu = modality == "CT" or str(first.get("RescaleType", "") or "").upper() == "HU"
    description = str(first.get("SeriesDescription", "") or "").strip()
    affine = LPS_TO_RAS @ lps
    return Volume(
        data=data, spacing=spacing, affine=affine, name=description or folder.name,
        path=str(folder), format="dicom", file_shape=tuple(reversed(data.shape)),
        file_affine=affine[:, [2, 1, 0, 3]], axes=REVERSED_3D, units="HU" if hu else None,
        info={"series_uid": str(first.get("SeriesInstanceUID", "") or ""),
              "series_description": description, "modality": modality,
              "files": len(series)},
        notes=notes + more,
        slice_uids=tuple(str(ds.get("SOPInstanceUID", "") or "") for ds in series),
        slice_positions=_slice_positions(series))


def _slice_positions(series: list) -> np.ndarray | None:
    """``ImagePositionPatient`` of each slice (LPS mm, (slices, 3)); None if any lacks it."""
    positions = [_floats(ds.get("ImagePositionPatient") or (), 3) for ds in series]
    return None if any(p is None for p in positions) else np.stack(positions)


# ----------------------------------------------------------------------------- NIfTI

#: the NIfTI readers, in :mod:`napari_probunet.data.nifti` (their old address is this module)
_NIFTI = ("nifti_name", "nifti_spacing", "open_nifti", "nifti_volume", "read_nifti_volume")


def __getattr__(name: str):
    if name in _NIFTI:
        from napari_probunet.data import nifti

        return getattr(nifti, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
