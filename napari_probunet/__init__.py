"""napari-probunet: review ambiguous segmentations with a Probabilistic U-Net.

Importing this package is cheap: torch, napari and Qt are imported only by the
modules that need them (``model``, ``session``, the ``_widget`` modules), so
napari can read the plugin manifest without loading a deep-learning stack.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
