"""Files written safely and read warily: the helpers every atomic write of the package uses.

A base module: it imports nothing of ours but :mod:`napari_probunet.errors`, so the model
layer (model files, checkpoints), the review layer (exports, autosaves, bundles) and the
command line share one implementation without importing each other.

Writing
-------
Every file this package writes atomically (exports, autosaves, model files, checkpoints,
bundles, summaries) is first written to a hidden temporary file in the target's folder whose
name says which process owns it: ``.<target>.~<host>-<pid>.<random>.tmp`` (see
:func:`create_temporary`, :func:`owner_tag`). It is then flushed to disk and renamed over the
target (:func:`commit_replace`), or, where an existing file must never be replaced, hard-linked
onto it (:func:`link_no_clobber`). A killed process leaves its temporary behind; the next write
into that folder removes those of processes that are gone (same machine, pid no longer
running) or that are older than :data:`STALE_TEMP_SECONDS` (another machine on a shared
folder), see :func:`remove_dead_temporaries`. Running writers never lose their temporaries.
``docs/reliability.md`` sums up what is atomic and what a crash can lose.

Reading
-------
:func:`npy_member_header` and :func:`read_npy_member` read one ``.npy`` member of a ZIP
archive (a bundle, a recovery file) without unpickling anything and without ever inflating
more than the size the caller checked against :mod:`napari_probunet.limits`.

Checking
--------
:func:`check_writable` refuses an ``--out`` that cannot be written before any work starts.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import platform
import re
import secrets
import shutil
import stat
import time
import zipfile
from contextlib import suppress
from pathlib import Path

import numpy as np

from napari_probunet.errors import UserError

#: a hidden temporary file older than this (seconds) was left by a killed process
STALE_TEMP_SECONDS = 3600.0
#: ``.~<host>-<pid>.`` inside a temporary file's name: which process on which machine owns it
_OWNER_RE = re.compile(r"\.~(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.")
#: this machine, as it appears in the temporary files' names
_HOST = hashlib.sha256(platform.node().encode("utf-8", "surrogateescape")).hexdigest()[:6]
#: what ``os.link`` fails with where the file system has no hard links (FAT, SMB, FUSE, ...)
_NO_HARD_LINKS = {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                  errno.EXDEV, errno.EMLINK, errno.EINVAL}
_READ_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- checks


def check_writable(out, example: str):
    """Before any work: refuse an ``--out`` file that cannot be written, with one line.

    Creates its missing folders only to probe them, and removes them again, so a run that
    fails later leaves nothing behind. Returns the expanded :class:`~pathlib.Path` (or ``None``
    for no ``--out``). ``example`` is a file name to suggest (e.g. ``result.json``).
    """
    if not out:
        return None
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {example}")
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    above = made[-1].parent if made else out.parent
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); choose a file "
                        "in a folder you may write to") from None
    finally:
        for folder in made:  # nothing is left behind until there is a result to write
            with suppress(OSError):
                folder.rmdir()
    return out


def ordinary_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    with suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:  # Linux: read the umask without changing it (thread-safe)
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# ----------------------------------------------------------------------------- flushing


def fsync_file(path: Path) -> None:
    """Flush the file at ``path`` to disk (its data, before it is committed under its name)."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Make a commit's new directory entries durable (POSIX; nothing to do on Windows)."""
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- temporaries


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


def give_ordinary_mode(path: str | os.PathLike) -> None:
    """Set ``path``'s mode to a new file's ordinary one (:func:`ordinary_mode`): for files that
    a library wrote by its own rename (safetensors' ``save_file`` leaves ``0600``), so that a
    model file saved here is as readable as any other file its owner creates."""
    with suppress(OSError):  # a file system without POSIX modes keeps what it has
        os.chmod(path, ordinary_mode())


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


# ----------------------------------------------------------------------------- commits


def commit_replace(tmp: Path, target: Path) -> None:
    """Flush the finished ``tmp`` to disk, rename it over ``target`` and make the rename
    durable: a crash at any point leaves the old ``target`` or the complete new one."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_folder(target.parent)


def link_no_clobber(tmp: Path, target: Path) -> None:
    """Make the finished ``tmp`` appear as ``target`` unless ``target`` exists.

    A hard link never replaces a file, so the check and the commit are one step (a separate
    existence check would let a concurrent writer slip in between). On file systems without
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


# ----------------------------------------------------------------------------- .npy members


def _npy_header(f, where: str, member: str,
                error: type[UserError]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` from the header of an ``.npy`` stream (no data read)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # ValueError, a bad CRC or deflate stream, EOFError...
        raise error(f"{where}: {member} cannot be read ({exc}); the file is damaged") from None
    return tuple(shape), bool(fortran), dtype


def npy_member_header(zf: zipfile.ZipFile, member: str, where: str,
                      error: type[UserError] = UserError) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` that the ``.npy`` member declares, reading only its
    header (a few hundred bytes, whatever the member inflates to)."""
    try:
        with zf.open(member) as f:
            return _npy_header(f, where, member, error)
    except UserError:
        raise
    except Exception as exc:  # missing member, encrypted, unsupported compression...
        raise error(f"{where}: {member} cannot be read ({exc}); the file is damaged") from None


def read_npy_member(zf: zipfile.ZipFile, member: str, where: str, shape: tuple[int, ...],
                    dtype: np.dtype, error: type[UserError] = UserError) -> np.ndarray:
    """The ``.npy`` member ``member``, which must be ``shape`` ``dtype`` (checked by the
    caller against the limits): its header is compared first, then its data is streamed into
    an array of exactly that size, so a member that inflates further costs no memory."""
    try:
        with zf.open(member) as f:
            found_shape, fortran, found_dtype = _npy_header(f, where, member, error)
            if found_shape != tuple(shape) or found_dtype != np.dtype(dtype):
                raise error(f"{where}: {member} is {found_shape} {found_dtype}, the manifest "
                            f"says {tuple(shape)} {np.dtype(dtype)}")
            count = math.prod(shape)
            out = np.empty(count, dtype=found_dtype)
            target = out.view(np.uint8) if out.nbytes else None
            pos = 0
            while pos < out.nbytes:
                chunk = f.read(min(_READ_CHUNK, out.nbytes - pos))
                if not chunk:
                    raise EOFError(f"{member} ends after {pos} of {out.nbytes} bytes")
                target[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                pos += len(chunk)
            if f.read(1):  # also makes zipfile check the CRC of the whole member
                raise ValueError(f"{member} holds more data than {tuple(shape)} {dtype}")
    except UserError:
        raise
    except Exception as exc:  # bad CRC, bad deflate stream, truncated member...
        raise error(f"{where}: {member} cannot be read ({exc}); the file is damaged") from None
    return out.reshape(shape, order="F" if fortran else "C")
