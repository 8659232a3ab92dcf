"""Writing a corrected mask to disk with the record of where it came from (no Qt, no torch).

Used by the review widget's "Export…" button, by napari's File → Save (the ``_writer``
contribution) and by scripts:

>>> from napari_probunet.review.export import export_correction        # doctest: +SKIP
>>> export_correction(mask, "case12_lesion.tif", record)        # doctest: +SKIP
(PosixPath('case12_lesion.tif'), PosixPath('case12_lesion.tif.json'))

Conventions
-----------
- **What is written**: the label map of the whole 2D image plane (same rows and columns as the
  image the clinician reviewed), zero outside the region of interest. The ROI is in the record,
  so the crop the model saw is ``mask[row:row + height, col:col + width]``.
- **Formats** by file suffix: ``.tif``/``.tiff`` (tifffile, zlib-compressed), ``.png`` (8-bit;
  a binary mask is stored as 0/255 so that it is visible in any viewer, ``"png_foreground"``
  in the record says so; the package's readers map it back to 0/1), ``.npy`` and
  ``.nii``/``.nii.gz`` (nibabel; the array as is, rows first, the pixel spacing in the header)
  and ``.seg.dcm`` (a DICOM SEG over the DICOM series the image came from, written by
  :mod:`napari_probunet.review.seg_export`).
  Label values are class indices (``0`` = background) everywhere else.
- **Scan-ready NIfTI**: when the image came from a scan (a NIfTI volume or a DICOM series: the
  record's ``"volume"``, from the image layer's ``metadata["source"]``), a ``.nii``/``.nii.gz``
  export holds the **whole volume's** label map instead, the corrected slice in place and
  zeros elsewhere, in the file's axis order with the scan's affine, and the record's
  ``"volume"`` says where the slice went (:mod:`napari_probunet.review.volume_export`).
- **The record** ``<mask path>.json`` (e.g. ``case12_lesion.tif.json``): see
  :func:`correction_record`; a layer's record is read from its metadata, a
  :class:`~napari_probunet.review.provenance.Provenance` (:func:`layer_mask_and_record`).
- **The corrected region's pixels** ``<mask path>.image.npy``: the ROI the model saw, as in the
  image layer (``(h, w)`` or ``(h, w, 3)``, its own dtype), when the review knows them (a
  correction made in the widget; not one restored from an autosave). The record's
  ``image.file`` names the file the image was opened from and ``image.pixels`` gives the
  pixels' ``sha256`` (of the array's bytes in its own dtype and byte order, C order, no header:
  ``hashlib.sha256(np.load(f).tobytes())``), ``dtype``, ``shape`` and the ``.npy`` file's
  name; the crop of the mask that goes with them is ``mask[row:row + height, col:col + width]``
  (for a whole-scan export, on the slice ``volume.slice_index``). So an export is a training
  pair.
- **Safety**: the mask, the pixels and the record are one unit
  (:class:`~napari_probunet.review.export_unit.ExportUnit`): each is written to a hidden
  temporary file in the target folder and flushed to disk (``fsync``); then, under a lock per
  name, a journal names the old files' backups and everything is renamed into place, the record
  last. Without ``overwrite`` the commit is a hard link of the finished file onto the target,
  which fails if the target exists (where the file system has no hard links, a file created
  with ``O_EXCL`` is filled instead). A commit that fails puts the old unit back; one that is
  killed is rolled back by the next export into that folder, and a failed write raises
  :class:`~napari_probunet.errors.UserError` saying what happened and that nothing was written.
  Temporary files are named after their process (``.NAME.~<host>-<pid>.*.tmp.EXT``); those that
  a killed export left behind are removed by the next export into that folder once their
  process is gone (or they are an hour old: another machine's), except what a journal still
  names. Exports get the ordinary mode of a new file (``0666`` less the umask). A 64-bit label
  mask is stored in NIfTI as the smallest portable integer type that holds its labels.

The helpers every atomic write of the package uses (temporary files, commits, fsync) are in
:mod:`napari_probunet.files`; autosaved corrections in :mod:`napari_probunet.review.recovery`.
``docs/reliability.md`` sums up what is atomic and what a crash can lose.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files
from napari_probunet.data import formats
from napari_probunet.errors import UserError
from napari_probunet.review.export_unit import (
    ExportExistsError,
    ExportUnit,
    exists_error,
    journal_files,
    record_path,
    recover_folder,
    write_failed,
)
from napari_probunet.review.geometry import as_2d
from napari_probunet.review.provenance import (
    RECORD_KIND,
    RECORD_VERSION,
    Provenance,
    jsonable,
    now_iso,
    pixels_identity,
    versions,
)
from napari_probunet.review.seg_export import SEG_SUFFIX, export_seg  # DICOM SEG
from napari_probunet.review.volume_export import volume_mask, volume_source

#: file types :func:`export_correction` writes, by suffix
SUFFIXES = formats.EXPORT_SUFFIXES
#: the key under which an in-memory record carries the corrected region's image pixels (an
#: array): :func:`export_correction` writes them as ``<mask>.image.npy``, never into the JSON
PIXELS_KEY = "region_pixels"
#: the companion file of the corrected region's pixels: ``<mask path>`` + this
PIXELS_SUFFIX = ".image.npy"
#: ``.<target>[.~<host>-<pid>].<8 random characters>.tmp[<suffix>]``: the temporary files of an
#: export (the owner part names the process that writes it; older versions left it out)
_TEMP_RE = re.compile(r"^\.(?P<target>.+?)(?:\.~[0-9a-f]{6}-\d+)?\.[A-Za-z0-9_]{8}"
                      r"\.tmp(?P<ext>\.[A-Za-z.]+)?$")

__all__ = ["PIXELS_KEY", "PIXELS_SUFFIX", "RECORD_KIND", "RECORD_VERSION",
           "ExportExistsError", "SUFFIXES", "correction_record", "export_correction",
           "full_record", "layer_mask_and_record", "mask_suffix", "paste_into_plane",
           "read_record", "record_path", "remove_stale_temporaries", "write_mask_file"]


# ----------------------------------------------------------------------------- paths


def mask_suffix(path: str | os.PathLike) -> str:
    """The export format suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    return formats.suffix_of(path)


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record an export wrote beside the mask file ``path`` (``<path>.json``), or ``None``
    if there is none, it cannot be read, or it is not an export's record (no ``"mask"``)."""
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "mask" in record else None


def paste_into_plane(crop: np.ndarray, roi, plane_shape) -> np.ndarray:
    """The ROI ``crop`` ``(h, w)`` placed into a zero ``plane_shape`` array at ``roi``.

    ``roi`` is ``(row, col, height, width)`` in the plane's pixels.
    """
    r0, c0, h, w = (int(v) for v in roi)
    crop = np.asarray(crop)
    if crop.shape != (h, w):
        raise UserError(f"the mask has shape {crop.shape} but the region of interest is {h}x{w}")
    full = np.zeros(tuple(int(s) for s in plane_shape), dtype=crop.dtype)
    if r0 < 0 or c0 < 0 or r0 + h > full.shape[0] or c0 + w > full.shape[1]:
        raise UserError(f"the region of interest {tuple(roi)} lies outside the image {full.shape}")
    full[r0:r0 + h, c0:c0 + w] = crop
    return full


# ----------------------------------------------------------------------------- record


def correction_record(
    correction: np.ndarray,
    *,
    source_labels: np.ndarray | None = None,
    choice_source: str | None = None,
    index: int | None = None,
    z=None,
    seed: int | None = None,
    n_samples: int | None = None,
    roi=None,
    plane_shape=None,
    image_signature: str | None = None,
    plane_signature: str | None = None,
    image_layer: str | None = None,
    slice_index=(),
    scale=None,
    translate=None,
    model_sha256: str | None = None,
    model_name: str | None = None,
    class_names: list[str] | None = None,
    volume: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance record of a correction (a JSON-able dict), from keywords: scripts' way
    to :meth:`Provenance.correction_record <napari_probunet.review.provenance.Provenance.
    correction_record>` (which the review's layers use; see it for the keys)."""
    prov = Provenance(
        kind="correction" if (choice_source or source_labels is not None) else None,
        source=choice_source, index=index, z=z, seed=seed, n_samples=n_samples, roi=roi,
        plane_shape=plane_shape, image_signature=image_signature,
        plane_signature=plane_signature, image_layer=image_layer, slice_index=slice_index,
        scale=scale, translate=translate, model_sha256=model_sha256, model_name=model_name,
        class_names=class_names, source_labels=source_labels)
    return prov.correction_record(correction, volume=volume)


def layer_mask_and_record(data, metadata: dict[str, Any] | None, name: str | None = None):
    """What to write for a Labels layer, and its record: ``(mask, record)``.

    A correction or hypothesis layer of the review widget (its metadata a
    :class:`~napari_probunet.review.provenance.Provenance` of that ``kind``) holds its ROI
    crop; the mask is then the whole image plane with the crop pasted at the ROI, and the record
    is built from the layer's provenance (source, hypothesis, z, seed, model, image signature,
    ROI, and for a correction the pixels edited by hand). Any other Labels layer is written as
    it is, with a record of what is known (its name, shape, versions, time). Either carries
    the scan record (``"volume"``) when the layer has one (a correction of a scan's slice, a
    Labels layer opened from a NIfTI).
    """
    prov = Provenance.from_metadata(metadata)
    arr = np.asarray(data)
    if prov.kind in ("correction", "hypothesis") and prov.roi and prov.plane_shape:
        crop = arr.reshape(arr.shape[-2:]) if all(s == 1 for s in arr.shape[:-2]) else arr
        record = prov.correction_record(crop, volume=volume_source({"source": prov.volume}))
        record["layer"] = name
        if prov.region_pixels is not None:  # written beside the mask, never into the JSON
            record[PIXELS_KEY] = np.asarray(prov.region_pixels)
        return paste_into_plane(crop, prov.roi, prov.plane_shape), record
    record = Provenance().correction_record(arr, volume=volume_source(metadata))
    record.update(layer=name, extent="layer", roi=None)
    return arr, record


@dataclass
class Exported:
    """An exported correction layer: the files written and the crop they hold."""

    mask: Path
    record: Path
    crop: np.ndarray  # the (h, w) correction inside the ROI, as exported
    plane_signature: str | None  # the autosave key of the correction's plane


def export_layer(layer, path: str | os.PathLike, *, overwrite: bool = False) -> Exported:
    """Write a correction ``layer`` (anything with ``data``, ``metadata`` and ``name``: a
    napari Labels layer) to ``path`` with its JSON record (:func:`layer_mask_and_record`, then
    :func:`export_correction`, whose UserError says what is wrong)."""
    crop = as_2d(layer.data)
    prov = Provenance.from_metadata(layer.metadata)
    mask, record = layer_mask_and_record(crop, layer.metadata, name=layer.name)
    written, record_file = export_correction(mask, Path(path), record, overwrite=overwrite,
                                             scale=prov.scale)
    return Exported(written, record_file, crop, prov.plane_signature)


# ----------------------------------------------------------------------------- writing


def write_mask_file(mask: np.ndarray, path: Path, suffix: str, scale=None, affine=None,
                    codes: dict[str, int] | None = None) -> dict[str, Any]:
    """Write ``mask`` to ``path`` in the format of ``suffix``; return notes for the record.

    The writer is the format's entry in :mod:`napari_probunet.data.formats` (for NIfTI
    ``scale``: the pixel spacing, or ``affine``: a scan's, written as qform and sform with
    ``codes``, ``scanner`` by default); the export calls it on a hidden temporary file, never
    on the target itself.
    """
    fmt = formats.by_suffix(suffix)
    if fmt is None or fmt.write is None:  # pragma: no cover - checked by the caller
        raise UserError(f"unsupported file type {suffix!r}")
    return fmt.write(mask, path, scale=scale, affine=affine, codes=codes)


#: label dtypes a NIfTI file holds portably, smallest first
_NIFTI_LABEL_DTYPES = (np.uint8, np.int16, np.uint16, np.int32)


def _nifti_labels(mask: np.ndarray) -> np.ndarray:
    """``mask`` in the smallest portable NIfTI integer type that holds its labels (64-bit
    integers, a napari Labels layer's type, are not portable); :class:`UserError` if none."""
    if mask.dtype in (np.dtype(t) for t in _NIFTI_LABEL_DTYPES):
        return mask
    low, high = int(mask.min(initial=0)), int(mask.max(initial=0))
    for t in _NIFTI_LABEL_DTYPES:
        info = np.iinfo(t)
        if info.min <= low and high <= info.max:
            return mask.astype(t)
    raise UserError(f"NIfTI holds labels {np.iinfo(np.int32).min}..{np.iinfo(np.int32).max}; "
                    f"this mask has {low}..{high}: export it as .tif or .npy")


def _is_export_temporary(name: str) -> bool:
    """``.case.tif.a1b2c3d4.tmp.tif`` (a mask), ``.case.tif.json.a1b2c3d4.tmp`` (a record)."""
    m = _TEMP_RE.match(name)
    if m is None:
        return False
    target, ext = m["target"], (m["ext"] or "").lower()
    if ext:
        return ext in SUFFIXES and mask_suffix(target) == ext
    return target.lower().endswith(".json") and mask_suffix(target[:-5]) in SUFFIXES


def remove_stale_temporaries(folder: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Delete the hidden temporary files of exports into ``folder`` that a killed export left:
    those of a process of this machine that is gone, and any older than
    :data:`~napari_probunet.files.STALE_TEMP_SECONDS`; return what was deleted.

    Younger ones of a running process (or of another machine) may belong to an export under
    way and are left alone. First, exports that were killed while committing are rolled back
    (:func:`~napari_probunet.review.export_unit.recover_folder`); a file a journal still names
    (the backup of an old pair) is never deleted.
    """
    recover_folder(folder)
    kept = journal_files(folder)
    return files.remove_dead_temporaries(
        folder, lambda name: name not in kept and _is_export_temporary(name), now)


# ----------------------------------------------------------------------------- the export


def export_correction(mask: np.ndarray, path: str | os.PathLike, record: dict[str, Any],
                      overwrite: bool = False, scale=None) -> tuple[Path, Path]:
    """Write ``mask`` to ``path`` and ``record`` (plus file details) to ``<path>.json``, atomically.

    Returns the paths of the mask and of the record. Raises :class:`ExportExistsError` if either
    exists and ``overwrite`` is false (checked again at the commit, so a concurrent export of
    the same name cannot be replaced), and :class:`UserError` for an unsupported suffix, a mask
    the format cannot hold or a failed write (read-only folder, full disk); nothing is left
    behind then (see the module's "Safety").
    """
    path, suffix = _checked_target(path)
    mask = _checked_mask(mask, suffix)
    record = dict(record)
    pixels = record.pop(PIXELS_KEY, None)  # the corrected region's image: a file of its own
    if suffix == SEG_SUFFIX:  # a DICOM SEG over the scan's series: review/seg_export.py
        return export_seg(mask, path, record, overwrite=overwrite, pixels=pixels)
    mask, affine, volume = volume_mask(mask, record, suffix)
    if volume is not None:  # the scan's record, and where the slice went (or why not)
        record = {**record, "volume": volume}
        if volume["placed"] and volume["slice_index"] is not None:
            record["extent"] = "whole scan"
    remove_stale_temporaries(path.parent)  # first: puts back a pair a killed export split
    check_target_free(path, overwrite)
    try:
        with ExportUnit(path, suffix, overwrite) as unit:  # one writer per name, journaled
            mode = files.ordinary_mode()
            notes = _write_mask(unit, mask, path, suffix, (scale, affine, volume), mode)
            full = full_record(record, path, suffix, mask, notes)
            write_pixels(unit, full, pixels, mode)
            unit.write_record(jsonable(full), mode)
            unit.commit()
    except OSError as exc:
        raise write_failed(path, exc) from exc
    return path, record_path(path)


def pixels_path(path: str | os.PathLike) -> Path:
    """Where the corrected region's image pixels go: ``<mask path>.image.npy``."""
    return Path(f"{os.fspath(path)}{PIXELS_SUFFIX}")


def write_pixels(unit: ExportUnit, full: dict[str, Any], pixels, mode: int) -> None:
    """Write the corrected region's image ``pixels`` (the ROI the model saw, ``(h, w)`` or
    ``(h, w, 3)``, as in the image layer) as ``<mask>.image.npy`` in the export ``unit``, and
    name the file in the record's ``image.pixels``; nothing when they are not known."""
    if pixels is None:
        return
    pixels = np.ascontiguousarray(pixels)
    target = pixels_path(unit.path)
    tmp = unit.temporary(target, formats.NPY.suffixes[0])
    with open(tmp, "wb") as f:
        np.save(f, pixels, allow_pickle=False)
    unit.finish(tmp, mode)
    image = full.setdefault("image", {})
    identity = image.get("pixels") or pixels_identity(pixels)
    image["pixels"] = {**identity, "file": target.name}


def check_target_free(path: Path, overwrite: bool) -> None:
    """Refuse early (before anything is built or written): the target folder is missing, or
    (without ``overwrite``) the mask or its record exists. Checked again under the lock."""
    if not overwrite:
        existing = [p.name for p in (path, record_path(path)) if p.exists()]
        if existing:
            raise exists_error(existing, path.parent)
    if not path.parent.is_dir():
        raise UserError(f"cannot export to {path}: the folder {path.parent} does not exist")


def _checked_target(path: str | os.PathLike) -> tuple[Path, str]:
    """The expanded target path and its format suffix; :class:`UserError` if not exportable."""
    if "\0" in os.fspath(path):
        raise UserError(f"cannot export to {os.fspath(path)!r}: a file name cannot contain a "
                        "NUL character; choose another name")
    path = Path(path).expanduser()
    suffix = mask_suffix(path)
    if suffix not in SUFFIXES:
        raise UserError(
            f"cannot export to {path.name!r}: choose a file ending in {', '.join(SUFFIXES)}"
        )
    return path, suffix


def _checked_mask(mask: np.ndarray, suffix: str) -> np.ndarray:
    """``mask`` as the integer label array to write in the format of ``suffix``."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise UserError(f"a label mask must hold integers, not {mask.dtype}")
    if mask.ndim < 2 or mask.size == 0:
        raise UserError(f"nothing to export: the mask has shape {mask.shape}")
    if suffix in formats.NIFTI.suffixes:
        mask = _nifti_labels(mask)
    return mask


def _write_mask(unit: ExportUnit, mask: np.ndarray, path: Path, suffix: str, geometry,
                mode: int) -> dict[str, Any]:
    """Write the mask to a hidden temporary file beside ``path`` (``unit.mask_temp()``),
    flushed to disk with the ordinary ``mode``; return the format's notes for the record.
    ``geometry``: ``(scale, affine, volume record)`` for NIfTI (see :func:`write_mask_file`)."""
    scale, affine, volume = geometry
    # a scan's affine and codes, only when there is one (the plane's call is as it was)
    scan = {} if affine is None else {"affine": affine, "codes": volume.get("codes")}
    tmp = unit.mask_temp()
    try:
        notes = write_mask_file(mask, tmp, suffix, scale=scale, **scan)
    except (OSError, UserError):
        raise
    except Exception as exc:  # the format's library refuses this mask
        raise UserError(
            f"cannot write this {mask.dtype} mask of shape {mask.shape} as "
            f"{suffix} ({type(exc).__name__}: {exc}); export it as .tif or .npy. "
            "Nothing was written."
        ) from None
    unit.finish_mask(mode)
    return notes


def full_record(record: dict[str, Any], path: Path, suffix: str, mask: np.ndarray,
                 notes: dict[str, Any]) -> dict[str, Any]:
    """``record`` with what was written (file, format, shape, dtype, extent) and when."""
    full = dict(record)
    full["mask"] = {
        "file": path.name,
        "format": suffix.lstrip("."),
        "shape": list(mask.shape),
        "dtype": str(mask.dtype),
        # the whole image plane (the widget) or the layer's own array (other layers)
        "extent": full.pop("extent", "image plane"),
        **notes,
    }
    full.setdefault("versions", versions())
    full.setdefault("created", now_iso())
    full["exported"] = now_iso()
    return full
