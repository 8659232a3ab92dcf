"""The one palette for the radiologists' (graders') masks, wherever they are drawn.

Okabe-Ito colours (Okabe & Ito 2008, "Color Universal Design"), told apart with every common
colour-vision deficiency, and none of them the hypotheses' cyan
(:data:`napari_probunet.gui.review.common.HYPOTHESIS_COLOURS`): orange, blue, vermilion and
reddish purple for the 4 LIDC-IDRI radiologists, then bluish green and yellow for more
readers. The samples, the case reader, the scan reader and the DICOM SEG reader all colour
radiologist ``r`` (0-based) with :func:`radiologist_colour`; :mod:`napari_probunet.gui.dock`
draws them as outlines :data:`~napari_probunet.gui.dock.GRADER_CONTOUR` pixels wide.

Only napari's colormap class is imported here (a reader may import this module).
"""

from __future__ import annotations

#: one colour per radiologist, in reading order (hex RGB)
RADIOLOGIST_COLOURS = ("#E69F00", "#0072B2", "#D55E00", "#CC79A7", "#009E73", "#F0E442")


def radiologist_colour(r: int) -> str:
    """Radiologist ``r``'s colour (0-based; wraps around after the 6th)."""
    return RADIOLOGIST_COLOURS[int(r) % len(RADIOLOGIST_COLOURS)]


def one_colour_colormap(colour: str):
    """A Labels colormap with label 1 in ``colour`` and the background transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})


def radiologist_colormap(r: int):
    """Radiologist ``r``'s (0-based) Labels colormap: label 1 in :func:`radiologist_colour`."""
    return one_colour_colormap(radiologist_colour(r))
