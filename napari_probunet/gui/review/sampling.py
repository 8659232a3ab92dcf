"""The review widget's Sampling box and its sampling runs.

:class:`Sampler` owns the Sampling box (hypotheses, seed, Sample/Cancel, progress, and the
hypothesis navigation row): it reads the image region on the GUI thread, starts the job
(:mod:`napari_probunet.review.jobs`, which takes arrays) as kind ``"sample"`` on the widget's
:class:`~napari_probunet.gui.review.runner.JobRunner` and hands the result to the hypothesis
layers.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane, current_plane, placement
from napari_probunet.gui.review.common import KEY_NEXT, KEY_PREVIOUS, KEY_SAMPLE, ElidedLabel
from napari_probunet.review.jobs import Sampled, SamplingJob, sampling_job, stack_job

log = logging.getLogger(__name__)


@dataclass
class SamplingRun:
    """One sampling run as the GUI sees it: the job, and where its results go."""

    job: SamplingJob
    plane: ImagePlane  # the image layer's plane (compared with removed layers)
    placement: dict[str, Any]  # of the hypothesis layers (the stack's for "All slices")
    started: float


class Sampler:
    """The Sampling box and the sampling runs of a :class:`ReviewWidget`."""

    #: controls the widget exposes as its own attributes
    CONTROLS = ("n_spin", "seed_spin", "new_seed_button", "sample_button", "cancel_button",
                "progress", "previous_button", "next_button", "hypothesis_label")

    def __init__(self, widget) -> None:
        self.widget = widget
        self.run: SamplingRun | None = None
        self.last_seconds: float | None = None
        self.box = self._build()
        self.new_seed_button.clicked.connect(self.new_seed)
        self.sample_button.clicked.connect(lambda: widget.sample())
        self.cancel_button.clicked.connect(self.cancel)
        self.previous_button.clicked.connect(widget.previous_hypothesis)
        self.next_button.clicked.connect(widget.next_hypothesis)

    def _build(self) -> QGroupBox:
        box = QGroupBox("Sampling")
        lay = QVBoxLayout(box)
        form = QFormLayout()
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 100)
        self.n_spin.setValue(16)
        self.n_spin.setToolTip("How many hypotheses to draw from the model (1-100)")
        form.addRow("Hypotheses", self.n_spin)
        row = QHBoxLayout()
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(0)
        self.seed_spin.setToolTip("Random seed: the same seed, image and model give the same "
                                  "hypotheses")
        self.new_seed_button = QPushButton("New seed")
        self.new_seed_button.setToolTip("Pick a random seed")
        row.addWidget(self.seed_spin, 1)
        row.addWidget(self.new_seed_button)
        form.addRow("Seed", row)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.sample_button = QPushButton("Sample")
        self.sample_button.setToolTip(f"Draw the hypotheses for the image region (key: {KEY_SAMPLE})")
        self.sample_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop sampling; the previous hypotheses stay")
        row.addWidget(self.sample_button, 1)
        row.addWidget(self.cancel_button)
        lay.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("Ready")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        lay.addWidget(self.progress)
        lay.addLayout(self._build_navigation())
        return box

    def _build_navigation(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.previous_button = QPushButton("◀")
        self.previous_button.setToolTip(f"Previous hypothesis (key: {KEY_PREVIOUS})")
        self.next_button = QPushButton("▶")
        self.next_button.setToolTip(f"Next hypothesis (key: {KEY_NEXT})")
        for b in (self.previous_button, self.next_button):
            b.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
            b.setFixedWidth(34)
        self.hypothesis_label = ElidedLabel("No hypotheses yet", about=(
            "The hypothesis shown, and its area in pixels"))
        self.hypothesis_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        row.addWidget(self.previous_button)
        row.addWidget(self.hypothesis_label, 1)
        row.addWidget(self.next_button)
        return row

    def new_seed(self) -> None:
        self.seed_spin.setValue(int(np.random.default_rng().integers(0, 2**31 - 1)))

    # ------------------------------------------------------------------ a run
    @property
    def running(self) -> bool:
        """A sampling run was started and has not finished."""
        return self.widget.jobs.running("sample")

    def sample(self) -> bool:
        """Start sampling (the Sample button). Returns whether a run was started."""
        w = self.widget
        if self.running:
            show_warning("Sampling is already running. Wait for it to finish or click Cancel.")
            return False
        if w.model_panel.loading:
            w.model_panel.sample_when_ready = True
            show_info("The model is still loading. Sampling starts as soon as it is ready.")
            return False
        session = w.state.session
        if session is None:
            show_error("No model is loaded: " + (w.model_error
                                                 or "click 'Open model…' to choose a model file."))
            return False
        layer = w.image_layer()
        if layer is None:
            show_error("There is no image layer to segment. Open an image (File → Open, or "
                       "File → Open Sample → napari-probunet) and choose it under Input.")
            return False
        try:
            plane = current_plane(layer, w.viewer)
            roi = w.roi_tool.resolve_roi(layer, plane)
        except UserError as exc:
            show_warning(str(exc))
            return False
        run = self._prepare(layer, plane, roi)
        job = stack_job if run.job.all_slices else sampling_job
        self.run = run
        self.progress.setRange(0, run.job.n)
        self.progress.setValue(0)
        self.progress.setFormat("Preparing…")
        w.jobs.start(
            "sample", job(session, run.job), yielded=self._on_yielded,
            returned=partial(self._on_sampled, run), errored=self._on_failed,
            aborted=self._on_aborted, finished=self._on_finished)
        w.update_buttons()
        return True

    def _prepare(self, layer, plane: ImagePlane, roi) -> SamplingRun:
        """Read the region (and for "All slices" the stack) on the GUI thread: the job gets
        arrays, never the layer."""
        w = self.widget
        job = SamplingJob(region=plane.read(roi), plane=plane.read(), layer_name=layer.name,
                          index=plane.index, roi=roi, n=int(self.n_spin.value()),
                          seed=int(self.seed_spin.value()))
        place = placement(layer, roi, plane.index)
        if w.all_slices and plane.index:
            job.stack, job.stop = plane.read_stack(roi), threading.Event()
            place = placement(layer, roi, plane.index[:-1] + (0,))
        return SamplingRun(job=job, plane=plane, placement=place, started=time.perf_counter())

    def cancel(self) -> None:
        """Stop sampling (the Cancel button); the previous hypotheses stay."""
        if self.running:
            self.progress.setFormat("Cancelling…")
            run = self.run
            if run is not None and run.job.stop is not None:
                run.job.stop.set()  # all slices: stop after this slice, keep those done
            else:
                self.widget.jobs.cancel("sample")

    def stop_if_reading(self, layer) -> None:
        """Stop the run when ``layer`` (just removed) is the image it samples."""
        run = self.run
        if run is not None and layer is run.plane.layer and self.running:
            self.widget.jobs.cancel("sample")
            show_warning(f"Sampling stopped. The image layer '{layer.name}' was removed while "
                         "sampling.")

    def _on_yielded(self, message) -> None:
        kind, value = message  # ("decoded", done) of each slice of "All slices": not shown
        if kind == "stage":
            self.progress.setFormat(value)
        elif kind == "progress":
            self.progress.setValue(value)
            self.progress.setFormat("%v / %m hypotheses")
        elif kind == "slice":
            done, total = value
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.progress.setFormat(f"slice {done} / {total}")
        elif kind == "encoded":
            self.widget.on_encoded(value)

    def _on_sampled(self, run: SamplingRun, result: Sampled) -> None:
        w = self.widget
        job = run.job
        if run.plane.layer not in w.viewer.layers:
            show_warning(f"Hypotheses discarded. The image layer '{job.layer_name}' was "
                         "removed while sampling.")
            return
        w.hypothesis_view.show_sampled(result, run)
        self.last_seconds = time.perf_counter() - run.started
        if result.stack_labels is not None:
            total = result.stack_labels.shape[1]
            self.progress.setRange(0, total)
            self.progress.setValue(result.slices_done)
            self.progress.setFormat(f"{job.n} hypotheses × slice {result.slices_done} / "
                                    f"{total} in {self.last_seconds:.2f} s")
        else:
            self.progress.setFormat(f"{job.n} hypotheses in {self.last_seconds:.2f} s")
        w.correction.offer_restore(result.plane_signature, job.layer_name, run.plane)

    def _on_failed(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            show_error(str(exc))
        else:
            log.error("sampling failed", exc_info=exc)
            show_error(f"Sampling failed. {type(exc).__name__}: {exc}. The previous hypotheses "
                       "are unchanged.")
        self.progress.setFormat("Failed")

    def _on_aborted(self) -> None:
        self.progress.setFormat("Cancelled")
        show_info("Sampling cancelled. The previous hypotheses are unchanged.")

    def _on_finished(self) -> None:
        self.run = None
        self.widget.update_buttons()
