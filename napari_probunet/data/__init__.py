"""Multi-rater data: the in-memory :class:`Case`, synthetic sets with known truth, readers of
real formats, splits and augmentation. numpy/scipy only: no torch, napari or Qt here.

- :mod:`.case` -- ``Case`` (image, graders' masks, ids) and ``ModeTruth`` (known modes).
- :mod:`.synthetic` -- the ``lesions`` and ``flips`` generators and ``SyntheticDataset``.
- :mod:`.readers` -- generic multi-rater folders, DeepMind's LIDC crops, the LIDC pickle,
  ``open_cases`` for any of them, ``write_multirater_folder``.
- :mod:`.images` -- one image or mask file (``load_image``, ``load_mask``), size-checked.
- :mod:`.splits` -- ``split_cases``: train / val / test parts that never share a patient.
- :mod:`.summary` -- dataset statistics (``probunet data info``).
- :mod:`.safe_pickle` -- the restricted unpickler the pickle reader uses.
- :mod:`.augment` -- identical geometric augmentation of an image and its masks.

Formats, name patterns and the synthetic recipes are documented in ``docs/data.md``.
"""

from napari_probunet.data.augment import Augmentation, augment
from napari_probunet.data.case import Case, ModeTruth
from napari_probunet.data.images import load_image, load_mask
from napari_probunet.data.readers import (
    open_cases,
    read_deepmind_lidc,
    read_lidc_pickle,
    read_multirater_folder,
    write_multirater_folder,
)
from napari_probunet.data.splits import split_cases, split_indices
from napari_probunet.data.synthetic import (
    CLASS_NAMES,
    KINDS,
    SyntheticDataset,
    make_case,
    parse_synthetic_spec,
)

__all__ = [
    "CLASS_NAMES",
    "KINDS",
    "Augmentation",
    "Case",
    "ModeTruth",
    "SyntheticDataset",
    "augment",
    "load_image",
    "load_mask",
    "make_case",
    "open_cases",
    "parse_synthetic_spec",
    "read_deepmind_lidc",
    "read_lidc_pickle",
    "read_multirater_folder",
    "split_cases",
    "split_indices",
    "write_multirater_folder",
]
