"""The local cache of retrieved series: one folder per SeriesInstanceUID, complete or absent.

Layout (the root is platformdirs' user cache, e.g. ``~/.cache/napari-probunet/dicomweb`` on
Linux, or ``$NAPARI_PROBUNET_PACS_CACHE``)::

    <root>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm ...    the instances, as the server sent them
    <root>/<SeriesInstanceUID>/series.json                 the manifest (written last)

A retrieve writes into a hidden folder ``.<uid>.~<host>-<pid>.<random>.partial`` next to it and
renames it to ``<uid>`` only when every instance is there and checked (:meth:`SeriesCache.commit`),
so a killed transfer never leaves a folder that looks complete; the next retrieve removes the
partial folders of processes that are gone. A cached series counts only when its manifest reads
and every file it lists is there with its size (:meth:`SeriesCache.cached`).

The manifest keeps the server's URL and how it signed in (the *name* of the secret's variable,
never the secret), the study and series UIDs and each instance's SOPInstanceUID, file, size and
InstanceNumber.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_probunet import limits
from napari_probunet.data.pacs.errors import PacsSettingsError
from napari_probunet.files import STALE_TEMP_SECONDS, owner_is_gone, owner_tag

#: the environment variable that moves the cache (e.g. to a larger disk)
CACHE_ENV = "NAPARI_PROBUNET_PACS_CACHE"
MANIFEST = "series.json"
FORMAT = 1
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def cache_root() -> Path:
    """``$NAPARI_PROBUNET_PACS_CACHE``, else ``<user cache>/napari-probunet/dicomweb``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-probunet")) / "dicomweb"


def check_uid(uid: str, what: str = "SeriesInstanceUID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters), else a clear refusal (it names a
    folder of the cache, so nothing else may get in)."""
    text = str(uid or "").strip()
    if not (_UID.match(text) and len(text) <= 64):
        raise PacsSettingsError(f"{what} {text!r} is not a DICOM UID (digits and dots, at most "
                                "64 characters); copy it from probunet pacs ls")
    return text


@dataclass(frozen=True)
class CachedSeries:
    """A complete series in the cache: its folder, its files and its manifest."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def series_uid(self) -> str:
        return self.manifest["series_uid"]

    @property
    def study_uid(self) -> str:
        return self.manifest["study_uid"]

    @property
    def sop_uids(self) -> set[str]:
        return {i["sop_uid"] for i in self.manifest["instances"]}

    @property
    def files(self) -> list[Path]:
        return [self.folder / i["file"] for i in self.manifest["instances"]]

    @property
    def from_cache(self) -> bool:
        """True when no instance was downloaded to give this result."""
        return bool(self.manifest.get("_from_cache"))

    @property
    def offline(self) -> bool:
        """True when the server could not be reached and the cached copy was used unchecked."""
        return bool(self.manifest.get("_offline"))


class SeriesCache:
    """The cache folder (see the module docstring); ``root`` None: :func:`cache_root`."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()

    def __repr__(self) -> str:
        return f"SeriesCache({str(self.root)!r})"

    def folder(self, series_uid: str) -> Path:
        return self.root / check_uid(series_uid)

    def cached(self, series_uid: str) -> CachedSeries | None:
        """The complete cached series, or None (absent, or its manifest or a file is off)."""
        folder = self.folder(series_uid)
        path = folder / MANIFEST
        try:
            if path.stat().st_size > limits.value("MAX_HEADER_BYTES"):
                return None
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT or manifest.get("series_uid") != series_uid:
                return None
            for entry in manifest["instances"]:
                name = str(entry["file"])
                if "/" in name or "\\" in name or name.startswith("."):
                    return None
                if (folder / name).stat().st_size != int(entry["bytes"]):
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return CachedSeries(folder, manifest)

    def begin(self, series_uid: str) -> Path:
        """A new, empty hidden folder to retrieve ``series_uid`` into (dead ones removed)."""
        uid = check_uid(series_uid)
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_dead_partials()
        for _ in range(100):
            partial = self.root / f".{uid}.{owner_tag()}.{secrets.token_hex(4)}.partial"
            try:
                partial.mkdir()
                return partial
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name for a partial folder in {self.root}")

    def commit(self, partial: Path, manifest: dict[str, Any]) -> CachedSeries:
        """Write the manifest into the finished ``partial`` folder and rename it into place,
        replacing an older copy of the series; returns the cached series."""
        uid = check_uid(manifest["series_uid"])
        manifest = {"format": FORMAT, **manifest}
        target = self.folder(uid)
        path = partial / MANIFEST
        with open(path, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = None
        if target.exists():
            old = self.root / f".{uid}.{owner_tag()}.{secrets.token_hex(4)}.old.partial"
            os.rename(target, old)
        try:
            os.rename(partial, target)
        except OSError:  # another process committed the same series in between
            done = self.cached(uid)
            if done is None:
                raise
            self.discard(partial)
            return done
        with suppress(OSError):
            fd = os.open(self.root, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        cached = self.cached(uid)
        if cached is None:  # pragma: no cover - only a concurrent deletion gets here
            raise OSError(f"{target}: the series vanished from the cache as it was committed")
        return cached

    def discard(self, partial: Path) -> None:
        """Remove a partial folder (a failed or cancelled retrieve)."""
        shutil.rmtree(partial, ignore_errors=True)

    def remove(self, series_uid: str) -> bool:
        """Remove a cached series; whether there was one."""
        folder = self.folder(series_uid)
        if not folder.exists():
            return False
        trash = self.root / f".{folder.name}.{owner_tag()}.{secrets.token_hex(4)}.old.partial"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def remove_dead_partials(self, stale_seconds: float = STALE_TEMP_SECONDS) -> list[Path]:
        """Remove the partial folders of processes that are gone, or older than
        ``stale_seconds``; what was removed."""
        removed = []
        cutoff = time.time() - stale_seconds
        with suppress(OSError):
            for entry in os.scandir(self.root):
                if not (entry.name.startswith(".") and entry.name.endswith(".partial")):
                    continue
                with suppress(OSError):
                    if owner_is_gone(entry.name) or entry.stat().st_mtime < cutoff:
                        shutil.rmtree(entry.path)
                        removed.append(Path(entry.path))
        return removed
