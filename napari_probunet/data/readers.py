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

One file's pixels are read by :mod:`napari_probunet.data.images`; splits are made by
:mod:`napari_probunet.data.splits`.

Mask values: binary masks stored as 0/1, 0/255, 0/65535 (any ``{0, v}`` with ``v > 63``)
become 0/1; label maps with values ``0..63`` are kept as class labels; JPEG masks (lossy) are
thresholded at ``> 127``; anything else (many grey levels, fractions, negatives) is an error.
Images keep their raw values as float32 (0..255 for 8-bit files).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_probunet import limits
from napari_probunet.data import formats
from napari_probunet.data.case import Case, ModeTruth
from napari_probunet.data.images import (
    SUPPORTED_SUFFIXES,
    file_stem,
    file_suffix,
    is_data_file,
    is_image_name,
    is_mask_name,
    load_image,
    load_mask,
    mask_to_labels,
    natural_key,
    to_2d,
)
from napari_probunet.data.images import load_array as load_array  # its callers' old address
from napari_probunet.data.lidc_slices import looks_like_lidc_slices, read_lidc_slices
from napari_probunet.data.safe_pickle import safe_load_path
from napari_probunet.data.splits import SPLIT_PARTS, parse_split, split_cases
from napari_probunet.data.synthetic import KINDS, SyntheticDataset, parse_synthetic_spec
from napari_probunet.errors import DataError

#: file format version written to dataset.json
FOLDER_FORMAT_VERSION = 1

_DM_IMAGE_RE = re.compile(r"^z-(?P<z>-?\d+(?:\.\d+)?)_c(?P<c>\d+)\.png$", re.IGNORECASE)
_DM_MASK_RE = re.compile(r"^(?P<base>z--?\d+(?:\.\d+)?_c\d+)_l(?P<l>\d+)\.png$", re.IGNORECASE)
_PICKLE_SUFFIXES = formats.PICKLE.suffixes
_MAX_DEPTH = 6

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
    try:  # an .npz is a zip: its members' declared sizes bound what loading inflates
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: cannot read the truth file ({type(exc).__name__}: "
                        f"{exc}).") from None
    limits.check_decoded(declared, path.stat().st_size, f"{path}: the truth file", DataError)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: cannot read the truth file ({type(exc).__name__}: "
                        f"{exc}).") from None
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
    entries = list(folder.iterdir())
    odd = [p for p in entries if not p.name.startswith(".") and not p.is_dir()
           and not p.is_file() and file_suffix(p) in SUPPORTED_SUFFIXES]
    if odd:  # a FIFO or a device: reading it would block or never end
        raise DataError(f"{odd[0]}: not a regular file (a pipe, a device, a socket or a broken "
                        "link); put the image or mask file itself there.")
    files = sorted((p for p in entries if is_data_file(p)), key=lambda p: p.name)
    masks = sorted((p for p in files if is_mask_name(p)), key=lambda p: natural_key(p.name))
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
        for key in ("case_id", "group_id"):
            value = meta.get(key)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (str, int))):
                raise DataError(f"{folder / 'case.json'}: {key} is {type(value).__name__} "
                                f"{json.dumps(value)[:60]}; give a text (or a number), e.g. "
                                f'"{key}": "{folder.name}".')
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
                and file_suffix(Path(f)) in SUPPORTED_SUFFIXES]
        if any(is_mask_name(f) for f in data) or (data and not dirnames):
            found.append(here)
    return sorted(found, key=lambda p: natural_key(p.relative_to(root).as_posix()))


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
            images[(parts, file_stem(file).lower())] = file
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
    for key in sorted(images, key=lambda k: natural_key("/".join(k[0]) + "/" + k[1])):
        image_path = images[key]
        try:
            graders = masks.get(key)
            if not graders:
                raise DataError(
                    f"{image_path}: the case has no mask (expected {file_stem(image_path)}_l0.png "
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
                case_id="/".join([*rel_parts, file_stem(image_path)]),
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
            image = to_2d(image, Path(where), "image").astype(np.float32)
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
                mask_list.append(mask_to_labels(to_2d(m, Path(where), "mask"),
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
        part, fractions, seed, by = parse_split(fragment)
        cases = open_cases(base, on_error=on_error)
        chosen = split_cases(cases, fractions, seed, by=by)[SPLIT_PARTS.index(part)]
        if len(chosen) == 0:
            raise DataError(
                f"{text}: the '{part}' part of this split is empty ({len(cases)} cases, "
                f"fractions {','.join(f'{f:g}' for f in fractions)}, by {by}); give it a larger "
                "fraction, split by=case, or use more data.")
        return chosen
    if text.lower().startswith("synthetic:"):
        return SyntheticDataset(**parse_synthetic_spec(text))
    path = Path(text).expanduser()
    if not path.exists():
        hint = f" Did you mean 'synthetic:{text}'?" if text.lower() in KINDS else ""
        raise DataError(
            f"{text}: no such file or folder. Give a folder of cases, a .pkl/.pickle file or "
            f"a spec like 'synthetic:lesions?n=200&seed=0'.{hint}"
        )
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
        _clear_for_overwrite(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for case in cases:
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", case.case_id).strip(".") or "case"
        if name in names:
            name = f"{name}_{len(names)}"
        names.append(name)
        _write_case_folder(out / name, case, image_format)
    index = {"format": "napari-probunet multi-rater folder",
             "format_version": FOLDER_FORMAT_VERSION, **(meta or {}),
             "n_cases": len(names), "case_folders": names}
    (out / "dataset.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return out


def _clear_for_overwrite(out: Path, overwrite: bool) -> None:
    """Empty the non-empty folder ``out`` of what an earlier write put there, or refuse."""
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


def _write_case_folder(folder: Path, case: Case, image_format: str) -> None:
    """One case's folder: the image, ``mask_<r>.png`` per grader, ``case.json`` and, for
    synthetic cases, ``truth.npz``."""
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
