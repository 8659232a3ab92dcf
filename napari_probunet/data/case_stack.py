"""One multi-rater case as a viewer shows it: the image (a stack for an LIDC-IDRI nodule) and
each grader's mask, with the notes a user should read. What napari's case reader opens
(``_reader.py``), without napari.

- A folder of the generic layout (an image and its graders' masks, ``docs/data.md``):
  :func:`napari_probunet.data.readers.read_case_folder`.
- A nodule folder of the LIDC-IDRI slices (``LIDC-IDRI-<patient>/nodule-<k>``): its slices
  decoded directly (no cache) into one ``(slices, H, W)`` float32 stack and ``(R, slices, H,
  W)`` uint8 masks, their size checked against :data:`~napari_probunet.limits.MAX_DECODED_BYTES`
  before anything is decoded.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_probunet.data import formats
from napari_probunet.data.images import file_suffix, is_mask_name, load_array
from napari_probunet.data.lidc_slices import read_lidc_nodule_stack
from napari_probunet.data.readers import read_case_folder


@dataclass
class CaseStack:
    """A case to show: ``image`` ``(H, W[, C])`` or ``(slices, H, W)``, ``masks`` ``(R, ...)``
    of the image's shape (uint8 labels), ``name`` and ``notes`` (sentences)."""

    image: np.ndarray
    masks: np.ndarray
    name: str
    notes: list[str] = field(default_factory=list)


def is_case_folder(path: str | os.PathLike) -> bool:
    """A folder that :func:`read_case_stack` opens: an LIDC-IDRI nodule folder (with
    ``images/slice-*.png``) or a generic case (mask-named and other data files)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    if (folder / "images").is_dir() and any((folder / "images").glob("slice-*.png")):
        return True
    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    data = [f for f in files if file_suffix(f) in formats.IMAGE_SUFFIXES]
    return any(is_mask_name(f) for f in data) and any(not is_mask_name(f) for f in data)


def read_case_stack(path: str | os.PathLike) -> CaseStack:
    """The case folder at ``path`` (see the module docstring); the readers' warnings and the
    masks thresholded for grey levels (:func:`grey_masks`) become its notes."""
    folder = Path(path)
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        if (folder / "images").is_dir():
            image, masks = read_lidc_nodule_stack(folder)
            name = f"{folder.parent.name} {folder.name}"
        else:
            case = read_case_folder(folder)
            image, masks, name = case.image, case.masks, folder.name
    notes = [str(w.message) for w in found]
    grey = grey_masks(folder)
    if grey:
        notes.insert(0, f"{len(grey)} mask(s) with grey levels thresholded at > 127 "
                        f"({', '.join(grey[:3])}{', ...' if len(grey) > 3 else ''}).")
    return CaseStack(image, masks, name, notes)


def grey_masks(folder: Path) -> list[str]:
    """The mask files of a case folder that hold grey levels, not just a background and one
    value (a JPEG's, or a lossy re-encoding's): the readers threshold them at > 127; the case
    reader says so, naming them (relative to ``folder``)."""
    if (folder / "images").is_dir():  # an LIDC nodule folder: mask-<r>/slice-<i>.png
        files = sorted(folder.glob("mask-*/slice-*.png"))
    else:  # the generic layout: lossy masks are thresholded (others must be labels)
        files = sorted(f for f in folder.iterdir() if f.is_file() and is_mask_name(f)
                       and formats.is_format(f, formats.JPEG))
    found = []
    for f in files:
        try:
            values = np.unique(load_array(f, labels=True))
        except Exception:  # unreadable: the reader itself says why
            continue
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            found.append(f.relative_to(folder).as_posix())
    return found
