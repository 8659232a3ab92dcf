"""One image or mask file: its type by name, the size it declares, and its pixels.

The file level under :mod:`napari_probunet.data.readers`: PNG and JPEG (Pillow), TIFF
(tifffile), NPY and NIfTI (nibabel), read by their entries of the format table
(:mod:`napari_probunet.data.formats`), each refused before anything is decoded when the size it
declares exceeds a limit (:mod:`napari_probunet.limits`). Images keep their raw values as
float32 (0..255 for 8-bit files); masks become uint8 class labels by the rules in
:func:`mask_to_labels` (``docs/data.md``).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import numpy as np

from napari_probunet.data import formats
from napari_probunet.data.formats import (  # noqa: F401  (their callers' old address)
    check_declared,
    nifti_declared,
    npy_declared,
)
from napari_probunet.errors import DataError

#: file types read as images or masks
SUPPORTED_SUFFIXES = formats.IMAGE_SUFFIXES
#: largest label value read as a class (a {0, v} mask with larger v is binary)
MAX_CLASS = 63

_MASK_WORDS = r"(?:labels?|masks?|segmentations?|seg|graders?|raters?|annotations?|annot|gt)"
_MASK_RE = re.compile(
    rf"^{_MASK_WORDS}(?:[^a-z]|$)"  # label0_, mask_1, seg, grader-2, gt
    rf"|[_\-.](?:l|{_MASK_WORDS})[_\-]?\d+$"  # case_l0, case_mask1, img_label-2
    rf"|[_\-.]{_MASK_WORDS}$"  # case_mask
)
_IMAGE_RE = re.compile(r"^(?:image|img)|[_\-.](?:image|img)$")

#: the lower-case suffix, ``.nii.gz`` (and the table's other compound suffixes) counted as one
file_suffix = formats.suffix_of
#: the name without :func:`file_suffix`
file_stem = formats.stem_of


def natural_key(text: str) -> list:
    """Sort key that orders ``case2`` before ``case10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def is_data_file(path: Path) -> bool:
    """A visible file of a :data:`SUPPORTED_SUFFIXES` type."""
    return (path.is_file() and not path.name.startswith(".")
            and file_suffix(path) in SUPPORTED_SUFFIXES)


def is_mask_name(path: str | os.PathLike) -> bool:
    """Whether a file name follows a mask pattern (see the module docstring)."""
    return bool(_MASK_RE.search(file_stem(Path(path)).lower()))


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file name follows an image pattern and no mask pattern."""
    stem = file_stem(Path(path)).lower()
    return not _MASK_RE.search(stem) and bool(_IMAGE_RE.search(stem))


def load_array(path: str | os.PathLike, labels: bool = False) -> np.ndarray:
    """The raw array stored in an image file (PNG/JPEG via Pillow, TIFF via tifffile, NPY,
    NIfTI via nibabel), read by its format's entry (:mod:`napari_probunet.data.formats`). A
    palette PNG gives its indices with ``labels=True`` (masks) and its colours otherwise
    (images). :class:`DataError` if unreadable, and before anything is
    decoded if the size the file declares exceeds a limit (:mod:`napari_probunet.limits`)."""
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}."
        )
    fmt = formats.format_of(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise DataError(f"{path}: not a regular file (a pipe, a device or a socket); put the "
                        f"{suffix} file itself there.")
    size = info.st_size
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); re-export it or remove it.")
    try:
        array = fmt.read(path, labels, size)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read this {suffix} file.") from None
    except Exception as exc:  # every library has its own errors for a broken file
        raise DataError(
            f"{path}: cannot read this {suffix} file ({type(exc).__name__}: {exc}); it may be "
            "truncated or not what its name says."
        ) from None
    array = np.asarray(array)
    if array.size == 0:
        raise DataError(f"{path}: the file holds no pixels (shape {array.shape}).")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: holds {array.dtype} values; expected numbers.")
    return array


def to_2d(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Squeeze singleton axes; move a leading channel axis (C<=4, C,H,W) to the end."""
    if array.ndim > 2:
        squeezed = array.squeeze()
        array = squeezed if squeezed.ndim >= 2 else array.reshape(array.shape[-2:])
    if array.ndim == 3 and array.shape[0] in (2, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] > 4:
        raise DataError(
            f"{path}: the {what} is a {array.shape} volume; this reader takes 2-D images "
            "(save one slice per case)."
        )
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: the {what} has shape {array.shape}; expected a 2-D image.")
    return array


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W)`` or ``(H, W, C)`` float32 raw values.

    Grey images stored as RGB (equal channels) become ``(H, W)``; an alpha channel is dropped.
    """
    path = Path(path)
    array = to_2d(load_array(path), path, "image")
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):  # grey+alpha, RGBA
            array = array[..., :-1]
        if array.shape[-1] > 1 and all(
            np.array_equal(array[..., 0], array[..., i]) for i in range(1, array.shape[-1])
        ):
            array = array[..., 0]
        elif array.shape[-1] == 1:
            array = array[..., 0]
    image = array.astype(np.float32)
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: the image contains NaN or infinite values.")
    return image


def mask_to_labels(array: np.ndarray, where: str, lossy: bool = False) -> np.ndarray:
    """Class labels ``(H, W)`` uint8 from a stored mask (see the module docstring's rules).

    ``lossy=True`` (JPEG) thresholds at ``> 127`` instead. :class:`DataError` otherwise.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        if array.shape[-1] in (2, 4):
            array = array[..., :-1]
        if not all(np.array_equal(array[..., 0], array[..., i]) for i in range(array.shape[-1])):
            raise DataError(
                f"{where}: the mask is a colour image; save each grader's mask as a "
                "single-channel image of class labels (0 = background)."
            )
        array = array[..., 0]
    if array.dtype == bool:
        return array.astype(np.uint8)
    if lossy:
        if array.dtype.kind == "f" or array.max() > 255:
            raise DataError(f"{where}: a JPEG mask must be 8-bit; got {array.dtype}.")
        return (array > 127).astype(np.uint8)
    if not np.all(np.isfinite(array)):
        raise DataError(f"{where}: the mask contains NaN or infinite values.")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        fractions = np.unique(array[array != np.round(array)])[:3]
        raise DataError(
            f"{where}: the mask holds fractional values (e.g. {', '.join(map(str, fractions))}); "
            "it looks like a probability or soft mask. Threshold it to class labels first."
        )
    values = np.unique(array)
    if values[0] < 0:
        raise DataError(f"{where}: the mask holds negative values ({values[0]}); labels are >= 0.")
    top = values[-1]
    if top > MAX_CLASS:
        if len(values) == 2 and values[0] == 0:
            return (array > 0).astype(np.uint8)  # binary stored as 0/255, 0/65535, ...
        if len(values) == 1:  # a constant image; 0 handled above, so all foreground
            return np.ones(array.shape, np.uint8)
        shown = ", ".join(str(v) for v in values[:4]) + (", ..." if len(values) > 4 else "")
        raise DataError(
            f"{where}: the mask is not binary or class-valued: {len(values)} distinct values "
            f"({shown}; max {top}). Expected 0/1, 0/255 or class labels 0..{MAX_CLASS}; "
            "threshold or relabel it first."
        )
    return array.astype(np.uint8)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 class labels (JPEG thresholded at > 127)."""
    path = Path(path)
    array = to_2d(load_array(path, labels=True), path, "mask")
    fmt = formats.format_of(path)
    return mask_to_labels(array, str(path), lossy=fmt is not None and fmt.lossy)
