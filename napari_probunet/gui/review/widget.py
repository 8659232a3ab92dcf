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
:class:`~.hypotheses.HypothesisLayers` (showing and cycling the hypotheses, the navigation
row), :class:`~.gallery.Gallery` (all hypotheses as thumbnails: show, mark, pick),
:class:`~.bundles.BundleAdopter` (opened bundles) and :class:`~.correction.Correction` (best
fit, autosave, restore, export). Each part gets the review's
:class:`~napari_probunet.review.controller.ReviewController` (no Qt: the state, the rules,
the events), the viewer and the :class:`~.runner.JobRunner` (the jobs of
:mod:`napari_probunet.review.jobs` on the widget's
:class:`~napari_probunet.gui.worker.SessionWorker`, as the explorer's: one threading model, the
session lock taken there only), and talks to the others only through the controller. The
widget builds them, lays out their boxes, passes the viewer's layer events on, binds the
keyboard shortcuts and shows the controller's messages.

Scripts and tests call the part or the controller that does the work:
``widget.sampler.sample()``, ``widget.sampler.sample_button``,
``widget.controller.use_as_best_fit(i)``, ``widget.correction.export(path)``,
``widget.model_panel.load_model_file(path)``; the
controller's ``state`` is the viewer's shared :class:`~napari_probunet.review.state.ReviewState`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

import napari
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_probunet.gui.dock import get_state, on_docked, scrolling_content
from napari_probunet.gui.napari_compat import unwrap_viewer
from napari_probunet.gui.review.bundles import BundleAdopter
from napari_probunet.gui.review.common import (
    KEY_ACCEPT,
    KEY_EXPORT,
    KEY_NEXT,
    KEY_PREVIOUS,
    KEY_SAMPLE,
    keybinding,
    run_all,
)
from napari_probunet.gui.review.correction import Correction
from napari_probunet.gui.review.gallery import Gallery
from napari_probunet.gui.review.hypotheses import HypothesisLayers
from napari_probunet.gui.review.model_panel import ModelPanel
from napari_probunet.gui.review.prompts import Prompts
from napari_probunet.gui.review.roi_tool import RoiTool
from napari_probunet.gui.review.runner import JobRunner
from napari_probunet.gui.review.sampling import Sampler
from napari_probunet.review.controller import ReviewController

_SHOW = {"info": show_info, "warning": show_warning, "error": show_error}


class ReviewWidget(QWidget):
    """Dock widget of the review workflow (SPEC.md, "Clinician workflow", steps 1-3, 5, 6).

    Attributes: ``viewer``, ``state`` (the viewer's ``ReviewState``), ``controller``,
    ``jobs`` (the :class:`~.runner.JobRunner`) and the parts ``model_panel``, ``roi_tool``,
    ``sampler``, ``hypothesis_view``, ``gallery``, ``bundles``, ``correction``, each with its
    controls (``sampler.sample_button``, ``model_panel.model_combo``, …) and its methods
    (``sampler.sample()``, ``correction.export(path)``, …). Dialogs are attributes of the part
    that asks, so that scripts and tests can answer them: ``correction.confirm(title, text)``,
    ``correction.ask_save_path(default)``, ``model_panel.ask_model_path(folder)``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None, *,
                 load_default: bool = True):
        super().__init__(parent)
        # napari hands plugins a proxy of the viewer; the per-viewer state is keyed by the
        # viewer itself, so that the explorer widget finds the same state
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = get_state(self.viewer)
        self.controller = controller = ReviewController(self.state)
        controller.message.connect(lambda level, text: _SHOW[level](text))
        self._disconnectors: list[Callable[[], None]] = [controller.close]
        # loading and sampling, off the GUI thread
        self.jobs = JobRunner(self.state.lock, self, changed=controller.set_jobs)
        parts = (controller, self.viewer, self.jobs, self)
        self.model_panel = ModelPanel(*parts)
        self.roi_tool = RoiTool(*parts)
        self.sampler = Sampler(*parts)
        self.prompts = Prompts(*parts)  # refine by clicks
        self.correction = Correction(*parts)
        self.hypothesis_view = HypothesisLayers(*parts)
        self.gallery = Gallery(*parts)  # all hypotheses at a glance (gallery.py)
        self.bundles = BundleAdopter(*parts)
        self._build()
        self._connect()
        self._bind_keys()
        self.refresh_layer_choices()
        if self.state.hypotheses is None:
            self.bundles.adopt()  # a bundle opened before the widget
        if self.state.session is not None or not load_default:
            self.model_panel.show_model()
        else:
            self.model_panel.load_bundled_model()

    def _build(self) -> None:
        # the boxes sit in a scroll area: in a short dock (e.g. under the explorer) the
        # widget scrolls instead of squeezing its rows
        root = QVBoxLayout(scrolling_content(self, min_width=300))
        root.setContentsMargins(6, 6, 6, 6)
        self.sampler.box.layout().addLayout(self.hypothesis_view.navigation)
        # Refine by clicks: one row of the Sampling box (its details shown only while clicks
        # are taken), so that Sample and Export stay in view at 1366x768 and all 16
        # thumbnails of the gallery at 1920x1080 (tests/test_ux.py)
        self.sampler.box.layout().addWidget(self.prompts.box)
        parts = (self.model_panel, self.roi_tool, self.sampler, self.correction, self.gallery)
        for part in parts:
            # the gallery takes the height left over: as many thumbnails as the screen allows
            root.addWidget(part.box, 10 if part is self.gallery else 0)
        root.addStretch(1)
        self.model_panel.fill_devices()

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        layers, hook = self.viewer.layers, self.controller.hook  # (undone by controller.close)
        hook(layers.events.inserted, self._on_layer_inserted)
        hook(layers.events.removed, self._on_layer_removed)
        hook(layers.events.moved, self.refresh_layer_choices)
        for layer in layers:
            hook(layer.events.name, self.refresh_layer_choices)
        # when napari deletes the Qt widget without closing it, still let go of the viewer
        disconnectors = self._disconnectors
        self.destroyed.connect(lambda *_: run_all(disconnectors))
        on_docked(self.viewer, self)  # graders as outlines; the image fitted to the narrower canvas

    def _bind_keys(self) -> None:
        c = self.controller
        keys = {KEY_NEXT: lambda viewer=None: c.next_hypothesis(),
                KEY_PREVIOUS: lambda viewer=None: c.previous_hypothesis(),
                KEY_ACCEPT: lambda viewer=None: c.use_as_best_fit(),
                KEY_SAMPLE: lambda viewer=None: self.sampler.sample(),
                KEY_EXPORT: lambda viewer=None: self.correction.export()}
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
        if self.controller.closed:
            return
        self.controller.close()
        self.correction.flush()
        self.jobs.cancel("sample")
        self.bundles.stop()
        self.roi_tool.set_click_callback(False)
        run_all(self._disconnectors)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.cleanup()
        super().closeEvent(event)

    @property
    def busy(self) -> bool:
        """A model is loading, sampling runs, or hypothesis layers are still being added (what
        ``napari_probunet.model.testing.wait_idle`` waits for)."""
        return self.controller.busy

    # ------------------------------------------------------------------ the viewer's events
    def refresh_layer_choices(self, *_) -> None:
        """Bring the image and Shapes choices, and what can be done, in step with the viewer's
        layers."""
        if self.controller.closed:
            return
        self.roi_tool.refresh_layer_choices()
        self._update_controls()

    def _update_controls(self) -> None:
        for part in (self.model_panel, self.sampler, self.hypothesis_view, self.correction):
            part.update_controls()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self.controller.hook(layer.events.name, self.refresh_layer_choices)
        self.refresh_layer_choices()
        self.bundles.on_layer_inserted(layer)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        with suppress(Exception):
            layer.events.name.disconnect(self.refresh_layer_choices)
        self.sampler.stop_if_reading(layer)
        self.correction.on_layer_removed(layer)
        self.roi_tool.on_layer_removed(layer)
        encoded = self.state.encoded
        if encoded is not None and encoded.layer_name not in self.viewer.layers:
            self.controller.forget_image()  # the image the hypotheses were drawn on is gone
        self.refresh_layer_choices()
        self.hypothesis_view.update_navigation()
