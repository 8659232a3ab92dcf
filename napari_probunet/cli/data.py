"""``probunet data``: write synthetic multi-rater datasets and inspect any dataset.

    probunet data synth lesions --n 200 --seed 0 --size 64 --graders 4 --out data/lesions
    probunet data info data/lesions
    probunet data info "synthetic:flips?n=500&seed=1"
    probunet data info ../shared/data/lidc-crops --json
    probunet data info "../shared/data/lidc-idri-slices#fractions=0.75,0.05,0.2&seed=0&by=patient"

``synth`` writes a generic multi-rater folder (see :func:`write_multirater_folder`) with the
known truth per case and a ``dataset.json`` describing the recipe, seed and versions; it
refuses a non-empty folder unless ``--overwrite``. ``info`` prints counts (with patients and
nodules where the data has them), sizes, graders, intensity range, how often graders drew
nothing and, for synthetic data, per-mode statistics; given a split without ``part=`` it prints
the cases, patients and nodules of every part.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from napari_probunet import __version__
from napari_probunet.data.readers import open_cases, write_multirater_folder
from napari_probunet.data.summary import split_table, summarize
from napari_probunet.data.synthetic import CLASS_NAMES, KINDS, RECIPE_VERSION, SyntheticDataset


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``synth`` and ``info`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    synth = sub.add_parser(
        "synth", help="write a synthetic multi-rater dataset with known truth",
        description="Write a synthetic multi-rater dataset (one folder per case: image.npy, "
        "mask_<r>.png per grader, truth.npz, case.json; dataset.json on top).",
    )
    synth.add_argument("kind", choices=KINDS, help="which generator (see docs/data.md)")
    synth.add_argument("--n", type=int, default=100, help="number of cases (default 100)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    synth.add_argument("--graders", type=int, default=4, help="graders per image (default 4)")
    synth.add_argument("--out", required=True, help="folder to write (must be empty or new)")
    synth.add_argument("--image-format", choices=("npy", "tif"), default="npy",
                       help="image file type, float32 either way (default npy)")
    synth.add_argument("--overwrite", action="store_true",
                       help="replace a dataset previously written into --out")
    info = sub.add_parser(
        "info", help="summarise a dataset (folder, pickle or synthetic: spec)",
        description="Summarise a dataset: counts, sizes, graders, empty masks, modes.",
    )
    info.add_argument("source", metavar="PATH_OR_SPEC",
                      help="a folder, a .pkl/.pickle file or 'synthetic:KIND?n=..&seed=..'")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(_data_parser=parser)


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command; returns the exit code."""
    command = getattr(args, "data_command", None)
    if command == "synth":
        return _synth(args)
    if command == "info":
        return _info(args)
    args._data_parser.print_help()
    return 2


# ----------------------------------------------------------------------------- synth


def _synth(args: argparse.Namespace) -> int:
    dataset = SyntheticDataset(args.kind, args.n, seed=args.seed, size=args.size,
                               graders=args.graders)
    meta = {
        "source": "synthetic",
        "recipe": args.kind,
        "recipe_version": RECIPE_VERSION,
        "spec": dataset.spec,
        "seed": args.seed,
        "n": args.n,
        "size": args.size,
        "graders": args.graders,
        "class_names": CLASS_NAMES[args.kind],
        "intensity_scale": "raw, about 0..1.3 (lesions) / 0..1.1 (flips); map [0, 1] linearly",
        "napari_probunet_version": __version__,
        "numpy_version": np.__version__,
    }
    out = write_multirater_folder(dataset, args.out, overwrite=args.overwrite,
                                  image_format=args.image_format, meta=meta)
    print(f"wrote {args.n} {args.kind} cases ({args.size}x{args.size}, {args.graders} graders, "
          f"seed {args.seed}) to {out}")
    return 0


# ----------------------------------------------------------------------------- info


def _info(args: argparse.Namespace) -> int:
    source = str(args.source)
    if "#" in source and "part=" not in source.split("#", 1)[1]:
        table = split_table(source)
        if args.json:
            json.dump(table, sys.stdout, indent=1)
            print()
            return 0
        sp = table["split"]
        print(f"{table['source']}: split by {sp['by']}, fractions {sp['fractions']}, "
              f"seed {sp['seed']}")
        for name, row in table["parts"].items():
            counted = [k for k in ("patients", "nodules", "groups") if k in row]
            extra = "".join(f", {row[k]} {k}" for k in counted)
            print(f"  {name:<6} {row['cases']} cases{extra}")
        return 0
    cases = open_cases(args.source)
    summary = {"source": source, **summarize(cases)}
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
        return 0
    s = summary
    ids = "".join(f", {s[k]} {k}" for k in ("patients", "nodules") if k in s)
    print(f"{s['source']}: {s['cases']} cases{ids}")
    print(f"  image shapes:     {s['image_shapes']}")
    print(f"  graders per case: {s['graders_per_case']}")
    lo, hi = s["intensity_range"]
    print(f"  intensity range:  {lo:.4g} .. {hi:.4g} (raw values)")
    print(f"  mask classes:     {s['classes_present']}")
    if s["groups"] is not None:
        print(f"  groups (patient/series ids): {s['groups']}")
    print(f"  empty grader masks: {s['empty_mask_fraction']:.1%} of {s['grader_masks']}; cases "
          f"with all graders empty: {s['cases_all_graders_empty']}, with some empty: "
          f"{s['cases_some_graders_empty']}")
    print(f"  mean foreground fraction: {s['mean_foreground_fraction']:.2%}")
    if "modes" in s:
        print("  modes (mean true probability vs graders' frequency):")
        for name, m in s["modes"].items():
            if m["mean_true_prob"] >= 0.0005 or (m["grader_freq"] or 0) > 0:
                freq = "-" if m["grader_freq"] is None else f"{m['grader_freq']:.3f}"
                print(f"    {name:>12}: {m['mean_true_prob']:.3f}  {freq}")
    if "flip_rates" in s:
        print("  flip rates (true vs graders):")
        for name, f in s["flip_rates"].items():
            print(f"    {name}: {f['true']:.3f}  {f['graders']:.3f}")
    return 0
