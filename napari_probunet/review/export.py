"""Writing a corrected mask to disk with the record of where it came from (no Qt, no torch).

Used by the review widget's "Export…" button, by napari's File → Save (the ``_writer``
contribution) and by scripts:

>>> from napari_probunet.review.export import export_correction        # doctest: +SKIP
>>> export_correction(mask, "case12_lesion.tif", record)        # doctest: +SKIP
(PosixPath('case12_lesion.tif'), PosixPath('case12_lesion.tif.json'))

Conventions
-----------
- **What is written**: the label map of the whole 2D image plane (same rows and columns as the
  image the clinician reviewed), zero outside the region of interest. The ROI is in the record,
  so the crop the model saw is ``mask[row:row + height, col:col + width]``.
- **Formats** by file suffix: ``.tif``/``.tiff`` (tifffile, zlib-compressed), ``.png`` (8-bit;
  a binary mask is stored as 0/255 so that it is visible in any viewer, ``"png_foreground"``
  in the record says so; the package's readers map it back to 0/1), ``.npy`` and
  ``.nii``/``.nii.gz`` (nibabel; the array as is, rows first, the pixel spacing in the header).
  Label values are class indices (``0`` = background) everywhere else.
- **The record** ``<mask path>.json`` (e.g. ``case12_lesion.tif.json``): see
  :func:`correction_record`.
- **Safety**: both files are written to hidden temporary files in the target folder, flushed
  to disk (``fsync``), then committed, so a crash never leaves a half-written mask. Without
  ``overwrite`` the commit is a hard link of the finished file onto the target, which fails if
  the target exists, so two exports racing for one name never replace each other (where the
  file system has no hard links, a file created with ``O_EXCL`` is filled instead). With
  ``overwrite`` the files are renamed over the targets (``os.replace``). All or nothing: if the
  record cannot be committed after the mask, the new mask is removed again (the old one put
  back), and a failed write raises :class:`~napari_probunet.errors.UserError` saying what
  happened and that nothing was written. Temporary files are named after their process
  (``.NAME.~<host>-<pid>.*.tmp.EXT``); those that a killed export left behind are removed by the
  next export into that folder once their process is gone (or they are an hour old: another
  machine's). Exports get the ordinary mode of a new file (``0666`` less the umask). A 64-bit
  label mask is stored in NIfTI as the smallest portable integer type that holds its labels.

Recovery files (autosave) live here too: :func:`save_recovery`, :func:`load_recovery`; and
the helpers every atomic write of the package uses (:func:`create_temporary`,
:func:`commit_replace`, :func:`remove_dead_temporaries`). ``docs/reliability.md`` sums up
what is atomic and what a crash can lose.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import stat
import tempfile
import time
from contextlib import suppress
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import limits
from napari_probunet.errors import UserError

#: file types :func:`export_correction` writes, by suffix
SUFFIXES = (".tif", ".tiff", ".png", ".npy", ".nii", ".nii.gz")
RECORD_VERSION = 1
RECORD_KIND = "napari-probunet correction"
#: a hidden temporary file of an export older than this (seconds) was left by a killed export
STALE_TEMP_SECONDS = 3600.0
#: ``.<target>[.~<host>-<pid>].<8 random characters>.tmp[<suffix>]``: the temporary files of an
#: export (the owner part names the process that writes it; older versions left it out)
_TEMP_RE = re.compile(r"^\.(?P<target>.+?)(?:\.~[0-9a-f]{6}-\d+)?\.[A-Za-z0-9_]{8}"
                      r"\.tmp(?P<ext>\.[A-Za-z.]+)?$")
#: ``.~<host>-<pid>.`` inside a temporary file's name: which process on which machine owns it
_OWNER_RE = re.compile(r"\.~(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.")
#: this machine, as it appears in the temporary files' names
_HOST = hashlib.sha256(platform.node().encode("utf-8", "surrogateescape")).hexdigest()[:6]


class ExportExistsError(UserError):
    """The target file (or its record) exists and ``overwrite`` was not given."""


# ----------------------------------------------------------------------------- paths


def mask_suffix(path: str | os.PathLike) -> str:
    """The export format suffix of ``path`` (``.nii.gz`` counts as one), lower case."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def record_path(path: str | os.PathLike) -> Path:
    """Where the JSON record of a mask file goes: ``<path>.json``."""
    return Path(f"{os.fspath(path)}.json")


def paste_into_plane(crop: np.ndarray, roi, plane_shape) -> np.ndarray:
    """The ROI ``crop`` ``(h, w)`` placed into a zero ``plane_shape`` array at ``roi``.

    ``roi`` is ``(row, col, height, width)`` in the plane's pixels.
    """
    r0, c0, h, w = (int(v) for v in roi)
    crop = np.asarray(crop)
    if crop.shape != (h, w):
        raise UserError(f"the mask has shape {crop.shape} but the region of interest is {h}x{w}")
    full = np.zeros(tuple(int(s) for s in plane_shape), dtype=crop.dtype)
    if r0 < 0 or c0 < 0 or r0 + h > full.shape[0] or c0 + w > full.shape[1]:
        raise UserError(f"the region of interest {tuple(roi)} lies outside the image {full.shape}")
    full[r0:r0 + h, c0:c0 + w] = crop
    return full


# ----------------------------------------------------------------------------- record


def versions() -> dict[str, str | None]:
    """Versions of the packages that made a correction (without importing torch or napari)."""
    from napari_probunet import __version__

    def version(dist: str) -> str | None:
        try:
            return _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            return None

    return {
        "napari_probunet": __version__,
        "torch": version("torch"),
        "napari": version("napari"),
        "numpy": np.__version__,
    }


def now_iso() -> str:
    """The current local time, ISO 8601 with its UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def pixels_changed(correction: np.ndarray, source_labels: np.ndarray | None) -> int | None:
    """How many pixels differ between the correction and the map it started from."""
    if source_labels is None:
        return None
    a, b = np.asarray(correction), np.asarray(source_labels)
    if a.shape != b.shape:
        return None
    return int(np.count_nonzero(a != b))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def correction_record(
    correction: np.ndarray,
    *,
    source_labels: np.ndarray | None = None,
    choice_source: str | None = None,
    index: int | None = None,
    z=None,
    seed: int | None = None,
    n_samples: int | None = None,
    roi=None,
    plane_shape=None,
    image_signature: str | None = None,
    plane_signature: str | None = None,
    image_layer: str | None = None,
    slice_index=(),
    scale=None,
    translate=None,
    model_sha256: str | None = None,
    model_name: str | None = None,
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """The provenance record of a correction (a JSON-able dict).

    ``correction`` and ``source_labels`` are the ROI crops (``(h, w)``): the edited map and the
    hypothesis (or explorer decode) it started from; ``pixels_changed_by_hand`` counts where they
    differ. ``index`` is 0-based (``session.sample(n, seed).labels[index]``); the record also
    gives the 1-based number of the layer name (``hypothesis 03`` is index 2).
    """
    roi_d = None
    if roi is not None:
        r0, c0, h, w = (int(v) for v in roi)
        roi_d = {"row": r0, "col": c0, "height": h, "width": w}
    choice: dict[str, Any] = {"source": choice_source}
    if choice_source == "hypothesis":
        choice.update({"hypothesis": None if index is None else int(index) + 1,
                       "index": None if index is None else int(index),
                       "seed": seed, "n_samples": n_samples})
    choice["z"] = None if z is None else [float(v) for v in np.asarray(z).ravel()]
    return _jsonable({
        "record_version": RECORD_VERSION,
        "kind": RECORD_KIND,
        "image": {
            "layer": image_layer,
            "signature": image_signature,  # of the ROI pixels the model saw
            "plane_signature": plane_signature,  # of the whole 2D plane
            "plane_shape": None if plane_shape is None else [int(s) for s in plane_shape],
            "slice_index": [int(i) for i in (slice_index or ())],
            "scale": scale,
            "translate": translate,
        },
        "roi": roi_d,
        "model": {"file": model_name, "sha256": model_sha256},
        "choice": choice,
        "pixels_changed_by_hand": pixels_changed(correction, source_labels),
        "labels": {str(i): n for i, n in enumerate(class_names)} if class_names else None,
        "foreground_pixels": int(np.count_nonzero(np.asarray(correction))),
        "versions": versions(),
        "created": now_iso(),
    })


def layer_mask_and_record(data, metadata: dict[str, Any] | None, name: str | None = None):
    """What to write for a Labels layer, and its record: ``(mask, record)``.

    A correction or hypothesis layer of the review widget (``metadata["kind"]``) holds its ROI
    crop; the mask is then the whole image plane with the crop pasted at the ROI, and the record
    is built from the layer's metadata (source, hypothesis, z, seed, model, image signature,
    ROI, and for a correction the pixels edited by hand). Any other Labels layer is written as
    it is, with a record of what is known (its name, shape, versions, time).
    """
    meta = metadata or {}
    arr = np.asarray(data)
    kind = meta.get("kind")
    roi, plane_shape = meta.get("roi"), meta.get("plane_shape")
    if kind in ("correction", "hypothesis") and roi and plane_shape:
        crop = arr.reshape(arr.shape[-2:]) if all(s == 1 for s in arr.shape[:-2]) else arr
        record = correction_record(
            crop,
            source_labels=meta.get("source_labels") if kind == "correction" else None,
            choice_source=meta.get("source", "hypothesis"),
            index=meta.get("index"), z=meta.get("z"), seed=meta.get("seed"),
            n_samples=meta.get("n_samples"), roi=roi, plane_shape=plane_shape,
            image_signature=meta.get("image_signature"),
            plane_signature=meta.get("plane_signature"), image_layer=meta.get("image_layer"),
            slice_index=meta.get("slice_index") or (), scale=meta.get("scale"),
            translate=meta.get("translate"), model_sha256=meta.get("model_sha256"),
            model_name=meta.get("model_name"), class_names=meta.get("class_names"),
        )
        record["layer"] = name
        return paste_into_plane(crop, roi, plane_shape), record
    record = correction_record(arr)
    record.update(layer=name, extent="layer", roi=None)
    return arr, record


# ----------------------------------------------------------------------------- writing


def _write_array(mask: np.ndarray, path: Path, suffix: str, scale=None) -> dict[str, Any]:
    """Write ``mask`` to ``path`` in the format of ``suffix``; return notes for the record."""
    notes: dict[str, Any] = {}
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, mask, compression="zlib")
    elif suffix == ".png":
        from PIL import Image

        if mask.ndim != 2:
            raise UserError(f"PNG holds 2D images only; this mask has shape {mask.shape}")
        if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
            raise UserError("PNG holds labels 0..255 only; export this mask as TIFF or NPY")
        out = mask.astype(np.uint8)
        if out.max(initial=0) <= 1:
            out = out * np.uint8(255)
            notes["png_foreground"] = 255
        Image.fromarray(np.ascontiguousarray(out)).save(path, format="PNG")
    elif suffix == ".npy":
        with open(path, "wb") as f:
            np.save(f, mask, allow_pickle=False)
    elif suffix in (".nii", ".nii.gz"):
        import nibabel

        affine = np.eye(4)
        if scale is not None:
            for i, s in enumerate(list(scale)[-mask.ndim:][:3]):
                affine[i, i] = float(s)
        image = nibabel.Nifti1Image(np.asarray(mask), affine)
        image.header.set_data_dtype(mask.dtype)
        nibabel.save(image, str(path))
    else:  # pragma: no cover - checked by the caller
        raise UserError(f"unsupported file type {suffix!r}")
    return notes


#: label dtypes a NIfTI file holds portably, smallest first
_NIFTI_LABEL_DTYPES = (np.uint8, np.int16, np.uint16, np.int32)


def _nifti_labels(mask: np.ndarray) -> np.ndarray:
    """``mask`` in the smallest portable NIfTI integer type that holds its labels (64-bit
    integers, a napari Labels layer's type, are not portable); :class:`UserError` if none."""
    if mask.dtype in (np.dtype(t) for t in _NIFTI_LABEL_DTYPES):
        return mask
    low, high = int(mask.min(initial=0)), int(mask.max(initial=0))
    for t in _NIFTI_LABEL_DTYPES:
        info = np.iinfo(t)
        if info.min <= low and high <= info.max:
            return mask.astype(t)
    raise UserError(f"NIfTI holds labels {np.iinfo(np.int32).min}..{np.iinfo(np.int32).max}; "
                    f"this mask has {low}..{high}: export it as .tif or .npy")


def _write_failed(path: Path, exc: OSError) -> UserError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the folder is read-only or you may not write there"
    elif exc.errno == errno.ENOSPC:
        hint = "the disk is full"
    elif exc.errno == errno.ENOENT:
        hint = "the folder does not exist"
    else:
        hint = "the file could not be written"
    return UserError(
        f"could not save {path.name} in {path.parent}: {reason} ({hint}). Nothing was written; "
        "the correction is unchanged in napari. Choose another folder and export again."
    )


def _exists_error(names: list[str], folder: Path) -> ExportExistsError:
    return ExportExistsError(
        f"{' and '.join(names)} already exist(s) in {folder}; choose another name or confirm "
        "that it may be replaced"
    )


def _ordinary_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:  # Linux: read the umask without changing it (thread-safe)
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the commit's new directory entries durable (POSIX; nothing to do on Windows)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_export_temporary(name: str) -> bool:
    """``.case.tif.a1b2c3d4.tmp.tif`` (a mask), ``.case.tif.json.a1b2c3d4.tmp`` (a record)."""
    m = _TEMP_RE.match(name)
    if m is None:
        return False
    target, ext = m["target"], (m["ext"] or "").lower()
    if ext:
        return ext in SUFFIXES and mask_suffix(target) == ext
    return target.lower().endswith(".json") and mask_suffix(target[:-5]) in SUFFIXES


def remove_stale_temporaries(folder: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Delete the hidden temporary files of exports into ``folder`` that a killed export left:
    those of a process of this machine that is gone, and any older than
    :data:`STALE_TEMP_SECONDS`; return what was deleted.

    Younger ones of a running process (or of another machine) may belong to an export under
    way and are left alone.
    """
    return remove_dead_temporaries(folder, _is_export_temporary, now)


# ----------------------------------------------------------------------------- temporaries
# Every file this package writes atomically (exports, autosaves, model files, checkpoints,
# bundles, summaries) is first written to a hidden temporary file in the target's folder whose
# name says which process owns it: ``.<target>.~<host>-<pid>.<random>.tmp``. A killed process
# leaves its temporary behind; the next write into that folder removes those of processes that
# are gone (same machine, pid no longer running) or that are older than STALE_TEMP_SECONDS
# (another machine on a shared folder). Running writers never lose their temporaries.


def owner_tag() -> str:
    """``~<host>-<pid>``: this process in the names of its temporary files."""
    return f"~{_HOST}-{os.getpid()}"


def owner_is_gone(name: str) -> bool:
    """Whether the temporary file ``name`` belongs to a process of this machine that is no
    longer running (False when that cannot be told: no owner in the name, another machine)."""
    m = _OWNER_RE.search(name)
    if m is None or m["host"] != _HOST:
        return False
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # alive but not ours (EPERM), or nonsense
        return False
    return False


def create_temporary(target: Path, ext: str = "") -> tuple[int, Path]:
    """A new, empty temporary file for ``target`` (same folder, hidden, owner in its name)
    opened for writing: ``(fd, path)``. Its mode is a new file's ordinary mode (``0666`` less
    the umask), unlike :func:`tempfile.mkstemp`'s ``0600``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{owner_tag()}.{secrets.token_hex(4)}.tmp{ext}")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target))


def remove_dead_temporaries(folder: str | os.PathLike, belongs, now: float | None = None,
                            stale_seconds: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Delete the hidden files in ``folder`` for which ``belongs(name)`` is true and whose
    owner is gone (:func:`owner_is_gone`) or which are older than ``stale_seconds``; return
    what was deleted. Never raises (a folder that cannot be listed has nothing to clean)."""
    cutoff = (time.time() if now is None else now) - stale_seconds
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and belongs(entry.name)):
            continue
        with suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and (owner_is_gone(entry.name)
                                                or info.st_mtime < cutoff):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def temporaries_of(target_name: str):
    """``belongs`` for :func:`remove_dead_temporaries`: the temporaries of ``target_name``
    written by :func:`create_temporary` (``.<target>.~<owner>.<random>.tmp[...]``)."""
    prefix = f".{target_name}.~"

    def belongs(name: str) -> bool:
        return name.startswith(prefix) and ".tmp" in name[len(prefix):]

    return belongs


def commit_replace(tmp: Path, target: Path) -> None:
    """Flush the finished ``tmp`` to disk, rename it over ``target`` and make the rename
    durable: a crash at any point leaves the old ``target`` or the complete new one."""
    _fsync(tmp)
    os.replace(tmp, target)
    _fsync_folder(target.parent)


#: what ``os.link`` fails with where the file system has no hard links (FAT, SMB, FUSE, ...)
_NO_HARD_LINKS = {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                  errno.EXDEV, errno.EMLINK, errno.EINVAL}


def _link_no_clobber(tmp: Path, target: Path) -> None:
    """Make the finished ``tmp`` appear as ``target`` unless ``target`` exists.

    A hard link never replaces a file, so the check and the commit are one step (a separate
    existence check would let a concurrent export slip in between). On file systems without
    hard links (FAT, some network shares) a file created with ``O_EXCL`` is filled instead.
    Raises :class:`FileExistsError` if ``target`` exists.
    """
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                 0o666)
    try:
        with os.fdopen(fd, "wb") as out, open(tmp, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with suppress(OSError):
            os.unlink(target)
        raise


def _backup(path: Path, suffix: str) -> Path | None:
    """A hidden second name (or copy) of the file at ``path`` to put back if the export fails."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        os.link(path, backup)
    except FileNotFoundError:
        return None
    except OSError:
        shutil.copy2(path, backup)
    return backup


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _take_back(path: Path, written: tuple[int, int] | None, backup: Path | None) -> str | None:
    """Undo the commit of the mask at ``path``: put the old one back or remove the new one.

    Returns None when done, else why it could not be done."""
    try:
        if backup is not None:
            os.replace(backup, path)
        elif written is not None and _identity(path) == written:
            os.unlink(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def export_correction(mask: np.ndarray, path: str | os.PathLike, record: dict[str, Any],
                      overwrite: bool = False, scale=None) -> tuple[Path, Path]:
    """Write ``mask`` to ``path`` and ``record`` (plus file details) to ``<path>.json``, atomically.

    Returns the paths of the mask and of the record. Raises :class:`ExportExistsError` if either
    exists and ``overwrite`` is false (checked again at the commit, so a concurrent export of
    the same name cannot be replaced), and :class:`UserError` for an unsupported suffix, a mask
    the format cannot hold or a failed write (read-only folder, full disk); nothing is left
    behind then (see the module's "Safety").
    """
    if "\0" in os.fspath(path):
        raise UserError(f"cannot export to {os.fspath(path)!r}: a file name cannot contain a "
                        "NUL character; choose another name")
    path = Path(path).expanduser()
    suffix = mask_suffix(path)
    if suffix not in SUFFIXES:
        raise UserError(
            f"cannot export to {path.name!r}: choose a file ending in {', '.join(SUFFIXES)}"
        )
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise UserError(f"a label mask must hold integers, not {mask.dtype}")
    if mask.ndim < 2 or mask.size == 0:
        raise UserError(f"nothing to export: the mask has shape {mask.shape}")
    if suffix in (".nii", ".nii.gz"):
        mask = _nifti_labels(mask)
    json_path = record_path(path)
    if not overwrite:
        existing = [p.name for p in (path, json_path) if p.exists()]
        if existing:
            raise _exists_error(existing, path.parent)
    if not path.parent.is_dir():
        raise UserError(f"cannot export to {path}: the folder {path.parent} does not exist")
    remove_stale_temporaries(path.parent)

    tmp_mask = tmp_json = backup = None
    try:
        try:
            mode = _ordinary_mode()
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.",
                                        suffix=f".tmp{suffix}",
                                        dir=path.parent)
            os.close(fd)
            tmp_mask = Path(name)
            try:
                notes = _write_array(mask, tmp_mask, suffix, scale=scale)
            except (OSError, UserError):
                raise
            except Exception as exc:  # the format's library refuses this mask
                raise UserError(
                    f"cannot write this {mask.dtype} mask of shape {mask.shape} as "
                    f"{suffix} ({type(exc).__name__}: {exc}); export it as .tif or .npy. "
                    "Nothing was written."
                ) from None
            _fsync(tmp_mask)
            os.chmod(tmp_mask, mode)  # mkstemp's files are private (0600)
            full = dict(record)
            full["mask"] = {
                "file": path.name,
                "format": suffix.lstrip("."),
                "shape": list(mask.shape),
                "dtype": str(mask.dtype),
                # the whole image plane (the widget) or the layer's own array (other layers)
                "extent": full.pop("extent", "image plane"),
                **notes,
            }
            full.setdefault("versions", versions())
            full.setdefault("created", now_iso())
            full["exported"] = now_iso()
            fd, name = tempfile.mkstemp(prefix=f".{json_path.name}.{owner_tag()}.",
                                        suffix=".tmp",
                                        dir=path.parent)
            tmp_json = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(_jsonable(full), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp_json, mode)

            # commit: the mask, then its record; if the record fails, take the mask back
            if overwrite:
                backup = _backup(path, suffix)
                os.replace(tmp_mask, path)
                tmp_mask = None
            else:
                try:
                    _link_no_clobber(tmp_mask, path)
                except FileExistsError:
                    raise _exists_error([path.name], path.parent) from None
            written = _identity(path)
            try:
                if overwrite:
                    os.replace(tmp_json, json_path)
                    tmp_json = None
                else:
                    try:
                        _link_no_clobber(tmp_json, json_path)
                    except FileExistsError:
                        raise _exists_error([json_path.name], path.parent) from None
            except BaseException as exc:
                problem = _take_back(path, written, backup)
                kept, backup = backup, None  # put back, or (if that failed) the only old copy
                if problem is not None and isinstance(exc, OSError):
                    old = f" The previous {path.name} is in {kept.name}." if kept else ""
                    raise UserError(
                        f"could not save {json_path.name} in {path.parent}: "
                        f"{exc.strerror or exc}, and the new {path.name} could not be taken "
                        f"back ({problem}): it is there without its record.{old} Export "
                        "again, or delete it."
                    ) from exc
                raise
            _fsync_folder(path.parent)
        except OSError as exc:
            raise _write_failed(path, exc) from exc
    finally:
        for tmp in (tmp_mask, tmp_json, backup):
            if tmp is not None:
                with suppress(OSError):
                    tmp.unlink()
    return path, json_path


# ----------------------------------------------------------------------------- recovery


def recovery_dir() -> Path:
    """The folder for autosaved corrections.

    ``$NAPARI_PROBUNET_RECOVERY_DIR`` if set, else ``<user cache>/napari-probunet/recovery``
    (platformdirs, e.g. ``~/.cache/napari-probunet/recovery`` on Linux).
    """
    env = os.environ.get("NAPARI_PROBUNET_RECOVERY_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-probunet")) / "recovery"


def recovery_path(plane_signature: str, folder: str | os.PathLike | None = None) -> Path:
    """The recovery file of the image plane with this signature."""
    key = plane_signature.split(":")[-1][:40]
    if not key.isalnum():
        raise ValueError(f"not an image signature: {plane_signature!r}")
    return Path(folder or recovery_dir()) / f"{key}.npz"


def _is_recovery_temporary(name: str) -> bool:
    """``.<key>.npz.~<owner>.<random>.tmp``: an autosave under way, or left by a crash."""
    return name.startswith(".") and ".npz.~" in name and name.endswith(".tmp")


def save_recovery(plane_signature: str, correction: np.ndarray, info: dict[str, Any],
                  source_labels: np.ndarray | None = None,
                  folder: str | os.PathLike | None = None) -> Path:
    """Autosave a correction (the ROI crop) and what is needed to rebuild it, atomically.

    Written to a temporary file named after this process, flushed to disk, then renamed over
    the previous autosave: a crash leaves the previous autosave or the new one, never a mix.
    Temporary files of autosaves killed before (their process gone) are removed.
    """
    target = recovery_path(plane_signature, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    info = dict(info, saved=now_iso(), plane_signature=plane_signature)
    arrays = {"correction": np.asarray(correction),
              "info": np.array(json.dumps(_jsonable(info)))}
    if source_labels is not None:
        arrays["source_labels"] = np.asarray(source_labels)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{owner_tag()}.", suffix=".tmp",
                                dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        commit_replace(Path(name), target)  # fsync: a crash must not leave an empty file
    finally:
        if os.path.exists(name):
            os.unlink(name)
    remove_dead_temporaries(target.parent, _is_recovery_temporary)
    return target


_RECOVERY_MEMBERS = {"correction.npy", "source_labels.npy", "info.npy"}


def read_recovery_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(correction, source_labels or None, info)`` from a recovery file.

    Declared sizes are checked against :mod:`napari_probunet.limits` before anything is read
    (:class:`~napari_probunet.errors.LimitError`); a damaged file or one that does not hold
    what an autosave holds is a :class:`UserError`. :func:`load_recovery` is the forgiving
    version the widget uses.
    """
    import zipfile

    from napari_probunet.review.bundle import npy_member_header, read_npy_member

    path = Path(path)
    where = str(path)
    try:
        size = path.stat().st_size
        zf = zipfile.ZipFile(path)
    except Exception as exc:  # BadZipFile, OSError, EOFError, ValueError...
        raise UserError(f"{where}: not a readable recovery file ({exc})") from None
    with zf:
        names = set(zf.namelist())
        if not names <= _RECOVERY_MEMBERS or not {"correction.npy", "info.npy"} <= names:
            raise UserError(f"{where}: not a recovery file (it holds {sorted(names)[:5]})")
        declared = {n[:-4]: npy_member_header(zf, n, where) for n in sorted(names)}
        shape, _, dtype = declared["correction"]
        if len(shape) != 2 or dtype.kind not in "biu":
            raise UserError(f"{where}: the correction is {shape} {dtype}, not a 2-D label map")
        limits.check_plane(shape[0], shape[1], f"{where}: the correction")
        if "source_labels" in declared:
            s_shape, _, s_dtype = declared["source_labels"]
            if s_shape != shape or s_dtype.kind not in "biu":
                raise UserError(f"{where}: the source labels are {s_shape} {s_dtype}, not like "
                                f"the correction {shape}")
        i_shape, _, i_dtype = declared["info"]
        if i_shape != () or i_dtype.kind != "U":
            raise UserError(f"{where}: the info is {i_shape} {i_dtype}, not a JSON text")
        limits.check("MAX_HEADER_BYTES", i_dtype.itemsize // 4, f"{where}: the info")
        total = sum(limits.array_bytes(s, d.itemsize) for s, _, d in declared.values())
        limits.check_decoded(total, size, f"{where}: the arrays")
        arrays = {k: read_npy_member(zf, f"{k}.npy", where, s, d)
                  for k, (s, _, d) in declared.items()}
    try:
        info = json.loads(str(arrays["info"][()]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{where}: the info is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{where}: the info is a JSON {type(info).__name__}, not an object")
    return arrays["correction"], arrays.get("source_labels"), info


def load_recovery(plane_signature: str, folder: str | os.PathLike | None = None):
    """``(correction, source_labels or None, info)`` autosaved for this plane, or ``None``.

    A damaged recovery file (empty, cut short by a crash, bit-flipped, not what it should
    hold) counts as none and is left in place for inspection: this never raises for it. One
    that declares more than a limit allows (:mod:`napari_probunet.limits`) counts as none
    too, with a warning that names the limit (raise it to restore that autosave). Temporary
    files of autosaves killed before (their process gone) are removed.
    """
    import warnings

    from napari_probunet.errors import LimitError

    path = recovery_path(plane_signature, folder)
    remove_dead_temporaries(path.parent, _is_recovery_temporary)
    if not path.is_file():
        return None
    try:
        return read_recovery_file(path)
    except LimitError as exc:
        warnings.warn(f"the autosaved correction is not offered: {exc}", stacklevel=2)
        return None
    except UserError:
        return None


def discard_recovery(plane_signature: str, folder: str | os.PathLike | None = None) -> None:
    """Delete the recovery file of this plane, if any."""
    try:
        recovery_path(plane_signature, folder).unlink()
    except FileNotFoundError:
        pass
