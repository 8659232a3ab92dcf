"""The review widget's Sampling box and its sampling runs.

:class:`Sampler` owns the Sampling box (hypotheses, seed, Sample/Cancel, progress; the widget
puts the hypothesis navigation row under it): it reads the image region on the GUI thread,
starts the job (:mod:`napari_probunet.review.jobs`, which takes arrays) as kind ``"sample"`` on
the review's :class:`~napari_probunet.gui.review.runner.JobRunner` and hands what the job
reports to the controller (the encoded region, then the result, which the hypothesis layers
show).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane, current_plane, placement
from napari_probunet.gui.review.common import KEY_SAMPLE, show_job_error
from napari_probunet.gui.review.region import SamplingRun, TooLarge, find_image, resolve_roi
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.jobs import Sampled, SamplingJob, sampling_job, stack_job

log = logging.getLogger(__name__)


class Sampler:
    """The Sampling box and the sampling runs of the review."""

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.runner = runner
        self.run: SamplingRun | None = None
        #: how long the last sampling run took, from the click to the layers
        self.last_seconds: float | None = None
        self.box = self._build()
        self.new_seed_button.clicked.connect(self.new_seed)
        self.sample_button.clicked.connect(lambda: self.sample())
        self.cancel_button.clicked.connect(self.cancel)
        c = controller
        c.hook_all(((c.busy_changed, self.update_controls),
                    (c.model_changed, self.update_controls),
                    (c.sample_requested, self.sample),
                    (c.bundle_adopted, self._on_bundle_adopted)))

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
        self.sample_button.setToolTip("Load a model first")
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
        return box

    def new_seed(self) -> None:
        self.seed_spin.setValue(int(np.random.default_rng().integers(0, 2**31 - 1)))

    def update_controls(self, *_) -> None:
        """Cancel while a run goes on; Sample says why it cannot run."""
        running = self.controller.sampling
        self.cancel_button.setEnabled(running)
        self.sample_button.setText("Sampling…" if running else "Sample")
        self.sample_button.setToolTip(
            f"Draw the hypotheses for the image region (key: {KEY_SAMPLE})"
            if self.controller.session is not None else "Load a model first")

    # ------------------------------------------------------------------ a run
    @property
    def running(self) -> bool:
        """A sampling run was started and has not finished."""
        return self.runner.running("sample")

    def sample(self) -> bool:
        """Start sampling (the Sample button). Returns whether a run was started."""
        c = self.controller
        if self.running:
            show_warning("Sampling is already running. Wait for it to finish or click Cancel.")
            return False
        if self.runner.running("load"):
            c.queue_sample()
            return False
        session = c.session
        if session is None:
            show_error("No model is loaded: " + (c.model_error
                                                 or "click 'Open model…' to choose a model file."))
            return False
        layer = find_image(self.viewer, c.input.image)
        if layer is None:
            show_error("There is no image layer to segment. Open an image (File → Open, or "
                       "File → Open Sample → napari-probunet) and choose it under Input.")
            return False
        try:
            plane = current_plane(layer, self.viewer)
            roi = resolve_roi(self.viewer, c.input, layer, plane)
        except TooLarge as exc:
            c.input.set_roi_mode("click", suggested=True)
            show_warning(str(exc))
            return False
        except UserError as exc:
            show_warning(str(exc))
            return False
        run = self._prepare(layer, plane, roi)
        job = stack_job if run.job.all_slices else sampling_job
        self.run = run
        self.progress.setRange(0, run.job.n)
        self.progress.setValue(0)
        self.progress.setFormat("Preparing…")
        self.runner.start(
            "sample", job(session, run.job), yielded=self._on_yielded,
            returned=partial(self._on_sampled, run), errored=self._on_failed,
            aborted=self._on_aborted, finished=self._on_finished)
        return True

    def _prepare(self, layer, plane: ImagePlane, roi) -> SamplingRun:
        """Read the region (and for "All slices" the stack) on the GUI thread: the job gets
        arrays, never the layer."""
        job = SamplingJob(region=plane.read(roi), plane=plane.read(), layer_name=layer.name,
                          index=plane.index, roi=roi, n=int(self.n_spin.value()),
                          seed=int(self.seed_spin.value()))
        place = placement(layer, roi, plane.index)
        if self.controller.input.all_slices and plane.index:
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
                self.runner.cancel("sample")

    def stop_if_reading(self, layer) -> None:
        """Stop the run when ``layer`` (just removed) is the image it samples."""
        run = self.run
        if run is not None and layer is run.plane.layer and self.running:
            self.runner.cancel("sample")
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
            self.controller.encoded(value)

    def _on_sampled(self, run: SamplingRun, result: Sampled) -> None:
        job = run.job
        if run.plane.layer not in self.viewer.layers:
            show_warning(f"Hypotheses discarded. The image layer '{job.layer_name}' was "
                         "removed while sampling.")
            return
        self.controller.show_results(result, run)
        self.last_seconds = time.perf_counter() - run.started
        if result.stack_labels is not None:
            total = result.stack_labels.shape[1]
            self.progress.setRange(0, total)
            self.progress.setValue(result.slices_done)
            self.progress.setFormat(f"{job.n} hypotheses × slice {result.slices_done} / "
                                    f"{total} in {self.last_seconds:.2f} s")
        else:
            self.progress.setFormat(f"{job.n} hypotheses in {self.last_seconds:.2f} s")
        self.controller.results_on_screen(result, run)

    def _on_failed(self, exc: BaseException) -> None:
        show_job_error(exc, "Sampling", log)
        self.progress.setFormat("Failed")

    def _on_aborted(self) -> None:
        self.progress.setFormat("Cancelled")
        show_info("Sampling cancelled. The previous hypotheses are unchanged.")

    def _on_finished(self) -> None:
        self.run = None

    def _on_bundle_adopted(self, record) -> None:
        """The Sampling box takes an opened bundle's seed and number of hypotheses."""
        n = len(self.controller.state.hypotheses.labels)
        if record.seed is not None:
            self.seed_spin.setValue(int(record.seed))
        self.n_spin.setValue(n)
        self.progress.setFormat(f"{n} hypotheses from the bundle")
