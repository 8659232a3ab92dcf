"""``probunet sample``: prepare hypothesis bundles for many cases, on one machine or many.

A radiology team runs the model over a whole study overnight; in the morning each case opens
in napari as the image, its hypotheses and the uncertainty map, with no model run
(:mod:`napari_probunet._reader`). One bundle per case or slice, ``<name>.probunet.zip``
(:mod:`napari_probunet.review.bundle`, ``docs/batch.md``).

The run, in order:

1. **Plan** (:func:`plan_cases`): every input (a folder of images, a ``.txt`` list of paths,
   image files, NIfTI volumes cut into axial slices, a multi-rater folder, a LIDC pickle or a
   ``synthetic:`` spec) is expanded into work items with a unique ``case_id`` and a file-safe
   ``name``, sorted by ``case_id``. An input that cannot be expanded is a failure of its own.
2. **Share**: under ``torchrun`` (``WORLD_SIZE > 1``) rank ``r`` of ``w`` takes
   ``items[r::w]``; every rank plans the same list, so no case is done twice or skipped.
3. **Sample** each item: skip it if a valid bundle with the same model, seed and ``n`` exists
   (unless ``--overwrite``), else load the image, encode it once, draw ``n`` hypotheses with
   the case's seed (:func:`case_seed`), and write the bundle atomically. A case that fails is
   reported and the run goes on.
4. **Summarise**: results are gathered on rank 0, which writes ``summary.json`` and prints the
   counts and the failures. Exit code 0, or 1 if any case failed; 2 for a model that cannot be
   opened or an unusable output folder (before any work is done).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet.errors import UserError
from napari_probunet.review import bundle as bundles

SUMMARY_FORMAT = "napari-probunet-sample-summary"
SUMMARY_VERSION = 1
SUMMARY_NAME = "summary.json"
#: how a case's seed is derived (also written into every manifest and summary)
SEED_RULE = (
    "seed = int.from_bytes(sha256(f'{run_seed}:{case_id}'.encode('utf-8', 'surrogateescape'))"
    ".digest()[:4], 'big') & 0x7FFFFFFF"
)
#: how long a rank waits for the others at the final gather (ranks finish at different times)
DIST_TIMEOUT = timedelta(hours=24)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".nii", ".nii.gz")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
LIST_SUFFIXES = (".txt",)
PICKLE_SUFFIXES = (".pkl", ".pickle")
_DM_IMAGE_RE = re.compile(r"^z--?\d+(?:\.\d+)?_c\d+\.png$", re.IGNORECASE)
_MAX_DEPTH = 8


def case_seed(run_seed: int, case_id: str) -> int:
    """The seed of one case: stable across runs, machines and process counts (see SEED_RULE).

    31 bits, so it can be typed into the review widget's seed box to redraw the same set.
    """
    digest = hashlib.sha256(id_bytes(f"{int(run_seed)}:{case_id}")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def id_bytes(text: str) -> bytes:
    """A case id as bytes, for hashing: UTF-8, and a file name's undecodable bytes as they are.

    Python reads a file name that is not valid UTF-8 (``b"scan\\xff.npy"``) as a string with
    lone surrogates (``"scan\\udcff.npy"``); ``surrogateescape`` turns them back into the
    file's own bytes (as ``os.fsencode`` does), so such a case gets a seed instead of a crash.
    Any other lone surrogate is kept as its UTF-8-style bytes (``surrogatepass``).
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def readable(text: str) -> str:
    """``text`` fit to print or log: a file name's undecodable bytes shown as ``\\xff``."""
    return id_bytes(str(text)).decode("utf-8", "backslashreplace")


# ----------------------------------------------------------------------------- slices


def parse_slices(text: str) -> tuple[int, ...] | None:
    """``"all"`` -> None; ``"3,7,10-12"`` -> (3, 7, 10, 11, 12) (ranges inclusive, 0-based)."""
    text = str(text).strip().lower()
    if text in ("all", ""):
        return None
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"invalid slice {part!r} in {text!r}: give 'all' or 0-based indices and "
                "inclusive ranges, e.g. '3,7,10-12'"
            )
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo:
            raise argparse.ArgumentTypeError(f"invalid slice range {part!r}: {hi} < {lo}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- planning


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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


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
    from napari_probunet.data.readers import is_mask_name

    for p in files:
        suffix = _suffix(p)
        if suffix in PICKLE_SUFFIXES or _DM_IMAGE_RE.match(p.name):
            return True
        if suffix in IMAGE_SUFFIXES and is_mask_name(p):
            return True
    return False


def _load_image_file(path: Path) -> tuple[np.ndarray, None]:
    from napari_probunet.data.readers import load_image

    return load_image(path), None


class _VolumeCache:
    """The last NIfTI volume read by this process: its slices are usually taken in a row."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.volume: np.ndarray | None = None

    def get(self, path: Path) -> np.ndarray:
        if self.path != path:
            import nibabel

            from napari_probunet.data.readers import _check_declared, _nifti_declared
            from napari_probunet.errors import DataError

            self.path = self.volume = None
            try:
                image = nibabel.load(path)
                # the declared size against the limits, before the volume is decompressed
                _check_declared(path, *_nifti_declared(image), path.stat().st_size)
                volume = np.asanyarray(image.dataobj)
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


def _load_slice(path: Path, axis: int, index: int) -> tuple[np.ndarray, None]:
    volume = _VOLUMES.get(path)
    return np.take(volume, index, axis=axis).astype(np.float32), None


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
                                       slice_index=int(k), slice_axis=axis))

    def _add_dataset(self, spec: str, label: str) -> None:
        from napari_probunet.data.readers import open_cases
        from napari_probunet.data.synthetic import SyntheticDataset

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


# ----------------------------------------------------------------------------- sampling


@dataclass
class RunSettings:
    """What every bundle of a run shares."""

    out: Path
    n: int
    run_seed: int
    overwrite: bool
    model: dict[str, Any]  # name, sha256, path, latent_dim, num_classes, input_size
    class_names: list[str]
    device: str
    versions: dict[str, str]
    threads: int = 0  # torch intra-op threads of this process


def versions() -> dict[str, str]:
    import torch

    from napari_probunet import __version__

    return {"napari_probunet": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _as_model_input(image: np.ndarray) -> np.ndarray:
    """(H, W, 1) -> (H, W); RGBA -> RGB; float32. Anything else is left to the session to judge."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype.kind in "biu":
        a = a.astype(np.float32)
    elif a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


def _existing(path: Path, item: Item, seed: int, settings: RunSettings) -> tuple[str, str | None]:
    """What to do about a bundle already at ``path``: ("redo", why) / ("skip", None) / ("clash", why)."""
    if not path.exists():
        return "redo", None
    try:
        manifest = bundles.verify_bundle(path)
    except bundles.BundleError as exc:
        return "redo", f"the previous bundle was damaged ({exc})"
    have = (manifest.get("case_id"), manifest["model"].get("sha256"), manifest.get("seed"),
            manifest.get("n"))
    want = (item.case_id, settings.model["sha256"], seed, settings.n)
    if have == want:
        return "skip", None
    labels = ("case", "model sha256", "seed", "n")
    diff = ", ".join(f"{k} {a!r} (now {b!r})" for k, a, b in zip(labels, have, want) if a != b)
    return "clash", (
        f"{path.name} already exists from different settings: {diff}; pass --overwrite to "
        "replace it or choose another --out"
    )


def _compute(item: Item, session, settings: RunSettings,
             rank: int) -> tuple[dict[str, Any], tuple[Path, bundles.Bundle] | None]:
    """Check, load, encode and sample one item on the calling thread.

    Returns its result record and, when there is a bundle to write, ``(path, bundle)``.
    Never raises for a problem with the case: the record says ``failed`` and why.
    """
    from napari_probunet.session import pixel_disagreement

    t0 = time.perf_counter()
    seed = case_seed(settings.run_seed, item.case_id)
    path = bundles.bundle_path(settings.out, item.name)
    result: dict[str, Any] = {
        "case_id": item.case_id, "name": item.name, "bundle": path.name, "source": item.source,
        "slice_index": item.slice_index, "seed": seed, "status": "failed", "reason": None,
        "rank": rank, "seconds": 0.0,
    }
    job = None
    try:
        if not settings.overwrite:
            action, note = _existing(path, item, seed, settings)
            result["reason"] = note
            if action == "skip":
                result["status"] = "skipped"
            if action != "redo":
                return result, None
        image, graders = item.load()
        image = _as_model_input(image)
        session.set_image(image)
        hyp = session.sample(settings.n, seed=seed)
        mu, sigma = session.prior()
        uncertainty = pixel_disagreement(hyp.labels, len(settings.class_names))
        if graders is not None:
            graders = np.asarray(graders, dtype=np.uint8)
            graders = graders[None] if graders.ndim == 2 else graders
        manifest = {
            "case_id": item.case_id,
            "name": item.name,
            "source": item.source,
            "slice_index": item.slice_index,
            "slice_axis": item.slice_axis,
            "image_signature": session.image_signature,
            "model": settings.model,
            "class_names": settings.class_names,
            "n": settings.n,
            "seed": seed,
            "run_seed": settings.run_seed,
            "seed_rule": SEED_RULE,
            "uncertainty": "per-pixel disagreement: 1 - share of the hypotheses that vote for "
                           "the majority class",
            "graders": None if graders is None else int(graders.shape[0]),
            "device": settings.device,
            "versions": settings.versions,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        job = (path, bundles.Bundle(
            manifest=manifest, image=image, hypotheses=hyp.labels, z=hyp.z.astype(np.float32),
            prior_mu=mu, prior_sigma=sigma, uncertainty=uncertainty, graders=graders))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a crash on one case must not end an overnight run
        result["reason"] = _reason(exc)
    finally:
        result["seconds"] = round(time.perf_counter() - t0, 4)
    return result, job


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def _write(job: tuple[Path, bundles.Bundle], result: dict[str, Any]) -> dict[str, Any]:
    """Write one bundle (on a writer thread); the record says ``done`` or ``failed``."""
    t0 = time.perf_counter()
    path, bundle = job
    try:
        bundles.write_bundle(path, bundle)
        result["status"] = "done"
    except Exception as exc:  # a full disk or a read-only folder: report, go on
        result["reason"] = f"cannot write {path}: {_reason(exc)}"
    result["seconds"] = round(result["seconds"] + time.perf_counter() - t0, 4)
    return result


def sample_items(items: Sequence[Item], session, settings: RunSettings, rank: int = 0,
                 writers: int = 2) -> Iterator[dict[str, Any]]:
    """Do the items in order and yield their result records, in the same order.

    The model runs on the calling thread; bundles are compressed and written by ``writers``
    background threads (zlib releases the GIL) while the next cases are sampled, with at most
    ``writers`` bundles waiting (``writers=0``: written on the calling thread). An interrupt
    lets the writes under way finish (each is atomic).
    """
    if writers < 1:
        for item in items:
            result, job = _compute(item, session, settings, rank)
            yield result if job is None else _write(job, result)
        return
    pending: deque[tuple[dict[str, Any], Future | None]] = deque()

    def ready() -> bool:
        fut = pending[0][1]
        return fut is None or fut.done() or len(pending) > writers

    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="bundle-writer") as pool:
        for item in items:
            result, job = _compute(item, session, settings, rank)
            pending.append((result, None if job is None else pool.submit(_write, job, result)))
            while pending and ready():
                result, fut = pending.popleft()
                yield result if fut is None else fut.result()
        while pending:
            result, fut = pending.popleft()
            yield result if fut is None else fut.result()


def sample_item(item: Item, session, settings: RunSettings, rank: int = 0) -> dict[str, Any]:
    """Do one work item (see :func:`sample_items`); never raises for a problem with the case."""
    return next(iter(sample_items([item], session, settings, rank, writers=0)))


# ----------------------------------------------------------------------------- processes


class Ranks:
    """This process's place in a ``torchrun`` job (or a job of one), and the collectives used.

    ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` come from torchrun. With ``WORLD_SIZE > 1`` the
    process group is initialised (NCCL when the device is CUDA, else gloo) and each CUDA rank
    uses GPU ``LOCAL_RANK`` unless a device index was given.
    """

    def __init__(self, device: str = "auto") -> None:
        import torch

        from napari_probunet.device import resolve_device

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if self.world > 1 and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.device = dev
        self._owner = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                        timeout=DIST_TIMEOUT)
                self._owner = True

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (JSON-serialisable), in rank order, on every rank.

        Sent as UTF-8 JSON in byte tensors (no pickling, unlike ``all_gather_object``).
        """
        if not self.distributed:
            return [obj]
        import torch
        import torch.distributed as dist

        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        data = json.dumps(obj).encode("utf-8")
        size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in range(self.world)]
        dist.all_gather(bufs, buf.to(dev))
        return [json.loads(bytes(b[: int(s.item())].cpu().numpy()).decode("utf-8"))
                for b, s in zip(bufs, sizes)]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owner:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owner = False


# ----------------------------------------------------------------------------- summary


def summarize(plan: Plan, gathered: list[dict[str, Any]], settings: RunSettings,
              started: datetime, wall: float, inputs: Sequence[str],
              world: int) -> dict[str, Any]:
    """The run's record: counts, per-case results, failures with reasons; checks the shares."""
    results = [r for g in gathered for r in g["results"]]
    problems = []
    digests = {g["plan_digest"] for g in gathered}
    if len(digests) > 1:
        problems.append(
            "the ranks planned different case lists (inputs changed while the run started?); "
            "rerun: finished bundles are skipped"
        )
    seen: dict[str, int] = {}
    for r in results:
        seen[r["case_id"]] = seen.get(r["case_id"], 0) + 1
    twice = sorted(k for k, v in seen.items() if v > 1)
    if twice:
        problems.append(f"case(s) done more than once: {', '.join(twice[:5])}")
    for it in plan.items:
        if it.case_id not in seen:
            results.append({"case_id": it.case_id, "name": it.name,
                            "bundle": f"{it.name}{bundles.SUFFIX}", "source": it.source,
                            "slice_index": it.slice_index, "seed": None, "status": "failed",
                            "reason": "not processed by any rank", "rank": None, "seconds": 0.0})
    results = sorted(results, key=lambda r: r["case_id"]) + list(plan.failures)
    counts = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed")}
    counts["total"] = len(results)
    return {
        "format": SUMMARY_FORMAT,
        "format_version": SUMMARY_VERSION,
        "inputs": [str(i) for i in inputs],
        "out": str(settings.out),
        "model": settings.model,
        "n": settings.n,
        "seed": settings.run_seed,
        "seed_rule": SEED_RULE,
        "device": settings.device,
        "world_size": world,
        "threads_per_process": settings.threads,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(wall, 3),
        "cases_per_second": round(counts["done"] / wall, 4) if wall > 0 else None,
        "counts": counts,
        "problems": problems,
        "failures": [{"case_id": r["case_id"], "source": r["source"], "reason": r["reason"]}
                     for r in results if r["status"] == "failed"],
        "cases": results,
        "versions": settings.versions,
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file named after this process,
    fsync, rename), so concurrent runs into one folder never touch each other's files."""
    from napari_probunet.review.export import commit_replace, create_temporary

    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
        commit_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def print_summary(summary: dict[str, Any], file=None) -> None:
    file = file or sys.stdout
    c = summary["counts"]
    rate = summary["cases_per_second"]
    print(
        f"probunet sample: {c['done']} done, {c['skipped']} skipped, {c['failed']} failed "
        f"of {c['total']} in {summary['seconds']:.1f} s"
        + (f" ({rate:.2f} cases/s)" if rate else "")
        + f" on {summary['world_size']} process(es); bundles in {summary['out']}",
        file=file,
    )
    for f in summary["failures"]:
        print(f"  FAILED {readable(f['case_id'])}: {readable(f['reason'])}", file=file)
    for p in summary["problems"]:
        print(f"  PROBLEM: {readable(p)}", file=file)
    print(f"summary: {Path(summary['out']) / SUMMARY_NAME}", file=file)


# ----------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sample hypotheses for many cases and write one <case>.probunet.zip bundle per case "
        "(or per slice of a NIfTI volume), ready to open in napari without a model run. "
        "Resumable, and it runs under torchrun across processes and machines. "
        "See docs/batch.md."
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image files (png/jpg/tif/npy/nii/nii.gz), folders of images, .txt lists of paths "
             "(one per line, relative to the list), NIfTI volumes (axial slices), multi-rater "
             "folders, LIDC pickles or 'synthetic:lesions?n=..' specs",
    )
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors), or a bundled model: lidc (lung nodule, CT), "
                        "lesions (synthetic demo), default")
    parser.add_argument("--out", required=True, type=Path, help="folder for the bundles")
    parser.add_argument("-n", "--n", "--samples", dest="n", type=int, default=16,
                        help="hypotheses per case (default 16); under torchrun write -n or "
                             "--samples, since torchrun reads --n as one of its own options")
    parser.add_argument("--seed", type=int, default=0,
                        help="run seed; each case's seed is derived from it and the case id")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cuda, mps or cpu")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo cases whose bundle already exists (default: skip them)")
    parser.add_argument("--slices", type=parse_slices, default=None, metavar="all|i,j,a-b",
                        help="which axial slices of NIfTI volumes (0-based; default all)")
    parser.add_argument("--threads", type=_threads_arg, default="auto",
                        help="torch threads per process: a number, 0 for torch's default, or "
                             "'auto' (default): torch's default reduced to the cores that other "
                             "work leaves idle; left alone when OMP_NUM_THREADS is set "
                             "(torchrun sets 1)")


def _threads_arg(text: str) -> str | int:
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--threads takes 'auto' or a number >= 0, not {text!r}")
    return value


def choose_threads(setting: str | int) -> int | None:
    """The torch intra-op thread count to set (None: leave torch's default).

    ``"auto"``: on a machine other jobs keep busy, more threads than idle cores make torch
    several times slower (its OpenMP threads spin waiting for each other), so take the cores
    not used by others over the last minute (``os.getloadavg``), at least 1.
    """
    if setting != "auto":
        return int(setting) or None
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
        idle = cores - os.getloadavg()[0]
    except (AttributeError, OSError):  # not on Linux/macOS
        return None
    return max(1, min(torch.get_num_threads(), math.floor(idle + 0.5)))


def _prepare_out(out: Path) -> Path:
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the bundles")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probunet-write-test-{platform.node()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the output folder {out} ({exc.strerror or exc})") from None
    return out.absolute()


#: ``.<name>.probunet.zip.tmp<pid>``: the temporary bundles of earlier versions
_OLD_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp\d+$")


def _remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete what killed runs left half-written: temporary bundles and summaries whose
    process is gone (or that are older than an hour), and those of earlier versions.

    Temporaries of running processes are left alone, so two runs into one folder (other
    ranks, another ``probunet sample`` started meanwhile) never delete each other's files.
    """
    from napari_probunet.review.export import remove_dead_temporaries

    def belongs(name: str) -> bool:  # .<name>.probunet.zip.~<owner>.<random>.tmp, or summary's
        return name.endswith(".tmp") and (f"{bundles.SUFFIX}.~" in name
                                          or f"{SUMMARY_NAME}.~" in name)

    removed = remove_dead_temporaries(out, belongs)
    for entry in os.scandir(out) if out.is_dir() else ():
        # an earlier version's name: no such process writes into this folder any more
        m = _OLD_TEMP_RE.match(entry.name)
        if m and m["target"].endswith((bundles.SUFFIX, SUMMARY_NAME)) and entry.is_file():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _model_record(model, path_arg: str) -> dict[str, Any]:
    from napari_probunet.model.modelfile import bundled_model_of

    cfg = model.config
    bundled = bundled_model_of(model.source_path)
    return {
        "name": bundled.name if bundled is not None else Path(model.source_path).name,
        "sha256": model.source_sha256,
        "path": str(Path(model.source_path).resolve()),
        "latent_dim": cfg.latent_dim,
        "num_classes": cfg.num_classes,
        "input_size": cfg.input_size,
    }


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    started, t0 = datetime.now(UTC), time.perf_counter()
    threads_before, ranks = torch.get_num_threads(), None
    try:
        threads = choose_threads(args.threads)
        if threads:
            torch.set_num_threads(threads)
        ranks = Ranks(args.device)
        model = load_model(args.model, device="cpu")  # first: a bad model leaves nothing behind
        out = _prepare_out(args.out)
        session = Session(model, device=ranks.device)
        settings = RunSettings(
            out=out, n=int(args.n), run_seed=int(args.seed), overwrite=bool(args.overwrite),
            model=_model_record(model, args.model), class_names=list(model.config.class_names),
            device=str(ranks.device), versions=versions(), threads=torch.get_num_threads(),
        )
        plan = plan_cases(args.inputs, args.slices)
        mine = plan.items[ranks.rank::ranks.world]
        if ranks.rank == 0:
            for f in plan.failures:
                print(f"probunet sample: FAILED {readable(f['case_id'])}: "
                      f"{readable(f['reason'])}", file=sys.stderr)
        _remove_stale_temporaries(out)
        tty = sys.stderr.isatty()
        bar = tqdm(total=len(mine), unit="case", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if tty else 30.0,
                   disable=ranks.rank != 0 or bool(os.environ.get("TQDM_DISABLE")),
                   desc="sampling" if ranks.world == 1 else f"rank 0 of {ranks.world}")
        results, counts = [], {"done": 0, "skipped": 0, "failed": 0}
        with bar:
            for r in sample_items(mine, session, settings, rank=ranks.rank):
                results.append(r)
                counts[r["status"]] += 1
                if r["status"] == "failed":
                    prefix = f"[rank {ranks.rank}] " if ranks.distributed else ""
                    tqdm.write(f"{prefix}FAILED {readable(r['case_id'])}: "
                               f"{readable(r['reason'])}", file=sys.stderr)
                bar.set_postfix(counts, refresh=False)
                bar.update(1)
        gathered = ranks.gather_json({"rank": ranks.rank, "plan_digest": plan.digest(),
                                      "results": results})
        summary = summarize(plan, gathered, settings, started, time.perf_counter() - t0,
                            args.inputs, ranks.world)
        if ranks.rank == 0:
            write_json_atomic(out / SUMMARY_NAME, summary)
            print_summary(summary)
        ranks.barrier()  # nobody exits (and gets the job torn down) before the summary is written
        failed = bool(summary["counts"]["failed"] or summary["problems"])
        return 1 if failed and ranks.rank == 0 else 0  # torchrun then reports rank 0 only
    finally:
        if ranks is not None:
            ranks.close()
        torch.set_num_threads(threads_before)  # called in-process (tests, notebooks): no trace
