"""Storing DICOM files (a SEG made after the review) back on the PACS (STOW-RS).

:func:`store_files` reads each file (it must be DICOM), sends them in one STOW-RS request and
checks the server's answer instance by instance. It never touches the files: when the store
fails (server down, 401/403, the server refuses an instance) the
:class:`~.errors.PacsStoreError` says so and names the files, which stay where they are to be
stored again later (``probunet pacs put``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from napari_probunet.data.pacs.client import Pacs
from napari_probunet.data.pacs.errors import PacsError, PacsStoreError
from napari_probunet.errors import DataError


@dataclass(frozen=True)
class StoreResult:
    """What the server took: the SOPInstanceUIDs, of which study and series."""

    server: str
    sop_uids: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


def read_for_store(paths) -> list:
    """The pydicom datasets of ``paths`` (whole files); a file that is not DICOM is refused."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets = []
    for p in paths:
        path = Path(p)
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: cannot be stored: not a readable DICOM file "
                            f"({type(exc).__name__}); export the segmentation as DICOM SEG "
                            "first") from None
        for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not str(ds.get(key, "") or ""):
                raise DataError(f"{path}: cannot be stored: no {key}")
        datasets.append(ds)
    return datasets


def store_files(pacs: Pacs, paths) -> StoreResult:
    """Store the DICOM files ``paths`` on the server; the files are never changed."""
    paths = [Path(os.fspath(p)) for p in paths]
    if not paths:
        raise DataError("no files to store")
    datasets = read_for_store(paths)
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    again = f"store it again later with: probunet pacs put {pacs.url} {names}"
    try:
        answer = pacs.store_datasets(datasets)
    except PacsError as exc:
        raise PacsStoreError(f"not stored: {exc} The file(s) {names} are unchanged; "
                             f"{again}") from None
    failed = list(getattr(answer, "FailedSOPSequence", None) or [])
    if failed:
        reasons = "; ".join(f"{getattr(item, 'ReferencedSOPInstanceUID', '?')}: failure reason "
                            f"{getattr(item, 'FailureReason', '?')}" for item in failed[:5])
        raise PacsStoreError(f"{pacs.url} refused {len(failed)} of {len(datasets)} instance(s) "
                             f"({reasons}). The file(s) {names} are unchanged; {again}")
    return StoreResult(
        server=pacs.url, sop_uids=[str(ds.SOPInstanceUID) for ds in datasets],
        study_uids=sorted({str(ds.StudyInstanceUID) for ds in datasets}),
        series_uids=sorted({str(ds.SeriesInstanceUID) for ds in datasets}),
        files=[str(p) for p in paths])
