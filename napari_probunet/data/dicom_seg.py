"""DICOM Segmentation objects (SEG) over a DICOM series: written with highdicom, read back
onto the series voxel for voxel (no Qt, no napari, no torch).

Writing
-------
:func:`write_seg` writes one binary segment (a corrected nodule: a 3D mask ``(slices, rows,
columns)`` in the order of :attr:`Volume.data <napari_probunet.data.volumes.Volume.data>`, or
a 2D mask ``(rows, columns)`` on the slice ``slice_index``); :func:`write_hypotheses_seg` the N
hypotheses as N binary segments of one SEG; :func:`write_frequency_seg` the pixel-wise
frequency over the hypotheses as one FRACTIONAL segment (PROBABILITY). All three build the
object with :func:`build_seg` and write it atomically (:func:`save_seg`). What they write:

- **A new series in the study of the source series**: patient, study and frame of reference
  copied from the CT headers (highdicom), a new SeriesInstanceUID and SOPInstanceUID,
  SeriesNumber 1000 + the CT's, the series description given (default: the segment label,
  ``napari-probunet`` and the algorithm's name).
- **Frames**: one per CT slice and segment that holds any voxel of it (highdicom's
  ``omit_empty_frames``); each frame names its CT slice (Derivation Image Sequence ->
  ReferencedSOPInstanceUID) and its position; the Referenced Series Sequence lists the CT
  instances. An empty mask is written as the one empty frame of its slice (``slice_index``,
  else the middle slice), since a SEG must hold at least one frame.
- **Each segment**: its label; category SCT 49755003 "Morphologically Abnormal Structure"
  (CID 7150 "Segmentation Property Categories"; called "Morphologically Altered Structure"
  in older editions) and type SCT 27925004 "Nodule" (CID 7151 "Segmentation Property
  Types"), anatomic region SCT 39607008 "Lung". Codes: DICOM PS3.3 C.8.20.4 (Segment
  Description Macro: category from CID 7150, type from CID 7151) and PS3.16's CID tables as
  pydicom 3 ships them (``pydicom.sr.codedict.codes``, where 27925004 is listed in CID 7151 and
  49755003 in CID 7150). Algorithm type SEMIAUTOMATIC (a model proposed it, a clinician chose
  and corrected it), algorithm identification: family DCM 123110 "Artificial Intelligence"
  (CID 7162), the model's name and version (for the review: the model file and the first 16
  hex digits of its sha256), parameters (seed, hypothesis...) as given.
- **Equipment**: Manufacturer and ManufacturerModelName ``napari-probunet``, SoftwareVersions
  the package's version.
- **FRACTIONAL**: the frequency ``k / N`` of N hypotheses is stored exactly, with
  MaximumFractionalValue ``N`` (so a stored value is the number of hypotheses that contain the
  voxel; N <= 255); PROBABILITY is the fractional type.

Reading
-------
:func:`read_seg` reads a SEG over the series it was drawn on (a :class:`Volume` of it, its
folder or its sorted headers from :func:`~napari_probunet.data.volumes.read_series_headers`):
one :class:`SegSegment` per segment, named by its label, its voxels in the order of
``Volume.data`` (a box of the series, :attr:`SegSegment.offset` + :attr:`SegSegment.crop`, and
the whole :attr:`SegSegment.mask` on demand). Each frame goes to the CT slice it names
(ReferencedSOPInstanceUID), else to the slice at its ImagePositionPatient. A SEG of another
series (ReferencedSeriesSequence) is refused, naming both series; a FRACTIONAL SEG reads as
float32 in 0..1. The decoded size (frames x rows x columns, and the boxes of all segments) is
checked against :mod:`napari_probunet.limits` before anything is decoded or allocated.
:func:`find_series` finds the series of a SEG file on disk (the search rule is in its
docstring).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files
from napari_probunet.data.dicom_seg_read import (
    SegObject,
    SegSegment,
    find_series,
    read_seg,
    referenced_series,
    seg_header,
    series_headers,
)
from napari_probunet.data.volumes import SEG_SOP_CLASS_UID, is_seg_file
from napari_probunet.errors import DataError

__all__ = ["SEG_SOP_CLASS_UID", "SegAlgorithm", "SegObject", "SegSegment", "build_seg",
           "find_series", "is_seg_file", "nodule_codes", "read_seg", "referenced_series",
           "save_seg", "write_dataset",
           "seg_header", "series_headers", "write_frequency_seg", "write_hypotheses_seg",
           "write_seg"]

MANUFACTURER = "napari-probunet"
#: the SeriesNumber of a SEG is this plus the CT's
SERIES_NUMBER_OFFSET = 1000
#: highest MaximumFractionalValue a FRACTIONAL SEG may declare (8 bits)
MAX_FRACTIONAL = 255


def nodule_codes() -> dict[str, Any]:
    """The coded concepts of a lung nodule segment (pydicom ``Code`` objects): ``category``
    (SCT 49755003, CID 7150), ``type`` (SCT 27925004 "Nodule", CID 7151), ``region`` (SCT
    39607008 "Lung") and ``family`` of the algorithm (DCM 123110, CID 7162)."""
    from pydicom.sr.codedict import codes

    return {"category": codes.SCT.MorphologicallyAbnormalStructure,
            "type": codes.SCT.Nodule, "region": codes.SCT.Lung,
            "family": codes.cid7162.ArtificialIntelligence}


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("napari-probunet")
    except metadata.PackageNotFoundError:  # running from a source tree
        from napari_probunet import __version__

        return __version__


@dataclass(frozen=True)
class SegAlgorithm:
    """What made the segments: the model's ``name`` and ``version`` (DICOM LO: 64 characters
    each at most) and ``parameters`` (short strings: seed, hypothesis, number of samples...)."""

    name: str
    version: str
    parameters: dict[str, str] = field(default_factory=dict)

    def identification(self):
        """highdicom's Algorithm Identification Sequence of this algorithm."""
        import highdicom as hd

        params = {str(k)[:64]: str(v)[:64] for k, v in self.parameters.items()} or None
        return hd.AlgorithmIdentificationSequence(
            name=_lo(self.name) or "unknown", family=nodule_codes()["family"],
            version=_lo(self.version) or "unknown", parameters=params)


def _lo(text: str | None) -> str:
    """``text`` as a DICOM LO value: one line, at most 64 characters, no backslash."""
    text = " ".join(str(text or "").replace("\\", "/").split())
    return text[:64]


# ----------------------------------------------------------------------------- the masks


def volume_masks(masks: np.ndarray, n_slices: int, plane: tuple[int, int],
                 slice_index: int | None) -> np.ndarray:
    """``masks`` ``(S, slices, rows, cols)`` or ``(S, rows, cols)`` on ``slice_index`` as
    ``(S, n_slices, rows, cols)``; :class:`DataError` if it does not fit the series."""
    masks = np.asarray(masks)
    if masks.ndim == 3 and slice_index is not None:
        if not 0 <= int(slice_index) < n_slices:
            raise DataError(f"slice {slice_index} is outside the series (0..{n_slices - 1}); "
                            "give the index of the slice the mask was drawn on.")
        full = np.zeros((masks.shape[0], n_slices, *masks.shape[1:]), masks.dtype)
        full[:, int(slice_index)] = masks
        masks = full
    if masks.ndim != 4 or masks.shape[1:] != (n_slices, *plane):
        got = "x".join(str(s) for s in masks.shape[1:])
        raise DataError(
            f"the mask ({got}) does not fit the series ({n_slices} slices of "
            f"{plane[0]}x{plane[1]}): give a 3D mask of the series' shape, or a 2D mask of "
            "one slice with its slice_index.")
    return masks


def _source_and_pixels(masks: np.ndarray, headers: list, slice_index: int | None):
    """``(source images, pixel array (frames, rows, cols, S))`` for highdicom; an empty mask
    keeps only the one slice it was drawn on (a SEG holds at least one frame)."""
    pixels = np.moveaxis(masks, 0, -1)
    if np.any(masks):
        return headers, pixels
    k = int(slice_index) if slice_index is not None else len(headers) // 2
    return [headers[k]], pixels[k:k + 1]


# ----------------------------------------------------------------------------- building


def build_seg(masks: np.ndarray, labels: Sequence[str], source, *, algorithm: SegAlgorithm,
              fractional: bool = False, max_fractional: int = MAX_FRACTIONAL,
              slice_index: int | None = None, series_description: str | None = None,
              content_description: str | None = None):
    """A highdicom ``Segmentation`` (a pydicom Dataset) of ``masks`` over the series
    ``source`` (its folder, one of its files, or its headers in volume order).

    ``masks``: ``(S, slices, rows, cols)`` (one per segment, named by ``labels``) or
    ``(S, rows, cols)`` on ``slice_index``; binary (any non-zero voxel is in the segment) or,
    with ``fractional``, floats in 0..1 stored in steps of ``1 / max_fractional``. See the
    module docstring for what is written. :class:`DataError` for a mask that does not fit."""
    import highdicom as hd

    headers = series_headers(source)
    first = headers[0]
    plane = (int(first.Rows), int(first.Columns))
    masks = volume_masks(masks, len(headers), plane, slice_index)
    labels = [_lo(label) or f"segment {i + 1}" for i, label in enumerate(labels)]
    if len(labels) != masks.shape[0]:
        raise DataError(f"{masks.shape[0]} masks but {len(labels)} segment labels.")
    if fractional:
        values = masks.astype(np.float32)
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise DataError("a FRACTIONAL SEG holds values in 0..1; these are not.")
        masks = values
    else:
        masks = masks != 0
    codes = nodule_codes()
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=label,
        segmented_property_category=codes["category"], segmented_property_type=codes["type"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm.identification(),
        anatomic_regions=[codes["region"]]) for i, label in enumerate(labels)]
    images, pixels = _source_and_pixels(masks, headers, slice_index)
    version = _package_version()
    extra: dict[str, Any] = {}
    if fractional:
        extra.update(fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
                     max_fractional_value=int(max_fractional))
    try:
        return hd.seg.Segmentation(
            source_images=images, pixel_array=pixels,
            segmentation_type="FRACTIONAL" if fractional else "BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(),
            series_number=min(SERIES_NUMBER_OFFSET + int(first.get("SeriesNumber", 0) or 0),
                              2**31 - 1),  # IS holds a signed 32-bit integer
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER, software_versions=version,
            device_serial_number=f"{MANUFACTURER} {version}"[:64],
            series_description=_lo(series_description or
                                   f"{labels[0]} ({MANUFACTURER}, {algorithm.name})"),
            content_label="NODULE", content_description=_lo(content_description) or None,
            omit_empty_frames=True, **extra)
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom's refusals
        raise DataError(f"cannot build a DICOM SEG over this series ({type(exc).__name__}: "
                        f"{exc}); check that the series has positions and orientations "
                        "(ImagePositionPatient, ImageOrientationPatient).") from None


# ----------------------------------------------------------------------------- writing


def save_seg(dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the SEG ``dataset`` to ``path`` atomically: a hidden temporary file in the same
    folder, flushed to disk, then committed (replacing ``path`` with ``overwrite``, else only
    if nothing is there: :class:`DataError` if it exists)."""
    path = Path(path).expanduser()
    if not overwrite and path.exists():
        raise DataError(f"{path} already exists; choose another name or allow replacing it.")
    fd, tmp = files.create_temporary(path, ".dcm")
    try:
        with os.fdopen(fd, "wb") as f:
            write_dataset(dataset, f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            files.commit_replace(tmp, path)
        else:
            try:
                files.link_no_clobber(tmp, path)
            except FileExistsError:
                raise DataError(f"{path} already exists; choose another name or allow "
                                "replacing it.") from None
            files.fsync_folder(path.parent)
    finally:
        with suppress(OSError):
            tmp.unlink()
    return path


def write_dataset(dataset, fileobj) -> None:
    """Write ``dataset`` as a DICOM file (preamble, file meta) to an open binary file."""
    dataset.save_as(fileobj, enforce_file_format=True)


def write_seg(mask: np.ndarray, source, path: str | os.PathLike, *,
              segment_label: str = "nodule", algorithm_name: str, algorithm_version: str,
              algorithm_parameters: dict[str, str] | None = None,
              slice_index: int | None = None, series_description: str | None = None,
              content_description: str | None = None, overwrite: bool = False) -> Path:
    """Write one binary segment ``segment_label`` as a DICOM SEG at ``path`` over the series
    ``source`` (folder, file or sorted headers); ``mask`` ``(slices, rows, cols)`` in the
    order of ``Volume.data``, or ``(rows, cols)`` on ``slice_index``. Returns ``path``."""
    seg = build_seg(np.asarray(mask)[None], [segment_label], source,
                    algorithm=SegAlgorithm(algorithm_name, algorithm_version,
                                           dict(algorithm_parameters or {})),
                    slice_index=slice_index, series_description=series_description,
                    content_description=content_description)
    return save_seg(seg, path, overwrite=overwrite)


def write_hypotheses_seg(hypotheses: np.ndarray, source, path: str | os.PathLike, *,
                         algorithm_name: str, algorithm_version: str,
                         algorithm_parameters: dict[str, str] | None = None,
                         slice_index: int | None = None, label: str = "hypothesis",
                         series_description: str | None = None,
                         overwrite: bool = False) -> Path:
    """The N hypotheses ``(N, slices, rows, cols)`` or ``(N, rows, cols)`` on
    ``slice_index`` as N binary segments ``"<label> 01"``... of one SEG (they may overlap:
    SegmentsOverlap says so). Returns ``path``."""
    hypotheses = np.asarray(hypotheses)
    n = hypotheses.shape[0]
    width = max(2, len(str(n)))
    labels = [f"{label} {i + 1:0{width}d}" for i in range(n)]
    seg = build_seg(hypotheses, labels, source,
                    algorithm=SegAlgorithm(algorithm_name, algorithm_version,
                                           dict(algorithm_parameters or {})),
                    slice_index=slice_index,
                    series_description=series_description or
                    f"{n} hypotheses ({MANUFACTURER}, {algorithm_name})")
    return save_seg(seg, path, overwrite=overwrite)


def hypothesis_frequency(hypotheses: np.ndarray) -> tuple[np.ndarray, int]:
    """``(frequency, N)``: the fraction of the N hypotheses ``(N, ...)`` that put each voxel in
    the nodule (any non-zero label), float32 in 0..1."""
    hypotheses = np.asarray(hypotheses)
    n = int(hypotheses.shape[0])
    if n < 1:
        raise DataError("no hypotheses to count.")
    return (np.count_nonzero(hypotheses, axis=0) / np.float32(n)).astype(np.float32), n


def write_frequency_seg(hypotheses: np.ndarray, source, path: str | os.PathLike, *,
                        algorithm_name: str, algorithm_version: str,
                        algorithm_parameters: dict[str, str] | None = None,
                        slice_index: int | None = None, label: str = "nodule frequency",
                        series_description: str | None = None,
                        overwrite: bool = False) -> Path:
    """The pixel-wise frequency over N hypotheses as one FRACTIONAL (PROBABILITY) segment,
    stored exactly: MaximumFractionalValue N, a voxel's value the number of hypotheses that
    contain it (N <= 255). Returns ``path``."""
    frequency, n = hypothesis_frequency(hypotheses)
    if n > MAX_FRACTIONAL:
        raise DataError(f"{n} hypotheses: a FRACTIONAL SEG counts at most {MAX_FRACTIONAL}; "
                        "write fewer, or write them as segments (write_hypotheses_seg).")
    params = {"hypotheses": str(n), **dict(algorithm_parameters or {})}
    seg = build_seg(frequency[None], [label], source,
                    algorithm=SegAlgorithm(algorithm_name, algorithm_version, params),
                    fractional=True, max_fractional=n, slice_index=slice_index,
                    series_description=series_description or
                    f"{label} over {n} hypotheses ({MANUFACTURER})")
    return save_seg(seg, path, overwrite=overwrite)
