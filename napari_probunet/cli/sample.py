"""``probunet sample``: its arguments, its progress and its summary on screen.

The work is :mod:`napari_probunet.review.batch` (plan, share out, sample, summarise); see its
docstring for the run's steps and ``docs/batch.md`` for the command. Exit code 0, or 1 if any
case failed; 2 (:mod:`napari_probunet.cli.main`'s error policy) for a model that cannot be
opened or an unusable output folder, before any work is done.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from napari_probunet.cli.sample_nodules import parse_click
from napari_probunet.data.pacs.spec import resolve_inputs
from napari_probunet.errors import UserError
from napari_probunet.model.modelfile import load_model
from napari_probunet.review import batch
from napari_probunet.review.batch_plan import plan_cases, readable
from napari_probunet.review.provenance import versions
from napari_probunet.review.ranks import Ranks


def parse_slices(text: str) -> tuple[int, ...] | None:
    """``--slices``: ``"all"`` -> None; ``"3,7,10-12"`` -> (3, 7, 10, 11, 12) (ranges
    inclusive, 0-based)."""
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
             "(one per line, relative to the list), NIfTI volumes (axial slices), folders of one "
             "DICOM series (axial slices), a series on a PACS "
             "('dicomweb:<url>?series=<uid>', docs/pacs.md), multi-rater "
             "folders, LIDC pickles or 'synthetic:lesions?n=..' specs",
    )
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors), or a bundled model: lidc (lung "
                        "nodule, CT), lesions (synthetic demo), default")
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
    parser.add_argument("--click", type=parse_click, action="append", metavar="Z,Y,X",
                        help="3D hypotheses of the nodule at this voxel (slice,row,column, "
                             "0-based, as napari shows the scan) of one scan (a DICOM series, a "
                             "scan folder or a NIfTI volume); repeat for more nodules. See "
                             "docs/scans.md")
    parser.add_argument("--centres", metavar="CSV",
                        help="nodule centres, one slice,row,column per line (as --click)")
    parser.add_argument("--threads", type=threads_arg, default="auto",
                        help="torch threads per process: a number, 0 for torch's default, or "
                             "'auto' (default): torch's default reduced to the cores that other "
                             "work leaves idle; left alone when OMP_NUM_THREADS is set "
                             "(torchrun sets 1)")


def _report(line: str) -> None:
    print(f"probunet sample: {line}", file=sys.stderr)


def threads_arg(text: str) -> str | int:
    """``--threads``: ``"auto"`` or a count >= 0."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"--threads takes 'auto' or a number >= 0, not {text!r}")
    return value


def print_summary(summary: dict[str, Any], file=None) -> None:
    """The counts, failures and problems of :func:`~napari_probunet.review.batch.summarize`."""
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
    print(f"summary: {Path(summary['out']) / batch.SUMMARY_NAME}", file=file)


def run(args: argparse.Namespace) -> int:
    """Sample every planned case of this rank; rank 0 writes and prints the summary."""
    import torch  # lazy: `probunet sample --help` does not load torch
    from tqdm import tqdm

    from napari_probunet.model.sanity import check_diversity
    from napari_probunet.session import Session

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.click or args.centres:  # nodules in a scan: review/nodule.py, as the widget
        from napari_probunet.cli import sample_nodules

        return sample_nodules.run(args)
    started, t0 = datetime.now(UTC), time.perf_counter()
    threads_before, ranks = torch.get_num_threads(), None
    try:
        threads = batch.choose_threads(args.threads)
        if threads:
            torch.set_num_threads(threads)
        ranks = Ranks(args.device)
        model = load_model(args.model, device="cpu")  # first: a bad model leaves nothing behind
        check_diversity(model, Path(model.source_path or str(args.model)).name)
        out = batch.prepare_out(args.out)
        session = Session(model, device=ranks.device)
        settings = batch.RunSettings(
            out=out, n=int(args.n), run_seed=int(args.seed), overwrite=bool(args.overwrite),
            model=batch.model_record(model, args.model),
            class_names=list(model.config.class_names), device=str(ranks.device),
            versions=versions(napari=False, python=True), threads=torch.get_num_threads(),
        )
        plan = plan_cases(resolve_inputs(args.inputs, report=_report), args.slices)
        mine = plan.items[ranks.rank::ranks.world]
        if ranks.rank == 0:
            for f in plan.failures:
                print(f"probunet sample: FAILED {readable(f['case_id'])}: "
                      f"{readable(f['reason'])}", file=sys.stderr)
        batch.remove_stale_temporaries(out)
        tty = sys.stderr.isatty()
        bar = tqdm(total=len(mine), unit="case", file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if tty else 30.0,
                   disable=ranks.rank != 0 or bool(os.environ.get("TQDM_DISABLE")),
                   desc="sampling" if ranks.world == 1 else f"rank 0 of {ranks.world}")
        results, counts = [], {"done": 0, "skipped": 0, "failed": 0}
        with bar:
            for r in batch.sample_items(mine, session, settings, rank=ranks.rank):
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
        summary = batch.summarize(plan, gathered, settings, started,
                                  time.perf_counter() - t0, args.inputs, ranks.world)
        if ranks.rank == 0:
            batch.write_json_atomic(out / batch.SUMMARY_NAME, summary)
            print_summary(summary)
        ranks.barrier()  # nobody exits (and gets the job torn down) before the summary is written
        failed = bool(summary["counts"]["failed"] or summary["problems"])
        return 1 if failed and ranks.rank == 0 else 0  # torchrun then reports rank 0 only
    finally:
        if ranks is not None:
            ranks.close()
        torch.set_num_threads(threads_before)  # called in-process (tests, notebooks): no trace
