"""The ``probunet`` command line: :func:`main` dispatches to one module per subcommand."""

from napari_probunet.cli.main import main

__all__ = ["main"]
