"""Latent-space explorer: a map of the prior, live decoding, and assessment of annotations.

The dock widget reads the viewer's :class:`~napari_probunet.review.state.ReviewState` (model,
encoded region, hypotheses) and draws a plane through the prior
(:mod:`napari_probunet.review.plane`): decoded masks (or their area) across the plane, the
prior's 1- and 2-sigma contours, a marker per hypothesis, per assessed annotation and for the
current point. Clicking or dragging decodes the latent under the mouse into the
``<image> explorer`` Labels layer.

Live dragging is built for speed (SPEC.md, "Measured here"):

- a mouse move only stores the newest latent; one worker thread decodes it (torch at one
  thread, holding :attr:`ReviewState.lock`), always the newest pending one, and never starts a
  new decode while the GUI has not taken the last result (no queue of stale frames);
- the layer is updated in place through napari's public ``Labels.data_setitem`` (only the changed
  pixels, :func:`~napari_probunet.gui.explorer.layer.write_labels`), its thumbnail once the drag
  ends;
- the map repaints at most :data:`~napari_probunet.gui.explorer.latent_map.REPAINT_HZ` times a
  second, from cached pictures, and while only the point moves just the point's marker.

The parts: the worker is :class:`napari_probunet.gui.worker.SessionWorker` (the one threading
model of both widgets, and the one place the session lock is taken); in this package the map
widget :mod:`~.latent_map` (drawn by :mod:`~.painting`), the plane it shows and its background
grid :mod:`~.plane_view` (with :mod:`~.grid`), the controls :mod:`~.controls`, live decoding
:mod:`~.live`, the markers on the map and the selected hypothesis :mod:`~.markers`, the output
layer :mod:`~.layer` and the assessment box :mod:`~.assessment`. This module is the dock widget
that joins them to napari and to the review state.

The background grid is decoded a row at a time in the same worker, between live decodes, and
appears as it arrives. Nothing here blocks the GUI thread on the model except "Use as best
fit", which decodes one latent (milliseconds) to hand over exactly what is shown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial

import numpy as np
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QSplitter, QVBoxLayout, QWidget

from napari_probunet.gui.dock import get_state, on_docked, scrolling_content
from napari_probunet.gui.explorer.assessment import AssessmentPanel, candidate_names
from napari_probunet.gui.explorer.controls import (
    HOLD_HYPOTHESIS,
    HOLD_PRIOR,
    MapPanel,
    PlaneControls,
)
from napari_probunet.gui.explorer.grid import grey
from napari_probunet.gui.explorer.layer import LAYER_KEY, ExplorerLayer, read_geometry
from napari_probunet.gui.explorer.live import LiveDecoding
from napari_probunet.gui.explorer.markers import MarkerPlacement
from napari_probunet.gui.explorer.plane_view import PlaneView
from napari_probunet.gui.napari_compat import unwrap_viewer
from napari_probunet.gui.worker import SessionWorker, once
from napari_probunet.review import plane as core
from napari_probunet.review.state import Choice

__all__ = ["HOLD_HYPOTHESIS", "HOLD_PRIOR", "LAYER_KEY", "WORKER_THREADS", "ExplorerWidget"]

#: torch threads of the explorer's worker (1 is fastest for one small decode; SPEC.md)
WORKER_THREADS = 1

#: what the map says before there is a plane to show
_NO_REGION = ("No image region encoded yet: pick an image and sample hypotheses in "
              "Plugins \u203a Probabilistic U-Net; the map of what the model decodes appears here.")
_NO_MODEL = ("No model loaded yet. Open Plugins \u203a Probabilistic U-Net to load one (the "
             "bundled model is ready), then encode an image region.")


class _StateRelay(QObject):
    """Carries review-state events to the GUI thread (they may be emitted by a worker)."""

    event = Signal(str, object)


class ExplorerWidget(QWidget):
    """Dock widget: the latent-space explorer and the assessment of annotations.

    Public for scripts and tests: :meth:`set_point`, :attr:`point`, :attr:`current_z`,
    :attr:`plane`, :meth:`set_axes`, :meth:`set_hold`, :meth:`use_as_best_fit`,
    :meth:`assess`, :attr:`assessments`, :attr:`explorer_layer`, :attr:`idle`, :attr:`map`,
    :attr:`grid` (the background's decoded cells); for benchmarks :attr:`frames`,
    :attr:`decode_seconds`, :attr:`grid_seconds` and :meth:`show_labels`.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a proxy of the viewer (a different one for each widget); the
        # state is kept on the viewer itself, and a layer reached without the proxy skips its
        # per-attribute checks on every frame of a drag (as the review)
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = get_state(self.viewer)
        self._token = 0  # bumped when the model or the encoded region changes
        self._output = ExplorerLayer(self.viewer, self._on_layer_colormap)

        self._relay = _StateRelay(self)
        self._worker = SessionWorker(self.state.lock, parent=self, name="probunet-explorer",
                                     threads=WORKER_THREADS)
        self._build_ui()
        self._live = LiveDecoding(self._worker, self._output, self.map, self.status, _notify)
        self._markers = MarkerPlacement(self.map, self.state, self.assessment_panel, self._live)
        self._view = PlaneView(self.map, self.controls, self._worker, lambda: self.class_colors(
            self.state.session.config.num_classes))
        self.grid = self._view.grid
        self.decode_seconds = self._live.decode_seconds  # of each live decode shown (benchmark)
        self._worker.signals.latest_ready.connect(self._on_point_ready)
        self._worker.signals.job_result.connect(self._on_job_result)
        self._relay.event.connect(self._on_state_event)
        self._connect_state()
        self._refresh_annotation_list()
        self._on_state_event("model_changed", None)
        if self.state.ready:
            self._on_state_event("image_encoded", None)

    # -- UI ----------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        # everything sits in a scroll area, as in the review widget: docked under or beside
        # the review on a 1366x768 screen the explorer scrolls instead of forcing the window
        # taller than the screen (its content needs about 700 px)
        layout = QVBoxLayout(scrolling_content(self))
        layout.setContentsMargins(6, 6, 6, 6)
        self.controls = PlaneControls(core.DEFAULT_GRID)
        c = self.controls
        self.x_combo, self.y_combo, self.auto_button = c.x_combo, c.y_combo, c.auto_button
        self.hold_combo, self.background_combo, self.grid_spin = (
            c.hold_combo, c.background_combo, c.grid_spin)
        layout.addLayout(c.layout)
        # the map above, the assessment below; the user can move the split
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.setChildrenCollapsible(False)
        layout.addWidget(self.splitter, stretch=1)
        panel = MapPanel(self)
        self.map, self.status = panel.map, panel.status
        self.best_fit_button, self.centre_button, self.open_review_button = (
            panel.best_fit_button, panel.centre_button, panel.open_review_button)
        self.splitter.addWidget(panel)
        self.assessment_panel = a = AssessmentPanel()
        self.annotation_list, self.assess_button, self.table, self.rule_label = (
            a.annotation_list, a.assess_button, a.table, a.rule_label)
        self.splitter.addWidget(a)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self._connect_ui()

    def _connect_ui(self) -> None:
        self.x_combo.activated.connect(lambda _i: self.apply_axis_choice("x"))
        self.y_combo.activated.connect(lambda _i: self.apply_axis_choice("y"))
        self.auto_button.clicked.connect(self._use_ranked_axes)
        self.hold_combo.activated.connect(lambda _i: self._rebuild_plane())
        self.background_combo.activated.connect(lambda _i: self.render_background())
        self.grid_spin.valueChanged.connect(
            lambda n: self._view.set_grid_size(n, self.state.session, self._token))
        self.map.point_moved.connect(self._on_user_point)
        self.map.hypothesis_clicked.connect(self.select_hypothesis)
        self.map.annotation_clicked.connect(self.assessment_panel.select_row)
        self.best_fit_button.clicked.connect(self.use_as_best_fit)
        self.centre_button.clicked.connect(lambda: self.set_point(0.0, 0.0))
        self.open_review_button.clicked.connect(lambda: _open_review_widget(self.viewer))
        self.assess_button.clicked.connect(lambda: self.assess())
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.go_to_assessment(row))

    # -- wiring ------------------------------------------------------------------------------------
    def _connect_state(self) -> None:
        relays = _relay_state(self.state, self._relay.event)
        layers = self.viewer.layers.events
        for emitter in (layers.inserted, layers.removed, layers.moved):
            emitter.connect(self._on_layers_changed)
        # not a method: it runs when the widget is destroyed and must not touch it
        self._teardown = _teardown(self._worker, relays, layers, self._on_layers_changed)
        self.destroyed.connect(self._teardown)
        on_docked(self.viewer, self)  # graders as outlines; the image fitted to the narrower canvas

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the worker and let go of the viewer (the dock is being closed)."""
        self._teardown()

    # -- public API ------------------------------------------------------------------------------
    @property
    def plane(self) -> core.LatentPlane | None:
        """The plane shown, or None before an image is encoded."""
        return self._view.plane

    @property
    def point(self) -> tuple[float, float]:
        """The current point in plane coordinates (prior sigmas)."""
        return self._live.point

    @property
    def current_z(self) -> np.ndarray | None:
        """The latent of the current point ``(d,)``."""
        z = self._live.z
        return None if z is None else z.copy()

    @property
    def explorer_layer(self):
        """The ``<image> explorer`` Labels layer, if it exists in the viewer."""
        return self._output.layer

    @property
    def assessments(self) -> list:
        """:class:`~napari_probunet.review.assess.Assessment` per assessed annotation (table
        order)."""
        return list(self.assessment_panel.assessments)

    @property
    def assessment_reference(self):
        """The model's own samples of this image that the flags are judged against
        (:func:`~napari_probunet.review.assess.reference`), once an assessment ran."""
        return self.assessment_panel.reference

    @property
    def ranking(self) -> list[core.AxisScore]:
        """The latent axes ordered by how much the segmentation changes along them."""
        return list(self._view.ranking)

    @property
    def idle(self) -> bool:
        """No decode, grid or assessment is pending or running (tests wait for this)."""
        return self._worker.idle and not self._live.final_pending

    @property
    def frames(self) -> int:
        """Explorer-layer updates shown so far (benchmark)."""
        return self._output.frames

    @property
    def grid_seconds(self) -> float | None:
        """How long the last complete background grid took (benchmark)."""
        return self.grid.seconds

    def set_point(self, u: float, v: float = 0.0) -> None:
        """Go to plane coordinates ``(u, v)`` and decode there (as a click does)."""
        self._on_user_point(float(u), float(v), True)

    def set_axes(self, axis_x: int, axis_y: int | None = None) -> None:
        """Show the plane of latent axes ``axis_x``, ``axis_y`` (0-based)."""
        if self.plane is None:
            return
        d = self.plane.dim
        if d > 1 and (axis_y is None or axis_y == axis_x):
            raise ValueError("a plane needs two different axes")
        self.x_combo.setCurrentIndex(int(axis_x))
        if d > 1:
            self.y_combo.setCurrentIndex(int(axis_y))
        self._rebuild_plane()

    def apply_axis_choice(self, which: str) -> None:
        """Show the axes now chosen in the combos after the user chose ``"x"`` or ``"y"``
        (choosing the other combo's axis swaps the two)."""
        plane = self.plane
        if plane is None:
            return
        if plane.dim > 1:  # keep two different axes: swap with the old one
            self.controls.keep_two_axes(which, plane.axis_x, plane.axis_y)
        self._rebuild_plane()

    def set_hold(self, mode: str) -> None:
        """Hold the coordinates off the plane at ``"prior mean"`` or ``"selected hypothesis"``."""
        if mode not in (HOLD_PRIOR, HOLD_HYPOTHESIS):
            raise ValueError(f"unknown mode {mode!r}")
        self.hold_combo.setCurrentText(mode)
        self._rebuild_plane()

    def select_hypothesis(self, index: int) -> None:
        """Select hypothesis ``index`` (0-based): show its layer and tell the other widgets."""
        hyp = self.state.hypotheses
        if hyp is None or not 0 <= index < len(hyp.z):
            return
        layers = self.state.hypothesis_layers
        if index < len(layers) and layers[index] in self.viewer.layers:
            layer = layers[index]
            layer.visible = True
            self.viewer.layers.selection.active = layer
        self._set_selected_hypothesis(index)
        self.state.current_hypothesis_changed.emit(int(index))

    def use_as_best_fit(self) -> Choice | None:
        """Hand the segmentation at the current point to the correction path (with its z)."""
        if not self.state.ready or self._live.z is None:
            _notify("Encode an image region first. Sample in the Probabilistic U-Net widget.")
            return None
        z = self._live.z.copy()
        labels = self._live.shown_labels(self._token, z)
        if labels is None:
            labels = self._worker.call_now(lambda: self.state.session.decode(z))
        choice = Choice(source="explorer", index=None, z=z, labels=labels)
        if len(self.state.best_fit_requested) == 0:
            _notify("Open the review widget. Nothing takes the best fit yet: open Plugins "
                    "\u203a Probabilistic U-Net to turn it into an editable correction.")
        self.state.best_fit_requested.emit(choice)
        return choice

    def assess(self, layer_names: list[str] | None = None) -> None:
        """Assess the ticked Labels layers (or ``layer_names``) under the model, in the worker."""
        g = self._output.geometry
        if not self.state.ready or g is None:
            _notify("Encode an image region first. Sample in the Probabilistic U-Net widget.")
            return
        panel = self.assessment_panel
        names = list(layer_names) if layer_names is not None else panel.checked_names()
        if layer_names is not None:
            panel.tick(names)
            self._refresh_annotation_list()
        submit = partial(self._worker.submit, self._token, "assess")
        if not panel.start(self.viewer, names, g, self.state.session, submit):
            _notify("Tick the layers to assess first. Graders' masks, a correction...")

    def class_colors(self, num_classes: int) -> np.ndarray:
        """RGBA uint8 per class, as napari colours them (the explorer layer's colormap)."""
        return self._output.class_colors(num_classes)

    def show_labels(self, labels: np.ndarray) -> None:
        """Show a decode ``(h, w)`` of the region in the explorer layer (in place)."""
        self._output.show(labels)

    # -- state events ----------------------------------------------------------------------------
    def _on_state_event(self, name: str, arg) -> None:
        if name == "model_changed":
            self._reset(_NO_REGION if self.state.session is not None else _NO_MODEL)
            self._output.hide()  # its content came from the old model
        elif name == "image_encoded":
            self._on_image_encoded()
        elif name == "hypotheses_changed":
            self._markers.forget_selection()
            self.update_markers()
            if self.controls.holds_hypothesis:
                self._rebuild_plane()
        elif name == "current_hypothesis_changed" and arg is not None:
            if arg != self._markers.selected_hypothesis:
                self._set_selected_hypothesis(int(arg))

    def _reset(self, hint: str) -> None:
        self._token += 1
        self._worker.cancel()
        self._view.reset(hint)
        self.assessment_panel.reset()
        self._markers.forget_selection()
        self._live.reset()
        self.status.setText("")
        for w in (*self.controls.widgets, self.best_fit_button, self.centre_button,
                  self.assess_button):
            w.setEnabled(False)
        self.open_review_button.setVisible(True)

    def _on_image_encoded(self) -> None:
        self._reset("Preparing the map\u2026")
        if not self.state.ready:
            self._on_state_event("model_changed", None)
            return
        enc = self.state.encoded
        self._output.set_region(enc.layer_name, read_geometry(self.viewer, enc))
        self.grid.underlay = None if enc.image is None else grey(enc.image)
        self._worker.submit(self._token, "prepare", once(partial(_prepare, self.state.session)))

    def _on_prepared(self, mu, sigma, ranking, focus, components) -> None:
        self._view.prepared(self.state.session.config, mu, sigma, ranking, focus, components)
        for w in (self.best_fit_button, self.centre_button, self.assess_button):
            w.setEnabled(True)
        self.open_review_button.setVisible(False)
        self._rebuild_plane(point=(0.0, 0.0))
        self.update_markers()

    # -- the plane and its background ------------------------------------------------------------
    def _use_ranked_axes(self) -> None:
        ranking = self._view.ranking
        if ranking and self.plane is not None and self.plane.dim > 1:
            self.set_axes(ranking[0].axis, ranking[1].axis)

    def _rebuild_plane(self, point: tuple[float, float] | None = None) -> None:
        if self._view.mu is None or not self.state.ready:
            return
        base = self._markers.held_base(self.controls.holds_hypothesis)
        old_z = self._live.z
        plane = self._view.rebuild(base, self.state.session, self._token)
        if point is None:  # keep the current latent where it projects onto the new plane
            point = tuple(plane.coords(old_z)) if old_z is not None else (0.0, 0.0)
        self.update_markers()
        self.assessment_panel.fill(plane)
        self._on_map_point(*plane.clamp(*point), True)

    def render_background(self) -> None:
        """Redraw the map's background (the grid decoded so far)."""
        self._view.render()

    # -- markers and the table --------------------------------------------------------------------
    def _set_selected_hypothesis(self, index: int | None) -> None:
        self._markers.select(index)
        if self.controls.holds_hypothesis:
            self._rebuild_plane()

    def update_markers(self) -> None:
        """Place the hypotheses, annotations, components and the point on the map."""
        self._markers.place(self.plane)

    def _on_table_selection(self) -> None:
        self.map.markers.selected_annotation = self.assessment_panel.selected_assessment()
        self.map.request_repaint()

    def go_to_assessment(self, row: int) -> None:
        """Go to assessment ``row``'s posterior mean (as double-clicking its table row does)."""
        found, plane = self.assessment_panel.assessments, self.plane
        if plane is not None and 0 <= row < len(found):
            self.set_point(*plane.clamp(*plane.coords(found[row].mu)))

    def _refresh_annotation_list(self) -> None:
        names = candidate_names(self.viewer, self.state.hypothesis_layers)
        self.assessment_panel.set_candidates(names)

    # -- viewer events ---------------------------------------------------------------------------
    def _on_layers_changed(self, event=None) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was deleted
            self._output.forget_if_removed()
            layer = getattr(event, "value", None)
            if getattr(event, "type", "") == "inserted" and layer is not None:
                with contextlib.suppress(Exception):
                    layer.events.name.connect(self._on_layers_changed)  # a rename
            self._refresh_annotation_list()

    def _on_layer_colormap(self, event=None) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was deleted
            self.render_background()

    # -- live decoding ---------------------------------------------------------------------------
    def _on_user_point(self, u: float, v: float, final: bool) -> None:
        # The explorer layer appears once the user moves through the map; until then an
        # automatic re-centring (new image, new hypotheses) must not cover the hypotheses.
        self._output.wanted = True
        self._on_map_point(u, v, final)

    def _on_map_point(self, u: float, v: float, final: bool) -> None:
        if self.plane is not None and self.state.ready:
            self._live.move(self._token, self.state.session, self.plane, u, v, final)

    def _on_point_ready(self) -> None:
        self._live.on_ready(self._token, self.plane is not None and self.plane.is_line)

    # -- worker results ----------------------------------------------------------------------------
    def _on_job_result(self, message) -> None:
        self._worker.delivered()
        token, kind, item, error = message
        base_token = token[0] if isinstance(token, tuple) else token
        if base_token != self._token:
            return
        if kind == "grid" and not self._view.is_current_grid(token):
            return
        if error is not None:
            if kind == "assess":
                self.assessment_panel.set_busy(False)
            if kind == "point":
                self._live.final_pending = False
            _notify(f"Latent-space explorer: {error}")
            return
        if kind == "prepare":
            self._on_prepared(*item)
        elif kind == "grid":
            self._view.add_rows(item)
        elif kind == "assess":
            self.assessment_panel.set_busy(False)
            self.assessment_panel.show_results(*item, self.plane)
            self.update_markers()


def _relay_state(state, signal) -> list[tuple]:
    """Re-emit ``state``'s events as ``signal(name, arg)``: a Qt signal, so that they reach the
    GUI thread from whichever thread emitted them. Returns the connections made."""

    def relay(name):
        def forward(*args):
            with contextlib.suppress(RuntimeError):  # the widget was deleted
                signal.emit(name, args[0] if args else None)
        return forward

    relays = [(sig, relay(name)) for sig, name in (
        (state.model_changed, "model_changed"), (state.image_encoded, "image_encoded"),
        (state.hypotheses_changed, "hypotheses_changed"),
        (state.current_hypothesis_changed, "current_hypothesis_changed"))]
    for sig, fn in relays:
        sig.connect(fn)
    return relays


def _teardown(worker, relays, layer_events, on_layers) -> Callable:
    """What stops ``worker`` and lets go of the state and the viewer's layer events."""

    def teardown(*_):
        worker.stop()
        for sig, fn in relays:
            with contextlib.suppress(Exception):
                sig.disconnect(fn)
        for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
            with contextlib.suppress(Exception):
                emitter.disconnect(on_layers)

    return teardown


def _prepare(session) -> tuple:
    """What the map of a newly encoded region needs (a worker job): the prior ``mu``, ``sigma``
    ``(d,)``, the axes ranked by how much the segmentation changes along them, the focus
    box of the thumbnails (where the masks are, out to the map's edge) and a mixture prior's
    ``(weights, means)`` (None for the Gaussian)."""
    mu, sigma = session.prior()
    weights, means, _ = session.prior_components()
    components = (weights, means) if len(weights) > 1 else None
    maps = session.decode(core.axis_probes(mu, sigma))
    far = session.decode(core.axis_probes(mu, sigma, step=core.DEFAULT_EXTENT))
    focus = core.focus_box(np.concatenate([maps, far]))
    return mu, sigma, core.rank_axes(maps, session.config.num_classes), focus, components


def _open_review_widget(viewer) -> None:
    try:
        viewer.window.add_plugin_dock_widget("napari-probunet", "Probabilistic U-Net")
    except Exception as exc:  # noqa: BLE001 - not installed as a plugin, or no window
        _notify(f"Could not open the review widget: {exc}")


def _notify(text: str) -> None:
    try:
        from napari.utils.notifications import show_info

        show_info(text)
    except Exception:  # noqa: BLE001 - no napari notification manager
        print(text)
