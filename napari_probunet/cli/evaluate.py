"""``probunet evaluate``: GED, Hungarian-matched IoU and calibration of a model, on screen or
as JSON (the evaluation is :mod:`napari_probunet.training.evaluate`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import suppress

from napari_probunet.data.context import NEIGHBOURS, interior
from napari_probunet.errors import UserError
from napari_probunet.files import check_writable
from napari_probunet.model.modelfile import load_model
from napari_probunet.review.calibration import RELIABILITY_BINS
from napari_probunet.review.refine import DEFAULT_RULE, POOL, RULES
from napari_probunet.training.evaluate import DEFAULT_SAMPLES, evaluate_model, open_data
from napari_probunet.training.evaluate_clicks import CLICK_ON
from napari_probunet.training.evaluate_nodules import scan_folders
from napari_probunet.training.report import format_report


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``probunet evaluate``."""
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors), or a bundled model: lidc (lung "
                        "nodule, CT), lesions (synthetic demo), default")
    parser.add_argument("--data", required=True,
                        help="a multi-rater folder, synthetic:KIND?n=N&seed=S[&size=H], or a scan "
                        "folder (ct/ + annotations/*.xml; or a folder of them): 3D per nodule")
    parser.add_argument("--samples", type=int, nargs="+", default=list(DEFAULT_SAMPLES),
                        metavar="N", help="sample counts to report (default: 16 100)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto = CUDA, then MPS, then CPU")
    parser.add_argument("--bins", type=int, default=RELIABILITY_BINS,
                        help="bins of the reliability table (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--per-image", action="store_true",
                        help="include per-image numbers (3D: per nodule; 3D with --clicks: per "
                        "(nodule, radiologist) pair)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is often faster "
                        "for small models on a busy machine)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--nodules", action="store_true",
                        help="3D figures per nodule instead of per slice: each nodule's "
                        "hypotheses from one click at the centre of the radiologists' outlines, "
                        "against their 3D masks (LIDC-IDRI slices data; a scan folder with "
                        "reading files is always evaluated so); with --clicks K, refining by "
                        "clicks in 3D. See docs/evaluation.md")
    parser.add_argument("--outline-pixels", action="store_true",
                        help="scan folders: count each outline's own pixels as nodule (the "
                        "default leaves them out, as the LIDC-IDRI slices the models learned "
                        "from do)")
    parser.add_argument("--clicks", type=int, metavar="K",
                        help="refining by clicks: simulate K clicks per (slice, radiologist) "
                        "from the radiologist's mask and report the best and median hypothesis "
                        "IoU after 0..K clicks (n = the smallest --samples); with --nodules (or "
                        "a scan folder) per (nodule, radiologist) on the 3D hypotheses, 3D IoU. "
                        "See docs/evaluation.md, 'Refining by clicks'")
    parser.add_argument("--rule", nargs="+", default=[DEFAULT_RULE], choices=RULES,
                        help=f"--clicks: how hypotheses are chosen among the latents that agree "
                        f"(default {DEFAULT_RULE}; several are compared in one pass)")
    parser.add_argument("--pool", type=int, default=POOL,
                        help=f"--clicks: latents scored per refinement (default {POOL})")
    parser.add_argument("--click-on", default="best", choices=CLICK_ON,
                        help="--clicks: the next click goes to the largest error of the "
                        "hypothesis nearest the radiologist (best) or of the pixel-wise "
                        "(voxel-wise in 3D) majority (default best)")
    parser.add_argument("--slices", type=int, metavar="N",
                        help="--clicks in 2D: evaluate N slices drawn with --seed (default: "
                        "all; in 3D: --nodule-count)")
    parser.add_argument("--nodule-count", type=int, metavar="N",
                        help="3D figures (--nodules, or a scan folder; also with --clicks): "
                        "evaluate N nodules drawn with --seed (default: all)")
    parser.add_argument("--neighbours", default="data", choices=NEIGHBOURS,
                        help="a model that sees neighbouring slices (slice_context): each "
                        "slice's neighbours in the data (default), or none (the slice "
                        "repeated, as a single 2D image is given)")
    parser.add_argument("--interior", action="store_true",
                        help="only the slices whose neighbours (at least one each side) are in "
                        "the data: in the LIDC-IDRI slices set a missing neighbour marks a "
                        "nodule's end, which a whole scan never shows")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="also evaluate this model (e.g. a trained deterministic U-Net, "
                        "recipes/lidc_unet.toml) on the same data and report it beside")


def _write_out(out, text: str) -> None:
    """``--out`` written atomically; if that fails the result is printed, then the error."""
    if out is None:
        return
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text + "\n")
        tmp.replace(out)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink()
        print(text)  # the evaluation is not lost
        raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); the result "
                        "was printed above instead") from None


def _run_nodules(args: argparse.Namespace, cases, spec: str, model, out, scans=()) -> int:
    """``--nodules`` or scan folders: the 3D figures
    (:mod:`napari_probunet.training.evaluate_nodules`), or with ``--clicks`` the 3D click
    evaluation (:mod:`napari_probunet.training.evaluate_clicks3d`)."""
    from napari_probunet.training.evaluate_nodules import nodules_of_scans, nodules_of_slices

    if args.baseline:
        raise UserError("--baseline is not available for 3D figures yet; evaluate the "
                        "baseline model in a second run")
    notes: list[str] = []
    if scans:
        nodules, notes = nodules_of_scans(scans, include_outline=args.outline_pixels)
    else:
        nodules = nodules_of_slices(cases)
    result, report = _evaluate_3d(args, model, nodules)
    result = {"model": str(args.model), "data": spec, **result}
    if scans:
        result["scans"] = [str(p) for p in scans]
        result["outline_pixels"] = "included" if args.outline_pixels else "left out"
        result["notes"] = notes
    text = json.dumps(result, indent=2, allow_nan=False)
    _write_out(out, text)
    for note in notes:
        print(f"probunet evaluate: note: {note}", file=sys.stderr)
    print(text if args.json else report(result))
    return 0


def _evaluate_3d(args: argparse.Namespace, model, nodules):
    """``(result, the function that formats it)`` of the 3D figures or, with ``--clicks``,
    of the 3D click evaluation."""
    if args.clicks is not None:
        from napari_probunet.training.evaluate_clicks3d import (
            evaluate_clicks_3d,
            format_clicks3d_report,
        )

        return evaluate_clicks_3d(
            model, nodules, clicks=args.clicks, n=min(args.samples), seed=args.seed,
            rules=args.rule, pool=args.pool, click_on=args.click_on, count=args.nodule_count,
            device=args.device, progress=not args.quiet, per_pair=args.per_image,
        ), format_clicks3d_report
    from napari_probunet.training.evaluate_nodules import evaluate_nodules, format_nodule_report

    return evaluate_nodules(model, nodules, n_samples=args.samples, seed=args.seed,
                            device=args.device, progress=not args.quiet,
                            per_nodule=args.per_image, count=args.nodule_count,
                            ), format_nodule_report


def _check_3d_options(args: argparse.Namespace, three_d: bool) -> None:
    """Refuse an option that counts slices in 3D, or nodules in 2D."""
    if three_d and args.slices is not None:
        raise UserError("--slices draws slices for the 2D figures; for 3D figures draw "
                        "nodules with --nodule-count N")
    if not three_d and args.nodule_count is not None:
        raise UserError("--nodule-count is for 3D figures (--nodules, or a scan folder); "
                        "for slices use --slices N with --clicks")


def _run_clicks(args: argparse.Namespace, cases, spec: str, model, out) -> int:
    """``--clicks``: simulated clicks (:mod:`napari_probunet.training.evaluate_clicks`)."""
    from napari_probunet.training.evaluate_clicks import evaluate_clicks, format_clicks_report

    if args.baseline:
        raise UserError("--clicks cannot be combined with --baseline; run them separately")
    result = evaluate_clicks(model, cases, clicks=args.clicks, n=min(args.samples),
                             seed=args.seed, rules=args.rule, pool=args.pool,
                             click_on=args.click_on, slices=args.slices, device=args.device,
                             progress=not args.quiet)
    result = {"model": str(args.model), "data": spec, **result}
    text = json.dumps(result, indent=2, allow_nan=False)
    _write_out(out, text)
    print(text if args.json else format_clicks_report(result))
    return 0


def _interior(cases, context: int):
    """The cases whose ``context`` neighbours each side are in the data (none: an error)."""
    keep = interior(cases, context)
    if len(keep) == 0:
        raise UserError("--interior: no slice has its neighbours in this data (it needs "
                        "nodule and slice ids, as the LIDC-IDRI slices set has)")
    return cases.subset(keep) if hasattr(cases, "subset") else [cases[int(i)] for i in keep]


def run(args: argparse.Namespace) -> int:
    """Evaluate (and the baseline), write ``--out``, print the report; returns the exit code."""
    if args.bins < 1:
        raise UserError("--bins must be at least 1")
    out = check_writable(args.out, "result.json")  # before any work: fail fast, nothing lost
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        import torch  # lazy: `probunet evaluate --help` does not load torch

        torch.set_num_threads(args.threads)
    scans = scan_folders(args.data)
    _check_3d_options(args, bool(scans) or args.nodules)
    if args.interior and (scans or args.nodules):
        raise UserError("--interior keeps some slices of each nodule, so it applies to the 2D "
                        "figures only; leave it out with --nodules or a scan folder")
    if scans:  # whole scans with reading files: always 3D, per nodule
        model = load_model(args.model, device="cpu")
        return _run_nodules(args, None, str(args.data), model, out, scans)
    cases, spec = open_data(args.data)
    model = load_model(args.model, device="cpu")
    if args.interior:
        cases, spec = _interior(cases, max(1, model.config.slice_context)), spec + " (interior)"
    if args.nodules:
        return _run_nodules(args, cases, spec, model, out)
    if args.clicks is not None:
        return _run_clicks(args, cases, spec, model, out)
    baseline = load_model(args.baseline, device="cpu") if args.baseline else None  # fail fast
    result = evaluate_model(model, cases, n_samples=args.samples, seed=args.seed,
                            device=args.device, progress=not args.quiet, n_bins=args.bins,
                            per_image=args.per_image, neighbours=args.neighbours)
    result = {"model": str(args.model), "data": spec, **result}
    if baseline is not None:
        base = evaluate_model(baseline, cases,
                              n_samples=args.samples, seed=args.seed, device=args.device,
                              progress=not args.quiet, n_bins=args.bins,
                              neighbours=args.neighbours)
        result["baseline"] = {"model": str(args.baseline), **base}
    text = json.dumps(result, indent=2, allow_nan=False)
    _write_out(out, text)
    if args.json:
        for note in result.get("notes", []):
            print(f"probunet evaluate: note: {note}", file=sys.stderr)
        print(text)
    else:
        print(format_report(result))
        if args.out:
            print(f"\nwrote {args.out}")
    return 0
