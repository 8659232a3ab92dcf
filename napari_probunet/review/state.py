"""Per-viewer review state shared by the review widget and the latent-space explorer.

Like micro-sam's annotator state, the expensive per-image result (the encoded image in a
:class:`~napari_probunet.session.Session`) is computed once and read by every widget, but here
there is one state **per viewer** (no process-wide singleton): :func:`get_state` returns the
viewer's own :class:`ReviewState`, created on first use and dropped with the viewer.

The state holds data and emits events; it never builds widgets or layers itself.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psygnal import Signal


@dataclass
class Encoded:
    """Which image region the session currently holds."""

    layer_name: str  # the napari image layer it came from
    slice_index: tuple[int, ...]  # leading (non-spatial) indices of a stack, () for 2D
    roi: tuple[int, int, int, int]  # (row0, col0, height, width) in the layer's data pixels
    image_signature: str  # session.image_signature of the region
    # the region's pixels (raw), kept for locate/assessment and provenance
    image: np.ndarray = field(repr=False, default=None)


@dataclass
class Choice:
    """The hypothesis or latent point the clinician picked as the best fit."""

    source: str  # "hypothesis" or "explorer"
    index: int | None  # hypothesis number (0-based) when source == "hypothesis"
    z: np.ndarray  # (d,) latent it decodes from
    labels: np.ndarray  # (H, W) uint8 map inside the ROI


class ReviewState:
    """Model, session, current image region, hypotheses and choice of one viewer.

    Events (psygnal; connect with ``state.model_changed.connect(callback)``):

    - ``model_changed()``: a model was loaded (``state.session`` replaced).
    - ``image_encoded()``: ``state.encoded`` and the session's image changed.
    - ``hypotheses_changed()``: ``state.hypotheses`` / ``state.hypothesis_layers`` changed.
    - ``current_hypothesis_changed(int)``: the hypothesis shown (0-based) changed.
    - ``best_fit_requested(object)``: a widget asks for a :class:`Choice` to become the editable
      correction (the review widget handles it, the explorer emits it too).

    ``lock`` serialises use of the session between worker threads (sampling, explorer
    decoding): hold it around any ``session`` call made off the GUI thread.
    """

    model_changed = Signal()
    image_encoded = Signal()
    hypotheses_changed = Signal()
    current_hypothesis_changed = Signal(int)
    best_fit_requested = Signal(object)

    def __init__(self) -> None:
        self.model = None  # ProbUNet
        self.model_path: str | None = None
        self.device: str = "auto"
        self.session = None  # Session
        self.encoded: Encoded | None = None
        self.hypotheses = None  # session.Hypotheses for the encoded region
        self.hypothesis_layers: list[Any] = []  # napari Labels layers, one per hypothesis
        self.uncertainty_layer: Any = None
        self.correction_layer: Any = None
        self.choice: Choice | None = None
        self.lock = threading.RLock()

    @property
    def ready(self) -> bool:
        """A model is loaded and an image region is encoded."""
        return self.session is not None and self.encoded is not None and self.session.has_image


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_state(viewer) -> ReviewState:
    """The :class:`ReviewState` of ``viewer`` (one per viewer, created on first use).

    Widgets receive napari's public proxy of the viewer; the state is keyed by the viewer
    itself, so every widget of one viewer finds the same state whichever proxy asks.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    state = _STATES.get(viewer)
    if state is None:
        state = ReviewState()
        _STATES[viewer] = state
    return state
