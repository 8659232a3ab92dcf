"""``probunet sample SCAN --click Z,Y,X`` (or ``--centres FILE``): 3D hypotheses of nodules.

The same code as the *Nodule (3D)* widget (:mod:`napari_probunet.review.nodule`): the scan (a
DICOM series folder or file, a scan folder with ``ct/``, a NIfTI volume, or a series on a
DICOMweb server, ``dicomweb:<url>?series=<uid>``, retrieved into the cache) is read as napari
shows it (slices, rows, columns; HU), and each click is a voxel ``slice,row,column`` in that
order, 0-based, as napari's status bar shows it. For click ``k`` (1-based) the run writes:

- ``<scan>_nodule-<k>.npz``: ``labels`` ``(n, S, h, w)`` uint8 (the hypotheses on their slices
  and crop), ``first`` (the scan slice of ``labels[:, 0]``), ``roi`` ``(row0, col0, h, w)``,
  ``latents`` ``(S, n, d)``, ``volumes_mm3`` ``(n,)``, ``diameters_mm`` ``(n,)``;
- ``<scan>_nodule-<k>.json``: the click, the seed and rule, the volumes and their spread, the
  model, the versions.

The seed of click ``k`` is the ``--seed`` itself (the seed box of the widget), so the widget with
the same click and seed shows the same hypotheses (a test holds them equal).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from napari_probunet.data import formats
from napari_probunet.errors import UserError


def parse_click(text: str) -> tuple[int, int, int]:
    """``--click "90,365,317"`` -> ``(90, 365, 317)`` (slice, row, column)."""
    try:
        parts = tuple(int(float(v)) for v in str(text).replace(" ", "").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0:
        raise argparse.ArgumentTypeError(
            f"--click takes slice,row,column (three 0-based voxel indices, as napari's status "
            f"bar shows them), e.g. 90,365,317; not {text!r}")
    return parts


def read_centres(path) -> list[tuple[int, int, int]]:
    """Nodule centres from a CSV file: one ``slice,row,column`` per line (a header line and
    lines starting with ``#`` are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read --centres {path} ({exc.strerror or exc})") from None
    out = []
    for i, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or row[0].lstrip().startswith("#") or not row[0].strip():
            continue
        try:
            out.append(parse_click(",".join(row[:3])))
        except argparse.ArgumentTypeError:
            if i == 1:  # a header
                continue
            raise UserError(f"{path}, line {i}: expected slice,row,column (0-based voxel "
                            f"indices), got {','.join(row)!r}") from None
    if not out:
        raise UserError(f"{path}: no nodule centres (one slice,row,column per line)")
    return out


def open_scan(path) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """``(data (Z, Y, X), spacing (mm), name)`` of a DICOM series, scan folder or NIfTI."""
    from napari_probunet.data.lidc_scan import is_scan_folder
    from napari_probunet.data.volumes import read_dicom_series, read_nifti_volume

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder")
    if p.is_dir() and is_scan_folder(p):
        p = p / "ct"
    if formats.suffix_of(p) in formats.NIFTI.suffixes:
        vol = read_nifti_volume(p)
    else:
        vol = read_dicom_series(p)
    if vol.data.ndim != 3:
        raise UserError(f"{path}: a nodule is sampled in a 3D scan; this is "
                        f"{vol.data.ndim}-D {vol.data.shape}")
    name = formats.stem_of(Path(path)) or "scan"
    return vol.data, tuple(float(s) for s in vol.spacing[-3:]), name


def run(args: argparse.Namespace) -> int:
    """Sample every click of ``args`` on the one scan of ``args.inputs``; 0, or 1 if a click
    failed (its reason printed; the others are written)."""
    import torch

    from napari_probunet.review.batch import choose_threads

    if len(args.inputs) != 1:
        raise UserError("--click / --centres sample nodules of one scan: give one scan (a DICOM "
                        f"series folder, a scan folder or a NIfTI volume), not {len(args.inputs)}")
    clicks = list(args.click or []) + (read_centres(args.centres) if args.centres else [])
    threads_before = torch.get_num_threads()
    threads = choose_threads(args.threads)  # the rule of every probunet sample run
    if threads:
        torch.set_num_threads(threads)
    try:
        return _sample_clicks(args, clicks)
    finally:
        torch.set_num_threads(threads_before)  # called in-process (tests, notebooks): no trace


def _sample_clicks(args: argparse.Namespace, clicks: list[tuple[int, int, int]]) -> int:
    """Write each click's hypotheses (the module docstring); 0, or 1 if a click failed."""
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.nodule import NoduleRequest, sample_nodule
    from napari_probunet.review.provenance import versions
    from napari_probunet.session import Session

    model = load_model(args.model, device="cpu")
    from napari_probunet.model.sanity import check_diversity  # identical hypotheses: refused

    check_diversity(model, Path(model.source_path or str(args.model)).name)
    from napari_probunet.data.pacs.spec import resolve_inputs  # a series on a DICOMweb server

    local = resolve_inputs(args.inputs, report=lambda line: print(f"probunet sample: {line}"))
    data, spacing, name = open_scan(local[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    session = Session(model, device=args.device)
    failed = 0
    for k, click in enumerate(clicks, start=1):
        stem = out / f"{name}_nodule-{k}"
        try:
            hyp = sample_nodule(session, NoduleRequest(data, spacing, click, n=int(args.n),
                                                       seed=int(args.seed)))
        except UserError as exc:
            print(f"probunet sample: nodule {k} at {click}: FAILED: {exc}")
            failed += 1
            continue
        np.savez_compressed(stem.with_suffix(".npz"), labels=hyp.labels, first=hyp.first,
                            roi=np.array(hyp.roi), latents=hyp.latents,
                            volumes_mm3=hyp.volumes_mm3, diameters_mm=hyp.diameters_mm)
        summary = {"scan": str(args.inputs[0]), "click": list(click), "n": hyp.n,
                   "seed": hyp.seed, "coupling": hyp.coupling, "spacing_mm": list(spacing),
                   "slices": [hyp.first, hyp.first + hyp.labels.shape[1] - 1],
                   "roi": list(hyp.roi), "volumes_mm3": hyp.volumes_mm3.tolist(),
                   "diameters_mm": hyp.diameters_mm.tolist(), "volume": hyp.volume_summary(),
                   "notes": hyp.notes, "model": {"name": str(args.model),
                                                 "sha256": model.source_sha256},
                   "versions": versions(napari=False, python=True)}
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        s = summary["volume"]
        print(f"probunet sample: nodule {k} at {click}: slices {summary['slices'][0]}-"
              f"{summary['slices'][1]}, volume median {s['median']:,.0f} mm3 (5-95%: "
              f"{s['p5']:,.0f}-{s['p95']:,.0f}), {round(s['empty_share'] * hyp.n)} of {hyp.n} "
              f"no nodule -> {stem.with_suffix('.npz').name}")
    return 1 if failed else 0
