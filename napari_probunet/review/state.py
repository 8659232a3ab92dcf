"""Per-viewer review state shared by the review widget and the latent-space explorer.

Like micro-sam's annotator state, the expensive per-image result (the encoded image in a
:class:`~napari_probunet.session.Session`) is computed once and read by every widget, but here
there is one state **per viewer** (no process-wide singleton): :func:`state_for` returns the
state of an owner object (the GUI passes the viewer, see ``napari_probunet.gui.dock.get_state``),
created on first use and dropped with the owner.

The state holds data, enforces the rules between its parts through its transitions
(:meth:`ReviewState.set_model`, :meth:`~ReviewState.set_encoded`,
:meth:`~ReviewState.set_hypotheses`, :meth:`~ReviewState.choose`,
:meth:`~ReviewState.drop_correction`) and emits events; it never builds widgets or layers
itself, and imports neither Qt nor napari.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psygnal import Signal


@dataclass
class EncodedRegion:
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

    Transitions (the rules live here, not in the widgets): a new model drops the encoding and
    the hypotheses (:meth:`set_model`); a new encoding drops the hypotheses
    (:meth:`set_encoded`); hypotheses come with their layers (:meth:`set_hypotheses`); a
    choice comes with its correction layer (:meth:`choose`). Each changes the data as one
    step under a short private lock, so another thread never sees half of it, and emits
    nothing: the caller emits once its own view of the change is consistent.

    ``lock`` serialises use of the session between worker threads (sampling, explorer
    decoding): hold it around any ``session`` call made off the GUI thread. The transitions do
    not take it, so the GUI thread never waits for a decode to finish.
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
        self.encoded: EncodedRegion | None = None
        self.hypotheses = None  # model.hypotheses.Hypotheses for the encoded region
        self.hypothesis_layers: list[Any] = []  # napari Labels layers, one per hypothesis
        self.uncertainty_layer: Any = None
        self.correction_layer: Any = None
        self.choice: Choice | None = None
        self.lock = threading.RLock()
        self._data_lock = threading.RLock()

    @property
    def ready(self) -> bool:
        """A model is loaded and an image region is encoded."""
        return self.session is not None and self.encoded is not None and self.session.has_image

    # ------------------------------------------------------------------ transitions
    def set_model(self, model, session, device: str) -> None:
        """A model (and its session on ``device``) replaces the previous one; the previous
        encoding and hypotheses belonged to the old session and are dropped."""
        with self._data_lock:
            self.model, self.session = model, session
            self.model_path = getattr(model, "source_path", None)
            self.device = device
            self._clear_encoding()

    def set_encoded(self, encoded: EncodedRegion | None) -> None:
        """The session now holds ``encoded``: hypotheses of the previous region are dropped."""
        with self._data_lock:
            self._clear_encoding()
            self.encoded = encoded

    def set_hypotheses(self, hypotheses, layers: list[Any], uncertainty_layer: Any = None,
                       encoded: EncodedRegion | None = None) -> None:
        """``hypotheses`` (a :class:`~napari_probunet.model.hypotheses.Hypotheses`) of the
        encoded region, shown by ``layers`` (one per hypothesis) and ``uncertainty_layer``.

        ``encoded``, when given, is set in the same step (an opened bundle brings its region and
        its hypotheses together).
        """
        if hypotheses is not None and len(layers) != len(hypotheses.labels):
            raise ValueError(f"{len(hypotheses.labels)} hypotheses but {len(layers)} layers")
        with self._data_lock:
            if encoded is not None:
                self.encoded = encoded
            self.hypotheses = hypotheses
            self.hypothesis_layers = list(layers)
            self.uncertainty_layer = uncertainty_layer

    def choose(self, choice: Choice, correction_layer: Any) -> None:
        """``choice`` became the editable ``correction_layer``."""
        with self._data_lock:
            self.choice = choice
            self.correction_layer = correction_layer

    def set_correction_layer(self, layer: Any) -> None:
        """The correction now lives in ``layer`` (before :meth:`choose` names its origin)."""
        with self._data_lock:
            self.correction_layer = layer

    def drop_correction(self) -> None:
        """The correction layer is gone (the choice stays on record)."""
        with self._data_lock:
            self.correction_layer = None

    def _clear_encoding(self) -> None:
        self.encoded = None
        self.hypotheses = None
        self.hypothesis_layers = []


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_for(owner) -> ReviewState:
    """The :class:`ReviewState` of ``owner`` (one per owner, created on first use, dropped with
    the owner). The GUI's owner is the viewer: use ``napari_probunet.gui.dock.get_state``."""
    state = _STATES.get(owner)
    if state is None:
        state = ReviewState()
        _STATES[owner] = state
    return state

