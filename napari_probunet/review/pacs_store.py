"""After the review: a Labels layer exported as a DICOM SEG, then stored on the PACS.

:func:`export_seg_for_pacs` writes the SEG locally first, as every export (the ``.seg.dcm`` and
its ``.json`` record, :func:`napari_probunet.review.export.export_correction`): a correction or
hypothesis layer of the review widget carries its scan record; a Labels layer the user painted
over the CT retrieved from the PACS (same shape as the series) is given the series' record
(``series_source``, :meth:`Volume.source <napari_probunet.data.volumes.Volume.source>`).
:func:`store_seg` then sends it (STOW-RS); when that fails the local export stays where it is,
and the :class:`~napari_probunet.data.pacs.errors.PacsStoreError` names it.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet.data.pacs.client import Pacs
from napari_probunet.data.pacs.store import StoreResult, store_files
from napari_probunet.errors import UserError
from napari_probunet.review.export import export_correction, layer_mask_and_record
from napari_probunet.review.seg_export import SEG_SUFFIX
from napari_probunet.review.volume_export import volume_source


def export_folder() -> Path:
    """Where the dock writes the SEGs it stores: ``~/Documents/napari-probunet/seg`` (the
    platform's documents folder), created when needed."""
    from platformdirs import user_documents_dir

    return Path(user_documents_dir()) / "napari-probunet" / "seg"


def export_seg_for_pacs(data, metadata: dict[str, Any] | None, name: str,
                        series_source: dict[str, Any] | None, folder: str | Path) -> Path:
    """Write the Labels layer (``data``, ``metadata``, ``name``) as ``<name>-<time>.seg.dcm``
    (and its record) in ``folder``; returns the SEG's path. :class:`UserError` when the layer
    is not over a DICOM series or is empty."""
    meta = dict(metadata or {})
    arr = np.asarray(data)
    if (volume_source(meta) is None and series_source is not None
            and list(arr.shape) == list(series_source.get("layer_shape") or [])):
        meta["source"] = dict(series_source)
    mask, record = layer_mask_and_record(arr, meta, name=name)
    if not np.any(mask):
        raise UserError(f"the labels layer {name!r} is empty: paint the nodule (or choose a "
                        "hypothesis) before storing a SEG")
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._") or "correction"
    when = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stem}-{when}{SEG_SUFFIX}"
    k = 2
    while path.exists():
        path, k = folder / f"{stem}-{when}-{k}{SEG_SUFFIX}", k + 1
    seg_path, _record_path = export_correction(mask, path, record, overwrite=False)
    return Path(seg_path)


def store_seg(pacs: Pacs, seg_path: str | Path) -> StoreResult:
    """Store the exported SEG; on failure the file stays and the error says where it is."""
    return store_files(pacs, [Path(seg_path)])
