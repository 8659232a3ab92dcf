"""The ``probunet`` command line.

Each subcommand lives in its own module, which provides ``configure(parser)`` (add the
arguments) and ``run(args) -> int`` (do the work, return the exit code). Only the module of
the subcommand being run is imported, so ``probunet --help`` does not load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_probunet import __version__
from napari_probunet.errors import UserError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("napari_probunet.bench", "measure encode/sample/decode/training speed and memory"),
    "train": ("napari_probunet.train", "train a Probabilistic U-Net on multi-rater data"),
    "evaluate": ("napari_probunet.evaluate", "GED, Hungarian-matched IoU and calibration of a model"),
    "data": ("napari_probunet.data.cli", "write synthetic multi-rater datasets, inspect folders"),
    "sample": ("napari_probunet.batch", "prepare hypothesis bundles for many cases"),
    "assess": ("napari_probunet.assess", "score annotations under a model (KL, IoU) to CSV"),
    "info": ("napari_probunet.modelfile", "show what a model file contains"),
    "domain": ("napari_probunet.domain", "measure and record what a model's training images look like"),
}


class CommandError(UserError):
    """A command-line usage problem (printed without a traceback)."""


def _base_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probunet",
        description="Probabilistic U-Net for ambiguous segmentation: train, evaluate, "
        "sample and assess. The napari plugin is under Plugins > Probabilistic U-Net.",
    )
    parser.add_argument("--version", action="version", version=f"napari-probunet {__version__}")
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with ``command``'s arguments configured (others listed with their help)."""
    parser = _base_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"probunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"probunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
