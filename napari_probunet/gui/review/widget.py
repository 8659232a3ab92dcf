"""The clinician's review dock widget: sample hypotheses, pick the best fit, correct, export.

Plugins → Probabilistic U-Net. The widget is a thin GUI over
:class:`~napari_probunet.session.Session` (encode once, decode many) and
:mod:`napari_probunet.review.export`; what it knows about the current image, the model and the
hypotheses lives in the viewer's :class:`~napari_probunet.review.state.ReviewState`, which the
latent-space explorer reads too.

Where results go (the placement convention)
-------------------------------------------
The model sees a region of interest (ROI) of one 2D image plane: the whole image, a rectangle
from a Shapes layer, or a crop of the model's input size centred on a click. Hypotheses, the
uncertainty map and the correction are **ROI-sized** layers placed over the image with the
image layer's own transform (scale, translate moved by the ROI offset, rotate, shear, affine).
So ``layer.data`` of ``<image> hypothesis 03`` is exactly ``state.hypotheses.labels[2]`` (with
leading length-1 axes for a slice of a 3D/4D stack, so that it shows on that slice only), and
memory does not grow with the image size. **Export** writes the full image plane (zero outside
the ROI) with the ROI in the JSON record; see :mod:`napari_probunet.review.export`.

Layers: ``<image> hypothesis 01`` ... (only one shown at a time; ``.``/``,`` cycle),
``<image> uncertainty`` (per-pixel disagreement of the samples), ``<image> correction`` (the
editable best fit) and ``ROI`` (the region shown as a rectangle).

The plane and ROI geometry is in :mod:`napari_probunet.review.geometry`, the background sampling jobs in
:mod:`napari_probunet.review.jobs`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.dock import scrolling_content
from napari_probunet.review import export
from napari_probunet.review.geometry import (
    Plane,
    as_2d,
    bounding_roi,
    centred_roi,
    current_plane,
    current_plane_shape,
    embed,
    placement,
)
from napari_probunet.review.jobs import (
    _model_job,
    _Sampled,
    _Sampling,
    _sampling_job,
    _stack_job,
)
from napari_probunet.review.state import Choice, Encoded, get_state

log = logging.getLogger(__name__)

#: keyboard shortcuts, bound on the viewer while the widget is open
KEY_NEXT = "."
KEY_PREVIOUS = ","
KEY_ACCEPT = "Shift-Enter"
KEY_SAMPLE = "Control-Enter"
KEY_EXPORT = "Control-Shift-E"
#: whole-image sampling is refused above this many pixels (use an ROI)
WHOLE_IMAGE_LIMIT = 1024 * 1024
#: ROI side when no model is loaded yet (the model's config.input_size otherwise)
FALLBACK_ROI = 128
#: autosave the correction this long after the last edit
AUTOSAVE_MS = 2000
ROI_MODES = ("whole", "rectangle", "click")
ROI_LABELS = ("Whole image", "Rectangle (Shapes layer)", "Click on the lesion")
#: the "Slices" choice for a 3D/4D stack
SLICE_LABELS = ("Current slice", "All slices")
#: colours of label values 1, 2, ... (hypotheses, correction)
HYPOTHESIS_COLOURS = [(0.25, 0.8, 1.0), (0.6, 1.0, 0.3), (1.0, 0.45, 0.8), (0.7, 0.55, 1.0)]
CORRECTION_COLOURS = [(1.0, 0.72, 0.1), (1.0, 0.35, 0.2), (0.95, 0.95, 0.3), (1.0, 0.5, 0.6)]
EXPORT_FILTERS = {
    "TIFF (*.tif *.tiff)": ".tif",
    "PNG (*.png)": ".png",
    "NumPy (*.npy)": ".npy",
    "NIfTI (*.nii.gz *.nii)": ".nii.gz",
}


def _settings() -> QSettings:
    """Where the widget remembers the device and folders (replaced in tests)."""
    return QSettings("napari-probunet", "review")


def _colormap(num_classes: int, colours):
    from napari.utils.colormaps import DirectLabelColormap

    table = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for c in range(1, num_classes):
        table[c] = (*colours[(c - 1) % len(colours)], 1.0)
    return DirectLabelColormap(color_dict=table)


@contextmanager
def _no_activation(layers):
    """Insert layers without selecting each one.

    napari selects every inserted layer, which rebuilds the layer controls each time;
    ``_activate_on_insert`` is napari's own switch for this (private, so guarded: if it is
    renamed, adding just gets slower).
    """
    previous = getattr(layers, "_activate_on_insert", None)
    if previous is not None:
        layers._activate_on_insert = False
    try:
        yield
    finally:
        if previous is not None:
            layers._activate_on_insert = previous


def remove_layers(viewer, layers) -> None:
    """Remove several layers the way napari's "delete selected layers" does, keeping the
    user's selection.

    They are selected and removed in one batch (one scene-graph update, one garbage
    collection). Removing Labels layers one by one without a repaint in between, and then
    adding a layer, crashes napari 0.9.2 in ``glDrawArrays`` with software OpenGL (the same
    class of bug as napari issue #8471); its own batched removal of the selection does not.
    """
    ours = [la for la in layers if la in viewer.layers]
    if not ours:
        return
    selection = viewer.layers.selection
    active = selection.active
    keep = [la for la in selection if la not in ours]
    selection.clear()
    selection.update(ours)
    viewer.layers.remove_selected()
    selection.clear()
    selection.update([la for la in keep if la in viewer.layers])
    if active is not None and active in viewer.layers:
        selection.active = active


# ----------------------------------------------------------------------------- dialogs


def _ask_yes_no(parent, title: str, text: str) -> bool:
    answer = QMessageBox.question(
        parent, title, text,
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def _ask_save_path(parent, default: str) -> str | None:
    path, chosen = QFileDialog.getSaveFileName(
        parent, "Export the correction", default, ";;".join(EXPORT_FILTERS),
        options=QFileDialog.Option.DontConfirmOverwrite,  # the widget asks itself
    )
    if not path:
        return None
    if export.mask_suffix(path) not in export.SUFFIXES:
        path += EXPORT_FILTERS.get(chosen, ".tif")
    return path


def _ask_model_path(parent, folder: str) -> str | None:
    path, _ = QFileDialog.getOpenFileName(
        parent, "Open a Probabilistic U-Net model file", folder,
        "Model files (*.safetensors);;All files (*)")
    return path or None


# ----------------------------------------------------------------------------- the widget


class ReviewWidget(QWidget):
    """Dock widget of the review workflow (SPEC.md, "Clinician workflow", steps 1-3, 5, 6).

    Public methods, used by the buttons and callable from scripts, tests and other widgets:
    :meth:`load_model_file`, :meth:`load_bundled_model` (``"default"``, ``"lidc"``,
    ``"lesions"``), :meth:`set_device`, :meth:`sample`,
    :meth:`cancel`, :meth:`show_hypothesis`, :meth:`next_hypothesis`,
    :meth:`previous_hypothesis`, :meth:`use_as_best_fit`, :meth:`set_click_roi`,
    :meth:`export`, :meth:`autosave_now`, :meth:`cleanup`.

    Dialogs are attributes so that scripts and tests can answer them:
    ``confirm(title, text) -> bool``, ``ask_save_path(default) -> str | None`` and
    ``ask_model_path(folder) -> str | None``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None, *,
                 load_default: bool = True):
        super().__init__(parent)
        # napari hands plugins a proxy of the viewer; the per-viewer state is keyed by the
        # viewer itself, so that the explorer widget finds the same state
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.state = get_state(self.viewer)
        self.confirm: Callable[[str, str], bool] = lambda title, text: _ask_yes_no(self, title, text)
        self.ask_save_path: Callable[[str], str | None] = lambda d: _ask_save_path(self, d)
        self.ask_model_path: Callable[[str], str | None] = lambda d: _ask_model_path(self, d)
        self.recovery_dir: str | os.PathLike | None = None  # None: export.recovery_dir()

        self._sampling_worker = None
        self._sampling_request: _Sampling | None = None
        self._model_worker = None
        self._sample_when_ready = False
        self._current = 0
        self._hypothesis_layers: list[Labels] = []  # ours, also while state's list is cleared
        self._pending: list[tuple[Labels, Labels | None]] = []  # layers still to add
        self._uncertainty_layer: Image | None = None
        self._roi_layer: Shapes | None = None
        self._click_roi: tuple[str, tuple[int, ...], tuple[int, int, int, int]] | None = None
        self._plane_signature: str | None = None
        self._model_error: str | None = None
        self._domain_warned: tuple | None = None
        self._region_suggested: set[str] = set()  # images switched to the click region once
        self.last_sampling_seconds: float | None = None
        self._declined_recovery: set[str] = set()
        self._last_autosaved: np.ndarray | None = None
        self._autosave_failed = False
        self._saved_at: str | None = None  # time of the last autosave of the correction
        self._emitting = False
        self._disconnectors: list[Callable[[], None]] = []
        self._closed = False
        # the shared record (model, seed, ...) of the bundle whose hypotheses are adopted
        self._bundle_record: dict[str, Any] | None = None
        self._bundle_signature: str | None = None  # image signature of a bundle to adopt

        self._bundle_timer = QTimer(self)  # adopt a bundle once all its layers are in
        self._bundle_timer.setSingleShot(True)
        self._bundle_timer.setInterval(0)
        self._bundle_timer.timeout.connect(self._on_bundle_timer)

        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)

        self._build()
        self._connect()
        self._bind_keys()
        self._adopt_state()
        self._refresh_layer_choices()
        if self.state.hypotheses is None:
            self.adopt_bundle_layers()  # a bundle opened before the widget
        if self.state.session is not None:
            self._show_model()
        elif load_default:
            self.load_bundled_model()
        else:
            self._show_model()

    def _adopt_state(self) -> None:
        """Pick up what the viewer's state already holds (the widget closed and reopened)."""
        st = self.state
        if st.hypotheses is not None and st.hypothesis_layers \
                and len(st.hypothesis_layers) == len(st.hypotheses.labels):
            self._hypothesis_layers = list(st.hypothesis_layers)
            self._uncertainty_layer = st.uncertainty_layer
            meta = self._hypothesis_layers[0].metadata
            self._plane_signature = meta.get("plane_signature")
            if _is_bundle_layer(self._hypothesis_layers[0]):
                self._bundle_record = dict(meta)
            self._update_navigation()
        correction = st.correction_layer
        if correction is not None and correction in self.viewer.layers:
            correction.events.paint.connect(self._on_correction_edited)
            correction.events.set_data.connect(self._on_correction_edited)
            self._update_correction_label()
            self._update_buttons()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        # the groups sit in a scroll area: in a short dock (e.g. under the explorer) the
        # widget scrolls instead of squeezing its rows
        root = QVBoxLayout(scrolling_content(self, min_width=300))
        root.setContentsMargins(6, 6, 6, 6)

        # Model
        box = QGroupBox("Model")
        lay = QVBoxLayout(box)
        self.model_label = QLabel("No model loaded")
        self.model_label.setWordWrap(True)
        self.model_label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.model_label)
        row = QHBoxLayout()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The models that ship with napari-probunet; a model file "
                                    "opened with 'Open model…' is listed too")
        self._fill_model_combo()
        self.open_model_button = QPushButton("Open model…")
        self.open_model_button.setToolTip("Load a Probabilistic U-Net model file (.safetensors)")
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.open_model_button)
        lay.addLayout(row)
        self.domain_label = QLabel("")
        self.domain_label.setWordWrap(True)
        self.domain_label.setTextFormat(Qt.TextFormat.RichText)
        self.domain_label.setVisible(False)
        lay.addWidget(self.domain_label)
        form = QFormLayout()
        self.device_combo = QComboBox()
        self.device_combo.setToolTip("Where the model runs; auto picks CUDA, then MPS, then CPU. "
                                     "Remembered between sessions.")
        form.addRow("Device", self.device_combo)
        lay.addLayout(form)
        root.addWidget(box)

        # Input
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image to segment: 2D grey or RGB, or the current slice "
                                    "of a 3D/4D stack")
        self.image_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        form.addRow("Image", self.image_combo)
        self.roi_combo = QComboBox()
        self.roi_combo.addItems(ROI_LABELS)
        self.roi_combo.setToolTip("Region the model looks at. 'Click on the lesion' centres a crop "
                                  "of the model's input size on a click in the viewer.")
        form.addRow("Region", self.roi_combo)
        self.shapes_combo = QComboBox()
        self.shapes_combo.setToolTip("Shapes layer with the rectangle (its selected shape, or the "
                                     "last one drawn)")
        self.shapes_label = QLabel("Shapes")
        form.addRow(self.shapes_label, self.shapes_combo)
        self.slices_combo = QComboBox()
        self.slices_combo.addItems(SLICE_LABELS)
        self.slices_combo.setToolTip(
            "For a 3D/4D stack: sample the slice on screen, or every slice of the axis just "
            "before the rows and columns (other axes stay at the current index)")
        self.slices_combo.setEnabled(False)
        form.addRow("Slices", self.slices_combo)
        self.sample_on_click = QCheckBox("Run on click")
        self.sample_on_click.setChecked(True)
        self.sample_on_click.setToolTip("Draw the hypotheses as soon as you click the lesion")
        form.addRow("", self.sample_on_click)
        self.roi_label = QLabel()
        self.roi_label.setWordWrap(True)
        form.addRow("", self.roi_label)
        root.addWidget(box)

        # Sampling
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
        row = QHBoxLayout()
        self.previous_button = QPushButton("◀")
        self.previous_button.setToolTip(f"Previous hypothesis (key: {KEY_PREVIOUS})")
        self.next_button = QPushButton("▶")
        self.next_button.setToolTip(f"Next hypothesis (key: {KEY_NEXT})")
        for b in (self.previous_button, self.next_button):
            b.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
            b.setFixedWidth(34)
        self.hypothesis_label = QLabel("No hypotheses yet")
        self.hypothesis_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hypothesis_label.setToolTip("The hypothesis shown, and its area in pixels")
        row.addWidget(self.previous_button)
        row.addWidget(self.hypothesis_label, 1)
        row.addWidget(self.next_button)
        lay.addLayout(row)
        root.addWidget(box)

        # Best fit & export
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
        root.addWidget(box)
        root.addStretch(1)

        self._fill_devices()
        self._on_roi_mode_changed()
        self._update_buttons()

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        self.open_model_button.clicked.connect(self._on_open_model_clicked)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.device_combo.activated.connect(self._on_device_chosen)
        self.roi_combo.currentIndexChanged.connect(self._on_roi_mode_changed)
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        self.new_seed_button.clicked.connect(self._new_seed)
        self.sample_button.clicked.connect(lambda: self.sample())
        self.cancel_button.clicked.connect(self.cancel)
        self.previous_button.clicked.connect(self.previous_hypothesis)
        self.next_button.clicked.connect(self.next_hypothesis)
        # (lambdas: `clicked` would pass its `checked` flag as the first argument)
        self.best_fit_button.clicked.connect(lambda: self.use_as_best_fit())
        self.export_button.clicked.connect(lambda: self.export())

        def hook(emitter, callback):
            emitter.connect(callback)
            self._disconnectors.append(lambda: emitter.disconnect(callback))

        layers = self.viewer.layers
        hook(layers.events.inserted, self._on_layer_inserted)
        hook(layers.events.removed, self._on_layer_removed)
        hook(layers.events.moved, self._refresh_layer_choices)
        hook(layers.selection.events.active, self._on_active_layer)
        for layer in layers:
            hook(layer.events.name, self._refresh_layer_choices)
        hook(self.state.best_fit_requested, self._on_best_fit_requested)
        hook(self.state.current_hypothesis_changed, self._on_current_changed_elsewhere)
        hook(self.state.model_changed, self._on_model_changed_elsewhere)
        # when napari deletes the Qt widget without closing it, still let go of the viewer
        disconnectors = self._disconnectors
        self.destroyed.connect(lambda *_: _run_all(disconnectors))

    def _bind_keys(self) -> None:
        self._keys = {KEY_NEXT: self._key_next, KEY_PREVIOUS: self._key_previous,
                      KEY_ACCEPT: self._key_accept, KEY_SAMPLE: self._key_sample,
                      KEY_EXPORT: self._key_export}
        for key, func in self._keys.items():
            self.viewer.bind_key(key, func, overwrite=True)

        viewer, keys = self.viewer, dict(self._keys)

        def unbind():
            for key, func in keys.items():
                current = viewer.keymap.get(_keybinding(key))
                if current == func:
                    viewer.bind_key(key, None)

        self._disconnectors.append(unbind)

    def cleanup(self) -> None:
        """Stop workers and timers, unbind the keys and disconnect from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with suppress(RuntimeError):
            if self._autosave_timer.isActive():
                self._autosave_timer.stop()
                self.autosave_now()
        for worker in (self._sampling_worker,):
            if worker is not None:
                worker.quit()
        with suppress(RuntimeError):
            self._bundle_timer.stop()
        self._set_click_callback(False)
        _run_all(self._disconnectors)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cleanup()
        super().closeEvent(event)

    # ------------------------------------------------------------------ model
    def _fill_devices(self) -> None:
        from napari_probunet.device import available_devices

        devices = available_devices()
        self.device_combo.blockSignals(True)
        self.device_combo.clear()
        self.device_combo.addItem(f"auto ({devices[0]})", "auto")
        for d in devices:
            self.device_combo.addItem(d, d)
        remembered = str(_settings().value("device", "auto"))
        i = self.device_combo.findData(remembered)
        if i < 0:
            show_info(f"The device used last time ({remembered}) is not available here; "
                      "using auto.")
            i = 0
        self.device_combo.setCurrentIndex(i)
        self.device_combo.blockSignals(False)

    @property
    def device(self) -> str:
        """The chosen device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``."""
        return self.device_combo.currentData() or "auto"

    @property
    def busy(self) -> bool:
        """A model is loading, sampling runs, or hypothesis layers are still being added."""
        return (self._sampling_worker is not None or self._model_worker is not None
                or bool(self._pending))

    def load_bundled_model(self, name: str = "default") -> None:
        """Load a model that ships with the package (``"default"``, ``"lidc"``, ``"lesions"``)
        off the GUI thread."""
        from napari_probunet.model.modelfile import BUNDLED_MODELS, bundled_model

        bundled = bundled_model(name)
        if bundled is None:
            show_error(f"There is no bundled model called {name!r} (bundled: "
                       f"{', '.join(m.name for m in BUNDLED_MODELS)}).")
            return
        if not bundled.path.exists():
            message = (f"The bundled model is not installed ({bundled.path.name} is missing "
                       "from the package). Open a model file with 'Open model…', or reinstall "
                       "napari-probunet.")
            self._model_error = message
            self._show_model()
            show_warning(message)
            return
        self._start_model_job(str(bundled.path))

    def _fill_model_combo(self, custom: str | None = None) -> None:
        """Bundled models by their plain names, then the opened model file, if any."""
        from napari_probunet.model.modelfile import BUNDLED_MODELS

        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for m in BUNDLED_MODELS:
            if m.path.exists():
                self.model_combo.addItem(m.title, m.name)
        if custom:
            self.model_combo.addItem(f"File: {Path(custom).name}", custom)
            self.model_combo.setItemData(self.model_combo.count() - 1, custom,
                                         Qt.ItemDataRole.ToolTipRole)
        self.model_combo.blockSignals(False)

    def _sync_model_combo(self) -> None:
        """Show the loaded model in the model choice."""
        from napari_probunet.model.modelfile import bundled_model_of

        model = self.state.model
        path = getattr(model, "source_path", None) if model is not None else None
        bundled = bundled_model_of(path)
        self._fill_model_combo(None if bundled is not None or path is None else path)
        key = bundled.name if bundled is not None else path
        i = self.model_combo.findData(key) if key is not None else -1
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(i)
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        key = self.model_combo.itemData(index)
        if not key:
            return
        from napari_probunet.model.modelfile import bundled_model

        if bundled_model(str(key)) is not None:
            self.load_bundled_model(str(key))
        else:
            self.load_model_file(str(key))

    def load_model_file(self, path: str | os.PathLike) -> None:
        """Load a model file (``.safetensors``) off the GUI thread; errors become notifications."""
        self._start_model_job(os.fspath(Path(path).expanduser()))

    def set_device(self, device: str) -> None:
        """Run the model on ``device`` (``auto``, ``cuda``, ``mps`` or ``cpu``), if available."""
        i = self.device_combo.findData(device)
        if i < 0:
            show_error(f"Device {device!r} is not available on this machine "
                       f"(available: {', '.join(self._device_names())}).")
            return
        self.device_combo.setCurrentIndex(i)
        self._on_device_chosen(i)

    def _device_names(self) -> list[str]:
        return [self.device_combo.itemData(i) for i in range(self.device_combo.count())]

    def _on_open_model_clicked(self) -> None:
        folder = str(_settings().value("model_folder", str(Path.home())))
        path = self.ask_model_path(folder)
        if path:
            _settings().setValue("model_folder", str(Path(path).expanduser().parent))
            self.load_model_file(path)

    def _on_device_chosen(self, _index: int) -> None:
        _settings().setValue("device", self.device)
        if self.state.model is not None and not self.busy:
            self._start_model_job(self.state.model)
        elif self.busy:
            show_info("The new device is used from the next model load (the model is busy).")

    def _start_model_job(self, source) -> None:
        if self._sampling_worker is not None:
            show_warning("Sampling is running: wait for it to finish or click Cancel, then "
                         "change the model or device.")
            return
        if self._model_worker is not None:
            show_warning("A model is already loading; wait a moment.")
            return
        self._model_error = None
        name = Path(source).name if isinstance(source, (str, os.PathLike)) else "the model"
        self.model_label.setText(f"Loading {name}…")
        worker = create_worker(_model_job, self.state, source, self.device,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_model_loaded)
        worker.errored.connect(self._on_model_failed)
        worker.finished.connect(self._on_model_job_finished)
        self._model_worker = worker
        self._update_buttons()
        worker.start()

    def _on_model_loaded(self, result) -> None:
        model, session = result
        st = self.state
        with st.lock:
            st.model, st.session = model, session
            st.model_path = model.source_path
            st.device = self.device
            st.encoded = None
            st.hypotheses = None
            st.hypothesis_layers = []
        self._show_model()
        self._suggest_region()  # the input size may differ from the last model's
        self._emit(st.model_changed)
        if self._bundle_record is not None:  # keep the opened bundle's hypotheses
            self.adopt_bundle_layers(self._bundle_record.get("image_signature"), notify=False)

    def _on_model_failed(self, exc: BaseException) -> None:
        self._model_error = str(exc) if isinstance(exc, UserError) else (
            f"could not load the model ({type(exc).__name__}: {exc})")
        if not isinstance(exc, UserError):
            log.error("model loading failed", exc_info=exc)
        kept = " The previous model stays loaded." if self.state.model is not None else ""
        show_error(f"Model not loaded: {self._model_error}.{kept}")
        self._sample_when_ready = False
        self._show_model()

    def _on_model_job_finished(self) -> None:
        self._model_worker = None
        self._update_buttons()
        if self._sample_when_ready:
            self._sample_when_ready = False
            if self.state.session is not None:
                self.sample()

    def _on_model_changed_elsewhere(self) -> None:
        if not self._emitting:
            self._show_model()

    def _show_model(self) -> None:
        model = self.state.model
        error = getattr(self, "_model_error", None)
        if model is None:
            text = "<b>No model loaded</b>"
            if error:
                text += f"<br><span style='color:#e06c5a'>{_html(error)}</span>"
            self.model_label.setText(text)
            self.model_label.setToolTip("")
        else:
            from napari_probunet.model.modelfile import bundled_model_of
            from napari_probunet.review.domain import Domain

            cfg = model.config
            path = Path(model.source_path) if model.source_path else None
            name = path.name if path else "model built in code"
            bundled = bundled_model_of(path)
            if bundled is not None:
                name = f"{bundled.title} (bundled model)"
            device = self.state.session.device if self.state.session else "?"
            classes = ", ".join(cfg.class_names)
            kind = " · <b>deterministic</b> (one map)" if cfg.deterministic else ""
            domain = Domain.from_dict(cfg.domain)
            trained = ""
            if domain is not None and domain.description:
                trained = f"<br>Trained on: {_html(domain.description)}"
                if domain.intensity:
                    trained += f"<br>Input: {_html(domain.intensity)}"
            elif domain is None:
                trained = "<br>Trained on: not recorded in this model file"
            self.model_label.setText(
                f"<b>{_html(name)}</b><br>{cfg.num_classes} classes ({_html(classes)})"
                f" · input {cfg.input_size}×{cfg.input_size} · latent {cfg.latent_dim}{kind}"
                f"{trained}<br>running on <b>{device}</b>")
            prov = (getattr(model, "metadata", None) or {}).get("provenance") or {}
            tip = [f"sha256: {model.source_sha256}" if model.source_sha256 else "not from a file"]
            tip += [f"{k}: {v}" for k, v in prov.items() if isinstance(v, (str, int, float))]
            self.model_label.setToolTip("\n".join(tip))
        self._sync_model_combo()
        self._update_buttons()
        self._show_roi()

    def _check_domain(self, image: np.ndarray) -> None:
        """Warn, without blocking, when the image given to the model looks unlike what it was
        trained on (napari_probunet.review.domain): in the Model box and, once per image, as a
        notification."""
        from napari_probunet.review.domain import check_image

        session = self.state.session
        if session is None:
            return
        found = check_image(session.config, image).warnings
        if not found:
            self.domain_label.setVisible(False)
            self.domain_label.setText("")
            return
        text = "; ".join(found)
        self.domain_label.setText(f"<span style='color:#e5a445'>⚠ This image: {_html(text)}</span>")
        self.domain_label.setVisible(True)
        key = (id(session), text)
        if key != self._domain_warned:  # once per model and finding, not on every slice
            self._domain_warned = key
            show_warning(f"This image may be outside what the model knows: {text}")

    # ------------------------------------------------------------------ input
    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and layer.metadata.get("kind") != "uncertainty"]

    def image_layer(self) -> Image | None:
        """The image layer chosen in the widget (``None`` if there is none)."""
        name = self.image_combo.currentText()
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        layer.events.name.connect(self._refresh_layer_choices)
        self._disconnectors.append(lambda: layer.events.name.disconnect(self._refresh_layer_choices))
        self._refresh_layer_choices()
        if _is_bundle_layer(layer) and not self._closed:
            # napari adds a bundle's layers one by one: adopt them once all are in
            self._bundle_signature = layer.metadata.get("image_signature")
            self._bundle_timer.start()

    def _on_bundle_timer(self) -> None:
        signature, self._bundle_signature = self._bundle_signature, None
        if signature is not None and not self._closed:
            self.adopt_bundle_layers(signature)

    def adopt_bundle_layers(self, image_signature: str | None = None, *,
                            notify: bool = True) -> bool:
        """Make the layers of an opened hypothesis bundle (``*.probunet.zip``) the review's
        hypotheses, ready to cycle, pick as the best fit, edit and export with no model run.

        ``image_signature`` picks the bundle (default: the last bundle image in the layer
        list). Called when a bundle's layers are inserted. If the loaded model is the one that
        wrote the bundle, the image is also encoded into its session (for the explorer);
        otherwise the session is left alone. Returns whether a bundle was adopted.
        """
        from napari_probunet._reader import collect_layers
        from napari_probunet.session import Hypotheses

        if self._closed:
            return False
        if self._sampling_worker is not None:
            show_info("The opened bundle's hypotheses are not adopted while sampling runs.")
            return False
        viewer = self.viewer
        if image_signature is None:
            images = [la for la in viewer.layers
                      if _is_bundle_layer(la) and la.metadata.get("kind") == "image"]
            if not images:
                return False
            image_signature = images[-1].metadata.get("image_signature")
        found = collect_layers(viewer.layers, image_signature)
        hyps = [la for la in found.hypotheses if _is_bundle_layer(la)]
        image = found.image
        if image is None or not hyps:
            return False
        meta = dict(hyps[0].metadata)
        indices = [la.metadata.get("index") for la in hyps]
        if indices != list(range(len(hyps))) or len(hyps) != meta.get("n_samples", len(hyps)):
            show_warning(f"The bundle of '{image.name}' lacks some hypothesis layers; open it "
                         "again to review its hypotheses.")
            return False
        labels = np.stack([as_2d(la.data) for la in hyps]).astype(np.uint8, copy=False)
        z = np.array([la.metadata.get("z") or [] for la in hyps], np.float32)
        roi = tuple(int(v) for v in meta.get("roi") or (0, 0, *labels.shape[1:]))
        if (roi[2], roi[3]) != labels.shape[1:]:
            show_warning(f"The bundle of '{image.name}' does not fit its region; not adopted.")
            return False
        st = self.state
        encoded = Encoded(layer_name=image.name, slice_index=(), roi=roi,
                          image_signature=image_signature, image=np.asarray(image.data))
        in_session = False
        session = st.session
        sha = meta.get("model_sha256")
        if session is not None and sha and session.model_sha256 == sha:
            try:
                with st.lock:
                    if not (session.has_image and session.image_signature == image_signature):
                        session.set_image(encoded.image)
                in_session = True
            except Exception as exc:  # noqa: BLE001 (the review works without it)
                log.warning("could not encode the bundle's image: %s", exc)
        with st.lock:
            st.encoded = encoded
            st.hypotheses = Hypotheses(labels=labels, z=z, seed=int(meta.get("seed") or 0))
            st.hypothesis_layers = list(hyps)
            st.uncertainty_layer = found.uncertainty
        self._hypothesis_layers = list(hyps)
        self._uncertainty_layer = found.uncertainty
        self._plane_signature = meta.get("plane_signature") or image_signature
        self._bundle_record = meta
        self._current = 0
        for i, la in enumerate(hyps):
            if la.visible != (i == 0):
                la.visible = i == 0
        if self.image_combo.findText(image.name) >= 0:
            self.image_combo.setCurrentText(image.name)
        if meta.get("seed") is not None:
            self.seed_spin.setValue(int(meta["seed"]))
        self.n_spin.setValue(len(hyps))
        if in_session:
            self._emit(st.image_encoded)
        self._emit(st.hypotheses_changed)
        self._emit(st.current_hypothesis_changed, 0)
        self._update_navigation()
        self.progress.setFormat(f"{len(hyps)} hypotheses from the bundle")
        if notify:
            case = meta.get("case_id") or image.name
            show_info(f"Opened bundle {case}: {len(hyps)} hypotheses ready (no model run)")
        return True

    def _refresh_layer_choices(self, *_) -> None:
        if self._closed:
            return
        for combo, layers in ((self.image_combo, self._image_layers()),
                              (self.shapes_combo, [la for la in self.viewer.layers
                                                   if isinstance(la, Shapes)])):
            names = [la.name for la in layers]
            current = combo.currentText()
            if names == [combo.itemText(i) for i in range(combo.count())]:
                continue
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif names:
                active = self.viewer.layers.selection.active
                combo.setCurrentText(active.name if active in layers else names[-1])
            combo.blockSignals(False)
        self._suggest_region()
        self._show_roi()
        self._update_buttons()

    def _on_image_chosen(self, *_) -> None:
        self._suggest_region()
        self._show_roi()
        self._update_buttons()

    def _suggest_region(self) -> None:
        """A newly chosen image much larger than the model's input (more than twice its side)
        starts in 'Click on the lesion': the model was trained on crops of its input size, and
        the whole image would be segmented at once. Once per image, so that choosing 'Whole
        image' again sticks."""
        from napari_probunet.review.domain import SIZE_FACTOR

        layer = self.image_layer()
        if layer is None or self.roi_mode != "whole" or layer.name in self._region_suggested:
            return
        try:
            h, w = current_plane_shape(layer)
        except Exception:  # an unusual layer: the ROI line explains what is wrong
            return
        side = self._roi_side()
        if max(h, w) <= SIZE_FACTOR * side:
            return
        self._region_suggested.add(layer.name)
        self.set_roi_mode("click")
        show_info(f"'{layer.name}' is {w}x{h} pixels, much larger than the model's {side}x{side} "
                  "input: the region is now 'Click on the lesion' (click it in the viewer). "
                  "Choose 'Whole image' to segment it all at once.")

    @property
    def all_slices(self) -> bool:
        """Whether Sample runs over all slices (only for a stack: non-RGB ndim >= 3)."""
        return self.slices_combo.isEnabled() and self.slices_combo.currentIndex() == 1

    def set_all_slices(self, on: bool) -> None:
        self.slices_combo.setCurrentIndex(1 if on else 0)

    def _on_roi_mode_changed(self, *_) -> None:
        mode = self.roi_mode
        rect, click = mode == "rectangle", mode == "click"
        self.shapes_label.setVisible(rect)
        self.shapes_combo.setVisible(rect)
        self.sample_on_click.setVisible(click)
        self._set_click_callback(click)
        if rect and not any(isinstance(la, Shapes) for la in self.viewer.layers):
            layer = self._ensure_roi_layer()
            if layer is not None:
                self.viewer.layers.selection.active = layer
                layer.mode = "add_rectangle"
                show_info("Draw a rectangle around the lesion in the 'ROI' layer, then click "
                          "Sample.")
        roi_layer = self._roi_layer
        if roi_layer is not None and roi_layer in self.viewer.layers \
                and roi_layer.visible != (mode != "whole"):  # (setting it resets the tool)
            roi_layer.visible = mode != "whole"
        self._show_roi()

    @property
    def roi_mode(self) -> str:
        """``"whole"``, ``"rectangle"`` or ``"click"``."""
        return ROI_MODES[max(0, self.roi_combo.currentIndex())]

    def set_roi_mode(self, mode: str) -> None:
        """Choose the region of interest: ``"whole"``, ``"rectangle"`` or ``"click"``."""
        self.roi_combo.setCurrentIndex(ROI_MODES.index(mode))

    def _roi_side(self) -> int:
        model = self.state.model
        return int(model.config.input_size) if model is not None else FALLBACK_ROI

    def _resolve_roi(self, layer, plane: Plane):
        """The ROI for the chosen mode, or raise a UserError that says what to do."""
        mode = self.roi_mode
        h, w = plane.shape
        if mode == "whole":
            if h * w > WHOLE_IMAGE_LIMIT:
                self.set_roi_mode("click")
                raise UserError(
                    f"'{layer.name}' is {h}x{w} pixels, too large to segment whole. The region "
                    "is now 'Click on the lesion': click the lesion in the viewer (or draw a "
                    "rectangle)")
            return (0, 0, h, w)
        if mode == "click":
            if self._click_roi is None or self._click_roi[:2] != (layer.name, plane.index):
                raise UserError("Click on the lesion in the viewer first (the region is "
                                "'Click on the lesion')")
            return self._click_roi[2]
        shapes = self._shapes_layer()
        if shapes is None or len(shapes.data) == 0:
            raise UserError("Draw a rectangle around the lesion in a Shapes layer first (the "
                            "region is 'Rectangle')")
        selected = sorted(shapes.selected_data)
        vertices = shapes.data[selected[-1] if selected else -1]
        world = np.array([shapes.data_to_world(v) for v in vertices])
        data = np.array([layer.world_to_data(p) for p in world])
        roi = bounding_roi(data, plane.shape)
        if roi is None:
            raise UserError(f"the rectangle in '{shapes.name}' lies outside '{layer.name}'")
        if roi[2] * roi[3] > WHOLE_IMAGE_LIMIT:
            raise UserError(f"the rectangle covers {roi[2]}x{roi[3]} pixels, too many; draw a "
                            "smaller one around the lesion or click on it")
        return roi

    def _shapes_layer(self) -> Shapes | None:
        name = self.shapes_combo.currentText()
        for layer in self.viewer.layers:
            if isinstance(layer, Shapes) and layer.name == name:
                return layer
        return None

    def _show_roi(self) -> None:
        mode = self.roi_mode
        layer = self.image_layer()
        if layer is None:
            self.roi_label.setText("Open or choose an image layer (File → Open Sample has "
                                   "synthetic lesions).")
            return
        if mode == "whole":
            shape = layer.data.shape if not layer.multiscale else layer.level_shapes[0]
            dims = shape[layer.ndim - 2:layer.ndim]
            self.roi_label.setText(f"The whole image ({dims[0]}×{dims[1]} pixels).")
        elif mode == "click":
            if self._click_roi is not None and self._click_roi[0] == layer.name:
                r0, c0, h, w = self._click_roi[2]
                self.roi_label.setText(f"{h}×{w} pixels at row {r0}, column {c0}. Click again "
                                       "to move it.")
            else:
                side = self._roi_side()
                self.roi_label.setText(f"Click on the lesion in the viewer: a {side}×{side} "
                                       "crop is centred on the click.")
        else:
            self.roi_label.setText("The selected (or last) shape of the Shapes layer; its "
                                   "bounding box is used.")

    def _set_click_callback(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self._on_mouse_press not in callbacks:
            callbacks.append(self._on_mouse_press)
        elif not on and self._on_mouse_press in callbacks:
            callbacks.remove(self._on_mouse_press)

    def _on_mouse_press(self, viewer, event):
        """Mouse callback in click mode: a click (not a drag, not while painting) sets the ROI."""
        if getattr(event, "button", 1) != 1 or getattr(event, "modifiers", ()):
            return
        active = viewer.layers.selection.active
        if active is not None and getattr(active, "mode", "pan_zoom") not in ("pan_zoom",):
            return  # the user is painting or drawing: not a click for the ROI
        start, pos0 = tuple(event.position), getattr(event, "pos", None)
        yield
        while event.type == "mouse_move":
            pos = getattr(event, "pos", None)
            if pos is not None and pos0 is not None and np.hypot(*(np.subtract(pos, pos0))) > 4:
                return  # a drag (pan): leave it to napari
            yield
        self.set_click_roi(start)

    def set_click_roi(self, world_position) -> tuple[int, int, int, int] | None:
        """Centre the ROI (a crop of the model's input size) on a point given in world coordinates.

        Returns the ROI ``(row, col, height, width)`` in the image's data pixels; samples right
        away when "Run on click" is ticked.
        """
        layer = self.image_layer()
        if layer is None:
            show_warning("There is no image layer to click on: open an image first.")
            return None
        try:
            plane = current_plane(layer, self.viewer)
        except UserError as exc:
            show_warning(str(exc))
            return None
        pos = np.asarray(layer.world_to_data(world_position), float)
        row, col = pos[-2], pos[-1]
        h, w = plane.shape
        if not (-0.5 <= row < h - 0.5 and -0.5 <= col < w - 0.5):
            show_info(f"That click is outside '{layer.name}'; click on the lesion.")
            return None
        roi = centred_roi(row, col, self._roi_side(), plane.shape)
        self._click_roi = (layer.name, plane.index, roi)
        self._draw_roi(layer, plane, roi)
        self._show_roi()
        if self.sample_on_click.isChecked() and self.state.session is not None:
            if self._sampling_worker is None:
                self.sample()
            else:
                show_info("Sampling is running; the new region is used on the next Sample.")
        return roi

    def _ensure_roi_layer(self, layer=None, plane: Plane | None = None) -> Shapes | None:
        layer = layer or self.image_layer()
        if layer is None:
            return None
        roi_layer = self._roi_layer
        kwargs = placement(layer, plane, (0, 0)) if plane is not None else {
            "scale": layer.scale, "translate": layer.translate}
        if roi_layer is None or roi_layer not in self.viewer.layers or roi_layer.ndim != layer.ndim:
            roi_layer = Shapes(name="ROI", ndim=layer.ndim, edge_color="yellow",
                               face_color="transparent", edge_width=max(1, self._roi_side() // 64),
                               metadata={"kind": "roi"}, **kwargs)
            self.viewer.layers.append(roi_layer)
            self._roi_layer = roi_layer
        else:
            roi_layer.scale, roi_layer.translate = kwargs["scale"], kwargs["translate"]
        return roi_layer

    def _draw_roi(self, layer, plane: Plane, roi) -> None:
        active = self.viewer.layers.selection.active
        roi_layer = self._ensure_roi_layer(layer, plane)
        r0, c0, h, w = roi
        corners = np.array([[r0 - 0.5, c0 - 0.5], [r0 - 0.5, c0 + w - 0.5],
                            [r0 + h - 0.5, c0 + w - 0.5], [r0 + h - 0.5, c0 - 0.5]])
        # in the ROI layer's data coordinates: the plane's own (it has the image's transform)
        lead = np.zeros((4, len(plane.index)))
        roi_layer.data = [np.hstack([lead, corners])]
        roi_layer.shape_type = ["rectangle"]
        if not roi_layer.visible:
            roi_layer.visible = True
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # keep the user's tool

    # ------------------------------------------------------------------ sampling
    def _new_seed(self) -> None:
        self.seed_spin.setValue(int(np.random.default_rng().integers(0, 2**31 - 1)))

    def sample(self) -> bool:
        """Start sampling (the Sample button). Returns whether a worker was started."""
        if self._sampling_worker is not None:
            show_warning("Sampling is already running: wait for it to finish or click Cancel.")
            return False
        if self._model_worker is not None:
            self._sample_when_ready = True
            show_info("The model is still loading; sampling starts as soon as it is ready.")
            return False
        session = self.state.session
        if session is None:
            show_error("No model is loaded: " + (getattr(self, "_model_error", None)
                                                 or "click 'Open model…' to choose a model file."))
            return False
        layer = self.image_layer()
        if layer is None:
            show_error("There is no image layer to segment: open an image (File → Open, or "
                       "File → Open Sample → napari-probunet) and choose it under Input.")
            return False
        try:
            plane = current_plane(layer, self.viewer)
            roi = self._resolve_roi(layer, plane)
        except UserError as exc:
            show_warning(str(exc))
            return False
        request = _Sampling(plane=plane, roi=roi, n=int(self.n_spin.value()),
                            seed=int(self.seed_spin.value()),
                            placement=placement(layer, plane, roi), layer_name=layer.name)
        job = _sampling_job
        if self.all_slices and plane.index:
            first = Plane(layer, plane.index[:-1] + (0,), plane.shape)
            request.all_slices, request.stop = True, threading.Event()
            request.stack_placement = placement(layer, first, roi)
            job = _stack_job
        worker = create_worker(job, self.state, session, request,
                               _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_sampling_yielded)
        worker.returned.connect(self._on_sampled)
        worker.errored.connect(self._on_sampling_failed)
        worker.aborted.connect(self._on_sampling_aborted)
        worker.finished.connect(self._on_sampling_finished)
        self._sampling_worker, self._sampling_request = worker, request
        self._t_sample = time.perf_counter()
        self.progress.setRange(0, request.n)
        self.progress.setValue(0)
        self.progress.setFormat("Preparing…")
        self._update_buttons()
        worker.start()
        return True

    def cancel(self) -> None:
        """Stop sampling (the Cancel button); the previous hypotheses stay."""
        if self._sampling_worker is not None:
            self.progress.setFormat("Cancelling…")
            request = self._sampling_request
            if request is not None and request.stop is not None:
                request.stop.set()  # all slices: stop after this slice, keep those done
            else:
                self._sampling_worker.quit()

    def _on_sampling_yielded(self, message) -> None:
        kind, value = message
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
            self._bundle_record = None
            st = self.state
            st.encoded = value
            st.hypotheses = None
            st.hypothesis_layers = []
            self._emit(st.image_encoded)
            if value.image is not None:
                self._check_domain(value.image)

    def _on_sampled(self, result: _Sampled) -> None:
        request = result.request
        layer = request.plane.layer
        if layer not in self.viewer.layers:
            show_warning(f"The image layer '{request.layer_name}' was removed while sampling; "
                         "the hypotheses were discarded.")
            return
        from napari_probunet.session import Hypotheses

        self._show_hypotheses(result)
        self._bundle_record = None
        st = self.state
        st.hypotheses = Hypotheses(labels=result.labels, z=result.z, seed=request.seed)
        st.hypothesis_layers = list(self._hypothesis_layers)
        st.uncertainty_layer = self._uncertainty_layer
        self._plane_signature = result.plane_signature
        self._current = 0
        self._emit(st.hypotheses_changed)
        self._emit(st.current_hypothesis_changed, 0)
        self._update_navigation()
        self.last_sampling_seconds = time.perf_counter() - self._t_sample
        if result.stack_labels is not None:
            total = result.stack_labels.shape[1]
            self.progress.setRange(0, total)
            self.progress.setValue(result.slices_done)
            self.progress.setFormat(f"{request.n} hypotheses × slice {result.slices_done} / "
                                    f"{total} in {self.last_sampling_seconds:.2f} s")
        else:
            self.progress.setFormat(
                f"{request.n} hypotheses in {self.last_sampling_seconds:.2f} s")
        self._offer_restore(result.plane_signature, request)

    def _on_sampling_failed(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            show_error(str(exc))
        else:
            log.error("sampling failed", exc_info=exc)
            show_error(f"Sampling failed ({type(exc).__name__}: {exc}). The previous hypotheses "
                       "are unchanged.")
        self.progress.setFormat("Failed")

    def _on_sampling_aborted(self) -> None:
        self.progress.setFormat("Cancelled")
        show_info("Sampling cancelled; the previous hypotheses are unchanged.")

    def _on_sampling_finished(self) -> None:
        self._sampling_worker = None
        self._sampling_request = None
        self._update_buttons()

    def _model_sha(self) -> str | None:
        session = self.state.session
        return session.model_sha256 if session is not None else None

    def _model_name(self) -> str | None:
        model = self.state.model
        return Path(model.source_path).name if model is not None and model.source_path else None

    def _show_hypotheses(self, result: _Sampled) -> None:
        """Put the hypotheses and the uncertainty map into layers, reusing the previous ones."""
        request = result.request
        plane, roi, n = request.plane, request.roi, request.n
        viewer = self.viewer
        self._current = 0
        num_classes = self.state.model.config.num_classes if self.state.model else 2
        width = max(2, len(str(n)))
        base = {
            "seed": request.seed, "n_samples": n, "roi": list(roi),
            "image_layer": request.layer_name, "slice_index": list(plane.index),
            "plane_shape": list(plane.shape), "image_signature": result.image_signature,
            "plane_signature": result.plane_signature, "model_sha256": self._model_sha(),
            "model_name": self._model_name(),
        }
        stack = result.stack_labels is not None
        place = request.stack_placement if stack else request.placement
        if stack:
            lead = (1,) * (len(plane.index) - 1)
            base.update(slices="all", stack_axis=len(plane.index) - 1,
                        slices_done=result.slices_done, z_per_slice=None)

            def to_layer(i):
                return result.stack_labels[i].reshape(lead + result.stack_labels.shape[1:])

            unc_data = result.stack_uncertainty.reshape(lead + result.stack_uncertainty.shape)
        else:
            def to_layer(i):
                # a copy: brush edits on a hypothesis layer must not change state.hypotheses
                return embed(result.labels[i].copy(), plane)

            unc_data = embed(result.uncertainty, plane)
        old = [la for la in self._hypothesis_layers if la in viewer.layers]
        shape = to_layer(0).shape
        # reuse the previous layers (a new ROI size just changes their data): fewer layers to
        # build, and fewer to remove (see remove_layers)
        reuse = [la for la in old if la.data.ndim == len(shape)][:n]
        drop = [la for la in old if la not in reuse]
        new_layers: list[Labels] = []
        layers: list[Labels] = []
        unc_name = f"{request.layer_name} uncertainty"
        unc_meta = dict(base, kind="uncertainty")
        unc = self._uncertainty_layer
        new_unc = None
        for i in range(n):
            name = f"{request.layer_name} hypothesis {i + 1:0{width}d}"
            data = to_layer(i)
            meta = dict(base, kind="hypothesis", index=i, z=[float(v) for v in result.z[i]])
            if stack:
                meta["z_per_slice"] = [None if zs is None else zs[i] for zs in result.z_per_slice]
            if i < len(reuse):
                la = reuse[i]
                la.metadata = meta
                la.data = data
                _update_layer(la, name, i == 0, place)
            else:
                la = Labels(data, name=name, visible=i == 0, opacity=0.6, metadata=meta,
                            colormap=_colormap(num_classes, HYPOTHESIS_COLOURS),
                            **place)
                new_layers.append(la)
            layers.append(la)
        if unc is not None and unc in viewer.layers and unc.data.ndim == unc_data.ndim:
            unc.data = unc_data
            unc.metadata = unc_meta
            _update_layer(unc, unc_name, unc.visible, place)
        else:
            if unc is not None and unc in viewer.layers:
                drop.append(unc)
            new_unc = Image(unc_data, name=unc_name, colormap="magma", blending="additive",
                            opacity=0.7, metadata=unc_meta,
                            contrast_limits=(0.0, max(1e-6, 1 - 1 / num_classes)),
                            **place)
        self._pending.clear()
        if drop:
            with _no_activation(viewer.layers):
                remove_layers(viewer, drop)
        with _no_activation(viewer.layers):
            if new_unc is not None:
                viewer.layers.append(new_unc)
        # New hypothesis layers join the viewer a few per event-loop turn: napari builds
        # Qt controls and vispy overlays for every Labels layer (about 0.1-0.3 s each here),
        # so the shown hypothesis and the uncertainty map appear at once and the hidden ones
        # follow while the viewer stays responsive. Hypothesis k goes right below k-1.
        previous = {la: (layers[i - 1] if i else None) for i, la in enumerate(layers)}
        self._pending = [(la, previous[la]) for la in new_layers]
        self._hypothesis_layers = layers
        self._uncertainty_layer = new_unc if new_unc is not None else unc
        self._add_pending_layers()

    def _add_pending_layers(self) -> None:
        """Add queued hypothesis layers for about 40 ms (at least one), then yield to Qt."""
        if self._closed:
            return
        viewer = self.viewer
        start = time.perf_counter()
        with _no_activation(viewer.layers):
            while self._pending:
                layer, previous = self._pending.pop(0)
                if layer not in self._hypothesis_layers or layer in viewer.layers:
                    continue
                if previous is not None and previous in viewer.layers:
                    viewer.layers.insert(viewer.layers.index(previous), layer)
                else:
                    viewer.layers.append(layer)
                if time.perf_counter() - start > 0.04:
                    break
        self._keep_correction_on_top()
        if self._pending:
            QTimer.singleShot(0, self._add_pending_layers)
        else:
            self._update_navigation()

    def _add_now(self, layer) -> None:
        """Add a queued hypothesis layer at once (the one the user asked to see)."""
        for k, (queued, _) in enumerate(self._pending):
            if queued is layer:
                del self._pending[k]
                viewer = self.viewer
                # right below the nearest earlier hypothesis already there, so that the
                # list stays in order when the ones in between arrive
                ours = self._hypothesis_layers
                earlier = next((la for la in reversed(ours[:ours.index(layer)])
                                if la in viewer.layers), None)
                with _no_activation(viewer.layers):
                    if earlier is not None:
                        viewer.layers.insert(viewer.layers.index(earlier), layer)
                    else:
                        viewer.layers.append(layer)
                self._keep_correction_on_top()
                return

    def _keep_correction_on_top(self) -> None:
        viewer = self.viewer
        correction = self.state.correction_layer
        if correction is not None and correction in viewer.layers:
            i = viewer.layers.index(correction)
            if i != len(viewer.layers) - 1:
                viewer.layers.move(i, len(viewer.layers))

    # ------------------------------------------------------------------ navigation
    @property
    def current_hypothesis(self) -> int:
        """The hypothesis shown (0-based)."""
        return self._current

    def show_hypothesis(self, index: int, notify: bool = True) -> None:
        """Show hypothesis ``index`` (0-based, wraps around) and hide the others.

        ``notify`` emits ``state.current_hypothesis_changed`` (off when the change came from
        another widget through that signal).
        """
        hyp = self.state.hypotheses
        if hyp is None or not self._hypothesis_layers:
            show_info("No hypotheses yet: click Sample first.")
            return
        n = len(self._hypothesis_layers)
        self._current = int(index) % n
        for i, layer in enumerate(self._hypothesis_layers):
            # layers still queued too: they join the viewer with the right visibility
            layer.visible = i == self._current
        self._add_now(self._hypothesis_layers[self._current])
        self._update_navigation()
        if notify:
            self._emit(self.state.current_hypothesis_changed, self._current)

    def next_hypothesis(self) -> None:
        """Show the next hypothesis (key ``.``)."""
        self.show_hypothesis(self._current + 1)

    def previous_hypothesis(self) -> None:
        """Show the previous hypothesis (key ``,``)."""
        self.show_hypothesis(self._current - 1)

    def _key_next(self, viewer=None) -> None:
        self.next_hypothesis()

    def _key_previous(self, viewer=None) -> None:
        self.previous_hypothesis()

    def _key_accept(self, viewer=None) -> None:
        self.use_as_best_fit()

    def _key_sample(self, viewer=None) -> None:
        self.sample()

    def _key_export(self, viewer=None) -> None:
        self.export()

    def _on_current_changed_elsewhere(self, index: int) -> None:
        if not self._emitting and self._hypothesis_layers:
            self.show_hypothesis(index, notify=False)

    def _on_active_layer(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        if active is not None and active in self._hypothesis_layers:
            i = self._hypothesis_layers.index(active)
            if i != self._current:
                self._current = i
                self._update_navigation()
                self._emit(self.state.current_hypothesis_changed, i)

    def _update_navigation(self) -> None:
        n = len(self._hypothesis_layers)
        hyp = self.state.hypotheses
        if hyp is None or n == 0 or len(hyp.labels) != n or not 0 <= self._current < n:
            self.hypothesis_label.setText("No hypotheses yet")
        else:
            layer = self._hypothesis_layers[self._current]
            area = int(np.count_nonzero(self.state.hypotheses.labels[self._current]))
            queued = any(layer is q for q, _ in self._pending)
            where = ("" if layer in self.viewer.layers
                     else " (layer being added)" if queued else " (layer deleted)")
            self.hypothesis_label.setText(f"Hypothesis {self._current + 1}/{n} · {area} px{where}")
        self._update_buttons()

    # ------------------------------------------------------------------ best fit
    def use_as_best_fit(self, index: int | None = None) -> None:
        """Make hypothesis ``index`` (default: the one shown) the editable correction."""
        hyp = self.state.hypotheses
        if hyp is None:
            show_warning("No hypotheses yet: click Sample first, then pick the best one.")
            return
        i = self._current if index is None else int(index)
        if not 0 <= i < len(hyp.labels):
            show_error(f"There is no hypothesis {i + 1} (there are {len(hyp.labels)}).")
            return
        if i != self._current:
            self._current = i
            self._update_navigation()
            self._emit(self.state.current_hypothesis_changed, i)
        self.state.best_fit_requested.emit(
            Choice(source="hypothesis", index=i, z=np.array(hyp.z[i]), labels=hyp.labels[i].copy()))

    def _on_best_fit_requested(self, choice: Choice) -> None:
        """Create (or replace) ``<image> correction`` from a hypothesis or an explorer point."""
        enc = self.state.encoded
        if enc is None:
            show_error("No image region is encoded: click Sample first.")
            return
        labels = np.asarray(choice.labels)
        if labels.shape != (enc.roi[2], enc.roi[3]):
            show_error(f"The chosen map is {labels.shape[0]}x{labels.shape[1]} but the encoded "
                       f"region is {enc.roi[2]}x{enc.roi[3]}; sample again and retry.")
            return
        layer = self._find_image(enc.layer_name)
        if layer is None:
            show_error(f"The image layer '{enc.layer_name}' is gone; the correction needs it to "
                       "be placed. Open the image again and sample.")
            return
        plane = Plane(layer=layer, index=tuple(enc.slice_index),
                      shape=current_plane_shape(layer))
        label = (f"hypothesis {choice.index + 1}" if choice.source == "hypothesis"
                 else "the explorer's point")
        existing = self._correction_for(enc.layer_name)
        if existing is not None:
            edited = export.pixels_changed(as_2d(existing.data),
                                           existing.metadata.get("source_labels"))
            if edited and not self.confirm(
                    "Replace the correction?",
                    f"'{existing.name}' has {edited} pixel(s) edited by hand. Replace it with "
                    f"{label}? The edits are lost unless you export them first."):
                show_info("The correction was kept.")
                return
        hyp = self.state.hypotheses
        # hypotheses from an opened bundle carry their own model record (there may be no model)
        bundle = self._bundle_record if choice.source == "hypothesis" else None
        model_sha = bundle.get("model_sha256") if bundle else self._model_sha()
        model_name = bundle.get("model_name") if bundle else self._model_name()
        class_names = (list(self.state.model.config.class_names) if self.state.model
                       else None)
        if bundle and bundle.get("class_names"):
            class_names = list(bundle["class_names"])
        meta = {
            "kind": "correction", "source": choice.source, "index": choice.index,
            "z": [float(v) for v in np.asarray(choice.z).ravel()],
            "seed": hyp.seed if (hyp is not None and choice.source == "hypothesis") else None,
            "n_samples": len(hyp.labels) if hyp is not None else None,
            "roi": list(enc.roi), "image_layer": enc.layer_name,
            "slice_index": list(enc.slice_index), "plane_shape": list(plane.shape),
            "image_signature": enc.image_signature,
            "plane_signature": self._plane_signature or enc.image_signature,
            "model_sha256": model_sha, "model_name": model_name,
            "class_names": class_names,
            "scale": [float(s) for s in layer.scale[-2:]],
            "translate": [float(t) for t in layer.translate[-2:]],
            "source_labels": labels.copy(),
        }
        self._make_correction(layer, plane, enc.roi, labels.copy(), meta, existing)
        self.state.choice = choice
        unc = self._uncertainty_layer
        if unc is not None and unc in self.viewer.layers:
            unc.visible = False  # it would wash out the correction's colour; one click brings it back
        show_info(f"{label.capitalize()} is now '{enc.layer_name} correction': edit it with the "
                  "brush (P), eraser (E) or fill (F); Ctrl+Z undoes.")

    def _make_correction(self, layer, plane: Plane, roi, labels2d: np.ndarray,
                         meta: dict[str, Any], existing: Labels | None) -> Labels:
        viewer = self.viewer
        kwargs = placement(layer, plane, roi)
        data = embed(labels2d, plane)
        name = f"{meta['image_layer']} correction"
        num_classes = self.state.model.config.num_classes if self.state.model else max(
            2, len(meta.get("class_names") or ()))
        self._disconnect_correction()
        if existing is not None and existing in viewer.layers and existing.data.shape == data.shape:
            correction = existing
            correction.metadata = meta
            correction.data = data
            correction.scale, correction.translate = kwargs["scale"], kwargs["translate"]
            correction.visible = True
        else:
            if existing is not None and existing in viewer.layers:
                viewer.layers.remove(existing)
            correction = Labels(data, name=name, opacity=0.7, metadata=meta,
                                colormap=_colormap(max(num_classes, 2), CORRECTION_COLOURS),
                                **kwargs)
            viewer.layers.append(correction)
        for la in self._hypothesis_layers:
            if la in viewer.layers:
                la.visible = False
        viewer.layers.selection.active = correction
        correction.selected_label = 1
        correction.brush_size = max(1, min(labels2d.shape) // 16)
        correction.mode = "paint"
        self.state.correction_layer = correction
        self._last_autosaved = labels2d.copy()
        self._saved_at = None
        correction.events.paint.connect(self._on_correction_edited)
        correction.events.set_data.connect(self._on_correction_edited)
        self._update_correction_label()
        self._update_buttons()
        return correction

    def _disconnect_correction(self) -> None:
        old = self.state.correction_layer
        if old is not None:
            with suppress(Exception):
                old.events.paint.disconnect(self._on_correction_edited)
                old.events.set_data.disconnect(self._on_correction_edited)

    def _correction_for(self, image_name: str) -> Labels | None:
        layer = self.state.correction_layer
        if layer is not None and layer in self.viewer.layers \
                and layer.metadata.get("image_layer") == image_name:
            return layer
        return None

    def _find_image(self, name: str):
        for layer in self._image_layers():
            if layer.name == name:
                return layer
        return None

    def _update_correction_label(self, saved: str | None = None) -> None:
        layer = self.state.correction_layer
        if layer is None or layer not in self.viewer.layers:
            self.correction_label.setText("No correction yet")
            return
        meta = layer.metadata
        source = (f"hypothesis {meta['index'] + 1}" if meta.get("source") == "hypothesis"
                  else "an explorer point")
        edited = export.pixels_changed(as_2d(layer.data), meta.get("source_labels"))
        text = f"'{layer.name}' from {source} · {edited or 0} pixel(s) edited"
        if saved:
            text += f" · autosaved {saved}"
        self.correction_label.setText(text)

    # ------------------------------------------------------------------ autosave and restore
    def _on_correction_edited(self, event=None) -> None:
        if not self._closed:
            self._autosave_timer.start()
            self._update_correction_label(saved=self._saved_at)

    def autosave_now(self) -> Path | None:
        """Write the correction to its recovery file now (normally 2 s after the last edit)."""
        layer = self.state.correction_layer
        if layer is None or layer not in self.viewer.layers:
            return None
        data = as_2d(layer.data)
        if self._last_autosaved is not None and np.array_equal(data, self._last_autosaved):
            with suppress(RuntimeError):
                self._update_correction_label()
            return None
        meta = layer.metadata
        info = {k: v for k, v in meta.items() if k != "source_labels"}
        try:
            path = export.save_recovery(meta["plane_signature"], data, info,
                                        source_labels=meta.get("source_labels"),
                                        folder=self.recovery_dir)
        except (OSError, KeyError, ValueError) as exc:
            if not self._autosave_failed:
                show_warning(f"Autosave failed ({exc}); your edits are still in napari. Export "
                             "them to keep them.")
            self._autosave_failed = True
            return None
        self._autosave_failed = False
        self._last_autosaved = data.copy()
        self._saved_at = time.strftime("%H:%M:%S")
        with suppress(RuntimeError):
            self._update_correction_label(saved=self._saved_at)
        return path

    def _offer_restore(self, plane_signature: str, request: _Sampling) -> None:
        if plane_signature in self._declined_recovery or self._correction_for(request.layer_name):
            return
        found = export.load_recovery(plane_signature, self.recovery_dir)
        if found is None:
            return
        correction, source, info = found
        roi = tuple(info.get("roi") or ())
        if len(roi) != 4 or correction.shape != (roi[2], roi[3]):
            return
        edited = export.pixels_changed(correction, source)
        what = (f"hypothesis {info['index'] + 1}" if info.get("source") == "hypothesis"
                else "an explorer point")
        if not self.confirm(
                "Restore the autosaved correction?",
                f"A correction of this image was autosaved on {info.get('saved', '?')} (from "
                f"{what}, {edited if edited is not None else '?'} pixel(s) edited by hand). "
                "Restore it?"):
            self._declined_recovery.add(plane_signature)
            show_info("The autosaved correction was not restored; it stays in "
                      f"{export.recovery_path(plane_signature, self.recovery_dir).parent}.")
            return
        layer = request.plane.layer
        meta = dict(info, kind="correction", image_layer=request.layer_name,
                    source_labels=source if source is not None else correction.copy())
        meta.pop("saved", None)
        self._make_correction(layer, request.plane, roi, correction, meta, None)
        self._last_autosaved = correction.copy()
        z = np.asarray(info.get("z") or [], np.float32)
        self.state.choice = Choice(source=info.get("source", "hypothesis"),
                                   index=info.get("index"), z=z,
                                   labels=meta["source_labels"])
        show_info(f"Restored the autosaved correction as '{request.layer_name} correction'.")

    # ------------------------------------------------------------------ export
    def export(self, path: str | os.PathLike | None = None) -> Path | None:
        """Export the correction (the Export… button). Returns the mask's path, or ``None``."""
        layer = self.state.correction_layer
        if layer is None or layer not in self.viewer.layers:
            show_warning("There is no correction to export yet: pick a hypothesis with 'Use as "
                         "best fit' first.")
            return None
        meta = layer.metadata
        asked = path is None
        if asked:
            folder = str(_settings().value("export_folder", str(Path.home())))
            stem = f"{meta.get('image_layer', 'image')}_correction".replace(" ", "_")
            path = self.ask_save_path(str(Path(folder) / f"{stem}.tif"))
            if not path:
                return None
        path = Path(path).expanduser()
        crop = as_2d(layer.data)
        mask, record = export.layer_mask_and_record(crop, meta, name=layer.name)
        json_path = export.record_path(path)
        exists = [p.name for p in (path, json_path) if p.exists()]
        if exists and not self.confirm(
                "Replace the existing file?",
                f"{' and '.join(exists)} already exist(s) in {path.parent}. Replace?"):
            show_info("Nothing was exported (the existing file is kept).")
            return None
        try:
            written, record_file = export.export_correction(
                mask, path, record, overwrite=bool(exists), scale=meta.get("scale"))
        except UserError as exc:
            show_error(str(exc))
            return None
        if asked:
            _settings().setValue("export_folder", str(path.parent))
        with suppress(KeyError, OSError, ValueError):
            if np.array_equal(crop, as_2d(layer.data)):
                export.discard_recovery(meta["plane_signature"], self.recovery_dir)
                self._last_autosaved = crop.copy()
        show_info(f"Saved {written.name} and {record_file.name} in {written.parent}.")
        self._update_correction_label()
        return written

    # ------------------------------------------------------------------ odds and ends
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        with suppress(Exception):
            layer.events.name.disconnect(self._refresh_layer_choices)
        request = self._sampling_request
        if request is not None and layer is request.plane.layer and self._sampling_worker:
            self._sampling_worker.quit()
            show_warning(f"The image layer '{layer.name}' was removed while sampling; sampling "
                         "was stopped.")
        if layer is self.state.correction_layer:
            if self._autosave_timer.isActive():
                self._autosave_timer.stop()
            # keep the last edits in the recovery file: deleting a layer is easily a slip
            self._save_removed_correction(layer)
            self._disconnect_correction()
            self.state.correction_layer = None
            self._update_correction_label()
        if layer is self._roi_layer:
            self._roi_layer = None
        self._refresh_layer_choices()
        self._update_navigation()

    def _save_removed_correction(self, layer) -> None:
        data = as_2d(layer.data)
        if self._last_autosaved is not None and np.array_equal(data, self._last_autosaved):
            return
        meta = layer.metadata
        with suppress(OSError, KeyError, ValueError):
            export.save_recovery(meta["plane_signature"], data,
                                 {k: v for k, v in meta.items() if k != "source_labels"},
                                 source_labels=meta.get("source_labels"), folder=self.recovery_dir)
            show_info("The deleted correction was autosaved; sample the same image again to "
                      "restore it.")

    def _update_buttons(self) -> None:
        if self._closed:
            return
        running = self._sampling_worker is not None
        has_model = self.state.session is not None
        image = self.image_layer()
        self.slices_combo.setEnabled(image is not None and image.ndim >= 3)
        self.cancel_button.setEnabled(running)
        self.sample_button.setText("Sampling…" if running else "Sample")
        self.open_model_button.setEnabled(self._model_worker is None)
        self.model_combo.setEnabled(self._model_worker is None)
        has_hyp = self.state.hypotheses is not None and bool(self._hypothesis_layers)
        for b in (self.previous_button, self.next_button, self.best_fit_button):
            b.setEnabled(has_hyp)
        correction = self.state.correction_layer
        self.export_button.setEnabled(correction is not None and correction in self.viewer.layers)
        self.sample_button.setToolTip(f"Draw the hypotheses for the image region (key: {KEY_SAMPLE})"
                                      if has_model else "Load a model first")

    def _emit(self, signal, *args) -> None:
        self._emitting = True
        try:
            signal.emit(*args)
        finally:
            self._emitting = False


def _update_layer(layer, name: str, visible: bool, place: dict[str, Any]) -> None:
    """Rename, show/hide and move a reused layer, touching only what changes (each setter
    makes napari recompute extents and redraw)."""
    if layer.name != name:
        layer.name = name
    if layer.visible != visible:
        layer.visible = visible
    if not np.allclose(layer.scale, place["scale"]):
        layer.scale = place["scale"]
    if not np.allclose(layer.translate, place["translate"]):
        layer.translate = place["translate"]
    nd = len(place["scale"])
    rotate = np.asarray(place.get("rotate", np.eye(nd)))
    if not np.allclose(layer.rotate, rotate):
        layer.rotate = rotate
    shear = place.get("shear")
    if shear is not None or np.any(np.asarray(layer.shear) != 0):
        layer.shear = shear if shear is not None else np.zeros_like(np.asarray(layer.shear))
    affine = place.get("affine")
    target = np.eye(nd + 1) if affine is None else affine.affine_matrix
    if not np.allclose(layer.affine.affine_matrix, target):
        layer.affine = target


def _is_bundle_layer(layer) -> bool:
    """A layer that the bundle reader made (its metadata names the bundle format)."""
    meta = getattr(layer, "metadata", None) or {}
    return meta.get("bundle_format_version") is not None and "image_signature" in meta


def _keybinding(key: str):
    from app_model.types import KeyBinding

    return KeyBinding.from_str(key)


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    while callbacks:
        callback = callbacks.pop()
        with suppress(Exception):
            callback()


def _html(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
