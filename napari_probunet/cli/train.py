"""``probunet train``: a recipe and its overrides on the command line (one option per
:class:`~napari_probunet.training.settings.TrainConfig` field), then
:func:`~napari_probunet.training.train.train`; rank 0 prints the summary as JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, fields

from napari_probunet.model.config import ModelConfig
from napari_probunet.training.settings import TrainConfig, load_recipe
from napari_probunet.training.train import train


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``probunet train``: its own, then every ``TrainConfig`` field."""
    parser.add_argument("--config", help="TOML recipe with [model] and [train] tables "
                        "(e.g. napari_probunet/recipes/default_lesions.toml)")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, models); "
                        "re-running the same command resumes")
    parser.add_argument("--export-to", help="copy the best model file here when done")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over even if a checkpoint exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--stop-at", type=int,
                        help="stop after this step (checkpoint kept; rerun resumes)")
    parser.add_argument("--time-limit", type=float, metavar="MINUTES",
                        help="stop after this many minutes (checkpoint kept; rerun resumes)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "lr_milestones":
            parser.add_argument(flag, type=float, nargs="*", default=None)
        elif f.type in ("bool",):
            parser.add_argument(flag, type=_truth, default=None, metavar="BOOL")
        else:
            typ = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
            parser.add_argument(flag, type=typ, default=None)


def _truth(text: str) -> bool:
    """A boolean option's value: ``1``, ``true``, ``yes`` or ``on`` (any case) is true."""
    return text.lower() in ("1", "true", "yes", "on")


def run(args: argparse.Namespace) -> int:
    """Train (or resume) as the recipe and the options say; returns the exit code."""
    if args.config:
        model_cfg, cfg = load_recipe(args.config)
    else:
        model_cfg, cfg = ModelConfig(), TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    cfg = TrainConfig(**{**asdict(cfg), **overrides})
    summary = train(model_cfg, cfg, args.out, resume=not args.no_resume, progress=not args.quiet,
                     export_to=args.export_to, recipe_name=args.config, stop_at=args.stop_at,
                     time_limit_s=None if args.time_limit is None else 60 * args.time_limit)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    if summary.get("world_size", 1) > 1:
        # Everything is written, the ranks agreed on their weights and the process group is
        # closed; yet about one run in 20 of a 2-process CPU (gloo) run then aborted while the
        # interpreter shut down ("terminate called without an active exception", exit -6, in
        # torch's C++ teardown), and torchrun reported the whole job failed. Leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
