"""The *Nodule (3D)* dock widget: one click on a nodule of a whole scan gives N hypotheses that
are each one nodule in 3D, with their volumes; pick one, correct it slice by slice, export it
aligned with the series.

The work is :mod:`napari_probunet.review.nodule` (the same code as ``probunet sample --click``
and ``probunet evaluate`` on scans); this widget reads the click and the scan on the GUI thread,
runs the job on its :class:`~napari_probunet.gui.worker.SessionWorker` (the session lock of the
viewer's :class:`~napari_probunet.review.state.ReviewState`, so it never runs the network at the
same time as the review or the explorer), and shows the result:

- ``<image> nodule hypothesis NN``: one Labels layer per hypothesis, cropped to the slices and
  region sampled and placed over the scan (:func:`napari_probunet.gui.placement.placement`);
  the first shown, the others hidden.
- the gallery: a picture of each hypothesis (its central slices with the outline), its volume in
  mm^3, longest axial diameter in mm and slices, largest first; the spread of the volumes
  (median, 5-95%) beside the radiologists' volumes when their outlines are open.
- *Use as best fit* makes ``<image> nodule correction``, an editable copy (napari's brush,
  fill and eraser, slice by slice); *Export* writes it as the whole scan's label map (NIfTI
  with the series' affine, or a DICOM SEG) with its provenance record.

The widget has a session of its own on the viewer's model (the nodule's slices are encoded one
after another, so the review's and the explorer's encoded image are left as they were).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.dock import get_state, is_alive, is_grader_layer
from napari_probunet.gui.nodule.prompts import NodulePrompts
from napari_probunet.gui.placement import placement
from napari_probunet.gui.review.common import HYPOTHESIS_COLOURS, colormap
from napari_probunet.gui.worker import SessionWorker
from napari_probunet.review.nodule import NoduleRequest, check_request, nodule_job
from napari_probunet.review.nodule_review import (
    hypothesis_rows,
    montage,
    nodule_record,
    radiologist_volumes,
    spread_text,
)

THUMB = 56


class NoduleWidget(QWidget):
    """Dock widget: click a nodule, browse its 3D hypotheses, correct one, export it."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self._worker = SessionWorker(self.state.lock, parent=self, name="probunet-nodule")
        self._worker.signals.job_result.connect(self._on_job_result)
        self._session = None
        self._token = 0
        self.result = None  # NoduleHypotheses of the last run
        self.request = None  # NoduleRequest of the nodule found last (refined by clicks)
        self.image_layer = None  # the scan layer of the last run
        self.hypothesis_layers: list = []
        self.correction_layer = None
        self.chosen: int | None = None
        self.radiologists: dict[str, float] = {}
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.state.model_changed.connect(self._on_model)
        self._refresh_images()

    # -- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = QComboBox()
        self.n_spin = QSpinBox(minimum=1, maximum=100, value=16)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.pick_button = QPushButton("Click on a nodule…", checkable=True)
        self.pick_button.setToolTip("Then click on the nodule in the scan, on any of its slices")
        self.pick_button.toggled.connect(self._arm)
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar(minimum=0, maximum=1, value=0)
        self.status = QLabel("Open a CT scan, then click on a nodule.", wordWrap=True)
        self.spread = QLabel("", wordWrap=True)
        self.gallery = QListWidget()
        self.gallery.setIconSize(QSize(3 * THUMB, THUMB))
        self.gallery.currentRowChanged.connect(self._on_row)
        self.best_button = QPushButton("Use as best fit", enabled=False)
        self.best_button.clicked.connect(lambda: self.use_as_best_fit())
        self.export_button = QPushButton("Export 3D…", enabled=False)
        self.export_button.clicked.connect(self._export_dialog)
        self.prompts = NodulePrompts(self)  # refine by clicks
        form = QFormLayout()
        form.addRow("Scan", self.image_combo)
        form.addRow("Hypotheses", self.n_spin)
        form.addRow("Seed", self.seed_spin)
        row = QHBoxLayout()
        row.addWidget(self.pick_button, 1)
        row.addWidget(self.cancel_button)
        actions = QHBoxLayout()
        actions.addWidget(self.best_button)
        actions.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.prompts.box)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.spread)
        layout.addWidget(self.gallery, 1)
        layout.addLayout(actions)

    def _refresh_images(self, event=None) -> None:
        from napari.layers import Image

        if not is_alive(self.image_combo):  # the dock was closed: its controls are deleted
            return
        current = self.image_combo.currentText()
        names = [la.name for la in self.viewer.layers
                 if isinstance(la, Image) and la.ndim == 3 and not la.rgb]
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)

    def _on_model(self) -> None:
        self._session = None
        self._token += 1

    # -- the click --------------------------------------------------------------------------
    def _arm(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._on_click not in callbacks:
            callbacks.append(self._on_click)
            self.status.setText("Click on the nodule in the scan (any of its slices).")
        elif not on and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, viewer, event) -> None:
        layer = self.scan_layer()
        if layer is None:
            return
        voxel = np.rint(layer.world_to_data(event.position)).astype(int)
        self.pick_button.setChecked(False)
        self.find_nodule(tuple(int(v) for v in voxel[-3:]))

    def scan_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # -- the job ----------------------------------------------------------------------------
    def session_for_job(self):
        if self.state.model is None:
            raise UserError("no model is loaded yet: open the Probabilistic U-Net widget (it "
                            "loads the bundled model) or wait until it has loaded")
        if self._session is None:
            from napari_probunet.session import Session

            device = getattr(self.state, "device", None) or "cpu"
            self._session = Session(self.state.model, device=device)
        return self._session

    def find_nodule(self, click: tuple[int, int, int]) -> bool:
        """Sample the nodule under ``click`` (slice, row, column of the scan layer's data).
        Returns False (with a notification) when it cannot start."""
        from napari.utils.notifications import show_error

        layer = self.scan_layer()
        try:
            if layer is None:
                raise UserError("no 3D image is open: open a CT scan (a DICOM series, a NIfTI "
                                "volume or a scan folder) first")
            session = self.session_for_job()
            spacing = tuple(float(s) for s in layer.scale[-3:])
            request = NoduleRequest(np.asarray(layer.data), spacing, click,
                                    n=self.n_spin.value(), seed=self.seed_spin.value())
            check_request(request, int(session.config.input_size))  # before the worker
        except UserError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return False
        self.image_layer, self.request = layer, request
        self.prompts.forget()
        self.submit(nodule_job(session, request), f"Sampling the nodule at slice {click[0]}…")
        return True

    def submit(self, job, text: str) -> None:
        """Run a nodule job (its result is shown as a new set of hypotheses)."""
        self._token += 1
        self.progress.setRange(0, 0)
        self.cancel_button.setEnabled(True)
        self.status.setText(text)
        self._worker.submit(self._token, "nodule", job)

    def cancel(self) -> None:
        self._worker.cancel_job("nodule")

    def _on_job_result(self, message) -> None:
        self._worker.delivered()
        token, kind, item, error = message
        if token != self._token or not is_alive(self.status):
            return
        if error is not None or kind.endswith((":done", ":cancelled")):
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if kind.endswith(":done") else 0)
            self.cancel_button.setEnabled(False)
        if error is not None:
            from napari.utils.notifications import show_error

            text = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: " \
                                                                   f"{error}"
            show_error(text)
            self.status.setText(text)
        elif kind.endswith(":cancelled"):
            self.status.setText("Cancelled: the hypotheses on screen are unchanged.")
        elif kind.endswith(":done"):
            self.show_result(item)
        elif isinstance(item, tuple) and item and item[0] == "stage":
            self.status.setText(str(item[1]))

    @property
    def busy(self) -> bool:
        """A nodule is being sampled (tests wait on it with ``wait_idle``)."""
        return not self._worker.idle

    # -- showing the result -----------------------------------------------------------------
    def _remove_layers(self) -> None:
        for la in self.hypothesis_layers:
            if la in self.viewer.layers:
                self.viewer.layers.remove(la)
        self.hypothesis_layers = []

    def show_result(self, hyp) -> None:
        """Show ``hyp`` (a :class:`~napari_probunet.review.nodule.NoduleHypotheses`): layers,
        gallery, volumes."""
        self._remove_layers()
        self.result, self.chosen = hyp, None
        layer = self.image_layer
        classes = int(self._session.config.num_classes) if self._session is not None else 2
        place = placement(layer, hyp.roi, (hyp.first,))
        for i in range(hyp.n):
            la = self.viewer.add_labels(
                hyp.labels[i], name=f"{layer.name} nodule hypothesis {i + 1:02d}",
                opacity=0.5, visible=False, colormap=colormap(classes, HYPOTHESIS_COLOURS),
                **place,
                metadata={"kind": "nodule hypothesis", "index": i, "seed": hyp.seed,
                          "click": list(hyp.click), "first_slice": hyp.first,
                          "roi": list(hyp.roi)})
            self.hypothesis_layers.append(la)
        self.radiologists = self._radiologist_volumes(hyp)
        self.spread.setText(spread_text(hyp, self.radiologists))
        self._fill_gallery(hyp)
        self.status.setText(
            f"{hyp.n} hypotheses over slices {hyp.first}-{hyp.first + hyp.labels.shape[1] - 1}"
            + ("".join(f"; {n}" for n in hyp.notes)))
        self.gallery.setCurrentRow(0)

    def _radiologist_volumes(self, hyp) -> dict[str, float]:
        masks = {la.name: np.asarray(la.data) for la in self.viewer.layers
                 if is_grader_layer(la) and la.ndim == 3
                 and tuple(la.data.shape) == tuple(self.image_layer.data.shape)}
        return radiologist_volumes(masks, hyp, hyp.spacing)

    def _fill_gallery(self, hyp) -> None:
        self.gallery.clear()
        r0, c0, h, w = hyp.roi
        z0, z1 = hyp.first, hyp.first + hyp.labels.shape[1]
        crop = np.asarray(self.image_layer.data[z0:z1, r0:r0 + h, c0:c0 + w])
        window = tuple(float(v) for v in self.image_layer.contrast_limits)
        for row in hypothesis_rows(hyp):
            pic = np.ascontiguousarray(montage(crop, hyp.labels[row.index], window, THUMB))
            qimg = QImage(pic.data, pic.shape[1], pic.shape[0], 3 * pic.shape[1],
                          QImage.Format.Format_RGB888).copy()
            item = QListWidgetItem(QIcon(QPixmap.fromImage(qimg)), row.text)
            item.setData(Qt.ItemDataRole.UserRole, row.index)
            self.gallery.addItem(item)

    def _on_row(self, row: int) -> None:
        item = self.gallery.item(row) if row >= 0 else None
        if item is None:
            self.best_button.setEnabled(False)
            return
        index = int(item.data(Qt.ItemDataRole.UserRole))
        self.show_hypothesis(index)

    def show_hypothesis(self, index: int) -> None:
        """Show hypothesis ``index`` (0-based) alone and move to its central slice."""
        for i, la in enumerate(self.hypothesis_layers):
            la.visible = i == index
        self.viewer.layers.selection.active = self.hypothesis_layers[index]
        self.best_button.setEnabled(True)
        extent = self.result.extent(index)
        if extent is not None:
            step = list(self.viewer.dims.current_step)
            axis = self.viewer.dims.ndim - 3
            step[axis] = (extent[0] + extent[1]) // 2
            self.viewer.dims.current_step = tuple(step)

    def selected(self) -> int | None:
        item = self.gallery.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    # -- best fit, correction, export -------------------------------------------------------
    def use_as_best_fit(self, index: int | None = None):
        """An editable copy of hypothesis ``index`` (default: the one selected)."""
        index = self.selected() if index is None else index
        if self.result is None or index is None:
            return None
        if self.correction_layer is not None and self.correction_layer in self.viewer.layers:
            self.viewer.layers.remove(self.correction_layer)
        src = self.hypothesis_layers[index]
        self.chosen = index
        self.correction_layer = self.viewer.add_labels(
            self.result.labels[index].copy(), name=f"{self.image_layer.name} nodule correction",
            scale=src.scale, translate=src.translate, rotate=src.rotate, affine=src.affine,
            metadata={"kind": "nodule correction", "from_hypothesis": index})
        for la in self.hypothesis_layers:
            la.visible = False
        self.correction_layer.mode = "paint"
        self.viewer.layers.selection.active = self.correction_layer
        self.export_button.setEnabled(True)
        self.status.setText(f"Hypothesis {index + 1} is the best fit: correct it with the brush "
                            "slice by slice, then Export 3D.")
        return self.correction_layer

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the nodule", "", "NIfTI (*.nii.gz *.nii);;DICOM SEG (*.seg.dcm)")
        if path:
            self.export_to(path)

    def export_to(self, path, overwrite: bool = False):
        """Write the correction as the whole scan's label map (and its record) to ``path``.
        Returns the paths written, or None (with a notification) when it cannot."""
        from napari.utils.notifications import show_error, show_info

        from napari_probunet.review.export import export_correction

        if self.correction_layer is None or self.result is None:
            show_error("nothing to export: pick a hypothesis and click Use as best fit first")
            return None
        hyp, index = self.result, self.chosen
        corrected = np.asarray(self.correction_layer.data).astype(np.uint8)
        full = np.zeros(self.image_layer.data.shape, np.uint8)
        r0, c0, h, w = hyp.roi
        full[hyp.first:hyp.first + corrected.shape[0], r0:r0 + h, c0:c0 + w] = corrected
        model = {"sha256": getattr(self._session, "model_sha256", None),
                 "path": str(getattr(self.state, "model_path", None))}
        record = nodule_record(
            hyp, index, image_name=self.image_layer.name, model=model,
            edited_voxels=int(np.count_nonzero(corrected != hyp.labels[index])),
            corrected=corrected, source=(self.image_layer.metadata or {}).get("source"),
            radiologists=self.radiologists)
        try:
            written = export_correction(full, Path(path), record, overwrite=overwrite)
        except UserError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return None
        show_info(f"Exported the nodule to {written[0]} (record {written[1].name})")
        self.status.setText(f"Exported to {written[0]}")
        return written

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self._arm(False)
        self._worker.stop()
        super().closeEvent(event)
