"""The only Qt and napari code of the package: the review widget, the explorer and launch."""
