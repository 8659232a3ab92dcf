"""napari manifest entry points for File → Open Sample (napari.yaml ``sample_data``).

Thin on purpose: the samples are made in :mod:`napari_probunet.gui.samples`.
"""

from pathlib import Path  # noqa: F401  (kept: tests locate the repository through it)

from napari_probunet.gui.samples import (  # noqa: F401  (re-exported for napari and the tests)
    CONTRAST,
    LARGE_CASE,
    LARGE_OFFSET,
    LIDC_SAMPLES,
    RATER_COLOURS,
    one_colour_colormap,
    sample_lesion,
    sample_lesion_faint,
    sample_lesion_large,
    sample_lidc_nodule,
    sample_lidc_nodule_1of4,
    sample_lidc_nodule_2of4,
)
