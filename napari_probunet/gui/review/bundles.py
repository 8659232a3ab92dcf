"""Opened hypothesis bundles (``*.probunet.zip``) become the review's hypotheses.

napari's reader adds a bundle's layers one by one; :class:`BundleAdopter` waits until all are
in (a zero-delay timer), then makes them the review's hypotheses
(:meth:`ReviewController.adopt_bundle
<napari_probunet.review.controller.ReviewController.adopt_bundle>`), ready to cycle, pick as the
best fit, edit and export with no model run. The bundle's record (model, seed, …) stays
available as the controller's ``bundle_record`` (a
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
from napari_probunet.gui.review.region import find_image
from napari_probunet.gui.worker import returning
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.review.bundle import collect_layers
from napari_probunet.review.controller import ReviewController
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
    """Adopts the layers of opened bundles for the review."""

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.runner = runner
        self._signature: str | None = None  # image signature of a bundle to adopt
        self.timer = QTimer(parent)  # adopt a bundle once all its layers are in
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self._on_timer)
        controller.hook(controller.model_changed, self._on_model_changed)

    def stop(self) -> None:
        with suppress(RuntimeError):  # (the Qt object may be gone already)
            self.timer.stop()

    def on_layer_inserted(self, layer) -> None:
        """A layer joined the viewer: a bundle's is adopted once all of them are in."""
        if is_bundle_layer(layer) and not self.controller.closed:
            # napari adds a bundle's layers one by one: adopt them once all are in
            self._signature = Provenance.from_metadata(layer.metadata).image_signature
            self.timer.start()

    def _on_timer(self) -> None:
        signature, self._signature = self._signature, None
        if signature is not None and not self.controller.closed:
            self.adopt(signature)

    def _on_model_changed(self, mine: bool) -> None:
        """A model loaded here keeps the opened bundle's hypotheses (its image is encoded
        anew when the model is the one that wrote the bundle)."""
        record = self.controller.bundle_record
        if mine and record is not None:
            self.adopt(record.image_signature, notify=False)

    def _find(self, image_signature: str | None) -> _Found | None:
        """The bundle of ``image_signature`` (default: the last bundle image in the layer
        list), or None (with a warning when it is incomplete)."""
        layers = self.viewer.layers
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
        """Make the layers of an opened hypothesis bundle (``*.probunet.zip``) the review's
        hypotheses, ready to cycle, pick as the best fit, edit and export with no model run.

        ``image_signature`` picks the bundle (default: the last bundle image in the layer
        list). Called when a bundle's layers are inserted. If the loaded model is the one that
        wrote the bundle, the image is also encoded into its session (for the explorer);
        otherwise the session is left alone. Returns whether a bundle was adopted.
        """
        c = self.controller
        if c.closed:
            return False
        if c.sampling:
            show_info("Bundle not adopted while sampling runs. Open it again after.")
            return False
        found = self._find(image_signature)
        if found is None:
            return False
        record = found.record
        signature = record.image_signature  # the bundle's (collect_layers matched it)
        encoded = EncodedRegion(layer_name=found.image.name, slice_index=(), roi=found.roi,
                                image_signature=signature, image=np.asarray(found.image.data))
        if find_image(self.viewer, found.image.name) is not None:
            c.input.set(image=found.image.name)  # the Input box shows the bundle's image
        c.adopt_bundle(found.hypotheses, found.layers, found.uncertainty, encoded, record)
        if notify:
            case = record.extra.get("case_id") or found.image.name
            show_info(f"Opened bundle {case}: {len(found.layers)} hypotheses ready (no model "
                      "run)")
        self._encode(encoded, record.model_sha256)
        return True

    def _encode(self, encoded: EncodedRegion, model_sha256: str | None) -> None:
        """Encode the bundle's image into the session on the worker (never on the GUI thread:
        a large image, or a model on a remote device, takes seconds) if the loaded model is the
        one that wrote the bundle (for the explorer); otherwise leave the session alone. The
        controller says ``encoded_changed`` when it is done and the bundle is still the
        review's."""
        session = self.controller.session
        if session is None or not model_sha256 or session.model_sha256 != model_sha256:
            return

        def encode() -> bool:
            if not (session.has_image and session.image_signature == encoded.image_signature):
                session.set_image(encoded.image)
            return True

        def failed(exc: BaseException) -> None:  # the review works without it
            log.warning("could not encode the bundle's image: %s", exc)

        self.runner.start("encode", returning(encode),
                          returned=lambda _: self.controller.session_holds(encoded, session),
                          errored=failed, finished=lambda: None)
