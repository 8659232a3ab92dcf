"""napari's File → Save for Labels layers: the mask plus its provenance record.

The npe2 ``writers`` contribution (``.tif``, ``.tiff``, ``.png``, ``.npy``, ``.nii``,
``.nii.gz``). It uses :func:`napari_probunet.review.export.export_correction`, the function
behind the review widget's Export… button, so both write the same files: for a correction (or
hypothesis) layer of the review widget the whole image plane with the ROI crop in place and a
record built from the layer's metadata; for any other Labels layer the layer's array as it is,
with what can be recorded (name, shape, versions, time). A layer that carries a scan's record
(a correction of a slice of a NIfTI volume or DICOM series, a Labels layer opened from a NIfTI)
saved as ``.nii``/``.nii.gz`` is written as the whole scan in the file's axis order with the
scan's affine (:mod:`napari_probunet.review.volume_export`).

napari's save dialog has already asked before replacing an existing file, so this writer
replaces the mask and its ``.json`` record.
"""

from __future__ import annotations

from typing import Any

from napari_probunet.review.export import export_correction, layer_mask_and_record
from napari_probunet.review.provenance import Provenance


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer (npe2 single-layer writer); return the paths written.

    The pixel spacing written (NIfTI of a plane) is the image layer's, from the layer's
    provenance record (a correction's), else the Labels layer's own scale; a scan's slice or
    volume gets the scan's affine instead.
    """
    mask, record = layer_mask_and_record(data, meta.get("metadata"), name=meta.get("name"))
    scale = Provenance.from_metadata(meta.get("metadata")).scale or meta.get("scale")
    written = export_correction(mask, path, record, overwrite=True, scale=scale)
    return [str(p) for p in written]
