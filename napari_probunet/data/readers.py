"""Multi-rater datasets on disk: read them into :class:`Case` lists, write them, split them.

Formats (details and name patterns in ``docs/data.md``):

- **Generic multi-rater folder** (:func:`read_multirater_folder`): one sub-folder per case
  with one image and one or more masks, each PNG, JPEG, TIFF, NPY or NIfTI. Masks are the
  files named ``label*``, ``mask*``, ``seg*``, ``segmentation*``, ``grader*``, ``rater*``,
  ``annotation*``, ``gt*`` or ending in ``_l<k>``, ``_label<k>``, ``_mask<k>``, ``_seg<k>``,
  ``_grader<k>``, ``_rater<k>``, ``_gt<k>`` (``<k>`` optional for a single mask); the image
  is ``image*``/``img*`` (or ``*_image``/``*_img``), or else the one other data file.
  Optional per case: ``truth.npz`` (synthetic truth) and ``case.json`` (``case_id``,
  ``group_id``).
- **DeepMind LIDC crops** (:func:`read_deepmind_lidc`): ``z-<z>_c<n>.png`` images with
  ``z-<z>_c<n>_l<k>.png`` grader masks in patient folders, masks either beside the images or
  in a parallel ``gt`` tree (``<split>/images/<patient>/`` and ``<split>/gt/<patient>/``).
- **LIDC pickle** of Stefan Knegt's port (:func:`read_lidc_pickle`), via a restricted unpickler.

Mask values: binary masks stored as 0/1, 0/255, 0/65535 (any ``{0, v}`` with ``v > 63``)
become 0/1; label maps with values ``0..63`` are kept as class labels; JPEG masks (lossy) are
thresholded at ``> 127``; anything else (many grey levels, fractions, negatives) is an error.
Images keep their raw values as float32 (0..255 for 8-bit files).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_probunet.data.case import Case, ModeTruth
from napari_probunet.errors import DataError

#: file types read as images or masks
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")
#: largest label value read as a class (a {0, v} mask with larger v is binary)
MAX_CLASS = 63
#: file format version written to dataset.json
FOLDER_FORMAT_VERSION = 1

_MASK_WORDS = r"(?:labels?|masks?|segmentations?|seg|graders?|raters?|annotations?|annot|gt)"
_MASK_RE = re.compile(
    rf"^{_MASK_WORDS}(?:[^a-z]|$)"  # label0_, mask_1, seg, grader-2, gt
    rf"|[_\-.](?:l|{_MASK_WORDS})[_\-]?\d+$"  # case_l0, case_mask1, img_label-2
    rf"|[_\-.]{_MASK_WORDS}$"  # case_mask
)
_IMAGE_RE = re.compile(r"^(?:image|img)|[_\-.](?:image|img)$")
_DM_IMAGE_RE = re.compile(r"^z-(?P<z>-?\d+(?:\.\d+)?)_c(?P<c>\d+)\.png$", re.IGNORECASE)
_DM_MASK_RE = re.compile(r"^(?P<base>z--?\d+(?:\.\d+)?_c\d+)_l(?P<l>\d+)\.png$", re.IGNORECASE)
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_MAX_DEPTH = 6


# ----------------------------------------------------------------------------- file level


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    return path.name[: len(path.name) - len(_suffix(path))]


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _is_data_file(path: Path) -> bool:
    return (path.is_file() and not path.name.startswith(".")
            and _suffix(path) in SUPPORTED_SUFFIXES)


def is_mask_name(path: str | os.PathLike) -> bool:
    """Whether a file name follows a mask pattern (see the module docstring)."""
    return bool(_MASK_RE.search(_stem(Path(path)).lower()))


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file name follows an image pattern and no mask pattern."""
    stem = _stem(Path(path)).lower()
    return not _MASK_RE.search(stem) and bool(_IMAGE_RE.search(stem))


def _check_declared(path: Path, shape: tuple[int, ...], itemsize: int, file_bytes: int) -> None:
    """Refuse a file whose declared array exceeds :mod:`napari_probunet.limits`, before it is
    decoded: the image plane (the two largest axes) and the bytes it decodes to."""
    from napari_probunet import limits

    sides = sorted((int(s) for s in shape), reverse=True)
    if len(sides) >= 2:
        limits.check_plane(sides[0], sides[1], f"{path}: the image", DataError)
    limits.check_decoded(limits.array_bytes(shape, itemsize), file_bytes,
                         f"{path}: the image of shape {tuple(int(s) for s in shape)}", DataError)


def _npy_declared(path: Path) -> tuple[tuple[int, ...], int]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), dtype.itemsize


def _nifti_declared(image) -> tuple[tuple[int, ...], int]:
    """Shape and bytes per voxel of a NIfTI image as nibabel will decode it (scaled data
    becomes floats)."""
    itemsize = image.get_data_dtype().itemsize
    slope = getattr(image.dataobj, "slope", 1.0)
    inter = getattr(image.dataobj, "inter", 0.0)
    if slope != 1.0 or inter != 0.0:
        itemsize = max(itemsize, 8)
    return tuple(int(s) for s in image.shape), itemsize


def _pil_open(path: Path):
    """Pillow's ``Image.open`` (the header only), its own decompression-bomb guard at least as
    high as :data:`~napari_probunet.limits.MAX_IMAGE_PIXELS` so that ours decides."""
    from PIL import Image

    from napari_probunet import limits

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


@contextlib.contextmanager
def _quiet(logger: str):
    """Silence a library's warnings about a damaged file: the error raised says it all."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


#: bytes per band of a Pillow image mode (1 for the 8-bit modes)
_PIL_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def load_array(path: str | os.PathLike, labels: bool = False) -> np.ndarray:
    """The raw array stored in an image file (PNG/JPEG via Pillow, TIFF via tifffile, NPY,
    NIfTI via nibabel). A palette PNG gives its indices with ``labels=True`` (masks) and its
    colours otherwise (images). :class:`DataError` if unreadable, and before anything is
    decoded if the size the file declares exceeds a limit (:mod:`napari_probunet.limits`)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; use one of "
            f"{', '.join(SUPPORTED_SUFFIXES)}."
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or exc}).") from None
    if size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); re-export it or remove it.")
    try:
        if suffix == ".npy":
            _check_declared(path, *_npy_declared(path), size)
            array = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise DataError(f"{path}: the TIFF file holds no image.")
                series = tif.series[0]
                _check_declared(path, tuple(series.shape), np.dtype(series.dtype).itemsize, size)
                array = series.asarray()
        elif suffix in (".nii", ".nii.gz"):
            import nibabel

            image = nibabel.load(path)
            _check_declared(path, *_nifti_declared(image), size)
            array = np.asanyarray(image.dataobj)
        else:
            with _pil_open(path) as handle:
                bands = 4 if handle.mode in ("P", "PA") and not labels else len(handle.getbands())
                width, height = handle.size
                _check_declared(path, (height, width, bands), _PIL_BYTES.get(handle.mode, 1),
                                size)
                handle.load()
                if handle.mode in ("CMYK", "YCbCr", "LAB", "HSV") or (
                    handle.mode in ("P", "PA") and not labels
                ):
                    handle = handle.convert("RGBA" if "transparency" in handle.info
                                            or handle.mode == "PA" else "RGB")
                array = np.asarray(handle)
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


def _to_2d(array: np.ndarray, path: Path, what: str) -> np.ndarray:
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
    array = _to_2d(load_array(path), path, "image")
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
    array = _to_2d(load_array(path, labels=True), path, "mask")
    return mask_to_labels(array, str(path), lossy=_suffix(path) in (".jpg", ".jpeg"))


def _stack_masks(masks: list[np.ndarray], mask_paths: list, image_shape, image_path) -> np.ndarray:
    for mask, mpath in zip(masks, mask_paths):
        if mask.shape != tuple(image_shape[:2]):
            hint = ""
            if mask.shape == tuple(image_shape[:2])[::-1]:
                hint = (" (transposed: NIfTI stores x first; use the same format for the image "
                        "and its masks)")
            raise DataError(
                f"{mpath}: the mask is {mask.shape[0]}x{mask.shape[1]} but the image "
                f"{image_path} is {image_shape[0]}x{image_shape[1]}{hint}; every mask must "
                "have the image's size."
            )
    return np.stack(masks)


# ----------------------------------------------------------------------------- skipping


class _Collector:
    """Gathers per-case failures; warns or raises at the end (``on_error``)."""

    def __init__(self, on_error: str, root: Path) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.on_error, self.root, self.reasons = on_error, root, []

    def failed(self, exc: DataError) -> None:
        if self.on_error == "raise":
            raise exc
        self.reasons.append(str(exc))

    def finish(self, cases: list[Case], what: str) -> list[Case]:
        total = len(cases) + len(self.reasons)
        first = "; ".join(self.reasons[:3]) + ("; ..." if len(self.reasons) > 3 else "")
        if not cases:
            if self.reasons:
                raise DataError(
                    f"{self.root}: none of the {total} {what} could be read. First problems: "
                    f"{first}"
                )
            raise DataError(f"{self.root}: no {what} found.")
        if self.reasons:
            warnings.warn(
                f"{self.root}: skipped {len(self.reasons)} of {total} {what} that could not be "
                f"read (pass on_error='raise' to stop at the first). First problems: {first}",
                stacklevel=3,
            )
        return cases


# ----------------------------------------------------------------------------- generic folder


def _truth_from_npz(path: Path, shape, n_graders: int) -> tuple[ModeTruth, np.ndarray | None]:
    import zipfile

    from napari_probunet import limits

    try:  # an .npz is a zip: its members' declared sizes bound what loading inflates
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: cannot read the truth file ({type(exc).__name__}: {exc}).") from None
    limits.check_decoded(declared, path.stat().st_size, f"{path}: the truth file", DataError)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: cannot read the truth file ({type(exc).__name__}: {exc}).") from None
    missing = {"modes", "probs", "names"} - set(data)
    if missing:
        raise DataError(f"{path}: the truth file lacks {sorted(missing)}.")
    modes, probs = data["modes"].astype(np.uint8), data["probs"].astype(np.float64)
    if modes.ndim != 3 or modes.shape[1:] != tuple(shape) or len(probs) != len(modes):
        raise DataError(
            f"{path}: truth modes {modes.shape} / probs {probs.shape} do not fit the image "
            f"{tuple(shape)}."
        )
    params = None
    if "param_names" in data:
        params = {str(k): float(v) for k, v in zip(data["param_names"], data["param_values"])}
    truth = ModeTruth(
        modes=modes,
        probs=probs,
        names=[str(n) for n in data["names"]],
        flip_probs=data["flip_probs"].astype(np.float64) if "flip_probs" in data else None,
        flip_classes=[tuple(int(v) for v in row) for row in data["flip_classes"]]
        if "flip_classes" in data else None,
        params=params,
    )
    grader_modes = data.get("grader_modes")
    if grader_modes is not None:
        grader_modes = grader_modes.astype(np.int64)
        if len(grader_modes) != n_graders:
            raise DataError(
                f"{path}: {len(grader_modes)} grader modes for {n_graders} masks."
            )
    return truth, grader_modes


def read_case_folder(folder: str | os.PathLike, case_id: str | None = None) -> Case:
    """One case folder of the generic layout (see the module docstring) as a :class:`Case`."""
    folder = Path(folder)
    files = sorted((p for p in folder.iterdir() if _is_data_file(p)), key=lambda p: p.name)
    masks = sorted((p for p in files if is_mask_name(p)), key=lambda p: _natural_key(p.name))
    others = [p for p in files if not is_mask_name(p)]
    images = [p for p in others if is_image_name(p)] or others
    if not images:
        raise DataError(
            f"{folder}: no image file (image*, img*, or one non-mask file) beside the masks."
        )
    if len(images) > 1:
        raise DataError(
            f"{folder}: several candidate images ({', '.join(p.name for p in images[:4])}); "
            "keep one image per case folder, named image* or img*."
        )
    if not masks:
        raise DataError(
            f"{folder}: the case has no mask (expected files named label*, mask*, seg*, "
            "grader*, rater* or *_l<k> beside the image)."
        )
    image = load_image(images[0])
    stacked = _stack_masks([load_mask(p) for p in masks], masks, image.shape, images[0])
    meta: dict = {}
    if (folder / "case.json").is_file():
        try:
            meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder / 'case.json'}: not valid JSON ({exc}).") from None
        if not isinstance(meta, dict):
            raise DataError(f"{folder / 'case.json'}: expected a JSON object.")
    truth = grader_modes = None
    if (folder / "truth.npz").is_file():
        truth, grader_modes = _truth_from_npz(folder / "truth.npz", image.shape[:2],
                                              len(stacked))
    group = meta.get("group_id")
    return Case(
        image=image,
        masks=stacked,
        case_id=str(meta.get("case_id") or case_id or folder.name),
        group_id=None if group is None else str(group),
        truth=truth,
        grader_modes=grader_modes,
        source=str(folder),
    )


def _case_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a case: a mask-named file, or data
    files and no sub-folders. Sorted naturally; symlinked folders are not followed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if depth >= _MAX_DEPTH:
            dirnames[:] = []
        data = [f for f in filenames if not f.startswith(".")
                and _suffix(Path(f)) in SUPPORTED_SUFFIXES]
        if any(is_mask_name(f) for f in data) or (data and not dirnames):
            found.append(here)
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def read_multirater_folder(path: str | os.PathLike, on_error: str = "skip") -> list[Case]:
    """Read a generic multi-rater folder: one sub-folder per case (or ``path`` itself a case).

    Case ids are the folders' paths relative to ``path`` (or ``case.json``'s ``case_id``).
    ``on_error="skip"`` skips broken cases with one warning giving the count and the first
    reasons; ``"raise"`` stops at the first. Raises :class:`DataError` if no case results.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder that holds one folder per case.")
    folders = _case_folders(root)
    if not folders:
        hint = ""
        if any(_DM_IMAGE_RE.match(p.name) for p in root.rglob("z-*.png")):
            hint = " It looks like DeepMind's LIDC layout: use read_deepmind_lidc."
        raise DataError(
            f"{root}: no case folders found: expected one sub-folder per case holding an "
            f"image (image*, img*) and masks (label*, mask*, seg*, grader*, rater*, *_l<k>) "
            f"as {', '.join(SUPPORTED_SUFFIXES)} (see docs/data.md).{hint}"
        )
    collector = _Collector(on_error, root)
    cases = []
    for folder in folders:
        rel = folder.relative_to(root).as_posix()
        try:
            cases.append(read_case_folder(folder, case_id=folder.name if rel == "." else rel))
        except DataError as exc:
            collector.failed(exc)
    return collector.finish(cases, "case folders")


# ----------------------------------------------------------------------------- DeepMind LIDC


def read_deepmind_lidc(path: str | os.PathLike, on_error: str = "skip") -> list[Case]:
    """Read DeepMind's LIDC crop layout under ``path`` (any split level).

    Images ``z-<z>_c<n>.png``, masks ``z-<z>_c<n>_l<k>.png`` (grader ``k``) in the same
    patient folder or in the parallel ``gt`` tree (``images/<patient>`` <-> ``gt/<patient>``).
    ``group_id`` is the patient folder's name; ``case_id`` the image's path relative to
    ``path`` without ``images/`` and ``.png`` (e.g. ``train/LIDC-IDRI-0001/z-105.0_c0``).
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give the folder of DeepMind's LIDC crops.")
    images: dict[tuple, Path] = {}
    masks: dict[tuple, dict[int, Path]] = {}
    for file in sorted(root.rglob("z-*")):
        if not file.is_file():
            continue
        parts = tuple("images" if p in ("gt", "images") else p
                      for p in file.parent.relative_to(root).parts)
        if (m := _DM_MASK_RE.match(file.name)) is not None:
            masks.setdefault((parts, m["base"].lower()), {})[int(m["l"])] = file
        elif _DM_IMAGE_RE.match(file.name):
            images[(parts, _stem(file).lower())] = file
    if not images and not masks:
        raise DataError(
            f"{root}: no z-<z>_c<n>.png images found; DeepMind's layout is "
            "<split>/images/<patient>/z-<z>_c<n>.png with <split>/gt/<patient>/"
            "z-<z>_c<n>_l<k>.png masks."
        )
    collector = _Collector(on_error, root)
    for key in sorted(set(masks) - set(images)):
        first = next(iter(masks[key].values()))
        collector.failed(DataError(f"{first}: grader masks without their image {key[1]}.png."))
    cases = []
    for key in sorted(images, key=lambda k: _natural_key("/".join(k[0]) + "/" + k[1])):
        image_path = images[key]
        try:
            graders = masks.get(key)
            if not graders:
                raise DataError(
                    f"{image_path}: the case has no mask (expected {_stem(image_path)}_l0.png "
                    "... beside it or in the parallel gt folder)."
                )
            mask_paths = [graders[k] for k in sorted(graders)]
            image = load_image(image_path)
            stacked = _stack_masks([load_mask(p) for p in mask_paths], mask_paths,
                                   image.shape, image_path)
            rel_parts = [p for p in image_path.relative_to(root).parent.parts if p != "images"]
            cases.append(Case(
                image=image,
                masks=stacked,
                case_id="/".join([*rel_parts, _stem(image_path)]),
                group_id=(image_path.parent.name
                          if image_path.parent.name.lower() not in ("images", "gt") else None),
                source=str(image_path),
            ))
        except DataError as exc:
            collector.failed(exc)
    return collector.finish(cases, "DeepMind LIDC crops")


# ----------------------------------------------------------------------------- LIDC pickle


def read_lidc_pickle(path: str | os.PathLike, on_error: str = "skip") -> list[Case]:
    """Read the LIDC pickle of Stefan Knegt's port: ``{key: {"image", "masks", "series_uid"}}``.

    Loaded with the restricted unpickler of :mod:`.safe_pickle` (never plain ``pickle.load``):
    a file that names any global beyond plain containers and numpy arrays is refused.
    ``case_id`` is the key, ``group_id`` the ``series_uid``.
    """
    from napari_probunet.data.safe_pickle import safe_load_path

    path = Path(path)
    data = safe_load_path(path)
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a dict of cases ({{key: {{'image', 'masks', 'series_uid'}}}}), "
            f"got a {type(data).__name__}."
        )
    collector = _Collector(on_error, path)
    cases = []
    for key, entry in data.items():
        where = f"{path} [{key!r}]"
        try:
            if not isinstance(entry, dict) or "image" not in entry or "masks" not in entry:
                raise DataError(f"{where}: expected a dict with 'image' and 'masks'.")
            image = np.asarray(entry["image"])
            if image.dtype.kind not in "biuf":
                raise DataError(f"{where}: the image holds {image.dtype} values.")
            image = _to_2d(image, Path(where), "image").astype(np.float32)
            if not np.all(np.isfinite(image)):
                raise DataError(f"{where}: the image contains NaN or infinite values.")
            raw = entry["masks"]
            raw = list(raw) if isinstance(raw, (list, tuple)) or np.ndim(raw) == 3 else [raw]
            if not raw:
                raise DataError(f"{where}: the case has no mask.")
            mask_list = []
            for i, m in enumerate(raw):
                m = np.asarray(m)
                if m.dtype.kind not in "biuf":
                    raise DataError(f"{where} mask {i}: holds {m.dtype} values.")
                mask_list.append(mask_to_labels(_to_2d(m, Path(where), "mask"),
                                                f"{where} mask {i}"))
            names = [f"{where} mask {i}" for i in range(len(mask_list))]
            stacked = _stack_masks(mask_list, names, image.shape, where)
            uid = entry.get("series_uid")
            cases.append(Case(image=image, masks=stacked, case_id=str(key),
                              group_id=None if uid is None else str(uid), source=str(path)))
        except DataError as exc:
            collector.failed(exc)
    return collector.finish(cases, "pickle entries")


# ----------------------------------------------------------------------------- any source


def _looks_deepmind(root: Path) -> bool:
    for dirpath, dirnames, filenames in os.walk(root):
        if any(_DM_IMAGE_RE.match(f) for f in filenames):
            return True
        if len(Path(dirpath).relative_to(root).parts) >= 3:
            dirnames[:] = []
    return False


SPLIT_PARTS = ("train", "val", "test")


SPLIT_UNITS = ("group", "patient", "nodule", "case")


def _parse_split(fragment: str) -> tuple[str, tuple[float, ...], int, str]:
    """``part=train&fractions=0.8,0.1,0.1&seed=0&by=patient`` -> (part, fractions, seed, by)."""
    fields = dict(item.split("=", 1) for item in fragment.split("&") if "=" in item)
    unknown = set(fields) - {"part", "fractions", "seed", "by"}
    part = fields.get("part", "")
    by = fields.get("by", "group")
    if unknown or part not in SPLIT_PARTS or by not in SPLIT_UNITS:
        raise DataError(
            f"bad split '#{fragment}': use '#part=train|val|test' with optional "
            "'&fractions=0.8,0.1,0.1&seed=0&by=patient' (by: group, patient, nodule or case)"
        )
    try:
        fractions = tuple(float(f) for f in fields.get("fractions", "0.8,0.1,0.1").split(","))
        seed = int(fields.get("seed", "0"))
    except ValueError as exc:
        raise DataError(f"bad split '#{fragment}': {exc}") from exc
    if len(fractions) != 3:
        raise DataError(f"bad split '#{fragment}': give three fractions (train, val, test)")
    return part, fractions, seed, by


def split_groups(cases: Sequence[Case], by: str = "group") -> list[str | None]:
    """The id that keeps cases together in a split: ``by="group"`` (or ``"patient"``) the
    ``group_id``, ``"nodule"`` the nodule id where the data has one, ``"case"`` none."""
    if by not in SPLIT_UNITS:
        raise DataError(f"unknown split unit {by!r}: use one of {', '.join(SPLIT_UNITS)}.")
    if by == "case":
        return [None] * len(cases)
    if by == "nodule":
        if hasattr(cases, "ids_of"):
            return list(cases.ids_of("nodule"))
        return [(case.ids or {}).get("nodule", case.group_id) for case in cases]
    group_ids = getattr(cases, "group_ids", None)
    if group_ids is None:
        group_ids = [case.group_id for case in cases]
    if by == "patient" and len(group_ids) and all(g is None for g in group_ids):
        raise DataError("split by=patient: this data carries no patient ids; use by=case, or "
                        "give each case a group_id (case.json) first.")
    return list(group_ids)


def open_cases(spec: str | os.PathLike, on_error: str = "skip") -> Sequence[Case]:
    """Open any dataset: a ``synthetic:KIND?n=..`` spec (lazy), a folder or a pickle file.

    Folders are detected as DeepMind's LIDC layout (``z-*_c*.png`` files), a folder of LIDC
    pickles (only ``*.pkl``/``*.pickle`` files and no case folders), or else the generic
    multi-rater layout; a folder or ``.zip`` in the LIDC-IDRI-slices layout is read by
    :func:`~napari_probunet.data.lidc_slices.read_lidc_slices` (decoded once, then cached). A
    suffix ``#part=train`` (or ``val``, ``test``; optional ``&fractions=0.8,0.1,0.1&seed=0`` and
    ``&by=patient|nodule|case``, default the group id, which is the patient where the data has
    one) selects one part of a deterministic split (:func:`split_cases`), so training and
    evaluation can name the same held-out cases.
    """
    text = os.fspath(spec)
    if "#" in text:
        base, fragment = text.split("#", 1)
        part, fractions, seed, by = _parse_split(fragment)
        parts = split_cases(open_cases(base, on_error=on_error), fractions, seed, by=by)
        return parts[SPLIT_PARTS.index(part)]
    if text.lower().startswith("synthetic:"):
        from napari_probunet.data.synthetic import SyntheticDataset, parse_synthetic_spec

        return SyntheticDataset(**parse_synthetic_spec(text))
    path = Path(text).expanduser()
    if not path.exists():
        from napari_probunet.data.synthetic import KINDS

        hint = f" Did you mean 'synthetic:{text}'?" if text.lower() in KINDS else ""
        raise DataError(
            f"{text}: no such file or folder. Give a folder of cases, a .pkl/.pickle file or "
            f"a spec like 'synthetic:lesions?n=200&seed=0'.{hint}"
        )
    from napari_probunet.data.lidc_slices import looks_like_lidc_slices, read_lidc_slices

    if looks_like_lidc_slices(path):
        return read_lidc_slices(path, on_error=on_error)
    if path.is_file():
        if path.suffix.lower() == ".zip":
            raise DataError(
                f"{path}: this zip is not in the LIDC-IDRI-slices layout (no "
                "LIDC-IDRI-<patient>/nodule-<k>/images/slice-<i>.png inside); unpack other "
                "datasets and give their folder.")
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            return read_lidc_pickle(path, on_error=on_error)
        raise DataError(
            f"{path}: a single {path.suffix or 'extension-less'} file is not a dataset; give "
            "the folder that holds the cases, or a .pkl/.pickle file."
        )
    if _looks_deepmind(path):
        return read_deepmind_lidc(path, on_error=on_error)
    pickles = sorted(p for p in path.iterdir()
                     if p.is_file() and p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles and not _case_folders(path):
        cases: list[Case] = []
        for p in pickles:
            cases.extend(read_lidc_pickle(p, on_error=on_error))
        return cases
    return read_multirater_folder(path, on_error=on_error)


# ----------------------------------------------------------------------------- splits


def split_indices(
    cases: Sequence[Case], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
    by: str = "group",
) -> tuple[list[int], ...]:
    """Split case indices into ``len(fractions)`` parts, keeping each group together.

    Groups are given by ``by`` (:func:`split_groups`: the ``group_id`` -- the patient -- by
    default; a case without one is its own group). Groups are shuffled with ``seed`` and dealt,
    one at a time, to the part furthest below its target count of cases, so the parts approach
    ``fractions`` of the cases without ever sharing a group. Indices within a part are
    ascending. Ids are read without loading cases where the data offers them (``group_ids``).
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 or not math.isfinite(f) for f in fractions) or not math.isclose(
        sum(fractions), 1.0, abs_tol=1e-6
    ):
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}.")
    group_ids = split_groups(cases, by)
    members: dict[str, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(f"g:{gid}" if gid is not None else f"i:{i}", []).append(i)
    keys = sorted(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    targets = [f * len(group_ids) for f in fractions]
    parts: list[list[int]] = [[] for _ in fractions]
    for k in order:
        deficit = [t - len(p) for t, p in zip(targets, parts)]
        parts[int(np.argmax(deficit))].extend(members[keys[k]])
    return tuple(sorted(p) for p in parts)


def split_cases(
    cases: Sequence[Case], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
    by: str = "group",
) -> tuple[Sequence[Case], ...]:
    """Split cases into ``len(fractions)`` parts by group (see :func:`split_indices`).

    A data set with a ``subset`` method (the memory-mapped LIDC slices) gives views of itself;
    anything else gives lists of cases.
    """
    parts = split_indices(cases, fractions, seed, by=by)
    if hasattr(cases, "subset"):
        return tuple(cases.subset(part) for part in parts)
    return tuple([cases[i] for i in part] for part in parts)


# ----------------------------------------------------------------------------- writing


def _save_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(labels, np.uint8)).save(path)


def _written_by_us(out: Path) -> list[Path]:
    """What a previous :func:`write_multirater_folder` wrote into ``out`` (from dataset.json)."""
    index = out / "dataset.json"
    try:
        meta = json.loads(index.read_text(encoding="utf-8"))
        folders = [out / c for c in meta["case_folders"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [index, *folders]


def write_multirater_folder(
    cases: Sequence[Case] | list[Case],
    out: str | os.PathLike,
    overwrite: bool = False,
    image_format: str = "npy",
    meta: dict | None = None,
) -> Path:
    """Write cases as a generic multi-rater folder that :func:`read_multirater_folder` reads
    back identically.

    Layout: ``out/dataset.json`` (``meta`` plus the format version and case list) and per case
    ``out/<case_id>/image.npy`` (or ``image.tif``, float32 as is), ``mask_0.png`` ... (binary
    masks as 0/255, label maps as their labels), ``case.json`` (``case_id``, ``group_id``) and,
    for synthetic cases, ``truth.npz`` (``modes``, ``probs``, ``names``, ``grader_modes``,
    ``flip_probs``, ``flip_classes``, ``param_names``, ``param_values``).

    Refuses a non-empty ``out`` unless ``overwrite``; even then only a folder this function
    wrote before is cleared (its case folders and dataset.json), never other files.
    """
    out = Path(out)
    if image_format not in ("npy", "tif"):
        raise DataError(f"image_format must be 'npy' or 'tif', not {image_format!r}.")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose a folder to write into.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"{out}: the folder is not empty; choose a new folder or pass --overwrite "
                "(overwrite=True) to replace a dataset written here before."
            )
        ours = _written_by_us(out)
        foreign = sorted(p.name for p in out.iterdir() if p not in ours)
        if foreign:
            raise DataError(
                f"{out}: refusing to overwrite: it holds files that are not a dataset written "
                f"by probunet ({', '.join(foreign[:5])}); choose another folder."
            )
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for case in cases:
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", case.case_id).strip(".") or "case"
        if name in names:
            name = f"{name}_{len(names)}"
        names.append(name)
        folder = out / name
        folder.mkdir()
        if image_format == "npy":
            np.save(folder / "image.npy", case.image.astype(np.float32))
        else:
            import tifffile

            tifffile.imwrite(folder / "image.tif", case.image.astype(np.float32))
        scale = 255 if case.masks.max(initial=0) <= 1 else 1
        for r, mask in enumerate(case.masks):
            _save_png(folder / f"mask_{r}.png", (mask * scale).astype(np.uint8))
        (folder / "case.json").write_text(
            json.dumps({"case_id": case.case_id, "group_id": case.group_id}, indent=1) + "\n",
            encoding="utf-8",
        )
        if case.truth is not None:
            t = case.truth
            arrays = {"modes": t.modes, "probs": t.probs, "names": np.array(t.names)}
            if case.grader_modes is not None:
                arrays["grader_modes"] = np.asarray(case.grader_modes, np.int64)
            if t.flip_probs is not None:
                arrays["flip_probs"] = np.asarray(t.flip_probs, np.float64)
            if t.flip_classes is not None:
                arrays["flip_classes"] = np.asarray(t.flip_classes, np.int64)
            if t.params:
                arrays["param_names"] = np.array(list(t.params))
                arrays["param_values"] = np.array(list(t.params.values()), np.float64)
            np.savez_compressed(folder / "truth.npz", **arrays)
    index = {"format": "napari-probunet multi-rater folder",
             "format_version": FOLDER_FORMAT_VERSION, **(meta or {}),
             "n_cases": len(names), "case_folders": names}
    (out / "dataset.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return out
