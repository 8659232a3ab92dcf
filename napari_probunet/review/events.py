"""The events of a review, and how they are emitted: what the review widget's parts hear.

:class:`ReviewEvents` is the base of :class:`~napari_probunet.review.controller.ReviewController`:
the psygnal signals the parts connect to (each described where it is defined), and the
plumbing: :meth:`~ReviewEvents.hook` (connections undone by :meth:`~ReviewEvents.close`),
no events once closed, and the state's events told to the other widgets of the viewer (the
explorer, the nodule widget) without the controller hearing its own news back. No Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from psygnal import Signal


class ReviewEvents:
    """The signals of a review and the plumbing of their connections (see the module)."""

    #: ``(mine)``: the state's model was replaced (``mine``: loaded by this review, not by
    #: another widget of the viewer)
    model_changed = Signal(bool)
    #: ``(error)``: a model could not be loaded (:attr:`model_error`)
    model_failed = Signal(str)
    #: a job started or ended, or hypothesis layers are still joining the viewer
    #: (:attr:`busy`, :attr:`loading`, :attr:`sampling`)
    busy_changed = Signal()
    #: :attr:`input` (an :class:`~napari_probunet.review.inputs.InputChoice`: image, region
    #: mode, click, slices) changed
    input_changed = Signal()
    #: the encoded region changed (a new one, or its image is gone)
    encoded_changed = Signal()
    #: :attr:`domain_warnings` of the image last encoded changed
    domain_changed = Signal()
    #: ``(result, run)``: a sampling run's result to show (the hypothesis layers show it and
    #: call :meth:`set_hypotheses`)
    results_ready = Signal(object, object)
    #: ``(result, run)``: that result is on screen (the correction offers an autosave of it)
    results_shown = Signal(object, object)
    #: the state's hypotheses and their layers changed
    hypotheses_changed = Signal()
    #: ``(index, show)``: the current hypothesis is ``index``; ``show``: show its layer and
    #: hide the others (``False``: it was picked, the layers stay as they are)
    current_changed = Signal(int, bool)
    #: how many hypothesis layers wait to join the viewer changed (:attr:`layers_pending`,
    #: :attr:`layers_deferred`)
    layers_changed = Signal()
    #: ``(index)``: the layer of hypothesis ``index`` should join the viewer now
    layer_wanted = Signal(int)
    #: every hypothesis's layer should join the viewer (*Add all layers*)
    all_layers_wanted = Signal()
    #: ``(choice)``: a :class:`~napari_probunet.review.state.Choice` (a hypothesis, or an
    #: explorer point) is to become the editable correction
    best_fit_requested = Signal(object)
    #: ``(hide_uncertainty)``: the correction layer is on screen: hide the hypotheses (and
    #: the uncertainty map when ``hide_uncertainty``)
    correction_placed = Signal(bool)
    #: the correction layer or its choice changed
    correction_changed = Signal()
    #: ``(exported)``: an :class:`~napari_probunet.review.export.Exported` correction was
    #: written
    exported = Signal(object)
    #: ``(record)``: an opened bundle's hypotheses became the review's (its
    #: :class:`~napari_probunet.review.provenance.Provenance`: seed, number of hypotheses)
    bundle_adopted = Signal(object)
    #: sample now (a click on the lesion; the model that was loading is ready)
    sample_requested = Signal()
    #: ``(level, text)``: tell the user (``"info"``, ``"warning"`` or ``"error"``)
    message = Signal(str, str)

    def __init__(self) -> None:
        self.closed = False
        self._emitting = False  # telling the other widgets (the state's events): not news
        self._disconnectors: list[Callable[[], None]] = []

    def hook(self, emitter, callback) -> None:
        """Connect ``callback`` to ``emitter`` (a psygnal signal or a napari event) until
        :meth:`close`."""
        emitter.connect(callback)
        self._disconnectors.append(lambda: emitter.disconnect(callback))

    def hook_all(self, pairs) -> None:
        """:meth:`hook` each ``(emitter, callback)`` of ``pairs``."""
        for emitter, callback in pairs:
            self.hook(emitter, callback)

    def close(self) -> None:
        """The review is closing: no more events; disconnect what :meth:`hook` connected
        (idempotent)."""
        self.closed = True
        while self._disconnectors:
            with suppress(Exception):
                self._disconnectors.pop()()

    def _emit(self, signal, *args) -> None:
        if not self.closed:
            signal.emit(*args)

    def _tell_others(self, signal, *args) -> None:
        """Emit a state event for the other widgets (this controller's relays ignore it)."""
        if self.closed:
            return
        self._emitting = True
        try:
            signal.emit(*args)
        finally:
            self._emitting = False

    def say(self, level: str, text: str) -> None:
        """Tell the user ``text`` (``level``: ``"info"``, ``"warning"`` or ``"error"``)."""
        self.message.emit(level, text)
