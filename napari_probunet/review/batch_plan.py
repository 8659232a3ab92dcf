"""The plan of a ``probunet sample`` run: its inputs expanded into sorted, named work items.

Every input (a folder of images, a ``.txt`` list of paths, image files, NIfTI volumes or a
folder of one DICOM series cut into axial slices, a multi-rater folder, a LIDC pickle or a
``synthetic:`` spec) becomes work items with a unique ``case_id`` and a file-safe ``name``,
sorted by ``case_id`` (:func:`plan_cases`). An input that cannot be expanded is a failure of
its own. Every rank of a ``torchrun`` job plans the same list, so ranks can share it out by
position (:mod:`napari_probunet.review.batch`). Images are loaded only when their turn comes
(:attr:`Item.load`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet.data import formats
from napari_probunet.data.images import check_declared, is_mask_name, load_image, nifti_declared
from napari_probunet.data.readers import open_cases
from napari_probunet.data.synthetic import SyntheticDataset
from napari_probunet.data.volumes import dicom_files
from napari_probunet.errors import DataError, UserError
from napari_probunet.review.seeds import id_bytes

IMAGE_SUFFIXES = formats.IMAGE_SUFFIXES
NIFTI_SUFFIXES = formats.NIFTI.suffixes
LIST_SUFFIXES = formats.TEXT_LIST.suffixes
PICKLE_SUFFIXES = formats.PICKLE.suffixes
_DM_IMAGE_RE = re.compile(r"^z--?\d+(?:\.\d+)?_c\d+\.png$", re.IGNORECASE)
_MAX_DEPTH = 8


def readable(text: str) -> str:
    """``text`` fit to print or log: a file name's undecodable bytes shown as ``\\xff``."""
    return id_bytes(str(text)).decode("utf-8", "backslashreplace")


@dataclass
class Item:
    """One unit of work: one 2D image to sample, loaded only when its turn comes.

    ``load()`` returns ``(image, graders)``: the image as the model gets it and the graders'
    masks ``(R, H, W)`` of a multi-rater case (else None).
    """

    case_id: str
    source: str
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]] = field(repr=False, compare=False)
    slice_index: int | None = None
    slice_axis: int | None = None
    name: str = ""
    #: the volume's case id for a slice of a volume: its slices share the volume's seed
    #: (:data:`~napari_probunet.review.seeds.STACK_SEED_RULE`); None for a 2D image
    stack_id: str | None = None


@dataclass
class Plan:
    """The sorted work items of a run and the inputs that could not be expanded."""

    items: list[Item]
    failures: list[dict[str, Any]]

    def digest(self) -> str:
        """Identifies the plan: ranks compare it to be sure they share out the same list.

        Sources are left out: nodes may mount the same study under different paths."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(id_bytes(f"{it.case_id}\0{it.name}\0{it.slice_index}\n"))
        return h.hexdigest()


_suffix = formats.suffix_of


def _without_suffix(rel: str, path: Path) -> str:
    return rel[: len(rel) - len(_suffix(path))] if _suffix(path) else rel


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def safe_name(case_id: str) -> str:
    """A file-system-safe version of a case id (``training/0`` -> ``training_0``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", case_id).strip("._") or "case"


def _walk_files(root: Path) -> list[Path]:
    """Data files under ``root`` (hidden ones skipped), in natural order of their paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if depth < _MAX_DEPTH else []
        found += [here / f for f in filenames if not f.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def _is_dataset_folder(root: Path, files: list[Path]) -> bool:
    """A folder of multi-rater cases (masks, DeepMind crops or pickles), not just images."""
    for p in files:
        suffix = _suffix(p)
        if suffix in PICKLE_SUFFIXES or _DM_IMAGE_RE.match(p.name):
            return True
        if suffix in IMAGE_SUFFIXES and is_mask_name(p):
            return True
    return False


def _load_image_file(path: Path) -> tuple[np.ndarray, None]:
    return load_image(path), None


class _VolumeCache:
    """The last NIfTI volume read by this process: its slices are usually taken in a row."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.volume: np.ndarray | None = None

    def get(self, path: Path) -> np.ndarray:
        if self.path != path:
            import nibabel

            self.path = self.volume = None
            try:
                image = nibabel.load(path)
                # the declared size against the limits, before the volume is decompressed
                check_declared(path, *nifti_declared(image), path.stat().st_size)
                volume = formats.nifti_voxels(image, path)
            except DataError:
                raise
            except Exception as exc:  # nibabel and gzip have many error types
                raise DataError(
                    f"{path}: cannot read the NIfTI volume ({type(exc).__name__}: {exc}); it may "
                    "be truncated"
                ) from None
            if volume.ndim > 3:
                volume = volume.reshape(volume.shape[:3])
            self.path, self.volume = path, volume
        return self.volume


_VOLUMES = _VolumeCache()


class _DicomCache:
    """The last DICOM series read by this process (slices, rows, columns) in HU."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.volume: np.ndarray | None = None

    def get(self, path: Path) -> np.ndarray:
        if self.path != path:
            from napari_probunet.data.volumes import read_dicom_series

            self.path, self.volume = None, None
            self.volume, self.path = read_dicom_series(path).data, path
        return self.volume


_DICOM = _DicomCache()


def _dicom_slice(path: Path, index: int) -> tuple[np.ndarray, None]:
    return _DICOM.get(path)[index].astype(np.float32), None


def _load_slice(path: Path, axis: int, index: int) -> tuple[np.ndarray, None]:
    """Slice ``index`` along voxel ``axis``, its two other axes reversed: the slice as napari
    shows the volume (:func:`~napari_probunet.data.volumes.read_nifti_volume` reverses the
    file's axes), so the review and ``probunet sample`` sample the same pixels; for a NIfTI
    converted from DICOM that is the DICOM rows and columns the models were trained on."""
    volume = _VOLUMES.get(path)
    return np.take(volume, index, axis=axis).T.astype(np.float32), None


def axial_axis(affine: np.ndarray | None) -> int:
    """The voxel axis that the affine maps closest to superior-inferior (else 2, the usual one)."""
    if affine is None:
        return 2
    try:
        import nibabel

        codes = nibabel.aff2axcodes(affine)
    except Exception:  # a singular or missing affine
        return 2
    for i, code in enumerate(codes[:3]):
        if code in ("S", "I"):
            return i
    return 2


class _Planner:
    def __init__(self, slices: tuple[int, ...] | None) -> None:
        self.slices = slices
        self.items: list[Item] = []
        self.failures: list[dict[str, Any]] = []

    def fail(self, case_id: str, source: str, reason: str) -> None:
        self.failures.append({"case_id": case_id, "name": None, "bundle": None, "source": source,
                              "slice_index": None, "seed": None, "status": "failed",
                              "reason": reason, "rank": None, "seconds": 0.0})

    def add(self, inputs: Sequence[str]) -> None:
        """Expand the command line's inputs; the loose image files form one group (their ids are
        their paths relative to the deepest folder that holds them all)."""
        loose: list[Path] = []
        for text in inputs:
            self._add_one(str(text), loose, allow_lists=True)
        self._add_files(loose)

    def _add_one(self, text: str, loose: list[Path], allow_lists: bool) -> None:
        if text.strip().lower().startswith("synthetic:"):
            self._add_dataset(text.strip(), text.strip())
            return
        path = Path(text).expanduser()
        if not path.exists():
            self.fail(text, text, f"{text}: no such file or folder")
        elif path.is_dir() and dicom_files(path, limit=64):
            self._add_dicom(path)
        elif path.is_dir():
            files = _walk_files(path)
            if _is_dataset_folder(path, files):
                self._add_dataset(str(path), path.name)
            else:
                self._add_folder(path, files)
        elif _suffix(path) in LIST_SUFFIXES:
            if allow_lists:
                self._add_list(path)
            else:
                self.fail(text, text, f"{text}: a list file inside a list file is not followed")
        elif _suffix(path) in PICKLE_SUFFIXES:
            self._add_dataset(str(path), path.stem)
        elif _suffix(path) in IMAGE_SUFFIXES:
            loose.append(path)
        else:
            self.fail(path.name, str(path),
                      f"{path}: unsupported file type {_suffix(path) or '(none)'!r}; give images "
                      f"({', '.join(IMAGE_SUFFIXES)}), a folder, a .txt list or a synthetic: spec")

    def _add_list(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(path.stem, str(path), f"{path}: cannot read the list file ({exc})")
            return
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not entries:
            self.fail(path.stem, str(path), f"{path}: the list file names no images")
            return
        loose: list[Path] = []
        for entry in entries:
            if entry.lower().startswith("synthetic:"):
                self._add_one(entry, loose, allow_lists=False)
                continue
            p = Path(entry).expanduser()
            self._add_one(str(p if p.is_absolute() else path.parent / p), loose, allow_lists=False)
        self._add_files(loose)

    def _add_files(self, files: list[Path]) -> None:
        if not files:
            return
        files = [Path(os.path.abspath(f)) for f in files]  # absolute, "a/../b" made "b"
        base = Path(os.path.commonpath([f.parent for f in files]))
        for f in files:
            case_id = _without_suffix(f.relative_to(base).as_posix(), f)
            self._add_file(f, case_id)

    def _add_folder(self, root: Path, files: list[Path]) -> None:
        images = [p for p in files if _suffix(p) in IMAGE_SUFFIXES]
        if not images:
            self.fail(root.name, str(root),
                      f"{root}: no images found ({', '.join(IMAGE_SUFFIXES)}) in the folder or "
                      "its sub-folders")
            return
        for p in images:
            self._add_file(p, _without_suffix(p.relative_to(root).as_posix(), p))

    def _add_file(self, path: Path, case_id: str) -> None:
        if _suffix(path) in NIFTI_SUFFIXES:
            self._add_nifti(path, case_id)
        else:
            self.items.append(Item(case_id, str(path), partial(_load_image_file, path)))

    def _add_nifti(self, path: Path, case_id: str) -> None:
        import nibabel

        try:
            header = nibabel.load(path)
            shape = tuple(int(s) for s in header.shape)
            affine = header.affine
        except Exception as exc:  # nibabel raises several types for a broken header
            self.fail(case_id, str(path),
                      f"{path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})")
            return
        if len(shape) > 3 and math.prod(shape[3:]) > 1:
            self.fail(case_id, str(path),
                      f"{path}: a {len(shape)}-D NIfTI {shape} (e.g. a time series); give 2-D "
                      "images or 3-D volumes")
            return
        if sum(s > 1 for s in shape[:3]) <= 2:  # a 2-D image stored as NIfTI
            self.items.append(Item(case_id, str(path), partial(_load_image_file, path)))
            return
        axis = axial_axis(affine)
        depth = shape[axis]
        wanted = range(depth) if self.slices is None else self.slices
        missing = [k for k in wanted if k >= depth]
        if missing:
            self.fail(case_id, str(path),
                      f"{path}: slice(s) {_ranges(missing)} requested but the volume has {depth} "
                      f"slices along axis {axis} (0..{depth - 1})")
        width = max(3, len(str(depth - 1)))
        for k in wanted:
            if k < depth:
                self.items.append(Item(f"{case_id}_z{k:0{width}d}", str(path),
                                       partial(_load_slice, path, axis, k),
                                       slice_index=int(k), slice_axis=axis,
                                       stack_id=case_id))

    def _add_dicom(self, path: Path) -> None:
        """A folder of one DICOM series (e.g. a series retrieved from a PACS into the cache by
        ``dicomweb:`` inputs, :mod:`napari_probunet.data.pacs.spec`): its axial slices, in HU."""
        try:
            depth = _DICOM.get(path).shape[0]
        except UserError as exc:
            self.fail(path.name, str(path), str(exc))
            return
        wanted = range(depth) if self.slices is None else [k for k in self.slices if k < depth]
        if self.slices is not None and len(wanted) < len(self.slices):
            self.fail(path.name, str(path), f"{path}: the series has {depth} slices (0.."
                      f"{depth - 1}); slices beyond them were requested")
        for k in wanted:
            self.items.append(Item(f"{path.name}_z{k:03d}", str(path),
                                   partial(_dicom_slice, path, k), slice_index=int(k),
                                   slice_axis=0, stack_id=path.name))

    def _add_dataset(self, spec: str, label: str) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cases = open_cases(spec, on_error="skip")
            except UserError as exc:
                self.fail(label, spec, str(exc))
                cases = []
        for w in caught:
            text = str(w.message)
            if "could not be read" in text:  # the reader skipped broken cases: report them
                self.fail(label, spec, text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if isinstance(cases, SyntheticDataset) and len(cases):
            ids = [f"{cases.kind}-s{cases.seed}-{i:05d}" for i in range(len(cases))]
            if cases[0].case_id != ids[0]:  # the generator's naming changed: ask it
                ids = [cases[i].case_id for i in range(len(cases))]
        else:
            ids = [c.case_id for c in cases]
        for i, case_id in enumerate(ids):
            if isinstance(cases, SyntheticDataset):
                source = f"{spec}#{i}"  # generated on demand: do not make it here
            else:
                source = cases[i].source or spec
            self.items.append(Item(str(case_id), str(source), partial(_load_case, cases, i)))

    def plan(self) -> Plan:
        items = sorted(self.items, key=lambda it: (it.case_id, it.source, it.slice_index or 0))
        used_ids: set[str] = set()
        used_names: set[str] = set()
        for it in items:
            it.case_id = _unique(it.case_id, used_ids, str)
            it.name = _unique(safe_name(it.case_id), used_names, str.casefold)
        return Plan(items, self.failures)


def _load_case(cases: Sequence, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    case = cases[index]
    return case.image, case.masks


def _unique(text: str, used: set[str], key: Callable[[str], str]) -> str:
    out, k = text, 2
    while key(out) in used:
        out, k = f"{text}-{k}", k + 1
    used.add(key(out))
    return out


def _ranges(values: Sequence[int]) -> str:
    values = sorted(values)
    parts, start = [], values[0]
    for a, b in zip(values, [*values[1:], None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def plan_cases(inputs: Sequence[str], slices: tuple[int, ...] | None = None) -> Plan:
    """Expand the inputs into sorted, uniquely named work items (see the module docstring)."""
    planner = _Planner(slices)
    planner.add(inputs)
    return planner.plan()
