"""The review controller: one review's sample → choose → correct → export, without Qt.

The review widget (``gui/review/widget.py``) is a set of parts, one per box or concern (the
model panel, the region tool, the sampler, the hypothesis layers, the gallery, the bundle
adopter, the correction). Each part gets a :class:`ReviewController`, the viewer and the job
runner; it reads the controller's data, calls its methods, and redraws its own controls when
the controller says something changed. Parts never call one another: a click on *Use as best
fit* in the gallery is :meth:`ReviewController.use_as_best_fit`, whose
:attr:`~ReviewController.best_fit_requested` the correction part hears.

The controller holds what the parts share and the rules between them:

- the **model**: whether one is loading (the job runner reports its running jobs through
  :meth:`~ReviewController.set_jobs`), why the last load failed, a Sample click waiting for it,
  the domain warnings of the image last encoded;
- the **input**: which image, which region mode, the last click, all slices or the one shown
  (:class:`~napari_probunet.review.inputs.InputChoice`; the region tool shows and edits it);
- the **encoded region**, the **hypotheses** with their layers and the **current** one (kept in
  the viewer's :class:`~napari_probunet.review.state.ReviewState`, which the explorer and the
  nodule widget share), the record of an opened bundle, the plane's signature;
- the **choice** and its **correction** layer, and the **export** of it.

Its events (psygnal signals, emitted on the GUI thread) are defined in
:class:`~napari_probunet.review.events.ReviewEvents`, its base. The viewer's
:class:`~napari_probunet.review.state.ReviewState` events are relayed: what another widget
(the explorer) changes arrives as the controller's own event, and what the controller changes
is told to the other widgets through the state. No Qt, no napari: layers are held, never built.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_probunet.errors import UserError
from napari_probunet.review.events import ReviewEvents
from napari_probunet.review.inputs import FALLBACK_ROI, InputChoice
from napari_probunet.review.provenance import Provenance
from napari_probunet.review.state import Choice, EncodedRegion, ReviewState

if TYPE_CHECKING:
    from napari_probunet.review.export import Exported


def is_bundle_record(metadata) -> bool:
    """Layer metadata written by the bundle reader (it names the bundle format)."""
    meta = metadata or {}
    return meta.get("bundle_format_version") is not None and "image_signature" in meta


def join_sentences(found: list[str]) -> str:
    """Findings (each a sentence in lower case, ending with a full stop) as one text: the
    first as it is (it follows "This image:"), the others capitalised, one space apart. They
    were joined with "; ", which read "...converted to grey.; the image is..."."""
    parts = []
    for i, sentence in enumerate(f.strip() for f in found if f.strip()):
        if not sentence.endswith((".", "!", "?")):
            sentence += "."
        parts.append(sentence if i == 0 else sentence[0].upper() + sentence[1:])
    return " ".join(parts)


class ReviewController(ReviewEvents):
    """The state and rules of one review (one review widget), over the viewer's
    :class:`~napari_probunet.review.state.ReviewState`; its events are those of
    :class:`~napari_probunet.review.events.ReviewEvents`.
    """

    def __init__(self, state: ReviewState) -> None:
        super().__init__()
        self.state = state
        self.input = InputChoice()  # what to sample: the region tool shows and edits it
        self.current = 0  # the hypothesis shown (0-based)
        #: signature of the whole plane the hypotheses were drawn on (the autosave key)
        self.plane_signature: str | None = None
        #: the shared record (model, seed, ...) of the opened bundle whose hypotheses these are
        self.bundle_record: Provenance | None = None
        self.model_error: str | None = None  # why the last model could not be loaded
        self.sample_when_ready = False  # Sample was clicked while the model loaded
        self.domain_warnings: list[str] = []  # of the image last encoded
        self._domain_warned: tuple | None = None
        self.jobs: frozenset[str] = frozenset()  # the kinds of job running
        self.layers_pending = 0  # hypothesis layers being added to the viewer
        self.layers_deferred = 0  # hypothesis layers that join the viewer on demand
        self._adopt_state()
        self.hook(self.input.changed, self._input_changed)
        self.hook_all(((state.model_changed, self._model_changed_elsewhere),
                       (state.image_encoded, self._encoded_elsewhere),
                       (state.hypotheses_changed, self._hypotheses_changed_elsewhere),
                       (state.current_hypothesis_changed, self._current_elsewhere),
                       (state.best_fit_requested, self._best_fit_requested)))

    def _adopt_state(self) -> None:
        """Pick up what the viewer's state already holds (the widget closed and reopened)."""
        st = self.state
        if st.hypotheses is not None and st.hypothesis_layers \
                and len(st.hypothesis_layers) == len(st.hypotheses.labels):
            meta = st.hypothesis_layers[0].metadata
            record = Provenance.from_metadata(meta)
            self.plane_signature = record.plane_signature
            if is_bundle_record(meta):
                self.bundle_record = record

    # ------------------------------------------------------------------ jobs and model
    @property
    def session(self):
        return self.state.session

    @property
    def loading(self) -> bool:
        """A model is being loaded (in the background)."""
        return "load" in self.jobs

    @property
    def sampling(self) -> bool:
        """A sampling run was started and has not finished."""
        return "sample" in self.jobs

    @property
    def busy(self) -> bool:
        """A job runs (loading, sampling, encoding) or hypothesis layers are still joining
        the viewer."""
        return bool(self.jobs) or self.layers_pending > 0

    def set_jobs(self, kinds: Iterable[str]) -> None:
        """The job runner's running jobs are ``kinds`` (it calls this on every change)."""
        kinds = frozenset(kinds)
        if kinds != self.jobs:
            self.jobs = kinds
            self._emit(self.busy_changed)

    def set_layer_queue(self, pending: int, deferred: int) -> None:
        """``pending`` hypothesis layers are being added, ``deferred`` join on demand."""
        if (pending, deferred) == (self.layers_pending, self.layers_deferred):
            return
        was_busy = self.busy
        self.layers_pending, self.layers_deferred = int(pending), int(deferred)
        self._emit(self.layers_changed)
        if self.busy != was_busy:
            self._emit(self.busy_changed)

    def load_started(self) -> None:
        """A model load starts: the last failure no longer applies."""
        self.model_error = None

    def model_loaded(self, model, session, device: str) -> None:
        """``model`` (with its ``session`` on ``device``) is loaded: it replaces the state's
        (the encoding and hypotheses of the old one are dropped). The state takes it even
        when the review is closed, for the explorer and the nodule widget."""
        self.state.set_model(model, session, device)
        if self.closed:
            return
        self.model_error = None
        self._tell_others(self.state.model_changed)
        self._emit(self.model_changed, True)

    def load_failed(self, error: str, text: str, level: str = "error") -> None:
        """A model could not be loaded because of ``error``; ``text`` tells the user."""
        self.model_error = error
        self.sample_when_ready = False
        self.say(level, text)
        self._emit(self.model_failed, error)

    def load_finished(self) -> None:
        """A model load ended: a Sample click that waited for it samples now."""
        if self.sample_when_ready and not self.closed:
            self.sample_when_ready = False
            if self.session is not None:
                self._emit(self.sample_requested)

    def queue_sample(self) -> None:
        """Sample as soon as the model that is loading is ready."""
        self.sample_when_ready = True
        self.say("info", "The model is still loading. Sampling starts as soon as it is ready.")

    def model_sha(self) -> str | None:
        session = self.session
        return session.model_sha256 if session is not None else None

    def model_name(self) -> str | None:
        model = self.state.model
        return Path(model.source_path).name if model is not None and model.source_path else None

    def roi_side(self) -> int:
        """The side of a click's region: the model's input size."""
        model = self.state.model
        return int(model.config.input_size) if model is not None else FALLBACK_ROI

    def check_domain(self, image: np.ndarray) -> None:
        """Warn, without blocking, when the image given to the model looks unlike what it was
        trained on (:mod:`napari_probunet.review.domain`): :attr:`domain_warnings`, and once
        per model and finding a message."""
        from napari_probunet.review.domain import check_image

        session = self.session
        if session is None:
            return
        found = list(check_image(session.config, image).warnings)
        self.domain_warnings = found
        self._emit(self.domain_changed)
        if not found:
            return
        text = join_sentences(found)
        key = (id(session), text)
        if key != self._domain_warned:  # once per model and finding, not on every slice
            self._domain_warned = key
            self.say("warning", f"Unusual image for this model. It may be outside what the "
                                f"model knows: {text}")

    # ------------------------------------------------------------------ input
    def _input_changed(self) -> None:
        self._emit(self.input_changed)

    def region_clicked(self) -> None:
        """The user clicked the lesion (the click is in :attr:`input`): sample now when *Run on
        click* is ticked and a model is loaded."""
        if not (self.input.run_on_click and self.session is not None):
            return
        if self.sampling:
            self.say("info", "Sampling is running; the new region is used on the next Sample.")
        else:
            self._emit(self.sample_requested)

    @property
    def other_image_chosen(self) -> bool:
        """The hypotheses held were drawn on another image than the one chosen."""
        encoded, image = self.state.encoded, self.input.image
        return encoded is not None and image is not None and image != encoded.layer_name

    # ------------------------------------------------------------------ the encoded region
    def encoded(self, region: EncodedRegion) -> None:
        """A sampling job encoded ``region``: the previous hypotheses are dropped."""
        self.bundle_record = None
        self.state.set_encoded(region)
        self._tell_others(self.state.image_encoded)
        self._emit(self.encoded_changed)
        if region.image is not None:
            self.check_domain(region.image)

    def session_holds(self, region: EncodedRegion, session) -> None:
        """``session`` now holds ``region``'s image (an opened bundle's, encoded for the
        explorer): the others hear it if both are still the review's."""
        if self.state.session is session and self.state.encoded is region:
            self._tell_others(self.state.image_encoded)
            self._emit(self.encoded_changed)

    def forget_image(self) -> None:
        """The image the hypotheses were drawn on is gone: forget its encoding, hypotheses
        and domain warning (their layers stay in the list: the next run reuses them)."""
        self.state.set_encoded(None)
        self.bundle_record = None
        self.domain_warnings = []
        self._emit(self.domain_changed)
        self._tell_others(self.state.image_encoded)
        self._tell_others(self.state.hypotheses_changed)
        self._emit(self.encoded_changed)
        self._emit(self.hypotheses_changed)

    # ------------------------------------------------------------------ hypotheses
    def show_results(self, result, run) -> None:
        """A sampling run's ``result`` arrived (``run``: the GUI's record of it)."""
        self._emit(self.results_ready, result, run)

    def results_on_screen(self, result, run) -> None:
        """The result is on screen (the correction may offer an autosave of its plane)."""
        self._emit(self.results_shown, result, run)

    def set_hypotheses(self, hypotheses, layers: list[Any], uncertainty: Any,
                       plane_signature: str | None) -> None:
        """Sampled ``hypotheses`` (shown by ``layers`` and ``uncertainty``) become the
        review's, the first one current; a bundle's record no longer applies."""
        self.bundle_record = None
        self.state.set_hypotheses(hypotheses, layers, uncertainty)
        self.plane_signature = plane_signature
        self.current = 0
        self._announce_hypotheses(show=False)

    def adopt_bundle(self, hypotheses, layers: list[Any], uncertainty: Any,
                     region: EncodedRegion, record: Provenance) -> None:
        """An opened bundle's ``hypotheses`` (its ``layers``) of ``region`` become the
        review's, with ``record`` (model, seed, ...) for the correction's provenance."""
        self.state.set_hypotheses(hypotheses, layers, uncertainty, encoded=region)
        self.bundle_record = record
        self.plane_signature = record.signature
        self.current = 0
        self._emit(self.bundle_adopted, record)
        self._announce_hypotheses(show=True)

    def _announce_hypotheses(self, show: bool) -> None:
        self._tell_others(self.state.hypotheses_changed)
        self._tell_others(self.state.current_hypothesis_changed, 0)
        self._emit(self.hypotheses_changed)
        self._emit(self.current_changed, 0, show)

    @property
    def can_choose(self) -> bool:
        """There are hypotheses of the chosen image to move through and pick from."""
        st = self.state
        return st.hypotheses is not None and bool(st.hypothesis_layers) \
            and not self.other_image_chosen

    def show_hypothesis(self, index: int, notify: bool = True) -> None:
        """Show hypothesis ``index`` (0-based, wraps around) and hide the others. ``notify``:
        tell the other widgets (the state's ``current_hypothesis_changed``)."""
        n = len(self.state.hypothesis_layers)
        if self.state.hypotheses is None or n == 0:
            self.say("info", "No hypotheses yet: click Sample first.")
            return
        self.current = int(index) % n
        self._emit(self.current_changed, self.current, True)
        if notify:
            self._tell_others(self.state.current_hypothesis_changed, self.current)

    def next_hypothesis(self) -> None:
        """Show the next hypothesis (key ``.``)."""
        self.show_hypothesis(self.current + 1)

    def previous_hypothesis(self) -> None:
        """Show the previous hypothesis (key ``,``)."""
        self.show_hypothesis(self.current - 1)

    def select(self, index: int) -> None:
        """Make ``index`` the current hypothesis without changing which layers show (its
        layer was selected, or it was picked as the best fit)."""
        if index != self.current:
            self.current = int(index)
            self._emit(self.current_changed, self.current, False)
            self._tell_others(self.state.current_hypothesis_changed, self.current)

    def want_layer(self, index: int) -> None:
        """The layer of hypothesis ``index`` should join the viewer now (shortlisted)."""
        self._emit(self.layer_wanted, int(index))

    def want_all_layers(self) -> None:
        """Every hypothesis's layer should join the viewer."""
        self._emit(self.all_layers_wanted)

    # ------------------------------------------------------------------ choice and correction
    def use_as_best_fit(self, index: int | None = None) -> None:
        """Make hypothesis ``index`` (default: the current one) the editable correction."""
        hyp = self.state.hypotheses
        if hyp is None:
            self.say("warning", "No hypotheses yet: click Sample first, then pick the best one.")
            return
        i = self.current if index is None else int(index)
        if not 0 <= i < len(hyp.labels):
            self.say("error", f"No hypothesis {i + 1}. There are {len(hyp.labels)}.")
            return
        self.select(i)
        self.state.best_fit_requested.emit(
            Choice(source="hypothesis", index=i, z=np.array(hyp.z[i]), labels=hyp.labels[i].copy()))

    def place_correction(self, layer, hide_uncertainty: bool = False) -> None:
        """The correction now lives in ``layer``, shown over the hypotheses."""
        self.state.set_correction_layer(layer)
        self._emit(self.correction_placed, hide_uncertainty)
        self._emit(self.correction_changed)

    def choose(self, choice: Choice, layer) -> None:
        """``choice`` became the editable correction ``layer``."""
        self.state.choose(choice, layer)
        self._emit(self.correction_changed)

    def drop_correction(self) -> None:
        """The correction layer is gone (the choice stays on record)."""
        self.state.drop_correction()
        self._emit(self.correction_changed)

    def export(self, path: str | os.PathLike, *, overwrite: bool = False) -> Exported:
        """Write the correction to ``path`` with its JSON record (a UserError says what is
        wrong; ``overwrite``: replace files that exist)."""
        from napari_probunet.review.export import export_layer

        layer = self.state.correction_layer
        if layer is None:
            raise UserError("Nothing to export yet. Pick a hypothesis with 'Use as best fit' "
                            "first.")
        done = export_layer(layer, path, overwrite=overwrite)
        self._emit(self.exported, done)
        return done

    # ------------------------------------------------------------------ the other widgets
    def _model_changed_elsewhere(self) -> None:
        if not self._emitting:
            self._emit(self.model_changed, False)

    def _encoded_elsewhere(self) -> None:
        if not self._emitting:
            self._emit(self.encoded_changed)

    def _hypotheses_changed_elsewhere(self) -> None:
        if not self._emitting:
            self._emit(self.hypotheses_changed)

    def _current_elsewhere(self, index: int) -> None:
        """Another widget (the explorer) showed hypothesis ``index``."""
        n = len(self.state.hypothesis_layers)
        if self._emitting or self.state.hypotheses is None or n == 0:
            return
        self.current = int(index) % n
        self._emit(self.current_changed, self.current, True)

    def _best_fit_requested(self, choice: Choice) -> None:
        self._emit(self.best_fit_requested, choice)
