"""``python -m napari_probunet.cli``: the same as the ``probunet`` command."""

import sys

from napari_probunet.cli.main import main

sys.exit(main())
