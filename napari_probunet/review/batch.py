"""``probunet sample``: prepare hypothesis bundles for many cases, on one machine or many.

A radiology team runs the model over a whole study overnight; in the morning each case opens
in napari as the image, its hypotheses and the uncertainty map, with no model run
(:mod:`napari_probunet._reader`). One bundle per case or slice, ``<name>.probunet.zip``
(:mod:`napari_probunet.review.bundle`, ``docs/batch.md``). The command line is
:mod:`napari_probunet.cli.sample`; this module is the work it calls.

The run, in order:

1. **Plan** (:func:`~napari_probunet.review.batch_plan.plan_cases`): every input is expanded
   into work items with a unique ``case_id`` and a file-safe ``name``, sorted by ``case_id``.
   An input that cannot be expanded is a failure of its own.
2. **Share**: under ``torchrun`` (``WORLD_SIZE > 1``) rank ``r`` of ``w`` takes
   ``items[r::w]`` (:class:`~napari_probunet.review.ranks.Ranks`); every rank plans the same
   list, so no case is done twice or skipped.
3. **Sample** each item (:func:`sample_items`): skip it if a valid bundle with the same model,
   seed and ``n`` exists (unless ``--overwrite``), else load the image, encode it once, draw
   ``n`` hypotheses with the case's seed
   (:func:`~napari_probunet.review.seeds.seed_for_case_id`), and write the bundle atomically.
   A case that fails is reported and the run goes on.
4. **Summarise** (:func:`summarize`): results are gathered on rank 0, which writes
   ``summary.json`` and prints the counts and the failures. Exit code 0, or 1 if any case
   failed; 2 for a model that cannot be opened or an unusable output folder (before any work
   is done).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from napari_probunet import files
from napari_probunet.errors import UserError
from napari_probunet.model.images import pixel_disagreement
from napari_probunet.model.modelfile import bundled_model_of
from napari_probunet.review import bundle as bundles
from napari_probunet.review.batch_plan import Item, Plan
from napari_probunet.review.nodule import sample_slice
from napari_probunet.review.seeds import CASE_ID_SEED_RULE, STACK_SEED_RULE, seed_for_case_id

SUMMARY_FORMAT = "napari-probunet-sample-summary"
SUMMARY_VERSION = 1
SUMMARY_NAME = "summary.json"


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
    """What to do about a bundle already at ``path``: ("redo", why) / ("skip", None) /
    ("clash", why)."""
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
    t0 = time.perf_counter()
    seed = seed_for_case_id(settings.run_seed, item.stack_id or item.case_id)
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
        if item.stack_id is not None and np.ptp(image) == 0:
            # a blank slice of a volume (padding, outside the body): the review's *All
            # slices* leaves it empty, so no hypotheses here either
            result["status"] = "skipped"
            result["reason"] = (f"blank slice (every pixel is {image.flat[0]:g}): nothing to "
                                "segment")
            return result, None
        hyp = sample_slice(session, image, settings.n, seed, item.slice_index)
        mu, sigma = session.prior()
        # the bundle's record: its region is the whole image, so the plane is the image
        hyp = replace(hyp, z=hyp.z.astype(np.float32), plane_signature=hyp.image_signature,
                      uncertainty=pixel_disagreement(hyp.labels, len(settings.class_names)))
        if graders is not None:
            graders = np.asarray(graders, dtype=np.uint8)
            graders = graders[None] if graders.ndim == 2 else graders
        manifest = {  # n, seed and image_signature are the record's, here for their place
            "case_id": item.case_id,
            "name": item.name,
            "source": item.source,
            "slice_index": item.slice_index,
            "slice_axis": item.slice_axis,
            "image_signature": hyp.image_signature,
            "model": settings.model,
            "class_names": settings.class_names,
            "n": hyp.n,
            "seed": hyp.seed,
            "run_seed": settings.run_seed,
            "seed_rule": CASE_ID_SEED_RULE if item.stack_id is None else STACK_SEED_RULE,
            "stack_id": item.stack_id,
            "uncertainty": "per-pixel disagreement: 1 - share of the hypotheses that vote for "
                           "the majority class",
            "graders": None if graders is None else int(graders.shape[0]),
            "device": settings.device,
            "versions": settings.versions,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 4),
        }
        job = (path, bundles.Bundle(manifest=manifest, image=image, hypotheses=hyp,
                                    prior_mu=mu, prior_sigma=sigma, graders=graders))
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
        "seed_rule": CASE_ID_SEED_RULE,
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
    fd, tmp = files.create_temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=1) + "\n")
        files.commit_replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------- the run's setting


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


def prepare_out(out: Path) -> Path:
    out = out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the bundles")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probunet-write-test-{platform.node()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the output folder {out} "
                        f"({exc.strerror or exc})") from None
    return out.absolute()


#: ``.<name>.probunet.zip.tmp<pid>``: the temporary bundles of earlier versions
_OLD_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.tmp\d+$")


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete what killed runs left half-written: temporary bundles and summaries whose
    process is gone (or that are older than an hour), and those of earlier versions.

    Temporaries of running processes are left alone, so two runs into one folder (other
    ranks, another ``probunet sample`` started meanwhile) never delete each other's files.
    """
    def belongs(name: str) -> bool:  # .<name>.probunet.zip.~<owner>.<random>.tmp, or summary's
        return name.endswith(".tmp") and (f"{bundles.SUFFIX}.~" in name
                                          or f"{SUMMARY_NAME}.~" in name)

    removed = files.remove_dead_temporaries(out, belongs)
    for entry in os.scandir(out) if out.is_dir() else ():
        # an earlier version's name: no such process writes into this folder any more
        m = _OLD_TEMP_RE.match(entry.name)
        if m and m["target"].endswith((bundles.SUFFIX, SUMMARY_NAME)) and entry.is_file():
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def model_record(model, path_arg: str) -> dict[str, Any]:
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
