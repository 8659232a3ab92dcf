"""napari's File → Save for Labels layers: the mask plus its provenance record.

The npe2 ``writers`` contribution (``.tif``, ``.tiff``, ``.png``, ``.npy``, ``.nii``,
``.nii.gz``). It uses :func:`napari_probunet.review.export.export_correction`, the function behind the
review widget's Export… button, so both write the same files: for a correction (or hypothesis)
layer of the review widget the whole image plane with the ROI crop in place and a record built
from the layer's metadata; for any other Labels layer the layer's array as it is, with what can
be recorded (name, shape, versions, time).

napari's save dialog has already asked before replacing an existing file, so this writer
replaces the mask and its ``.json`` record.
"""

from __future__ import annotations

from typing import Any

from napari_probunet.review.export import export_correction, layer_mask_and_record


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer (npe2 single-layer writer); return the paths written."""
    mask, record = layer_mask_and_record(data, meta.get("metadata"), name=meta.get("name"))
    scale = (meta.get("metadata") or {}).get("scale") or meta.get("scale")
    written = export_correction(mask, path, record, overwrite=True, scale=scale)
    return [str(p) for p in written]
