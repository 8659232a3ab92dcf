"""A mask and its record committed as one unit (no Qt, no torch): the transaction every export
(:mod:`~napari_probunet.review.export`, :mod:`~napari_probunet.review.seg_export`) runs.

An export of ``NAME`` writes two files, ``NAME`` (the mask) and ``NAME.json`` (its record).
:class:`ExportUnit` makes them one unit:

- **One writer per name**: the commit holds an exclusive ``flock`` on the hidden lock file
  ``.NAME.export-lock`` from before the existence check to after the last rename, so two
  exports of one name (two widgets, a widget and ``probunet sample``) run one after the other
  and the pair on disk is always one writer's. The lock file is removed by its holder (a
  waiter that finds it removed takes the new one), or by the next export into the folder if
  its holder was killed.
- **A journal**: both new files are written to hidden temporary files and flushed first; the
  old pair (if any) gets hidden second names (hard links, or copies where the file system has
  none); then the journal ``.NAME.export-journal`` (JSON: the temporaries, the backups and the
  identity of the new files) is written and flushed; only then are the mask and the record
  renamed into place (or linked, without ``overwrite``). The journal is removed once both are
  in place and flushed, and the backups after it.
- **A crash at any instant**: before the journal exists nothing was committed (the old pair is
  untouched; the temporaries are removed later as a dead process's); once it exists, the next
  export of that name, or any export into that folder (:func:`recover_folder`), finds it with
  its writer gone and puts the old pair back from the backups (removing new files where there
  was no old pair), then removes the journal: the old pair or, if the journal was already
  removed, the new pair, never a mix. A backup named in a journal is never removed before its
  pair is whole again.
- **Faults on purpose** (the tests): ``PROBUNET_EXPORT_FAULT=crash:<step>`` ends the writing
  process (``os._exit(70)``) at ``<step>``, ``pause:<step>:<seconds>`` sleeps there; steps are
  ``written``, ``journal``, ``mask``, ``companion`` (after the image pixels' file, when
  there is one), ``record``, ``done`` (see :data:`STEPS`).

``docs/reliability.md`` sums up these guarantees and the tests that check them.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from napari_probunet import files
from napari_probunet.errors import UserError

try:  # POSIX; elsewhere exports of one name are not serialised (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: the named instants of a commit, in order (for ``PROBUNET_EXPORT_FAULT``)
STEPS = ("written", "journal", "mask", "companion", "record", "done")
LOCK_SUFFIX = ".export-lock"
JOURNAL_SUFFIX = ".export-journal"
FAULT_VARIABLE = "PROBUNET_EXPORT_FAULT"


class ExportExistsError(UserError):
    """The target file (or its record) exists and ``overwrite`` was not given."""


def record_path(path: str | os.PathLike) -> Path:
    """Where the JSON record of a mask file goes: ``<path>.json``."""
    return Path(f"{os.fspath(path)}.json")


def exists_error(names: list[str], folder: Path) -> ExportExistsError:
    return ExportExistsError(
        f"{' and '.join(names)} already exist(s) in {folder}; choose another name or confirm "
        "that it may be replaced"
    )


def write_failed(path: Path, exc: OSError) -> UserError:
    """The user's message for an export that failed with ``exc`` (nothing was written)."""
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


def fault_point(step: str) -> None:
    """Crash or pause here if ``PROBUNET_EXPORT_FAULT`` names ``step`` (tests only)."""
    value = os.environ.get(FAULT_VARIABLE, "")
    if not value:
        return
    action, _, rest = value.partition(":")
    name, _, seconds = rest.partition(":")
    if name != step:
        return
    if action == "crash":
        os._exit(70)
    if action == "pause":
        time.sleep(float(seconds or 1.0))


def _identity(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


# ----------------------------------------------------------------------------- the lock


class _NameLock:
    """An exclusive ``flock`` on ``.NAME.export-lock`` beside the target (see the module)."""

    def __init__(self, path: Path) -> None:
        self.file = path.with_name(f".{path.name}{LOCK_SUFFIX}")
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if fcntl is None:  # pragma: no cover
            return True
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            # the holder before us may have removed the file: then lock the new one
            if _same(fd, self.file):
                self.fd = fd
                return True
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with suppress(OSError):
            os.unlink(self.file)  # before unlocking: a waiter then retries on a new file
        os.close(self.fd)
        self.fd = None


def _same(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# ----------------------------------------------------------------------------- recovery


def _journal_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{JOURNAL_SUFFIX}")


def _roll_back(path: Path, journal: dict[str, Any]) -> None:
    """Put the old files of the unit ``path`` back from the backups the journal names (removing
    new files where there was no old one), then remove the temporaries; OSError if it cannot."""
    folder = path.parent
    for member in journal.get("members", []):
        target, backup, new = folder / member["target"], member.get("backup"), member.get("new")
        now = _identity(target)
        replaced = now is None or (new is not None and now == list(new))
        if backup and (folder / backup).exists():
            if replaced:  # the new file (or nothing) is there: the old one goes back
                os.replace(folder / backup, target)
            else:  # never committed: the old file is still in place
                os.unlink(folder / backup)
        elif not backup and replaced and now is not None:
            os.unlink(target)  # there was no old file
    for member in journal.get("members", []):
        with suppress(FileNotFoundError):
            os.unlink(folder / member["temp"])
    files.fsync_folder(folder)


def _recover_name(path: Path) -> bool:
    """Under the name's lock: undo an interrupted commit of ``path`` if a journal is there."""
    jp = _journal_path(path)
    try:
        journal = json.loads(jp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        journal = None
    if isinstance(journal, dict):
        _roll_back(path, journal)
    os.unlink(jp)  # an unreadable journal was never completed: nothing was committed
    files.fsync_folder(path.parent)
    return True


def journal_files(folder: str | os.PathLike) -> set[str]:
    """The names of the hidden files the journals in ``folder`` refer to (never removed as
    stale temporaries while their journal is there)."""
    named: set[str] = set()
    with suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and entry.name.endswith(JOURNAL_SUFFIX):
                with suppress(OSError, ValueError, AttributeError):
                    journal = json.loads(Path(entry.path).read_text(encoding="utf-8"))
                    named.update(str(m[k]) for m in journal["members"]
                                 for k in ("temp", "backup") if m.get(k))
    return named


def recover_folder(folder: str | os.PathLike) -> list[Path]:
    """Finish what killed exports into ``folder`` left: every journal whose writer is gone (its
    name's lock is free) is rolled back (the old pair put back), and dead writers' lock files
    are removed. Returns the targets whose pair was restored. Never raises."""
    restored: list[Path] = []
    try:
        entries = [e.name for e in os.scandir(folder) if e.name.startswith(".")]
    except OSError:
        return restored
    for suffix in (JOURNAL_SUFFIX, LOCK_SUFFIX):
        for name in entries:
            if not name.endswith(suffix) or len(name) <= len(suffix) + 1:
                continue
            target = Path(folder) / name[1:-len(suffix)]
            lock = _NameLock(target)
            with suppress(OSError):
                if not lock.acquire(blocking=False):
                    continue  # a live export of that name
                try:
                    if _recover_name(target):
                        restored.append(target)
                finally:
                    lock.release()
    return restored


# ----------------------------------------------------------------------------- the unit


def _backup(path: Path, ext: str) -> Path | None:
    """A hidden second name (or copy) of the file at ``path`` (named as a temporary of it
    ending in ``ext``), or None if there is none."""
    if not path.exists():
        return None
    backup = path.with_name(f".{path.name}.{files.owner_tag()}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        os.link(path, backup)
    except FileNotFoundError:
        return None
    except OSError:
        shutil.copy2(path, backup)
    return backup


class ExportUnit:
    """Write and commit ``path`` (the mask), its companions (the corrected region's pixels,
    ``<path>.image.npy``) and ``path.json`` (its record) as one unit.

    >>> with ExportUnit(path, ".tif", overwrite) as unit:    # doctest: +SKIP
    ...     write_mask_file(mask, unit.mask_temp(), ".tif")
    ...     unit.finish_mask(mode)
    ...     unit.write_record(full_record, mode)
    ...     unit.commit()

    The files are written outside the lock; :meth:`commit` takes the name's lock, rolls back
    an interrupted export of the name, and (without ``overwrite``) raises
    :class:`ExportExistsError` if the mask or its record exists. Leaving removes what is left
    of the temporaries and releases the lock. OSErrors are the caller's to turn into a message
    (:func:`write_failed`).
    """

    def __init__(self, path: Path, suffix: str, overwrite: bool) -> None:
        self.path, self.json_path = path, record_path(path)
        self.suffix, self.overwrite = suffix, overwrite
        #: ``(temporary, target, ext)`` of every file of the unit, in commit order (the
        #: record last: an export is complete when its record is there)
        self.members: list[tuple[Path, Path, str]] = []
        self._lock = _NameLock(path)

    def __enter__(self) -> ExportUnit:
        return self

    def __exit__(self, *exc) -> None:
        try:
            for tmp, _, _ in self.members:
                with suppress(OSError):
                    tmp.unlink()
        finally:
            self._lock.release()

    def temporary(self, target: Path, ext: str) -> Path:
        """A new hidden temporary file for ``target`` (named for its format ``ext``) to fill;
        committed with the unit."""
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.{files.owner_tag()}.",
                                    suffix=f".tmp{ext}", dir=target.parent)
        os.close(fd)
        self.members.append((Path(name), target, ext))
        return Path(name)

    def mask_temp(self) -> Path:
        """The mask's temporary file (:meth:`temporary` for the target itself)."""
        return self.temporary(self.path, self.suffix)

    def finish(self, tmp: Path, mode: int) -> None:
        """Flush the filled temporary ``tmp`` to disk and give it the ordinary ``mode``."""
        files.fsync_file(tmp)
        os.chmod(tmp, mode)  # mkstemp's files are private (0600)

    def finish_mask(self, mode: int) -> None:
        self.finish(self.members[0][0], mode)

    def write_record(self, full: dict[str, Any], mode: int) -> None:
        """Write the JSON record to its hidden temporary file, flushed to disk."""
        fd, name = tempfile.mkstemp(prefix=f".{self.json_path.name}.{files.owner_tag()}.",
                                    suffix=".tmp", dir=self.path.parent)
        self.members.append((Path(name), self.json_path, ""))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(full, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, mode)

    def commit(self) -> None:
        """Under the name's lock: roll back an interrupted export of the name, check (without
        ``overwrite``) that neither file exists, journal, then put every file in place, the
        record last (see the module docstring). On an error the old files are put back before
        it is raised. The lock is released on leaving the ``with`` block."""
        self._lock.acquire()
        _recover_name(self.path)
        if not self.overwrite:  # the first taken, as the no-clobber link would find it
            taken = next((t for _, t, _ in self.members if t.exists()), None)
            if taken is not None:
                raise exists_error([taken.name], self.path.parent)
        fault_point("written")
        backups = [_backup(t, ext) if self.overwrite else None for _, t, ext in self.members]
        journal = {"owner": files.owner_tag(), "target": self.path.name, "members": [
            {"target": t.name, "temp": tmp.name, "backup": b and b.name, "new": _identity(tmp)}
            for (tmp, t, _), b in zip(self.members, backups)]}
        jp = _journal_path(self.path)
        files.commit_replace(self._journal_temp(journal), jp)  # flushed, renamed, durable
        fault_point("journal")
        try:
            for k, (tmp, target, _) in enumerate(self.members):
                self._put(tmp, target)
                fault_point("mask" if k == 0 else "record" if target == self.json_path
                            else "companion")
            files.fsync_folder(self.path.parent)
        except BaseException:
            with suppress(OSError):
                _roll_back(self.path, journal)
                jp.unlink()
            raise
        os.unlink(jp)
        files.fsync_folder(self.path.parent)
        fault_point("done")
        for backup in backups:  # the unit is whole: the old files may go
            if backup is not None:
                with suppress(OSError):
                    backup.unlink()
        if self.overwrite:  # renamed; without it, linked: second names, removed on exit
            self.members = []

    def _journal_temp(self, journal: dict[str, Any]) -> Path:
        # named as a record's temporary, so a crash while writing it leaves nothing for good
        fd, name = tempfile.mkstemp(prefix=f".{self.json_path.name}.{files.owner_tag()}.",
                                    suffix=".tmp", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(journal, f)
        return Path(name)

    def _put(self, tmp: Path, target: Path) -> None:
        if self.overwrite:
            os.replace(tmp, target)
            return
        try:
            files.link_no_clobber(tmp, target)
        except FileExistsError:
            raise exists_error([target.name], target.parent) from None
