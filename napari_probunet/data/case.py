"""The in-memory multi-rater case: one image, the masks of its graders, and (synthetic data
only) the known distribution those masks were drawn from.

Conventions, used by every reader and generator in :mod:`napari_probunet.data`:

- ``image`` is ``(H, W)`` (grey) or ``(H, W, C)`` (colour), ``float32``, **raw intensities** as
  stored (0..255 for 8-bit files, whatever a NPY/TIFF/NIfTI holds, about 0..1.3 for the
  synthetic sets). Nothing is normalised here; the model's preprocessing decides.
- ``masks`` is ``(R, H, W)`` ``uint8`` class labels, ``0`` = background, one map per grader
  (``R >= 1``). An empty map is a grader who drew nothing, which is data, not an error.
- Row ``r`` of ``masks`` is grader ``r``; for synthetic cases ``grader_modes[r]`` says which
  mode of ``truth`` that grader drew, so ``masks[r] == truth.modes[grader_modes[r]]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_probunet.errors import DataError


@dataclass
class ModeTruth:
    """The known ground-truth distribution over segmentations of one synthetic image.

    Attributes:
        modes: ``(M, H, W)`` uint8 label maps, one per mode.
        probs: ``(M,)`` float64 probabilities of the modes; they sum to 1.
        names: ``M`` mode names, e.g. ``["core", "core+halo", "nothing"]`` for ``lesions``;
            for ``flips`` a 5-character bit string per mode, character ``j`` is ``"1"`` when
            flipping class ``j`` (``flip_classes[j]``) is flipped in that mode.
        flip_probs: flips only: ``(5,)`` flip probability of each flipping class.
        flip_classes: flips only: ``(original class, flipped class)`` per flipping class.
        params: the generator's per-image parameters that set ``probs`` (for ``lesions``
            the core contrast ``k`` and halo contrast ``c``); informative only.
    """

    modes: np.ndarray
    probs: np.ndarray
    names: list[str]
    flip_probs: np.ndarray | None = None
    flip_classes: list[tuple[int, int]] | None = None
    params: dict[str, float] | None = None

    @property
    def n_modes(self) -> int:
        """Number of modes ``M``."""
        return int(len(self.probs))


@dataclass
class Case:
    """One image with the masks of its graders.

    Attributes:
        image: ``(H, W)`` or ``(H, W, C)`` float32 raw intensities (not normalised).
        masks: ``(R, H, W)`` uint8 class labels, 0 = background, one row per grader.
            A single ``(H, W)`` map is accepted and stored as ``(1, H, W)``.
        case_id: unique name of the case within its dataset (folder, key or index).
        group_id: patient / series id; cases that share it never go to different splits.
            ``None`` where the data has no such id (the case is its own group).
        truth: the known mode distribution (synthetic data only).
        grader_modes: ``(R,)`` int mode index of each grader into ``truth`` (synthetic only).
        source: the file or folder the case was read from, for messages.
        ids: where the data has them, its own ids of the case, e.g. ``{"patient": ...,
            "nodule": ..., "slice": ...}`` for LIDC-IDRI slices.
    """

    image: np.ndarray
    masks: np.ndarray
    case_id: str
    group_id: str | None = None
    truth: ModeTruth | None = None
    grader_modes: np.ndarray | None = None
    source: str | None = None
    ids: dict[str, str] | None = None

    def __post_init__(self) -> None:
        where = self.source or f"case {self.case_id!r}"
        image = np.asarray(self.image)
        masks = np.asarray(self.masks)
        if image.ndim not in (2, 3):
            raise DataError(
                f"{where}: image has shape {image.shape}; expected (H, W) or (H, W, C)."
            )
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3 or masks.shape[0] < 1:
            raise DataError(
                f"{where}: masks have shape {masks.shape}; expected (graders, H, W) with at "
                "least one grader."
            )
        if masks.shape[1:] != image.shape[:2]:
            raise DataError(
                f"{where}: masks are {masks.shape[1]}x{masks.shape[2]} but the image is "
                f"{image.shape[0]}x{image.shape[1]}; every mask must have the image's size."
            )
        if masks.dtype != np.uint8:
            if masks.dtype == bool:
                masks = masks.astype(np.uint8)
            elif masks.size and (
                not np.all(np.isfinite(masks))
                or masks.min() < 0
                or masks.max() > 255
                or not np.array_equal(masks, np.round(masks))
            ):
                raise DataError(
                    f"{where}: masks of dtype {masks.dtype} are not class labels 0..255; "
                    "convert them to integer labels (0 = background) first."
                )
            masks = masks.astype(np.uint8)
        self.image = image if image.dtype == np.float32 else image.astype(np.float32)
        self.masks = masks

    @property
    def n_graders(self) -> int:
        """Number of graders ``R``."""
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """Image size ``(H, W)``."""
        return (int(self.image.shape[0]), int(self.image.shape[1]))
