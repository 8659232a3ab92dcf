"""napari manifest entry points for the dock widgets (napari.yaml ``widgets``).

Thin on purpose: the widgets live in :mod:`napari_probunet.gui`.
"""

from napari_probunet.gui.explorer.widget import ExplorerWidget
from napari_probunet.gui.nodule.widget import NoduleWidget
from napari_probunet.gui.pacs.widget import PacsWidget
from napari_probunet.gui.review.widget import ReviewWidget

__all__ = ["ExplorerWidget", "NoduleWidget", "PacsWidget", "ReviewWidget"]
