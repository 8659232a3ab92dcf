"""``probunet assess``: score every grader's mask of every case under a model, to CSV.

The scoring and the outlier rule are :mod:`napari_probunet.review.assess`; this module reads
the arguments, writes the CSV (atomically, or on stdout) and prints the one-line summary.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import suppress

import numpy as np

from napari_probunet.data.readers import open_cases
from napari_probunet.errors import UserError
from napari_probunet.files import check_writable
from napari_probunet.model.modelfile import load_model
from napari_probunet.review.assess import QUANTILE, REFERENCE_SAMPLES, assess_cases, to_csv


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``probunet assess``."""
    parser.description = (
        "Score every grader's mask of every case under a model: the posterior mean (also in "
        "prior-sigma units), KL to the prior in nats and IoU with the reconstruction. A mask is "
        "flagged when its KL is above the 95th percentile of the KL of the model's own samples "
        "of that image, or its IoU below their 5th percentile and below 0.8."
    )
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors), or a bundled model: "
                        "lidc (lung nodule, CT), lesions (synthetic demo), default")
    parser.add_argument("--data", required=True,
                        help="a multi-rater folder, LIDC pickle, or synthetic:KIND?n=N&seed=S")
    parser.add_argument("--out", metavar="FILE.csv",
                        help="write the CSV here (default: print it on stdout)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto = CUDA, then MPS, then CPU")
    parser.add_argument("--reference-samples", type=int, default=REFERENCE_SAMPLES, metavar="N",
                        help=f"own samples per image that set the outlier thresholds "
                             f"(default {REFERENCE_SAMPLES}; 0 = no outlier flags)")
    parser.add_argument("--quantile", type=float, default=QUANTILE,
                        help=f"flag KL above this quantile of the samples' KL, IoU below 1 minus "
                             f"it (default {QUANTILE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reference samples")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N cases")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def run(args: argparse.Namespace) -> int:
    """Score the masks and write the CSV; returns the exit code."""
    if args.reference_samples != 0 and args.reference_samples < 2:
        raise UserError("--reference-samples must be 0 (no flags) or at least 2")
    if not 0.5 <= args.quantile < 1.0:
        raise UserError(f"--quantile must be in [0.5, 1), got {args.quantile}")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    out = check_writable(args.out, "scores.csv")  # before any work: fail fast, nothing lost
    cases = open_cases(args.data)
    if args.limit is not None:
        cases = [cases[i] for i in range(min(args.limit, len(cases)))]
    if len(cases) == 0:
        raise UserError(f"{args.data}: no cases to assess")
    model = load_model(args.model, device="cpu")
    rows = assess_cases(model, cases, device=args.device, n_reference=args.reference_samples,
                        quantile=args.quantile, seed=args.seed, progress=not args.quiet)
    text = to_csv(rows, model.config.latent_dim)
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(out)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink()
            sys.stdout.write(text)  # the scores are not lost
            raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); the scores "
                            "were printed above instead") from None
    else:
        sys.stdout.write(text)
    if not args.quiet:
        n_out = sum(r["outlier"] for r in rows)
        kl = np.array([r["kl"] for r in rows])
        where = f" -> {args.out}" if args.out else ""
        print(f"assessed {len(rows)} masks of {len(cases)} cases{where}: median KL "
              f"{np.median(kl):.2f} nats, {n_out} flagged", file=sys.stderr)
    return 0
