"""The file formats napari-probunet reads and writes, in one table.

One :class:`Format` per format: its name, its suffixes (a compound one such as ``.nii.gz``,
``.seg.dcm`` or ``.probunet.zip`` counts as one: :func:`suffix_of`), how an image or mask file
of it is read into an array (:attr:`Format.read`: the size the file declares is checked against
:mod:`napari_probunet.limits` before anything is decoded), how a label mask is written where the
format is writable (:attr:`Format.write`), and which of napari's reader and writer contributions
(``napari.yaml``) list it. The image readers (:mod:`napari_probunet.data.images`), the export
(:mod:`napari_probunet.review.export`), ``probunet sample``'s plan
(:mod:`napari_probunet.review.batch_plan`) and napari's readers (``_reader.py``) ask this table;
``tests/test_formats.py`` holds the manifest's patterns against it. A new format is one entry
here (and its reader or writer function).

The readers and writers of plain arrays live here too; formats with a richer reader (a DICOM
series: :mod:`napari_probunet.data.volumes`; a bundle: :mod:`napari_probunet.review.bundle`;
a DICOM SEG export over its series: :mod:`napari_probunet.review.seg_export`) have
``read``/``write`` None. Pillow, tifffile and nibabel are imported when a file of theirs is
read (they are slow to import).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import limits
from napari_probunet.errors import DataError, UserError

#: bytes decompressed at a time when a compressed NIfTI is streamed into its array
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Format:
    """One file format: see the module docstring."""

    name: str
    suffixes: tuple[str, ...]
    #: ``read(path, labels, file_bytes)`` -> the raw array of an image or mask file; declared
    #: sizes checked first. None: not read as a 2-D image or mask
    read: Callable[[Path, bool, int], np.ndarray] | None = None
    #: ``write(mask, path, scale=, affine=, codes=)`` -> notes for the record. None: not
    #: written as a plain array (see ``exported``)
    write: Callable[..., dict[str, Any]] | None = None
    #: the review's export writes it (a SEG over its DICOM series: review/seg_export.py)
    exported: bool = False
    #: lossy pixels: a mask of it is thresholded (> 127)
    lossy: bool = False
    #: napari reader commands (``napari.yaml``) whose ``filename_patterns`` list its suffixes
    napari_readers: tuple[str, ...] = ()

    @property
    def patterns(self) -> tuple[str, ...]:
        """napari's filename patterns for this format (``*.nii.gz``)."""
        return tuple(f"*{s}" for s in self.suffixes)


# ----------------------------------------------------------------------------- declared sizes


def check_declared(path: Path, shape: tuple[int, ...], itemsize: int, file_bytes: int) -> None:
    """Refuse a file whose declared array exceeds :mod:`napari_probunet.limits`, before it is
    decoded: the image plane (the two largest axes) and the bytes it decodes to."""
    sides = sorted((int(s) for s in shape), reverse=True)
    if len(sides) >= 2:
        limits.check_plane(sides[0], sides[1], f"{path}: the image", DataError)
    limits.check_decoded(limits.array_bytes(shape, itemsize), file_bytes,
                         f"{path}: the image of shape {tuple(int(s) for s in shape)}", DataError)


def npy_declared(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and bytes per item an NPY file declares in its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype.itemsize


def nifti_declared(image) -> tuple[tuple[int, ...], int]:
    """Shape and bytes per voxel of a NIfTI image as nibabel will decode it (scaled data
    becomes floats)."""
    itemsize = image.get_data_dtype().itemsize
    slope = getattr(image.dataobj, "slope", 1.0)
    inter = getattr(image.dataobj, "inter", 0.0)
    if slope != 1.0 or inter != 0.0:
        itemsize = max(itemsize, 8)
    return tuple(int(s) for s in image.shape), itemsize


# ----------------------------------------------------------------------------- readers


@contextlib.contextmanager
def quiet(logger: str):
    """Silence a library's warnings about a damaged file: the error raised says it all."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def pil_open(path):
    """Pillow's ``Image.open`` (the header only) of a path or a file object, its own
    decompression-bomb guard at least as high as
    :data:`~napari_probunet.limits.MAX_IMAGE_PIXELS` so that ours decides."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, limits.value("MAX_IMAGE_PIXELS"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours decides
            return Image.open(path)
    except Image.DecompressionBombError as exc:  # far beyond Pillow's own guard: size it
        m = re.search(r"\((\d+) pixels\)", str(exc))
        limits.check("MAX_IMAGE_PIXELS", int(m[1]) if m else math.inf,
                     f"{path}: the image", DataError)
        raise


#: bytes per band of a Pillow image mode (1 for the 8-bit modes)
_PIL_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def _read_pil(path: Path, labels: bool, size: int) -> np.ndarray:
    """PNG or JPEG: a palette image gives its indices with ``labels`` and its colours
    otherwise."""
    with pil_open(path) as handle:
        bands = 4 if handle.mode in ("P", "PA") and not labels else len(handle.getbands())
        width, height = handle.size
        check_declared(path, (height, width, bands), _PIL_BYTES.get(handle.mode, 1), size)
        handle.load()
        if handle.mode in ("CMYK", "YCbCr", "LAB", "HSV") or (
            handle.mode in ("P", "PA") and not labels
        ):
            handle = handle.convert("RGBA" if "transparency" in handle.info
                                    or handle.mode == "PA" else "RGB")
        return np.asarray(handle)


def _read_tiff(path: Path, labels: bool, size: int) -> np.ndarray:
    import tifffile

    with quiet("tifffile"), tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise DataError(f"{path}: the TIFF file holds no image.")
        series = tif.series[0]
        check_declared(path, tuple(series.shape), np.dtype(series.dtype).itemsize, size)
        return series.asarray()


def _read_npy(path: Path, labels: bool, size: int) -> np.ndarray:
    check_declared(path, *npy_declared(path), size)
    return np.load(path, allow_pickle=False)


def _read_nifti(path: Path, labels: bool, size: int) -> np.ndarray:
    import nibabel

    image = nibabel.load(path)
    check_declared(path, *nifti_declared(image), size)
    return nifti_voxels(image, path)


def nifti_voxels(image, path: str | Path) -> np.ndarray:
    """The voxels of a NIfTI ``image`` (a ``nibabel.load`` result whose declared size was
    checked), as nibabel gives them (scaled where the header says so), read into one array
    allocated once: a ``.nii.gz`` is decompressed in chunks, so it never takes more than its
    array (nibabel's own read of a gzip holds the decompressed bytes twice), and a stream that
    holds fewer bytes than declared is refused."""
    proxy = image.dataobj
    if not str(path).lower().endswith(".gz") or not hasattr(proxy, "offset"):
        return np.asanyarray(proxy)
    import gzip

    from nibabel.volumeutils import apply_read_scaling

    dtype = image.get_data_dtype()
    shape = tuple(int(s) for s in image.shape)
    flat = np.empty(math.prod(shape), dtype)
    view = memoryview(flat.view(np.uint8))
    with gzip.open(path, "rb") as f:
        skip = int(proxy.offset)
        while skip > 0:
            got = len(f.read(min(skip, _CHUNK)))
            if got == 0:
                break
            skip -= got
        done = 0
        while done < len(view):
            got = f.readinto(view[done:done + _CHUNK])
            if not got:
                raise DataError(f"{path}: the compressed NIfTI stream ends after {done:,} of "
                                f"the {len(view):,} bytes its header declares; the file is "
                                "truncated; export it again.")
            done += got
    data = flat.reshape(shape, order=getattr(proxy, "order", "F"))
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    if slope != 1.0 or inter != 0.0:
        data = apply_read_scaling(data, slope, inter)
    return data


# ----------------------------------------------------------------------------- writers


def _write_tiff(mask: np.ndarray, path: Path, **_: Any) -> dict[str, Any]:
    import tifffile

    tifffile.imwrite(path, mask, compression="zlib")
    return {}


def _write_png(mask: np.ndarray, path: Path, **_: Any) -> dict[str, Any]:
    from PIL import Image

    if mask.ndim != 2:
        raise UserError(f"PNG holds 2D images only; this mask has shape {mask.shape}")
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise UserError("PNG holds labels 0..255 only; export this mask as TIFF or NPY")
    out, notes = mask.astype(np.uint8), {}
    if out.max(initial=0) <= 1:
        out = out * np.uint8(255)
        notes["png_foreground"] = 255
    Image.fromarray(np.ascontiguousarray(out)).save(path, format="PNG")
    return notes


def _write_npy(mask: np.ndarray, path: Path, **_: Any) -> dict[str, Any]:
    with open(path, "wb") as f:
        np.save(f, mask, allow_pickle=False)
    return {}


def _write_nifti(mask: np.ndarray, path: Path, scale=None, affine=None,
                 codes: dict[str, int] | None = None) -> dict[str, Any]:
    """``scale``: the pixel spacing; or ``affine``: a scan's, written as qform and sform with
    ``codes`` (``scanner`` by default)."""
    import nibabel

    if affine is None:
        affine = np.eye(4)
        if scale is not None:
            for i, s in enumerate(list(scale)[-mask.ndim:][:3]):
                affine[i, i] = float(s)
        image = nibabel.Nifti1Image(np.asarray(mask), affine)
    else:
        codes = codes or {"qform": 1, "sform": 1}
        image = nibabel.Nifti1Image(np.asarray(mask), np.asarray(affine, float))
        image.set_qform(image.affine, code=int(codes["qform"]))
        image.set_sform(image.affine, code=int(codes["sform"]))
        image.header.set_xyzt_units("mm")
    image.header.set_data_dtype(mask.dtype)
    nibabel.save(image, str(path))
    return {}


# ----------------------------------------------------------------------------- the table

READ_NIFTI = "napari-probunet.read_nifti"
READ_DICOM = "napari-probunet.read_dicom"
READ_SEG = "napari-probunet.read_seg"
READ_BUNDLE = "napari-probunet.read_bundle"

TIFF = Format("TIFF", (".tif", ".tiff"), _read_tiff, _write_tiff, exported=True)
PNG = Format("PNG", (".png",), _read_pil, _write_png, exported=True)
JPEG = Format("JPEG", (".jpg", ".jpeg"), _read_pil, lossy=True)
NPY = Format("NumPy array", (".npy",), _read_npy, _write_npy, exported=True)
NIFTI = Format("NIfTI", (".nii", ".nii.gz"), _read_nifti, _write_nifti, exported=True,
               napari_readers=(READ_NIFTI,))
DICOM = Format("DICOM", (".dcm", ".dicom"), napari_readers=(READ_DICOM, READ_SEG))
DICOM_SEG = Format("DICOM SEG", (".seg.dcm",), exported=True)
BUNDLE = Format("hypothesis bundle", (".probunet.zip",), napari_readers=(READ_BUNDLE,))
ZIP = Format("zip of the LIDC-IDRI slices", (".zip",))
TEXT_LIST = Format("list of paths", (".txt",))
PICKLE = Format("LIDC pickle", (".pkl", ".pickle"))

#: every format, in the order messages list them (the writable ones: the manifest's order)
FORMATS = (TIFF, PNG, JPEG, NPY, NIFTI, DICOM, DICOM_SEG, BUNDLE, ZIP, TEXT_LIST, PICKLE)

#: folder readers of napari.yaml: the patterns their folders' names match (not a file format)
FOLDER_PATTERNS = {"napari-probunet.read_case": ("*nodule-*",),
                   "napari-probunet.read_scan": ()}

_BY_SUFFIX = {s: f for f in FORMATS for s in f.suffixes}
#: longest first, so that ``.nii.gz`` wins over ``.gz`` and ``.seg.dcm`` over ``.dcm``
_SUFFIXES_LONGEST = tuple(sorted(_BY_SUFFIX, key=len, reverse=True))

#: image and mask files read into arrays (:func:`napari_probunet.data.images.load_array`)
IMAGE_SUFFIXES = tuple(s for f in FORMATS if f.read is not None for s in f.suffixes)
#: what the review's export writes
EXPORT_SUFFIXES = tuple(s for f in FORMATS if f.exported for s in f.suffixes)


def suffix_of(path: str | Path) -> str:
    """The lower-case format suffix of ``path``: a registered compound one (``.nii.gz``,
    ``.seg.dcm``, ``.probunet.zip``) counted as one, else the last suffix (``""`` if none)."""
    name = Path(path).name.lower()
    for suffix in _SUFFIXES_LONGEST:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return Path(name).suffix


def stem_of(path: str | Path) -> str:
    """The file name without :func:`suffix_of`."""
    name = Path(path).name
    return name[: len(name) - len(suffix_of(path))]


def format_of(path: str | Path) -> Format | None:
    """The format of ``path`` by its name; None for a suffix not in the table."""
    return _BY_SUFFIX.get(suffix_of(path))


def by_suffix(suffix: str) -> Format | None:
    """The format of a suffix as :func:`suffix_of` gives it (``.nii.gz``); None if unknown."""
    return _BY_SUFFIX.get(suffix.lower())


def is_format(path: str | Path, *formats: Format) -> bool:
    """Whether ``path``'s name is of one of ``formats``."""
    return format_of(path) in formats


def napari_patterns(command: str) -> tuple[str, ...]:
    """The ``filename_patterns`` napari.yaml gives reader ``command``."""
    if command in FOLDER_PATTERNS:
        return FOLDER_PATTERNS[command]
    return tuple(p for f in FORMATS if command in f.napari_readers for p in f.patterns)
