"""Opened hypothesis bundles (``*.probunet.zip``) become the review's hypotheses.

napari's reader adds a bundle's layers one by one; :class:`BundleAdopter` waits until all are
in (a zero-delay timer), then makes them the state's hypotheses, ready to cycle, pick as the
best fit, edit and export with no model run. The bundle's record (model, seed, …) stays
available as :attr:`BundleAdopter.record` (a
:class:`~napari_probunet.review.provenance.Provenance`) for the correction's provenance.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from napari_probunet.gui.review.common import is_bundle_layer
from napari_probunet.gui.worker import returning
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.review.bundle import collect_layers
from napari_probunet.review.geometry import as_2d
from napari_probunet.review.provenance import Provenance
from napari_probunet.review.state import EncodedRegion

log = logging.getLogger(__name__)


@dataclass
class _Found:
    """A complete bundle among the viewer's layers."""

    image: Any
    layers: list[Any]  # hypothesis layers, by index
    uncertainty: Any
    record: Provenance  # the shared record (that of the first hypothesis)
    hypotheses: Hypotheses  # labels (n, h, w) uint8, z (n, d), seed, image signature
    roi: tuple[int, int, int, int]


class BundleAdopter:
    """Adopts the layers of opened bundles for a :class:`ReviewWidget`."""

    def __init__(self, widget) -> None:
        self.widget = widget
        #: the shared record (model, seed, ...) of the bundle whose hypotheses are adopted
        self.record: Provenance | None = None
        self._signature: str | None = None  # image signature of a bundle to adopt
        self.timer = QTimer(widget)  # adopt a bundle once all its layers are in
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._on_timer)

    def stop(self) -> None:
        with suppress(RuntimeError):  # (the Qt object may be gone already)
            self.timer.stop()

    def on_layer_inserted(self, layer) -> None:
        if is_bundle_layer(layer) and not self.widget.closed:
            # napari adds a bundle's layers one by one: adopt them once all are in
            self._signature = Provenance.from_metadata(layer.metadata).image_signature
            self.timer.start()

    def _on_timer(self) -> None:
        signature, self._signature = self._signature, None
        if signature is not None and not self.widget.closed:
            self.adopt(signature)

    def _find(self, image_signature: str | None) -> _Found | None:
        """The bundle of ``image_signature`` (default: the last bundle image in the layer
        list), or None (with a warning when it is incomplete)."""
        layers = self.widget.viewer.layers
        if image_signature is None:
            images = [la for la in layers if is_bundle_layer(la)
                      and Provenance.from_metadata(la.metadata).kind == "image"]
            if not images:
                return None
            image_signature = Provenance.from_metadata(images[-1].metadata).image_signature
        found = collect_layers(layers, image_signature)
        hyps = [la for la in found.hypotheses if is_bundle_layer(la)]
        image = found.image
        if image is None or not hyps:
            return None
        records = [Provenance.from_metadata(la.metadata) for la in hyps]
        record = records[0]
        indices = [r.index for r in records]
        if indices != list(range(len(hyps))) or len(hyps) != record.n_samples:
            show_warning(f"Bundle not adopted. The bundle of '{image.name}' lacks some "
                         "hypothesis layers: open it again to review its hypotheses.")
            return None
        labels = np.stack([as_2d(la.data) for la in hyps]).astype(np.uint8, copy=False)
        z = np.array([r.z or [] for r in records], np.float32)
        roi = tuple(int(v) for v in record.roi or (0, 0, *labels.shape[1:]))
        if (roi[2], roi[3]) != labels.shape[1:]:
            show_warning(f"Bundle not adopted. The bundle of '{image.name}' does not fit its "
                         "region.")
            return None
        hypotheses = Hypotheses(labels=labels, z=z, seed=int(record.seed or 0),
                                image_signature=record.image_signature,
                                plane_signature=record.signature)
        return _Found(image, hyps, found.uncertainty, record, hypotheses, roi)

    def adopt(self, image_signature: str | None = None, *, notify: bool = True) -> bool:
        """See :meth:`ReviewWidget.adopt_bundle_layers`."""
        w = self.widget
        if w.closed:
            return False
        if w.sampler.running:
            show_info("Bundle not adopted while sampling runs. Open it again after.")
            return False
        found = self._find(image_signature)
        if found is None:
            return False
        st, record = w.state, found.record
        signature = record.image_signature  # the bundle's (collect_layers matched it)
        encoded = EncodedRegion(layer_name=found.image.name, slice_index=(), roi=found.roi,
                          image_signature=signature, image=np.asarray(found.image.data))
        st.set_hypotheses(found.hypotheses, found.layers, found.uncertainty, encoded=encoded)
        w.hypothesis_view.adopt(found.layers, found.uncertainty, record.signature)
        self.record = record
        self._show(found, notify)
        self._encode(encoded, record.model_sha256)
        return True

    def _encode(self, encoded: EncodedRegion, model_sha256: str | None) -> None:
        """Encode the bundle's image into the session on the worker (never on the GUI thread:
        a large image, or a model on a remote device, takes seconds) if the loaded model is the
        one that wrote the bundle (for the explorer); otherwise leave the session alone. The
        state says ``image_encoded`` when it is done and the bundle is still the review's."""
        st = self.widget.state
        session = st.session
        if session is None or not model_sha256 or session.model_sha256 != model_sha256:
            return

        def encode() -> bool:
            if not (session.has_image and session.image_signature == encoded.image_signature):
                session.set_image(encoded.image)
            return True

        def encoded_now(_result) -> None:
            w = self.widget
            if not w.closed and st.session is session and st.encoded is encoded:
                w.emit(st.image_encoded)

        def failed(exc: BaseException) -> None:  # the review works without it
            log.warning("could not encode the bundle's image: %s", exc)

        self.widget.jobs.start("encode", returning(encode), returned=encoded_now,
                               errored=failed, finished=lambda: None)

    def _show(self, found: _Found, notify: bool) -> None:
        """Show the first hypothesis, set the Sampling box to the bundle's, tell the others."""
        w, st, record, hyps = self.widget, self.widget.state, found.record, found.layers
        w.hypothesis_view.current = 0
        for i, la in enumerate(hyps):
            if la.visible != (i == 0):
                la.visible = i == 0
        if w.image_combo.findText(found.image.name) >= 0:
            w.image_combo.setCurrentText(found.image.name)
        if record.seed is not None:
            w.seed_spin.setValue(int(record.seed))
        w.n_spin.setValue(len(hyps))
        w.emit(st.hypotheses_changed)
        w.emit(st.current_hypothesis_changed, 0)
        w.hypothesis_view.update_navigation()
        w.progress.setFormat(f"{len(hyps)} hypotheses from the bundle")
        if notify:
            case = record.extra.get("case_id") or found.image.name
            show_info(f"Opened bundle {case}: {len(hyps)} hypotheses ready (no model run)")
