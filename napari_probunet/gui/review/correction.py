"""The review widget's Best fit & export box: the editable correction and never losing it.

:class:`Correction` turns the chosen hypothesis (or an explorer point) into an editable
``<image> correction`` Labels layer, autosaves it 2 s after the last edit, offers to restore an
autosave when the same image is sampled again, keeps the edits of a deleted correction, and
exports it (:mod:`napari_probunet.review.export`). The layer's metadata is its
:class:`~napari_probunet.review.provenance.Provenance`; the autosave is
:mod:`napari_probunet.review.recovery`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QVBoxLayout

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane, move_to, placement, plane_shape
from napari_probunet.gui.review.common import (
    AUTOSAVE_MS,
    CORRECTION_COLOURS,
    KEY_ACCEPT,
    KEY_EXPORT,
    ask_save_path,
    ask_yes_no,
    colormap,
    readable_time,
    settings,
)
from napari_probunet.gui.review.region import find_image
from napari_probunet.review import export, recovery
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.geometry import as_2d, embed
from napari_probunet.review.provenance import Provenance, pixels_changed
from napari_probunet.review.state import Choice


class Correction:
    """The correction layer of the review: best fit, autosave, restore, export.

    Its questions are attributes that scripts and tests can answer:
    ``confirm(title, text) -> bool`` and ``ask_save_path(default) -> str | None``;
    ``recovery_dir`` is where autosaves go (None: :func:`recovery.recovery_dir`).
    """

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.state = controller.state
        self.confirm: Callable[[str, str], bool] = lambda title, text: ask_yes_no(
            parent, title, text)
        self.ask_save_path: Callable[[str], str | None] = lambda d: ask_save_path(parent, d)
        self.recovery_dir: str | os.PathLike | None = None
        self._declined_recovery: set[str] = set()
        self._last_autosaved: np.ndarray | None = None
        self._autosave_failed = False
        self._saved_at: str | None = None  # time of the last autosave of the correction
        self.timer = QTimer(parent)
        self.timer.setSingleShot(True)
        self.timer.setInterval(AUTOSAVE_MS)
        self.timer.timeout.connect(self.autosave_now)
        self.box = self._build()
        # (lambdas: `clicked` would pass its `checked` flag as the first argument)
        self.best_fit_button.clicked.connect(lambda: controller.use_as_best_fit())
        self.export_button.clicked.connect(lambda: self.export())
        c = controller
        c.hook(c.best_fit_requested, self.on_best_fit_requested)
        c.hook(c.results_shown, lambda result, run: self.offer_restore(
            result.plane_signature, run.job.layer_name, run.plane))
        c.hook_all((signal, self.update_controls) for signal in (
            c.hypotheses_changed, c.input_changed, c.correction_changed, c.model_changed))
        if self.layer is not None:  # the widget closed and reopened: keep autosaving it
            self.watch(self.layer)
            self.update_label()

    def update_controls(self, *_) -> None:
        """*Use as best fit* with hypotheses of the image chosen, *Export…* with a correction."""
        self.best_fit_button.setEnabled(self.controller.can_choose)
        self.export_button.setEnabled(self.layer is not None)

    def _build(self) -> QGroupBox:
        box = QGroupBox("Best fit && export")
        lay = QVBoxLayout(box)
        self.best_fit_button = QPushButton("Use as best fit")
        self.best_fit_button.setToolTip(
            f"Copy the shown hypothesis into an editable '<image> correction' layer, ready for "
            f"the brush (key: {KEY_ACCEPT})")
        lay.addWidget(self.best_fit_button)
        self.correction_label = QLabel("No correction yet")
        self.correction_label.setWordWrap(True)
        lay.addWidget(self.correction_label)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the correction (TIFF, PNG, NPY or NIfTI) with a JSON "
                                      "record of the model, image, hypothesis and edits "
                                      f"(key: {KEY_EXPORT})")
        lay.addWidget(self.export_button)
        return box

    @property
    def layer(self) -> Labels | None:
        """The correction layer, if it is in the viewer."""
        layer = self.state.correction_layer
        return layer if layer is not None and layer in self.viewer.layers else None

    def watch(self, layer) -> None:
        """Autosave ``layer`` (the state's correction) when it is edited."""
        layer.events.paint.connect(self._on_edited)
        layer.events.set_data.connect(self._on_edited)

    def _unwatch(self) -> None:
        old = self.state.correction_layer
        if old is not None:
            with suppress(Exception):
                old.events.paint.disconnect(self._on_edited)
                old.events.set_data.disconnect(self._on_edited)

    # ------------------------------------------------------------------ best fit
    def on_best_fit_requested(self, choice: Choice) -> None:
        """Create (or replace) ``<image> correction`` from a hypothesis or an explorer point."""
        enc = self.state.encoded
        if enc is None:
            show_error("No image region is encoded: click Sample first.")
            return
        labels = np.asarray(choice.labels)
        if labels.shape != (enc.roi[2], enc.roi[3]):
            show_error(f"Sample again, then retry. The chosen map is {labels.shape[0]}x"
                       f"{labels.shape[1]} but the encoded region is {enc.roi[2]}x{enc.roi[3]}.")
            return
        layer = find_image(self.viewer, enc.layer_name)
        if layer is None:
            show_error(f"The image is gone. The layer '{enc.layer_name}' is needed to place "
                       "the correction: open the image again and sample.")
            return
        plane = ImagePlane(layer=layer, index=tuple(enc.slice_index), shape=plane_shape(layer))
        label = (f"hypothesis {choice.index + 1}" if choice.source == "hypothesis"
                 else "the explorer's point")
        existing = self._correction_for(enc.layer_name)
        if existing is not None:
            edited = Provenance.from_metadata(existing.metadata).pixels_edited(
                as_2d(existing.data))
            if edited and not self.confirm(
                    "Replace the correction?",
                    f"'{existing.name}' has {edited} pixel(s) edited by hand. Replace it with "
                    f"{label}? The edits are lost unless you export them first."):
                show_info("The correction was kept.")
                return
        prov = self._record(choice, labels, layer, plane)
        correction = self._make(layer, plane, enc.roi, labels.copy(), prov, existing,
                                hide_uncertainty=True)
        self.controller.choose(choice, correction)
        show_info(f"Best fit: {label}. It is now '{enc.layer_name} correction': edit it with "
                  "the brush (P), eraser (E) or fill (F); Ctrl+Z undoes.")

    def _record(self, choice: Choice, labels: np.ndarray, layer, plane: ImagePlane) -> Provenance:
        """Where the correction came from (its layer's metadata, the export record's source)."""
        c, enc, hyp = self.controller, self.state.encoded, self.state.hypotheses
        # hypotheses from an opened bundle carry their own model record (there may be no model)
        bundle = c.bundle_record if choice.source == "hypothesis" else None
        model_sha = bundle.model_sha256 if bundle is not None else c.model_sha()
        model_name = bundle.model_name if bundle is not None else c.model_name()
        class_names = (list(self.state.model.config.class_names) if self.state.model
                       else None)
        if bundle is not None and bundle.class_names:
            class_names = list(bundle.class_names)
        layers = self.state.hypothesis_layers or []
        refined = (layers[choice.index].metadata.get("refined_by_clicks")
                   if choice.source == "hypothesis" and choice.index is not None
                   and choice.index < len(layers) else None)  # the clicks that steered it
        return Provenance(
            kind="correction", source=choice.source, index=choice.index,
            z=[float(v) for v in np.asarray(choice.z).ravel()],
            seed=hyp.seed if (hyp is not None and choice.source == "hypothesis") else None,
            n_samples=len(hyp.labels) if hyp is not None else None,
            roi=enc.roi, image_layer=enc.layer_name, slice_index=enc.slice_index,
            plane_shape=plane.shape, image_signature=enc.image_signature,
            plane_signature=c.plane_signature or enc.image_signature,
            model_sha256=model_sha, model_name=model_name, class_names=class_names,
            scale=[float(s) for s in layer.scale[-2:]],
            translate=[float(t) for t in layer.translate[-2:]],
            source_labels=labels.copy(),
            volume=export.volume_source(layer.metadata),  # a scan's: exported in place
            image_file=getattr(layer.source, "path", None),  # exported with the pixels:
            region_pixels=enc.image,  # a correction can become training data
            extra={"refined_by_clicks": refined} if refined else {})

    def _make(self, layer, plane: ImagePlane, roi, labels2d: np.ndarray,
              prov: Provenance, existing: Labels | None, hide_uncertainty: bool = False) -> Labels:
        """Put ``labels2d`` (the ROI crop) into the correction layer (``existing`` reused when
        it fits), with ``prov`` as its metadata, ready for the brush, over the hypotheses
        (and the uncertainty map when ``hide_uncertainty``)."""
        viewer = self.viewer
        meta = prov.to_metadata()
        place = placement(layer, roi, plane.index)
        data = embed(labels2d, plane.index)
        name = f"{prov.image_layer} correction"
        num_classes = self.state.model.config.num_classes if self.state.model else max(
            2, len(prov.class_names or ()))
        self._unwatch()
        if existing is not None and existing in viewer.layers \
                and existing.data.shape == data.shape:
            correction = existing
            correction.metadata = meta
            correction.data = data
            move_to(correction, place)
            correction.visible = True
        else:
            if existing is not None and existing in viewer.layers:
                viewer.layers.remove(existing)
            correction = Labels(data, name=name, opacity=0.7, metadata=meta,
                                colormap=colormap(max(num_classes, 2), CORRECTION_COLOURS),
                                **place)
            viewer.layers.append(correction)
        viewer.layers.selection.active = correction
        correction.selected_label = 1
        correction.brush_size = max(1, min(labels2d.shape) // 16)
        correction.mode = "paint"
        self._last_autosaved = labels2d.copy()
        self._saved_at = None
        self.watch(correction)
        self.controller.place_correction(correction, hide_uncertainty)
        self.update_label()
        return correction

    def _correction_for(self, image_name: str) -> Labels | None:
        layer = self.layer
        if layer is None or Provenance.from_metadata(layer.metadata).image_layer != image_name:
            return None
        return layer

    def update_label(self, saved: str | None = None) -> None:
        layer = self.layer
        if layer is None:
            self.correction_label.setText("No correction yet")
            return
        prov = Provenance.from_metadata(layer.metadata)
        source = (f"hypothesis {prov.hypothesis_number}" if prov.source == "hypothesis"
                  else "an explorer point")
        edited = prov.pixels_edited(as_2d(layer.data))
        text = f"'{layer.name}' from {source} · {edited or 0} pixel(s) edited"
        if saved:
            text += f" · autosaved {saved}"
        self.correction_label.setText(text)

    # ------------------------------------------------------------------ autosave and restore
    def _on_edited(self, event=None) -> None:
        if not self.controller.closed:
            self.timer.start()
            self.update_label(saved=self._saved_at)

    def autosave_now(self) -> Path | None:
        layer = self.layer
        if layer is None:
            return None
        data = as_2d(layer.data)
        if self._last_autosaved is not None and np.array_equal(data, self._last_autosaved):
            with suppress(RuntimeError):
                self.update_label()
            return None
        try:
            path = self._save_recovery(layer, data)
        except (OSError, KeyError, ValueError) as exc:
            if not self._autosave_failed:
                show_warning(f"Autosave failed. {exc}; your edits are still in napari: export "
                             "them to keep them.")
            self._autosave_failed = True
            return None
        self._autosave_failed = False
        self._last_autosaved = data.copy()
        self._saved_at = time.strftime("%H:%M:%S")
        with suppress(RuntimeError):
            self.update_label(saved=self._saved_at)
        return path

    def flush(self) -> None:
        """Autosave now an edit still waiting for its timer (the widget is closing)."""
        with suppress(RuntimeError):
            if self.timer.isActive():
                self.timer.stop()
                self.autosave_now()

    def offer_restore(self, plane_signature: str, image_name: str, plane: ImagePlane) -> None:
        """Offer the autosaved correction of this plane, if any, after sampling it again."""
        folder = self.recovery_dir
        if plane_signature in self._declined_recovery or self._correction_for(image_name):
            return
        found = recovery.load_recovery(plane_signature, folder)
        if found is None:
            return
        correction, source, info = found
        prov = Provenance.from_recovery(
            info, image_name, source if source is not None else correction.copy())
        roi = prov.region
        if roi is None or correction.shape != (roi[2], roi[3]):
            return
        edited = pixels_changed(correction, source)
        what = (f"hypothesis {prov.hypothesis_number}" if prov.source == "hypothesis"
                else "an explorer point")
        if not self.confirm(
                "Restore the autosaved correction?",
                f"A correction of this image was autosaved "
                f"{readable_time(info.get('saved', '?'))} (from "
                f"{what}, {edited if edited is not None else '?'} pixel(s) edited by hand). "
                "Restore it?"):
            self._declined_recovery.add(plane_signature)
            show_info("Autosave not restored. It stays in "
                      f"{recovery.recovery_path(plane_signature, folder).parent}.")
            return
        layer = self._make(plane.layer, plane, roi, correction, prov, None)
        self._last_autosaved = correction.copy()
        z = np.asarray(prov.z or [], np.float32)
        self.controller.choose(Choice(source=prov.choice_source, index=prov.index, z=z,
                                      labels=prov.source_labels),
                               layer)
        show_info(f"Autosave restored. It is '{image_name} correction'.")

    def on_layer_removed(self, layer) -> None:
        """The correction layer was deleted: keep its last edits in the recovery file
        (deleting a layer is easily a slip)."""
        if layer is not self.state.correction_layer:
            return
        if self.timer.isActive():
            self.timer.stop()
        data = as_2d(layer.data)
        if self._last_autosaved is None or not np.array_equal(data, self._last_autosaved):
            with suppress(OSError, KeyError, ValueError):
                self._save_recovery(layer, data)
                show_info("The deleted correction was autosaved. Sample the same image again "
                          "to restore it.")
        self._unwatch()
        self.controller.drop_correction()
        self.update_label()

    def _save_recovery(self, layer, data: np.ndarray) -> Path:
        """Autosave ``data`` (the ``(h, w)`` crop) of the correction ``layer`` with its record
        (:func:`napari_probunet.review.recovery.save_recovery`, which raises what it raises)."""
        prov = Provenance.from_metadata(layer.metadata)
        return recovery.save_recovery(prov.plane_signature, data, prov.recovery_info(),
                                      source_labels=prov.source_labels,
                                      folder=self.recovery_dir)

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike | None = None) -> Path | None:
        """Export the correction (the Export… button; ``path``: no dialog). Returns the
        mask's path, or ``None``."""
        layer = self.layer
        if layer is None:
            show_warning("Nothing to export yet. Pick a hypothesis with 'Use as best fit' "
                         "first.")
            return None
        prov = Provenance.from_metadata(layer.metadata)
        asked = path is None
        if asked:
            folder = str(settings().value("export_folder", str(Path.home())))
            stem = f"{prov.image_layer}_correction".replace(" ", "_")
            path = self.ask_save_path(str(Path(folder) / f"{stem}.tif"))
            if not path:
                return None
        path = Path(path).expanduser()
        exists = [p.name for p in (path, export.record_path(path)) if p.exists()]
        if exists and not self.confirm(
                "Replace the existing file?",
                f"{' and '.join(exists)} already exist(s) in {path.parent}. Replace?"):
            show_info("Nothing was exported. The existing file is kept.")
            return None
        try:
            done = self.controller.export(path, overwrite=bool(exists))
        except UserError as exc:
            show_error(str(exc))
            return None
        if asked:
            settings().setValue("export_folder", str(path.parent))
        with suppress(KeyError, OSError, ValueError):
            if np.array_equal(done.crop, as_2d(layer.data)):
                recovery.discard_recovery(done.plane_signature, self.recovery_dir)
                self._last_autosaved = done.crop.copy()
        show_info(f"Saved {done.mask.name} and {done.record.name}. Folder: {done.mask.parent}")
        self.update_label()
        return done.mask
