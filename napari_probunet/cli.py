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


def check_writable(out, example: str):
    """Before any work: refuse an ``--out`` file that cannot be written, with one line.

    Creates its missing folders only to probe them, and removes them again, so a run that
    fails later leaves nothing behind. Returns the expanded :class:`~pathlib.Path` (or ``None``
    for no ``--out``). ``example`` is a file name to suggest (e.g. ``result.json``).
    """
    import os
    from contextlib import suppress
    from pathlib import Path

    if not out:
        return None
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {example}")
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # deepest first
    above = made[-1].parent if made else out.parent
    if not above.is_dir():
        raise UserError(f"cannot write --out {out}: {above} is a file, not a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.name}.probe{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); choose a file "
                        "in a folder you may write to") from None
    finally:
        for folder in made:  # nothing is left behind until there is a result to write
            with suppress(OSError):
                folder.rmdir()
    return out


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
