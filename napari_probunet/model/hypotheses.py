"""The hypotheses record: ``n`` sampled segmentations of one image and what identifies them
(no torch: every layer imports it at module level).

One record for one idea: :meth:`napari_probunet.session.Session.sample` returns it, a review
sampling job wraps it (:class:`napari_probunet.review.jobs.Sampled`, with its request and, for
"All slices", the stacks), a hypothesis bundle holds one (``Bundle.hypotheses``,
:class:`napari_probunet.review.bundle.Bundle`: the record and what describes the case), and the
review state holds one (``ReviewState.hypotheses``), whether it came from the model or from an
opened bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Hypotheses:
    """``n`` sampled segmentations of one image (region).

    ``labels`` ``(n, H, W)`` uint8 label maps; ``z`` ``(n, d)`` float32 latents they were
    decoded from; ``seed`` the seed of ``Session.sample(n, seed)``; ``probs``
    ``(n, classes, H, W)`` float32 class probabilities (on request). Where known:
    ``uncertainty`` ``(H, W)`` float32 per-pixel disagreement (``1 -`` the majority's share,
    :func:`napari_probunet.model.images.pixel_disagreement`); ``image_signature`` of the region
    the model saw and ``plane_signature`` of the whole 2D plane
    (:func:`napari_probunet.model.images.image_signature`).
    """

    labels: np.ndarray
    z: np.ndarray
    seed: int
    probs: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    image_signature: str | None = None
    plane_signature: str | None = None

    @property
    def n(self) -> int:
        """How many hypotheses."""
        return int(self.labels.shape[0])
