"""A correction put back into the scan it came from: the whole volume, the scan's affine
(no Qt, no napari, no torch).

An image layer opened from a NIfTI volume or a DICOM series (``napari_probunet._reader``)
carries ``metadata["source"]``, the scan's record
(:meth:`napari_probunet.data.volumes.Volume.source`): the ``shape`` and ``affine`` (voxel
index -> RAS+ mm) of the file's array, ``axes`` (the layer's array is
``np.transpose(file array, axes)``), the layer's ``layer_shape`` and more. A correction made on
one slice of that layer carries the record too (:attr:`Provenance.volume
<napari_probunet.review.provenance.Provenance.volume>`), and the export's record holds it as
``"volume": {"source": ...}``.

:func:`volume_mask` is what :func:`napari_probunet.review.export.export_correction` does with
it. For a NIfTI target (``.nii``, ``.nii.gz``) the mask becomes the **whole scan's label
map**: zeros everywhere except the corrected slice, placed at its slice index (the ROI already
sits at its place in the plane), then transposed to the file's axis order and written with the
scan's affine (qform and sform, see :func:`nifti_codes`), so it overlays the original in
Slicer, ITK-SNAP or napari. The record's ``"volume"`` then says where the slice went
(``placed``, ``slice_index``, ``axes``, ``slice_axes_in_file``, ``box_in_file``,
``roi_centre_ras_mm``, ``affine``, ``codes``). Other formats keep the image plane
(``placed: false`` and why); a record without ``"volume"`` is written as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet.data import formats
from napari_probunet.review.provenance import jsonable

#: the suffixes written as the whole scan
NIFTI_SUFFIXES = formats.NIFTI.suffixes
#: NIfTI xform code ``scanner``: the scanner's (DICOM patient) frame
SCANNER = 1


def volume_source(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The scan record ``metadata["source"]`` of a layer (plain JSON types, a copy), or
    ``None`` if there is none or it does not describe a volume whose parts agree (a sample's
    ``source`` is a string; a record without an affine, or whose ``axes`` do not turn
    ``shape`` into ``layer_shape``, cannot place anything)."""
    if not isinstance(metadata, Mapping):
        return None
    source = metadata.get("source")
    if not isinstance(source, Mapping):
        return None
    try:
        shape = [int(s) for s in source["shape"]]
        axes = [int(a) for a in source["axes"]]
        layer_shape = [int(s) for s in source["layer_shape"]]
        affine = np.asarray(source["affine"], float)
    except (KeyError, TypeError, ValueError):
        return None
    if (len(shape) < 2 or sorted(axes) != list(range(len(shape)))
            or layer_shape != [shape[a] for a in axes] or affine.shape != (4, 4)
            or not np.all(np.isfinite(affine))):
        return None
    return jsonable(dict(source))


def nifti_codes(source: Mapping[str, Any]) -> dict[str, int]:
    """The qform and sform codes to write: the source NIfTI's own (read from its header when
    the file is still there; a zero one takes the other's), else ``scanner`` (1) for both: a
    DICOM series' patient frame is the scanner's."""
    if source.get("format") == "nifti":
        try:
            import nibabel

            header = nibabel.load(str(Path(str(source.get("path"))))).header
            q, s = int(header["qform_code"]), int(header["sform_code"])
        except Exception:  # gone, moved or unreadable: the default
            q = s = 0
        if q or s:
            return {"qform": q or s, "sform": s or q}
    return {"qform": SCANNER, "sform": SCANNER}


def _not_placed(volume: Mapping[str, Any], why: str) -> dict[str, Any]:
    return {**volume, "placed": False, "why": why}


def _slice_index(mask: np.ndarray, record: Mapping[str, Any],
                 layer_shape: list[int]) -> tuple[list[int] | None, str | None]:
    """Where ``mask`` goes in an array of ``layer_shape``: ``(None, None)`` for the whole
    array, ``(index, None)`` for the plane at the leading ``index``, ``(None, why)`` if
    neither."""
    if list(mask.shape) == layer_shape:
        return None, None
    image = record.get("image") if isinstance(record.get("image"), Mapping) else {}
    try:
        index = [int(i) for i in (image.get("slice_index") or ())]
    except (TypeError, ValueError):
        index = []
    lead = layer_shape[:-2]
    if (list(mask.shape) == layer_shape[-2:] and len(index) == len(lead)
            and all(0 <= i < n for i, n in zip(index, lead))):
        return index, None
    return None, (f"the mask ({'x'.join(map(str, mask.shape))}, slice {index}) does not fit "
                  f"the scan's layer ({'x'.join(map(str, layer_shape))})")


def _box(record: Mapping[str, Any], index: list[int], layer_shape: list[int]) -> list[list[int]]:
    """``[start, stop)`` along each layer axis of the ROI on slice ``index``."""
    box = [[i, i + 1] for i in index]
    roi = record.get("roi")
    if isinstance(roi, Mapping):
        r0, c0 = int(roi["row"]), int(roi["col"])
        box += [[r0, r0 + int(roi["height"])], [c0, c0 + int(roi["width"])]]
    else:
        box += [[0, layer_shape[-2]], [0, layer_shape[-1]]]
    return box


def volume_mask(mask: np.ndarray, record: Mapping[str, Any], suffix: str
                ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any] | None]:
    """``(array to write, affine or None, the record's new "volume" or None)`` for ``mask``
    (the image plane, or a whole layer of the scan's shape) exported as ``suffix``.

    Without a ``"volume"`` in ``record``: ``(mask, None, None)``, today's export. With one and a
    NIfTI ``suffix``: the scan's label map in the file's axis order and the scan's affine;
    otherwise the mask as it is and ``placed: false`` with the reason.
    """
    volume = record.get("volume")
    if not isinstance(volume, Mapping):
        return mask, None, None
    source = volume_source({"source": volume.get("source")})
    if source is None:
        return mask, None, _not_placed(volume, "the scan record is incomplete")
    if suffix not in NIFTI_SUFFIXES:
        return mask, None, _not_placed(volume, "only a NIfTI export (.nii, .nii.gz) is "
                                               "written as the whole scan; this file holds "
                                               "the image plane")
    layer_shape = source["layer_shape"]
    index, why = _slice_index(mask, record, layer_shape)
    if why is not None:
        return mask, None, _not_placed(volume, why)
    if index is None:
        full = mask
        box = [[0, n] for n in layer_shape]
    else:
        full = np.zeros(layer_shape, dtype=mask.dtype)
        full[tuple(index)] = mask
        box = _box(record, index, layer_shape)
    axes = source["axes"]
    inverse = [int(a) for a in np.argsort(axes)]  # file axis j is the layer's axis inverse[j]
    written = np.transpose(full, inverse)  # Fortran-ordered view: what NIfTI stores
    affine = np.asarray(source["affine"], float)
    box_file = [box[inverse[j]] for j in range(len(inverse))]
    centre = [(a + b - 1) / 2 for a, b in box_file[:3]] + [0.0] * (3 - min(3, len(box_file)))
    info = {
        "source": source, "placed": True,
        "extent": "whole scan" if index is not None else "layer",
        "slice_index": index, "axes": axes,
        "slice_axes_in_file": None if index is None else [axes[i] for i in range(len(index))],
        "box_in_file": box_file,
        "roi_centre_ras_mm": [round(float(v), 4) for v in (affine @ [*centre, 1.0])[:3]],
        "affine": affine.tolist(), "frame": source.get("frame", "RAS"),
        "codes": nifti_codes(source),
    }
    return written, affine, info
