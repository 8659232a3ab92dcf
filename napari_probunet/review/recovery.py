"""Autosaved corrections: what the review keeps on disk so that a crash loses no edits.

While a correction is being edited the review widget writes its ROI crop, the map it started
from and its provenance record (:class:`~napari_probunet.review.provenance.Provenance`,
without the arrays) to one recovery file per image plane, keyed by the plane's signature:
``<recovery folder>/<signature>.npz``, a NumPy ``.npz`` with the members

=================== ============== ===========================================================
member              shape, dtype   meaning
=================== ============== ===========================================================
correction.npy      (h, w) ints    the edited crop
source_labels.npy   (h, w) ints    optional: the hypothesis (or explorer decode) it started from
info.npy            () unicode     the provenance record as JSON, plus ``saved`` (the time)
                                   and ``plane_signature``
=================== ============== ===========================================================

When the same plane is sampled again the widget offers to restore it (:func:`load_recovery`);
an export that saved the correction as it is deletes it (:func:`discard_recovery`). Writes are
atomic (a temporary file named after this process, fsync, rename: see
:mod:`napari_probunet.files`); reads check every declared size against
:mod:`napari_probunet.limits` before reading, and never unpickle.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files, limits
from napari_probunet.errors import LimitError, UserError
from napari_probunet.review.provenance import jsonable, now_iso

#: the members a recovery file may hold
_RECOVERY_MEMBERS = {"correction.npy", "source_labels.npy", "info.npy"}


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
    """The recovery file of the image plane with this signature (:class:`ValueError` if it is
    not one: a record without a plane signature has no recovery file)."""
    if not isinstance(plane_signature, str):
        raise ValueError(f"not an image signature: {plane_signature!r}")
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

    ``info`` is the correction's provenance record without its arrays
    (:meth:`~napari_probunet.review.provenance.Provenance.recovery_info`).
    Written to a temporary file named after this process, flushed to disk, then renamed over
    the previous autosave: a crash leaves the previous autosave or the new one, never a mix.
    Temporary files of autosaves killed before (their process gone) are removed.
    """
    target = recovery_path(plane_signature, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    info = dict(info, saved=now_iso(), plane_signature=plane_signature)
    arrays = {"correction": np.asarray(correction),
              "info": np.array(json.dumps(jsonable(info)))}
    if source_labels is not None:
        arrays["source_labels"] = np.asarray(source_labels)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{files.owner_tag()}.", suffix=".tmp",
                                dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        files.commit_replace(Path(name), target)  # fsync: a crash must not leave an empty file
    finally:
        if os.path.exists(name):
            os.unlink(name)
    files.remove_dead_temporaries(target.parent, _is_recovery_temporary)
    return target


def read_recovery_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(correction, source_labels or None, info)`` from a recovery file.

    Declared sizes are checked against :mod:`napari_probunet.limits` before anything is read
    (:class:`~napari_probunet.errors.LimitError`); a damaged file or one that does not hold
    what an autosave holds is a :class:`UserError`. :func:`load_recovery` is the forgiving
    version the widget uses.
    """
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
        declared = {n[:-4]: files.npy_member_header(zf, n, where) for n in sorted(names)}
        _check_declared(declared, size, where)
        arrays = {k: files.read_npy_member(zf, f"{k}.npy", where, s, d)
                  for k, (s, _, d) in declared.items()}
    try:
        info = json.loads(str(arrays["info"][()]))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise UserError(f"{where}: the info is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise UserError(f"{where}: the info is a JSON {type(info).__name__}, not an object")
    return arrays["correction"], arrays.get("source_labels"), info


def _check_declared(declared: dict[str, tuple[tuple[int, ...], bool, np.dtype]], size: int,
                    where: str) -> None:
    """Refuse members whose declared shapes and dtypes are not an autosave's, or exceed the
    limits, before any of them is read."""
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


def load_recovery(plane_signature: str, folder: str | os.PathLike | None = None):
    """``(correction, source_labels or None, info)`` autosaved for this plane, or ``None``.

    A damaged recovery file (empty, cut short by a crash, bit-flipped, not what it should
    hold) counts as none and is left in place for inspection: this never raises for it. One
    that declares more than a limit allows (:mod:`napari_probunet.limits`) counts as none
    too, with a warning that names the limit (raise it to restore that autosave). Temporary
    files of autosaves killed before (their process gone) are removed.
    """
    path = recovery_path(plane_signature, folder)
    files.remove_dead_temporaries(path.parent, _is_recovery_temporary)
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
