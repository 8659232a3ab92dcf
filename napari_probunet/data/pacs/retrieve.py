"""Retrieving one series from a PACS into the cache: checked complete, cancellable, once.

Steps (:func:`iter_retrieve`):

1. The server's listing of the series' instances (QIDO-RS), checked before anything is
   downloaded: not empty, at most :data:`~napari_probunet.limits.MAX_SERIES_INSTANCES`, as many
   as the server counts for the series, and no hole in the InstanceNumbers (a CT series is
   numbered 1..N; an instance deleted or not yet arrived leaves a gap). A series with missing
   instances is refused with :class:`~.errors.SeriesIncompleteError`, naming them.
2. If the cache holds the series with exactly the listed instances, that is the result:
   nothing is downloaded again.
3. Otherwise each instance is fetched on its own (WADO-RS), a few in parallel
   (:data:`WORKERS`), checked (its SOPInstanceUID and SeriesInstanceUID are the ones asked
   for) and written into a hidden partial folder. Between completions, at least every
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
import threading
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from napari_probunet import limits
from napari_probunet.data.pacs.cache import CachedSeries, SeriesCache, check_uid
from napari_probunet.data.pacs.client import Pacs
from napari_probunet.data.pacs.errors import (
    PacsError,
    PacsNotFoundError,
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
    summary = find_series(pacs, series_uid)
    study_uid = check_uid(study_uid or summary.study_uid, "StudyInstanceUID")
    listed = list_instances(pacs, study_uid, series_uid)
    check_complete(pacs, series_uid, listed, summary.instances)
    cached = cache.cached(series_uid)
    if cached is not None and cached.sop_uids == {e.sop_uid for e in listed}:
        yield Progress(len(listed), len(listed), 0, from_cache=True)
        return CachedSeries(cached.folder, {**cached.manifest, "_from_cache": True})
    stop = cancel or threading.Event()
    abandoned = threading.Event()
    partial = cache.begin(series_uid)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="pacs-retrieve")
    try:
        futures = {pool.submit(_fetch_one, pacs, study_uid, series_uid, e, partial, abandoned): e
                   for e in listed}
        pending, written, missing, nbytes = set(futures), [], [], 0
        yield Progress(0, len(listed))
        while pending:
            if stop.is_set():
                raise TransferCancelled(f"retrieve of series {series_uid} from {pacs.url} "
                                        "cancelled; nothing of it was kept.")
            done, pending = wait(pending, timeout=TICK, return_when=FIRST_COMPLETED)
            for f in done:
                try:
                    written.append(f.result())
                    nbytes += written[-1]["bytes"]
                except PacsNotFoundError:
                    missing.append(futures[f])
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
        abandoned.set()
        pool.shutdown(wait=False, cancel_futures=True)
        if partial is not None:
            cache.discard(partial)


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
