"""Retrieving one series from a PACS into the cache: checked complete, cancellable, once.

Steps (:func:`iter_retrieve`):

1. The server's listing of the series' instances (QIDO-RS), checked before anything is
   downloaded: not empty, at most :data:`~napari_probunet.limits.MAX_SERIES_INSTANCES`, as many
   as the server counts for the series, and no hole in the InstanceNumbers (a CT series is
   numbered 1..N; an instance deleted or not yet arrived leaves a gap). A series with missing
   instances is refused with :class:`~.errors.SeriesIncompleteError`, naming them.
2. If the cache holds the series with exactly the listed instances, that is the result:
   nothing is downloaded again. When the server cannot be reached at all, a series in the
   cache (checked complete when it was retrieved) is the result too, marked ``offline``.
3. Otherwise each instance is fetched on its own (WADO-RS), a few in parallel
   (:data:`WORKERS` daemon threads), checked (its SOPInstanceUID and SeriesInstanceUID are
   the ones asked for) and written into a hidden partial folder. Between completions, at least every
   :data:`TICK` seconds, the cancel event is looked at and progress is reported, so a cancel
   acts within a fraction of a second even when one instance trickles in slowly (the request
   still running is abandoned: its thread ends with its timeout, and writes nothing).
4. An instance the server listed but cannot send (404) makes the series incomplete: refused,
   named. Otherwise the partial folder is committed into the cache (:mod:`.cache`).

Whatever stops a retrieve (an error, a cancel, the generator closed) removes its partial
folder. :func:`retrieve_series` is the same with a plain callback for progress.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from napari_probunet import limits
from napari_probunet.data.pacs.cache import CachedSeries, SeriesCache, check_uid
from napari_probunet.data.pacs.client import Pacs, log
from napari_probunet.data.pacs.errors import (
    PacsError,
    PacsNotFoundError,
    PacsUnreachableError,
    SeriesIncompleteError,
    TransferCancelled,
)
from napari_probunet.data.pacs.search import find_series, value

#: instances downloaded at the same time
WORKERS = 4
#: seconds between two looks at the cancel event (and two progress reports) at most
TICK = 0.1


@dataclass(frozen=True)
class Progress:
    """How far a retrieve is: ``done`` of ``total`` instances, ``bytes`` written so far."""

    done: int
    total: int
    bytes: int = 0
    from_cache: bool = False


@dataclass(frozen=True)
class Listed:
    """One instance as the server lists it."""

    sop_uid: str
    number: int | None

    @property
    def label(self) -> str:
        return (f"instance number {self.number} ({self.sop_uid})" if self.number is not None
                else self.sop_uid)


def list_instances(pacs: Pacs, study_uid: str, series_uid: str) -> list[Listed]:
    """The instances the server lists for the series, checked (step 1 of the module)."""
    items = pacs.search_instances(study_uid, series_uid,
                                  fields=("InstanceNumber", "SOPInstanceUID"))
    if not items:
        raise PacsNotFoundError(f"{pacs.url}: series {series_uid} has no instances on the "
                                "server; it may have been deleted.")
    limits.check("MAX_SERIES_INSTANCES", len(items),
                 f"{pacs.url}: series {series_uid} ({len(items)} instances listed)", PacsError)
    listed = []
    for item in items:
        number = value(item, "00200013").strip()
        listed.append(Listed(check_uid(value(item, "00080018"), "SOPInstanceUID"),
                             int(number) if number.lstrip("-").isdigit() else None))
    listed.sort(key=lambda e: (e.number is None, e.number or 0, e.sop_uid))
    return listed


def check_complete(pacs: Pacs, series_uid: str, listed: list[Listed],
                   counted: int | None) -> None:
    """Refuse a listing with a hole in its InstanceNumbers or shorter than the server's count."""
    numbers = sorted({e.number for e in listed if e.number is not None})
    problems = []
    if numbers:
        holes = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
        if holes:
            shown = ", ".join(str(n) for n in holes[:20]) + (" ..." if len(holes) > 20 else "")
            problems.append(f"instance number(s) {shown} missing from {numbers[0]}.."
                            f"{numbers[-1]}")
    if counted is not None and counted != len(listed):
        problems.append(f"the server counts {counted} instances but lists {len(listed)}")
    if problems:
        raise SeriesIncompleteError(
            f"series {series_uid} on {pacs.url} is incomplete ({len(listed)} instances): "
            f"{'; '.join(problems)}. It may still be arriving at the PACS (try again in a few "
            "minutes) or an instance was deleted (ask the PACS administrator). Nothing was "
            "kept of it.")


def retrieve_series(pacs: Pacs, series_uid: str, study_uid: str | None = None,
                    cache: SeriesCache | None = None,
                    progress: Callable[[Progress], None] | None = None,
                    cancel: threading.Event | None = None) -> CachedSeries:
    """Retrieve the series into the cache (see the module docstring) and return it."""
    job = iter_retrieve(pacs, series_uid, study_uid, cache, cancel)
    while True:
        try:
            step = next(job)
        except StopIteration as end:
            return end.value
        if progress is not None:
            progress(step)


def iter_retrieve(pacs: Pacs, series_uid: str, study_uid: str | None = None,
                  cache: SeriesCache | None = None, cancel: threading.Event | None = None,
                  workers: int = WORKERS) -> Generator[Progress, None, CachedSeries]:
    """The retrieve as a generator of :class:`Progress` (a step at least every :data:`TICK`
    seconds) that returns the :class:`~.cache.CachedSeries`."""
    series_uid = check_uid(series_uid)
    cache = cache or SeriesCache()
    try:
        summary = find_series(pacs, series_uid)
    except PacsUnreachableError as exc:  # offline: a series checked complete when it came
        cached = cache.cached(series_uid)
        if cached is None:
            raise
        log.warning("%s; series %s opened from the cache without checking it against the "
                    "server", exc, series_uid)
        yield Progress(len(cached.files), len(cached.files), 0, from_cache=True)
        return CachedSeries(cached.folder, {**cached.manifest, "_from_cache": True,
                                            "_offline": True})
    study_uid = check_uid(study_uid or summary.study_uid, "StudyInstanceUID")
    listed = list_instances(pacs, study_uid, series_uid)
    check_complete(pacs, series_uid, listed, summary.instances)
    cached = cache.cached(series_uid)
    if cached is not None and cached.sop_uids == {e.sop_uid for e in listed}:
        yield Progress(len(listed), len(listed), 0, from_cache=True)
        return CachedSeries(cached.folder, {**cached.manifest, "_from_cache": True})
    stop = cancel or threading.Event()
    partial = cache.begin(series_uid)
    fetchers = _Fetchers(pacs, study_uid, series_uid, listed, partial, workers)
    try:
        written, missing, nbytes = [], [], 0
        yield Progress(0, len(listed))
        while len(written) + len(missing) < len(listed):
            if stop.is_set():
                raise TransferCancelled(f"retrieve of series {series_uid} from {pacs.url} "
                                        "cancelled; nothing of it was kept.")
            for entry, result, error in fetchers.finished(TICK):
                if isinstance(error, PacsNotFoundError):
                    missing.append(entry)
                elif error is not None:
                    raise error
                else:
                    written.append(result)
                    nbytes += result["bytes"]
            yield Progress(len(written) + len(missing), len(listed), nbytes)
        if missing:
            raise SeriesIncompleteError(
                f"series {series_uid} on {pacs.url} is incomplete: the server lists "
                f"{len(listed)} instances but cannot send {len(missing)} of them (404): "
                f"{'; '.join(e.label for e in missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}. They may have been deleted while "
                "this ran; search again, or ask the PACS administrator. Nothing was kept.")
        manifest = {"series_uid": series_uid, "study_uid": study_uid,
                    "server": pacs.settings.record(), "patient_id": summary.patient_id,
                    "study_date": summary.study_date, "modality": summary.modality,
                    "description": summary.description,
                    "retrieved": datetime.now(UTC).isoformat(timespec="seconds"),
                    "instances": sorted(written, key=lambda w: (w["number"] is None,
                                                                w["number"] or 0, w["sop_uid"]))}
        committed = cache.commit(partial, manifest)
        partial = None
        return committed
    finally:
        fetchers.abandon()
        if partial is not None:
            cache.discard(partial)


class _Fetchers:
    """A few daemon threads fetching the listed instances into ``folder``, a queue of what they
    finished. Daemon threads: a request abandoned by a cancel never keeps the program from
    exiting (it ends with its timeout, and writes nothing)."""

    def __init__(self, pacs: Pacs, study_uid: str, series_uid: str, listed: list[Listed],
                 folder: Path, workers: int) -> None:
        self.abandoned = threading.Event()
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        for entry in listed:
            self._todo.put(entry)
        args = (pacs, study_uid, series_uid, folder, self.abandoned)
        for k in range(max(1, min(workers, len(listed)))):
            threading.Thread(target=self._work, args=args, daemon=True,
                             name=f"pacs-retrieve-{k}").start()

    def _work(self, *args) -> None:
        while not self.abandoned.is_set():
            try:
                entry = self._todo.get_nowait()
            except queue.Empty:
                return
            try:
                self._done.put((entry, _fetch_one(*args[:3], entry, *args[3:]), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the retrieve's thread
                self._done.put((entry, None, exc))

    def finished(self, wait: float) -> list[tuple[Listed, dict | None, BaseException | None]]:
        """What finished since the last call, waiting up to ``wait`` seconds for the first."""
        out = []
        try:
            out.append(self._done.get(timeout=wait))
            while True:
                out.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return out

    def abandon(self) -> None:
        """No new request starts; the ones running write nothing."""
        self.abandoned.set()


def _fetch_one(pacs: Pacs, study_uid: str, series_uid: str, entry: Listed, folder: Path,
               abandoned: threading.Event) -> dict:
    """Fetch one instance, check it is the one asked for, write it; its manifest entry."""
    if abandoned.is_set():
        raise TransferCancelled("abandoned")
    ds = pacs.fetch_instance(study_uid, series_uid, entry.sop_uid)
    got_sop = str(ds.get("SOPInstanceUID", "") or "")
    got_series = str(ds.get("SeriesInstanceUID", "") or "")
    if got_sop != entry.sop_uid or got_series != series_uid:
        raise PacsError(f"{pacs.url} sent instance {got_sop or '(no SOPInstanceUID)'} of series "
                        f"{got_series or '(none)'} when asked for {entry.sop_uid} of "
                        f"{series_uid}; the server is misbehaving: ask its administrator.")
    if abandoned.is_set():  # cancelled while it downloaded: write nothing
        raise TransferCancelled("abandoned")
    name = f"{entry.sop_uid}.dcm"
    tmp = folder / f".{name}.tmp"
    ds.save_as(tmp, enforce_file_format=False)
    os.replace(tmp, folder / name)
    return {"sop_uid": entry.sop_uid, "file": name, "bytes": (folder / name).stat().st_size,
            "number": entry.number}
