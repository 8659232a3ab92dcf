"""The ``probunet`` command line.

Each subcommand lives in its own module, ``napari_probunet.cli.<command>``, which provides
``configure(parser)`` (add the arguments) and ``run(args) -> int`` (call the library, print,
return the exit code); the work itself is in the library (``review``, ``training``, ``data``,
``model``), which knows nothing of argparse. Only the module of the subcommand being run is
imported, so ``probunet --help`` does not load torch.

One error policy for every subcommand (:func:`main`, ``docs/reliability.md``):

- exit **2** with one line ``probunet <cmd>: error: ...`` for anything about the input or the
  environment: a bad argument, a :class:`~napari_probunet.errors.UserError` (bad file, a limit
  of :mod:`napari_probunet.limits` exceeded, ...), an ``OSError`` (permission denied, disk
  full, missing file) or a ``MemoryError``;
- exit **1** only for a bug (any other exception), with one line that says so and asks for a
  report; the traceback is printed only with ``PROBUNET_DEBUG=1``;
- a subcommand's own "some cases failed" result is also 1 (``probunet sample``);
- 130 on Ctrl-C.

A run that fails leaves no folder behind that it created for ``--out`` and that is still empty.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import sys
import traceback
from pathlib import Path

from napari_probunet import __version__, limits
from napari_probunet.errors import UserError

#: subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("napari_probunet.cli.bench",
              "measure encode/sample/decode/training speed and memory"),
    "train": ("napari_probunet.cli.train", "train a Probabilistic U-Net on multi-rater data"),
    "evaluate": ("napari_probunet.cli.evaluate",
                 "GED, Hungarian-matched IoU and calibration of a model"),
    "data": ("napari_probunet.cli.data", "write synthetic multi-rater datasets, inspect folders"),
    "sample": ("napari_probunet.cli.sample", "prepare hypothesis bundles for many cases"),
    "assess": ("napari_probunet.cli.assess", "score annotations under a model (KL, IoU) to CSV"),
    "info": ("napari_probunet.cli.info", "show what a model file contains"),
    "domain": ("napari_probunet.cli.domain",
               "measure and record what a model's training images look like"),
    "pacs": ("napari_probunet.cli.pacs",
             "a PACS over DICOMweb: list series, retrieve one, store a SEG"),
}


class CommandError(UserError):
    """A command-line usage problem (printed without a traceback)."""


#: set to 1 to see the traceback of an internal error
DEBUG_ENV = "PROBUNET_DEBUG"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (``probunet <cmd>: error: ...``, exit 2)."""

    def error(self, message: str):
        one_line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {one_line} (see '{self.prog} --help')\n")


def _base_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


# ----------------------------------------------------------------------------- error policy


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_message(exc: OSError) -> str:
    """An ``OSError`` as a user reads it: what failed, on which file, and what to do."""
    what = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n]
    where = f": {' -> '.join(os.fsdecode(n) for n in names)}" if names else ""
    hint = {
        errno.EACCES: "check that you may read (or write) it",
        errno.EPERM: "check that you may read (or write) it",
        errno.EROFS: "the file system is read-only; choose another place",
        errno.ENOSPC: "the disk is full; free space or choose another place",
        errno.EDQUOT: "the disk quota is exceeded; free space or choose another place",
        errno.ENOENT: "check the path",
        errno.EISDIR: "give a file, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.ENAMETOOLONG: "choose a shorter name",
    }.get(exc.errno)
    return f"{what}{where}" + (f" ({hint})" if hint else "")


def _synthetic_specs(args: argparse.Namespace):
    """Every ``synthetic:...`` dataset the arguments name (``--data``, inputs, sources)."""
    for value in vars(args).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item.strip().lower().startswith("synthetic:"):
                yield item.strip().split("#", 1)[0]


#: (command, option) -> the smallest value that means something, for the counts that the
#: subcommand itself does not check (the message names the option as typed)
_MINIMUM = {("bench", "repeats"): (1, "--repeats"), ("bench", "threads"): (0, "--threads"),
            ("domain", "max_images"): (1, "--max-images"), ("evaluate", "clicks"): (1, "--clicks"),
            ("evaluate", "pool"): (16, "--pool"), ("evaluate", "slices"): (1, "--slices")}


def check_arguments(args: argparse.Namespace) -> None:
    """Before any work: refuse counts below their minimum (:data:`_MINIMUM`) and image sizes
    beyond the limits (:data:`~napari_probunet.limits.MAX_IMAGE_PIXELS`): ``data synth
    --size`` and the ``size=`` of any ``synthetic:`` dataset, which would otherwise allocate
    them."""
    for (command, key), (least, option) in _MINIMUM.items():
        value = getattr(args, key, None)
        if args.command == command and isinstance(value, int) and value < least:
            raise UserError(f"{option} must be at least {least}, got {value}")

    if getattr(args, "data_command", None) == "synth" and isinstance(args.size, int):
        limits.check_plane(args.size, args.size, "data synth --size")
    for spec in _synthetic_specs(args):
        from napari_probunet.data.synthetic import parse_synthetic_spec  # lazy: numpy

        try:
            size = parse_synthetic_spec(spec)["size"]
        except UserError:
            continue  # the subcommand says what is wrong with it
        limits.check_plane(size, size, f"the dataset {spec!r}: size={size}")


def _new_folders(args: argparse.Namespace) -> list[Path]:
    """The folders on the way to ``--out`` (and ``--export-to``) that do not exist yet,
    deepest first: what a failed run must not leave behind."""
    made: list[Path] = []
    for key in ("out", "export_to"):
        value = getattr(args, key, None)
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            continue
        try:
            path = Path(value).expanduser().absolute()
            made += [d for d in (path, *path.parents) if not d.exists()]
        except (OSError, ValueError):  # a name the file system refuses: nothing made there
            continue
    return sorted(set(made), key=lambda d: len(d.parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created that hold nothing but empty folders."""
    for top in folders:
        if not top.is_dir() or top.is_symlink():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            try:
                os.rmdir(dirpath)  # only ever succeeds on an empty folder
            except OSError:
                pass


def _fail(command: str, message: str) -> int:
    print(f"probunet {command}: error: {_one_line(message)}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run ``probunet``; returns the exit code (see the module docstring's error policy)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    cmd = args.command
    made = _new_folders(args)
    code = 1
    try:
        check_arguments(args)
        code = int(args._run(args) or 0)
    except UserError as exc:
        code = _fail(cmd, str(exc))
    except BrokenPipeError:  # whoever read the output stopped early (`| head`): not an error
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except MemoryError:
        code = _fail(cmd, "not enough memory for this input; use smaller images, fewer "
                     "samples or a machine with more memory")
    except OSError as exc:
        code = _fail(cmd, _os_message(exc))
    except KeyboardInterrupt:
        print(f"probunet {cmd}: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: say so on one line, the traceback only on request
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        print(f"probunet {cmd}: internal error ({type(exc).__name__}: "
              f"{_one_line(exc)[:300]}); this is a bug in napari-probunet {__version__}: "
              "please report it to its developers with the command you ran (rerun with "
              f"{DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        code = 1
    finally:
        if code != 0:
            _remove_if_empty(made)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
