"""The review's *Refine by clicks* box: inside and outside clicks steer the hypotheses.

As in micro-sam, prompts are points: a ``clicks`` Points layer over the sampled region (placed
like the hypothesis layers, so a point's last two coordinates are its row and column in the
region). With *Refine by clicks* on, the layer is active in napari's add mode: a click adds an
**inside** point (the lesion is here), a Shift+click (or any click with *Next click outside*
ticked) an **outside** point (not lesion); :mod:`napari_probunet.gui.clicks` has the layer, its
colours and symbols.

Each change of the points (added, moved, deleted; *Clear clicks*) re-runs the steering off the
GUI thread (:func:`napari_probunet.review.refine.refine_job`, kind ``"refine"`` on the review's
job runner) for the hypotheses shown: the same region, number and seed. The result replaces
the hypothesis layers and the gallery as a sample does (the controller's ``show_results``);
with no point left it is the plain sample again. When too few of the model's hypotheses agree
with the clicks, the box and a notification say so. A new region, model or sample forgets the
clicks (they were about the hypotheses they steered).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import numpy as np
from napari.layers import Points
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_probunet.errors import UserError
from napari_probunet.gui.clicks import (
    add_point,
    clear,
    clicks_layer,
    is_change,
    points,
)
from napari_probunet.gui.placement import ImagePlane, current_plane, placement
from napari_probunet.gui.review.common import show_job_error
from napari_probunet.gui.review.region import SamplingRun, find_image
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.jobs import SamplingJob
from napari_probunet.review.refine import as_clicks, refine_job

log = logging.getLogger(__name__)

#: the clicks layer's name
CLICKS_LAYER = "clicks"
IDLE_TEXT = "Sample first; then click where the hypotheses are wrong."


class Prompts:
    """The *Refine by clicks* rows (in the Sampling box) and their runs."""

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.runner = runner
        self.layer: Points | None = None
        self.again = False  # the clicks changed while a run went on: run once more
        self.showing = False  # our own result is being shown (not a sample's)
        self.refined = None  # the last run's Refined record
        self.box = self._build()
        self.refine_button.toggled.connect(self.set_active)
        self.clear_button.clicked.connect(self.clear)
        self._timer = QTimer(parent)  # points added in one event-loop turn: one run
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refine)
        c = controller
        c.hook_all(((c.hypotheses_changed, self._on_hypotheses_changed),
                    (c.encoded_changed, self.forget),
                    (c.model_changed, self.forget)))

    def _build(self) -> QWidget:
        # rows of the Sampling box (under the hypotheses' navigation), not a box of their own:
        # at 1920x1080 a box's title and margins pushed the gallery's second row off screen
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.refine_button = QPushButton("Refine by clicks")
        self.refine_button.setCheckable(True)
        self.refine_button.setToolTip(
            "Click on the image: inside the lesion where the hypotheses miss it, Shift+click "
            "outside where they go too far. The hypotheses are redrawn to agree with every "
            "click")
        self.clear_button = QPushButton("Clear clicks")
        self.clear_button.setToolTip("Remove the clicks: the hypotheses of the plain sample")
        row.addWidget(self.refine_button, 1)
        row.addWidget(self.clear_button)
        lay.addLayout(row)
        self.outside_check = QCheckBox("Next click outside (or Shift+click)")
        lay.addWidget(self.outside_check)
        self.status = QLabel(IDLE_TEXT)
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        # one row until clicks are taken: on a 1366x768 screen Sample and Export stay in view
        self._show_details(False)
        return box

    def _show_details(self, on: bool) -> None:
        self.outside_check.setVisible(on)
        self.status.setVisible(on)

    # ------------------------------------------------------------------ the clicks layer
    def set_active(self, on: bool) -> None:
        """Take clicks (the button) or stop taking them (the points stay)."""
        self._show_details(on or (self._alive() and len(self.layer.data) > 0))
        if not on:
            if self._alive():
                self.layer.mode = "pan_zoom"
            return
        try:
            layer, plane = self._sampled_plane()
        except UserError as exc:
            show_warning(str(exc))
            self.refine_button.setChecked(False)
            return
        taking = self._ensure_layer(layer, plane)
        self.viewer.layers.selection.active = taking
        taking.mode = "add"
        self.status.setText("Click inside the lesion where the hypotheses miss it; Shift+click "
                            "outside where they go too far.")

    @property
    def pending(self) -> bool:
        """A refinement is due (the clicks just changed) or running."""
        return self._timer.isActive() or self.runner.running("refine")

    def _alive(self) -> bool:
        return self.layer is not None and self.layer in self.viewer.layers

    def _ensure_layer(self, image, plane: ImagePlane) -> Points:
        roi = self.controller.state.encoded.roi
        place = placement(image, roi, plane.index)
        if self._alive() and self.layer.ndim == image.ndim:
            self.layer.scale, self.layer.translate = place["scale"], place["translate"]
            return self.layer
        side = max(2.0, min(roi[2], roi[3]) / 40)
        self.layer = clicks_layer(CLICKS_LAYER, image.ndim, place, side,
                                  self.outside_check.isChecked, self._on_data)
        self.viewer.layers.append(self.layer)
        return self.layer

    def _on_data(self, event) -> None:
        if is_change(event) and not self.controller.closed:
            self._timer.start(0)

    def add_click(self, row: float, col: float, inside: bool | None = None) -> None:
        """Add a click at ``(row, col)`` of the sampled region (scripts and tests; a click in
        the viewer does the same); ``inside`` None: as *Next click outside* says."""
        try:
            image, plane = self._sampled_plane()
        except UserError as exc:
            show_warning(str(exc))
            return
        layer = self._ensure_layer(image, plane)
        point = np.zeros(layer.ndim)
        point[-2:] = (row, col)
        add_point(layer, point, not self.outside_check.isChecked() if inside is None else inside)

    def clicks(self) -> list[tuple[float, float, bool]]:
        """The clicks, ``(row, col, inside)`` in the sampled region's pixels."""
        data, inside = points(self.layer if self._alive() else None)
        if not len(data):
            return []
        if data.shape[1] > 2 and np.abs(data[:, :-2]).max() > 0.5:
            raise UserError("a click is on another slice than the sampled one; go back to "
                            "that slice or remove the click")
        return [(float(r), float(c), bool(p)) for (r, c), p in zip(data[:, -2:], inside)]

    def clear(self) -> None:
        """Remove every click: the hypotheses go back to the plain sample."""
        clear(self.layer if self._alive() else None)

    def forget(self, *_) -> None:
        """The clicks no longer apply (a new region or model): remove them without a run."""
        if self._alive() and len(self.layer.data):
            with self.layer.events.data.blocker(self._on_data):
                self.clear()
        self.refined = None
        self.status.setText(IDLE_TEXT)
        self._show_details(self.refine_button.isChecked())

    def _on_hypotheses_changed(self) -> None:
        if not self.showing and not self.runner.running("refine"):
            self.forget()

    # ------------------------------------------------------------------ a run
    def _sampled_plane(self) -> tuple[Any, ImagePlane]:
        """The image layer and plane the hypotheses were sampled on, or a UserError."""
        c = self.controller
        encoded, hyp = c.state.encoded, c.state.hypotheses
        if c.session is None or encoded is None or hyp is None or c.bundle_record is not None:
            raise UserError("Sample first: clicks refine the hypotheses the model drew for "
                            "the region on screen")
        layer = find_image(self.viewer, encoded.layer_name)
        if layer is None:
            raise UserError(f"the image '{encoded.layer_name}' the hypotheses came from is "
                            "gone; open it and sample again")
        plane = current_plane(layer, self.viewer)
        if tuple(plane.index) != tuple(encoded.slice_index):
            raise UserError("the hypotheses are of another slice; go back to it to refine "
                            "them, or sample this one")
        return layer, plane

    def refine(self) -> bool:
        """Steer the hypotheses by the clicks now (each change of the clicks calls it).
        Returns whether a run started."""
        c = self.controller
        if self.runner.running("refine"):
            self.again = True
            return False
        if c.sampling:
            show_info("Sampling is running; the clicks apply to the next hypotheses.")
            return False
        try:
            image, plane = self._sampled_plane()
            clicks = self.clicks()
            roi, hyp = c.state.encoded.roi, c.state.hypotheses
            as_clicks(clicks, roi[2:])
        except UserError as exc:
            show_warning(str(exc))
            self.status.setText(str(exc))
            return False
        job = SamplingJob(region=plane.read(roi), plane=plane.read(), layer_name=image.name,
                          index=plane.index, roi=roi, n=hyp.n, seed=int(hyp.seed))
        run = SamplingRun(job, plane, placement(image, roi, plane.index), time.perf_counter())
        self.status.setText(f"Refining by {len(clicks)} click(s)…")
        self.runner.start("refine", refine_job(c.session, job, clicks),
                          yielded=self._on_yielded, returned=partial(self._on_refined, run),
                          errored=self._on_failed, finished=self._on_finished)
        return True

    def _on_yielded(self, message) -> None:
        kind, value = message
        if kind == "encoded":  # the session had let go of the region (the explorer?)
            self.showing = True
            try:
                self.controller.encoded(value)
            finally:
                self.showing = False

    def _on_refined(self, run: SamplingRun, result) -> None:
        sampled, refined = result
        if run.plane.layer not in self.viewer.layers:
            return
        sampled.refinement = refinement_record(refined)
        self.showing = True
        try:
            self.controller.show_results(sampled, run)
            self.controller.results_on_screen(sampled, run)
        finally:
            self.showing = False
        self.refined = refined
        seconds = time.perf_counter() - run.started
        k = len(refined.clicks)
        if not k:
            self.status.setText(f"No clicks: the {refined.n} sampled hypotheses.")
        else:
            agree = int(refined.agreeing.sum())
            self.status.setText(f"{k} click(s): {agree} of {refined.n} hypotheses agree "
                                f"({refined.agreed} of {refined.pool} drawn did; "
                                f"{seconds:.2f} s).")
        if refined.message:
            show_warning(refined.message[0].upper() + refined.message[1:] + ".")

    def _on_failed(self, exc: BaseException) -> None:
        show_job_error(exc, "Refining", log)
        self.status.setText("Refining failed; the hypotheses are unchanged.")

    def _on_finished(self) -> None:
        if self.again and not self.controller.closed:
            self.again = False
            self._timer.start(0)


def refinement_record(refined) -> dict[str, Any]:
    """What the hypothesis layers' provenance keeps of a refinement: the clicks (region
    pixels), the rule, the pool and how many agreed, and each hypothesis's draw number."""
    return {"clicks": [[c.row, c.col, c.positive] for c in refined.clicks],
            "rule": refined.rule, "pool": int(refined.pool), "agreed": int(refined.agreed),
            "picks": [int(p) for p in refined.picks]}
