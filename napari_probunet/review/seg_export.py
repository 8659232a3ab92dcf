"""A correction exported as a DICOM SEG over the series it was drawn on (``<name>.seg.dcm``),
with the same JSON record beside it as every other export (no Qt, no napari, no torch).

:func:`napari_probunet.review.export.export_correction` hands a ``.seg.dcm`` target to
:func:`export_seg`; the SEG itself is built by :mod:`napari_probunet.data.dicom_seg`. What the
export needs is what a correction of a DICOM slice carries: the record's ``"volume"`` (the
image layer's ``metadata["source"]``: the series' folder, its SeriesInstanceUID and the
layer's shape) and ``image.slice_index``. The series is read again from that folder (headers
only) and must still be the series the correction was made on.

- **What is written**: one binary segment ``nodule`` (category "Morphologically Abnormal
  Structure", type "Nodule", SEMIAUTOMATIC), only the frames that hold the nodule; the
  algorithm is the model file (its name) and the first 16 hex digits of its sha256 (its
  version), with the seed, the hypothesis chosen, the number of samples and the pixels edited
  as parameters; the content description says where the correction came from.
- **The record** ``<name>.seg.dcm.json``: the correction's record as for the other formats,
  with ``"volume"`` (the scan's record, ``placed: true``, the slice index) and ``"seg"`` (the
  SEG's SOPInstanceUID and SeriesInstanceUID, the series it references, frames, segment
  label, codes and algorithm), so the PACS copy can be found from the record.
- **Safety**: as :func:`~napari_probunet.review.export.export_correction`: the SEG and its
  record are one unit (:class:`~napari_probunet.review.export_unit.ExportUnit`: a lock per
  name, hidden temporaries flushed to disk, a journal, a no-clobber commit unless
  ``overwrite``, the old pair put back if the commit fails or is killed), stale temporaries
  removed. The SEG is built in memory first,
  so a correction that cannot become a SEG (not from a DICOM series, the series moved or
  changed) is refused before any file is created.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files
from napari_probunet.data import formats
from napari_probunet.errors import UserError
from napari_probunet.review.export_unit import ExportUnit, record_path, write_failed
from napari_probunet.review.provenance import jsonable

#: the file name ending of a SEG export (one format, two dots, like ``.nii.gz``)
SEG_SUFFIX = formats.DICOM_SEG.suffixes[0]
SEGMENT_LABEL = "nodule"


def _dicom_source(record: Mapping[str, Any], path: Path) -> dict[str, Any]:
    volume = record.get("volume") if isinstance(record.get("volume"), Mapping) else {}
    source = volume.get("source") if isinstance(volume.get("source"), Mapping) else None
    if source is None or source.get("format") != "dicom" or not source.get("path"):
        raise UserError(
            f"cannot export {path.name} as a DICOM SEG: a SEG lies over the DICOM series the "
            "image came from, and this correction's image was not opened from a DICOM "
            "series. Open the series (its folder) in napari and correct it there, or export "
            "as .nii.gz or .tif.")
    return dict(source)


def _volume_mask(mask: np.ndarray, record: Mapping[str, Any], shape: tuple[int, ...],
                 path: Path) -> tuple[np.ndarray, list[int] | None]:
    """The whole scan's mask ``shape`` and the slice index it went to (None: whole scan)."""
    if mask.shape == shape:
        return mask, None
    image = record.get("image") if isinstance(record.get("image"), Mapping) else {}
    index = [int(i) for i in (image.get("slice_index") or ())]
    if mask.shape != shape[1:] or len(index) != 1 or not 0 <= index[0] < shape[0]:
        raise UserError(f"cannot export {path.name} as a DICOM SEG: the mask "
                        f"({'x'.join(map(str, mask.shape))}, slice {index}) does not fit the "
                        f"series ({'x'.join(map(str, shape))}); export it as .nii.gz.")
    full = np.zeros(shape, np.uint8)
    full[index[0]] = mask != 0
    return full, index


def _algorithm(record: Mapping[str, Any]):
    from napari_probunet.data.dicom_seg import SegAlgorithm

    model = record.get("model") if isinstance(record.get("model"), Mapping) else {}
    choice = record.get("choice") if isinstance(record.get("choice"), Mapping) else {}
    params = {"seed": choice.get("seed"), "hypothesis": choice.get("hypothesis"),
              "n_samples": choice.get("n_samples"), "source": choice.get("source"),
              "pixels_edited": record.get("pixels_changed_by_hand")}
    sha = str(model.get("sha256") or "")
    return SegAlgorithm(name=str(model.get("file") or "napari-probunet"),
                        version=f"sha256:{sha[:16]}" if sha else "unknown",
                        parameters={k: str(v) for k, v in params.items() if v is not None})


def _content(record: Mapping[str, Any]) -> str:
    choice = record.get("choice") if isinstance(record.get("choice"), Mapping) else {}
    edited = record.get("pixels_changed_by_hand")
    what = (f"hypothesis {choice['hypothesis']} of {choice.get('n_samples')}"
            if choice.get("hypothesis") else str(choice.get("source") or "a mask"))
    return f"corrected from {what}" + (f", {edited} pixels edited" if edited else "")


def build_export(mask: np.ndarray, record: Mapping[str, Any], path: Path):
    """``(seg dataset, whole-scan mask, the record's "volume" and "seg")``: everything checked
    and built in memory, nothing written. :class:`UserError` if the correction cannot be a
    SEG over its series."""
    from napari_probunet.data.dicom_seg import build_seg, nodule_codes, series_headers

    source = _dicom_source(record, path)
    headers = series_headers(source["path"])
    uid = str(headers[0].get("SeriesInstanceUID", ""))
    if source.get("series_uid") and uid != source["series_uid"]:
        raise UserError(f"cannot export {path.name} as a DICOM SEG: the folder "
                        f"{source['path']} now holds the series {uid}, not the series "
                        f"{source['series_uid']} the correction was made on; put that series "
                        "back (or reopen it) and export again.")
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    full, index = _volume_mask(np.asarray(mask), record, shape, path)
    algorithm = _algorithm(record)
    seg = build_seg(full[None], [SEGMENT_LABEL], headers, algorithm=algorithm,
                    slice_index=None if index is None else index[0],
                    content_description=_content(record))
    codes = nodule_codes()
    info = {
        "volume": {"source": source, "placed": True, "slice_index": index,
                   "extent": "whole scan"},
        "seg": {"sop_instance_uid": str(seg.SOPInstanceUID),
                "series_instance_uid": str(seg.SeriesInstanceUID),
                "referenced_series_uid": uid, "frames": int(seg.NumberOfFrames),
                "segment_label": SEGMENT_LABEL,
                "category": f"{codes['category'].scheme_designator} "
                            f"{codes['category'].value} {codes['category'].meaning}",
                "type": f"{codes['type'].scheme_designator} {codes['type'].value} "
                        f"{codes['type'].meaning}",
                "algorithm_type": "SEMIAUTOMATIC",
                "algorithm": {"name": algorithm.name, "version": algorithm.version,
                              "parameters": algorithm.parameters}},
    }
    return seg, full, info


def export_seg(mask: np.ndarray, path: str | os.PathLike, record: dict[str, Any],
               overwrite: bool = False, pixels: np.ndarray | None = None) -> tuple[Path, Path]:
    """Write ``mask`` (the image plane of a DICOM slice, or the whole scan) as the DICOM SEG
    ``path`` (``*.seg.dcm``) and the record as ``<path>.json``, atomically; see the module
    docstring; ``pixels``, the corrected region's image, go beside it as for the other formats.
    Returns the two paths. :class:`~napari_probunet.review.export.ExportExistsError`
    if either exists without ``overwrite``; :class:`UserError` otherwise."""
    from napari_probunet.data.dicom_seg import write_dataset
    from napari_probunet.review import export as ex  # export imports this module

    path = Path(path).expanduser()
    ex.remove_stale_temporaries(path.parent)  # first: puts back a pair a killed export split
    ex.check_target_free(path, overwrite)
    seg, full, info = build_export(mask, record, path)
    try:
        with ExportUnit(path, SEG_SUFFIX, overwrite) as unit:  # one writer per name, journaled
            mode = files.ordinary_mode()
            with open(unit.mask_temp(), "wb") as f:
                write_dataset(seg, f)
            unit.finish_mask(mode)
            full_record = ex.full_record({**record, **info, "extent": "whole scan"}, path,
                                         SEG_SUFFIX, full, {"frames": info["seg"]["frames"]})
            ex.write_pixels(unit, full_record, pixels, mode)  # the corrected region's image
            unit.write_record(jsonable(full_record), mode)
            unit.commit()
    except OSError as exc:
        raise write_failed(path, exc) from exc
    return path, record_path(path)
