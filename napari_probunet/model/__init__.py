"""The model layer: configuration, the network, its losses, model files and checkpoints.

No Qt, no napari; imports only :mod:`napari_probunet.errors`, ``limits``, ``device`` and
``files`` from outside. See docs/architecture.md.
"""
