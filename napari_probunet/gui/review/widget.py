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
image layer's own transform (scale, translate moved by the ROI offset, rotate, shear, affine;
the one rule in :mod:`napari_probunet.gui.placement`). So ``layer.data`` of
``<image> hypothesis 03`` is exactly ``state.hypotheses.labels[2]`` (with leading length-1 axes
for a slice of a 3D/4D stack, so that it shows on that slice only), and memory does not grow
with the image size. **Export** writes the full image plane (zero outside the ROI) with the ROI
in the JSON record; see :mod:`napari_probunet.review.export`.

Layers: ``<image> hypothesis 01`` ... (only one shown at a time; ``.``/``,`` cycle),
``<image> uncertainty`` (per-pixel disagreement of the samples), ``<image> correction`` (the
editable best fit) and ``ROI`` (the region shown as a rectangle).

The widget composes its parts, one per box or concern, each in its own module of this package:
:class:`~.model_panel.ModelPanel` (Model box), :class:`~.roi_tool.RoiTool` (Input box, the
region of interest), :class:`~.sampling.Sampler` (Sampling box and sampling runs),
:class:`~.hypotheses.HypothesisLayers` (showing and cycling the hypotheses),
:class:`~.gallery.Gallery` (all hypotheses as thumbnails: show, mark, pick),
:class:`~.bundles.BundleAdopter` (opened bundles), :class:`~.correction.Correction` (best fit,
autosave, restore, export) and :class:`~.runner.JobRunner` (the jobs of
:mod:`napari_probunet.review.jobs` on the widget's
:class:`~napari_probunet.gui.worker.SessionWorker`, as the explorer's: one threading model, the
session lock taken there only). The widget keeps the public API, the viewer's events and the
keyboard shortcuts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import napari
import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QSettings
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_probunet.gui.dock import get_state, on_docked, scrolling_content
from napari_probunet.gui.napari_compat import unwrap_viewer
from napari_probunet.gui.review.bundles import BundleAdopter
from napari_probunet.gui.review.common import (  # noqa: F401 (the widget's constants, as before)
    AUTOSAVE_MS,
    FALLBACK_ROI,
    KEY_ACCEPT,
    KEY_EXPORT,
    KEY_NEXT,
    KEY_PREVIOUS,
    KEY_SAMPLE,
    ROI_MODES,
    WHOLE_IMAGE_LIMIT,
    ask_model_path,
    ask_save_path,
    ask_yes_no,
    is_bundle_layer,
    keybinding,
    run_all,
)
from napari_probunet.gui.review.correction import Correction
from napari_probunet.gui.review.gallery import Gallery
from napari_probunet.gui.review.hypotheses import HypothesisLayers
from napari_probunet.gui.review.model_panel import ModelPanel
from napari_probunet.gui.review.new_image import NewImage
from napari_probunet.gui.review.roi_tool import RoiTool
from napari_probunet.gui.review.runner import JobRunner
from napari_probunet.gui.review.sampling import Sampler
from napari_probunet.review.provenance import Provenance
from napari_probunet.review.state import Choice, EncodedRegion


def _settings() -> QSettings:
    """Where the widget remembers the device and folders (tests point it at a temporary file)."""
    return QSettings("napari-probunet", "review")


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

    The controls of its boxes (``n_spin``, ``sample_button``, ``model_combo``, …) are
    attributes too; each box's part lists them in its ``CONTROLS``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None, *,
                 load_default: bool = True):
        super().__init__(parent)
        # napari hands plugins a proxy of the viewer; the per-viewer state is keyed by the
        # viewer itself, so that the explorer widget finds the same state
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = get_state(self.viewer)
        self.confirm: Callable[[str, str], bool] = lambda title, text: ask_yes_no(self, title, text)
        self.ask_save_path: Callable[[str], str | None] = lambda d: ask_save_path(self, d)
        self.ask_model_path: Callable[[str], str | None] = lambda d: ask_model_path(self, d)
        self.recovery_dir: str | os.PathLike | None = None  # None: recovery.recovery_dir()
        self.closed = False
        self.emitting = False  # the widget is emitting a state event (its own: ignore it)
        self._disconnectors: list[Callable[[], None]] = []

        self.jobs = JobRunner(self.state.lock, self)  # loading and sampling, off the GUI thread
        self.model_panel = ModelPanel(self)
        self.roi_tool = RoiTool(self)
        self.sampler = Sampler(self)
        self.correction = Correction(self)
        self.hypothesis_view = HypothesisLayers(self)
        self.gallery = Gallery(self)  # all hypotheses at a glance (gallery.py)
        self.bundles = BundleAdopter(self)
        self.new_image = NewImage(self)  # a new image starts a fresh review
        self._build()
        self._connect()
        self._bind_keys()
        self._adopt_state()
        self.refresh_layer_choices()
        if self.state.hypotheses is None:
            self.adopt_bundle_layers()  # a bundle opened before the widget
        if self.state.session is not None or not load_default:
            self.model_panel.show_model()
        else:
            self.load_bundled_model()

    def _build(self) -> None:
        # the boxes sit in a scroll area: in a short dock (e.g. under the explorer) the
        # widget scrolls instead of squeezing its rows
        root = QVBoxLayout(scrolling_content(self, min_width=300))
        root.setContentsMargins(6, 6, 6, 6)
        parts = (self.model_panel, self.roi_tool, self.sampler, self.correction, self.gallery)
        for part in parts:
            # the gallery takes the height left over: as many thumbnails as the screen allows
            root.addWidget(part.box, 10 if part is self.gallery else 0)
            for name in part.CONTROLS:  # the controls, as widget attributes (scripts, tests)
                setattr(self, name, getattr(part, name))
        root.addStretch(1)
        self.model_panel.fill_devices()
        self.roi_tool.on_roi_mode_changed()
        self.update_buttons()

    def _adopt_state(self) -> None:
        """Pick up what the viewer's state already holds (the widget closed and reopened)."""
        st = self.state
        if st.hypotheses is not None and st.hypothesis_layers \
                and len(st.hypothesis_layers) == len(st.hypotheses.labels):
            record = Provenance.from_metadata(st.hypothesis_layers[0].metadata)
            self.hypothesis_view.adopt(st.hypothesis_layers, st.uncertainty_layer,
                                       record.plane_signature)
            if is_bundle_layer(st.hypothesis_layers[0]):
                self.bundles.record = record
            self.hypothesis_view.update_navigation()
        if self.correction.layer is not None:
            self.correction.watch(self.correction.layer)
            self.correction.update_label()
            self.update_buttons()

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        def hook(emitter, callback):
            emitter.connect(callback)
            self._disconnectors.append(lambda: emitter.disconnect(callback))

        layers = self.viewer.layers
        hook(layers.events.inserted, self._on_layer_inserted)
        hook(layers.events.removed, self._on_layer_removed)
        hook(layers.events.moved, self.refresh_layer_choices)
        hook(layers.selection.events.active, self.hypothesis_view.on_active_layer)
        for layer in layers:
            hook(layer.events.name, self.refresh_layer_choices)
        hook(self.state.best_fit_requested, self.correction.on_best_fit_requested)
        hook(self.state.current_hypothesis_changed, self.hypothesis_view.on_current_changed_elsewhere)
        hook(self.state.model_changed, self._on_model_changed_elsewhere)
        # when napari deletes the Qt widget without closing it, still let go of the viewer
        disconnectors = self._disconnectors
        self.destroyed.connect(lambda *_: run_all(disconnectors))
        on_docked(self.viewer, self)  # graders as outlines; the image fitted to the narrower canvas

    def _bind_keys(self) -> None:
        keys = {KEY_NEXT: lambda viewer=None: self.next_hypothesis(),
                KEY_PREVIOUS: lambda viewer=None: self.previous_hypothesis(),
                KEY_ACCEPT: lambda viewer=None: self.use_as_best_fit(),
                KEY_SAMPLE: lambda viewer=None: self.sample(),
                KEY_EXPORT: lambda viewer=None: self.export()}
        self.key_bindings: dict[str, Callable] = keys
        for key, func in keys.items():
            self.viewer.bind_key(key, func, overwrite=True)
        viewer = self.viewer

        def unbind():
            for key, func in keys.items():
                if viewer.keymap.get(keybinding(key)) == func:
                    viewer.bind_key(key, None)

        self._disconnectors.append(unbind)

    def cleanup(self) -> None:
        """Stop workers and timers, unbind the keys and disconnect from the viewer (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.correction.flush()
        self.jobs.cancel("sample")
        self.bundles.stop()
        self.roi_tool.set_click_callback(False)
        run_all(self._disconnectors)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cleanup()
        super().closeEvent(event)

    def settings(self) -> QSettings:
        """Where the widget remembers the device and the model and export folders."""
        return _settings()

    # ------------------------------------------------------------------ model
    @property
    def device(self) -> str:
        """The chosen device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``."""
        return self.model_panel.device

    def device_names(self) -> list[str]:
        """The devices offered: ``"auto"``, then those available here."""
        return self.model_panel.device_names()

    @property
    def busy(self) -> bool:
        """A model is loading, sampling runs, or hypothesis layers are still being added."""
        return self.jobs.busy or bool(self.hypothesis_view.pending)

    @property
    def model_loading(self) -> bool:
        """A model is being loaded (in the background)."""
        return self.model_panel.loading

    @property
    def model_error(self) -> str | None:
        """Why the last model could not be loaded (None after a successful load)."""
        return self.model_panel.error

    def load_bundled_model(self, name: str = "default") -> None:
        """Load a model that ships with the package (``"default"``, ``"lidc"``, ``"lesions"``)
        off the GUI thread."""
        self.model_panel.load_bundled_model(name)

    def load_model_file(self, path: str | os.PathLike) -> None:
        """Load a model file (``.safetensors``) off the GUI thread; errors become notifications."""
        self.model_panel.load_model_file(path)

    def set_device(self, device: str) -> None:
        """Run the model on ``device`` (``auto``, ``cuda``, ``mps`` or ``cpu``), if available."""
        self.model_panel.set_device(device)

    def on_model_loaded(self) -> None:
        """A model was loaded (the state holds it): tell the others, keep an opened bundle."""
        self.roi_tool.suggest_region()  # the input size may differ from the last model's
        self.emit(self.state.model_changed)
        record = self.bundles.record
        if record is not None:  # keep the opened bundle's hypotheses
            self.adopt_bundle_layers(record.image_signature, notify=False)

    def _on_model_changed_elsewhere(self) -> None:
        if not self.emitting:
            self.model_panel.show_model()

    def model_sha(self) -> str | None:
        session = self.state.session
        return session.model_sha256 if session is not None else None

    def model_name(self) -> str | None:
        model = self.state.model
        return Path(model.source_path).name if model is not None and model.source_path else None

    # ------------------------------------------------------------------ input
    def image_layer(self) -> Image | None:
        """The image layer chosen in the widget (``None`` if there is none)."""
        return self.roi_tool.image_layer()

    def refresh_layer_choices(self, *_) -> None:
        """Bring the image and Shapes choices in step with the viewer's layers."""
        if self.closed:
            return
        self.roi_tool.refresh_layer_choices()
        self.update_buttons()

    @property
    def roi_mode(self) -> str:
        """``"whole"``, ``"rectangle"`` or ``"click"``."""
        return self.roi_tool.roi_mode

    def set_roi_mode(self, mode: str) -> None:
        """Choose the region of interest: ``"whole"``, ``"rectangle"`` or ``"click"``."""
        self.roi_tool.set_roi_mode(mode)

    @property
    def all_slices(self) -> bool:
        """Whether Sample runs over all slices (only for a stack: non-RGB ndim >= 3)."""
        return self.roi_tool.all_slices

    def set_all_slices(self, on: bool) -> None:
        self.slices_combo.setCurrentIndex(1 if on else 0)

    @property
    def click_roi(self) -> tuple[int, int, int, int] | None:
        """The ROI of the last click in 'Click on the lesion' mode (None before a click)."""
        click = self.roi_tool.click
        return None if click is None else click[2]

    def set_click_roi(self, world_position) -> tuple[int, int, int, int] | None:
        """Centre the ROI (a crop of the model's input size) on a point given in world coordinates.

        Returns the ROI ``(row, col, height, width)`` in the image's data pixels; samples right
        away when "Run on click" is ticked.
        """
        roi = self.roi_tool.set_click_roi(world_position)
        if roi is not None and self.sample_on_click.isChecked() and self.state.session is not None:
            if not self.sampler.running:
                self.sample()
            else:
                show_info("Sampling is running; the new region is used on the next Sample.")
        return roi

    def adopt_bundle_layers(self, image_signature: str | None = None, *,
                            notify: bool = True) -> bool:
        """Make the layers of an opened hypothesis bundle (``*.probunet.zip``) the review's
        hypotheses, ready to cycle, pick as the best fit, edit and export with no model run.

        ``image_signature`` picks the bundle (default: the last bundle image in the layer
        list). Called when a bundle's layers are inserted. If the loaded model is the one that
        wrote the bundle, the image is also encoded into its session (for the explorer);
        otherwise the session is left alone. Returns whether a bundle was adopted.
        """
        return self.bundles.adopt(image_signature, notify=notify)

    # ------------------------------------------------------------------ sampling
    def sample(self) -> bool:
        """Start sampling (the Sample button). Returns whether a run was started."""
        return self.sampler.sample()

    def cancel(self) -> None:
        """Stop sampling (the Cancel button); the previous hypotheses stay."""
        self.sampler.cancel()

    @property
    def last_sampling_seconds(self) -> float | None:
        """How long the last sampling run took, from the click to the layers."""
        return self.sampler.last_seconds

    def on_encoded(self, encoded: EncodedRegion) -> None:
        """A sampling job encoded a new region: the previous hypotheses are dropped."""
        self.bundles.record = None
        self.state.set_encoded(encoded)
        self.emit(self.state.image_encoded)
        if encoded.image is not None:
            self.model_panel.check_domain(encoded.image)

    # ------------------------------------------------------------------ hypotheses
    @property
    def current_hypothesis(self) -> int:
        """The hypothesis shown (0-based)."""
        return self.hypothesis_view.current

    @property
    def hypothesis_layers(self) -> list[Labels]:
        """The hypothesis layers, in order (some may still be waiting to join the viewer)."""
        return list(self.hypothesis_view.layers)

    @property
    def pending_layers(self) -> int:
        """How many hypothesis layers are still waiting to join the viewer."""
        return len(self.hypothesis_view.pending)

    def show_hypothesis(self, index: int, notify: bool = True) -> None:
        """Show hypothesis ``index`` (0-based, wraps around) and hide the others.

        ``notify`` emits ``state.current_hypothesis_changed`` (off when the change came from
        another widget through that signal).
        """
        self.hypothesis_view.show(index, notify)

    def next_hypothesis(self) -> None:
        """Show the next hypothesis (key ``.``)."""
        self.show_hypothesis(self.hypothesis_view.current + 1)

    def previous_hypothesis(self) -> None:
        """Show the previous hypothesis (key ``,``)."""
        self.show_hypothesis(self.hypothesis_view.current - 1)

    # ------------------------------------------------------------------ correction
    def use_as_best_fit(self, index: int | None = None) -> None:
        """Make hypothesis ``index`` (default: the one shown) the editable correction."""
        hyp = self.state.hypotheses
        if hyp is None:
            show_warning("No hypotheses yet: click Sample first, then pick the best one.")
            return
        i = self.hypothesis_view.current if index is None else int(index)
        if not 0 <= i < len(hyp.labels):
            show_error(f"No hypothesis {i + 1}. There are {len(hyp.labels)}.")
            return
        self.hypothesis_view.select(i)
        self.state.best_fit_requested.emit(
            Choice(source="hypothesis", index=i, z=np.array(hyp.z[i]), labels=hyp.labels[i].copy()))

    def export(self, path: str | os.PathLike | None = None) -> Path | None:
        """Export the correction (the Export… button). Returns the mask's path, or ``None``."""
        return self.correction.export(path)

    def autosave_now(self) -> Path | None:
        """Write the correction to its recovery file now (normally 2 s after the last edit)."""
        return self.correction.autosave_now()

    @property
    def autosave_delay_ms(self) -> int:
        """How long after the last edit the correction is autosaved (:data:`AUTOSAVE_MS`)."""
        return self.correction.timer.interval()

    @autosave_delay_ms.setter
    def autosave_delay_ms(self, ms: int) -> None:
        self.correction.timer.setInterval(int(ms))

    # ------------------------------------------------------------------ the viewer's events
    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        layer.events.name.connect(self.refresh_layer_choices)
        self._disconnectors.append(lambda: layer.events.name.disconnect(self.refresh_layer_choices))
        self.refresh_layer_choices()
        self.bundles.on_layer_inserted(layer)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        with suppress(Exception):
            layer.events.name.disconnect(self.refresh_layer_choices)
        self.sampler.stop_if_reading(layer)
        self.correction.on_layer_removed(layer)
        if layer is self.roi_tool.roi_layer:
            self.roi_tool.roi_layer = None
        encoded = self.state.encoded
        if encoded is not None and encoded.layer_name not in self.viewer.layers:
            self.new_image.reset()  # the image the hypotheses were drawn on is gone
        self.refresh_layer_choices()
        self.hypothesis_view.update_navigation()

    def update_buttons(self) -> None:
        """Enable what can be done now (and say why Sample cannot)."""
        if self.closed:
            return
        running = self.sampler.running
        loading = self.model_panel.loading
        image = self.image_layer()
        self.slices_combo.setEnabled(image is not None and image.ndim >= 3)
        self.cancel_button.setEnabled(running)
        self.sample_button.setText("Sampling…" if running else "Sample")
        self.open_model_button.setEnabled(not loading)
        self.model_combo.setEnabled(not loading)
        other = self.new_image.other_image_chosen()
        has_hyp = (self.state.hypotheses is not None and bool(self.hypothesis_view.layers)
                   and not other)
        for b in (self.previous_button, self.next_button, self.best_fit_button):
            b.setEnabled(has_hyp)
        self.new_image.show_for(image, other)
        self.export_button.setEnabled(self.correction.layer is not None)
        self.sample_button.setToolTip(f"Draw the hypotheses for the image region (key: {KEY_SAMPLE})"
                                      if self.state.session is not None else "Load a model first")

    def emit(self, signal, *args) -> None:
        """Emit a state event, marking it as this widget's own (its handlers then ignore it)."""
        self.emitting = True
        try:
            signal.emit(*args)
        finally:
            self.emitting = False
