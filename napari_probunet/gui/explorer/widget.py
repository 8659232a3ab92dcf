"""Latent-space explorer: a map of the prior, live decoding, and assessment of annotations.

The dock widget reads the viewer's :class:`~napari_probunet.review.state.ReviewState` (model,
encoded region, hypotheses) and draws a plane through the prior (:mod:`explorer_core`):
decoded masks (or their area) across the plane, the prior's 1- and 2-sigma contours, a marker
per hypothesis, per assessed annotation and for the current point. Clicking or dragging decodes
the latent under the mouse into the ``<image> explorer`` Labels layer.

Live dragging is built for speed (SPEC.md, "Measured here"):

- a mouse move only stores the newest latent; one worker thread decodes it (torch at one
  thread, with :attr:`ReviewState.lock`), always the newest pending one, and never starts a new
  decode while the GUI has not taken the last result (no queue of stale frames);
- the layer is updated in place (only the changed pixels' colours, :func:`_write_labels`), its
  thumbnail once the drag ends;
- the map repaints at most :data:`~napari_probunet.gui.explorer.latent_map.REPAINT_HZ` times a second, from cached pictures.

The worker is in :mod:`napari_probunet.gui.explorer.worker`, the map widget in
:mod:`napari_probunet.gui.explorer.latent_map`; this module is the dock widget that joins them to napari.

The background grid is decoded a row at a time in the same worker, between live decodes, and
appears as it arrives. Nothing here blocks the GUI thread on the model except "Use as best
fit", which decodes one latent (milliseconds) to hand over exactly what is shown.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import (
    QColor,
)
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.gui.dock import scrolling_content
from napari_probunet.gui.explorer.latent_map import (
    _SYNC_FALLBACK_S,
    BACKGROUNDS,
    LatentMap,
    MapMarkers,
    _qimage,
)
from napari_probunet.gui.explorer.worker import _Bridge, _once, _PointResult, _Worker
from napari_probunet.review import plane as core
from napari_probunet.review.state import Choice, get_state

#: metadata key marking the layer this widget writes to
LAYER_KEY = "napari_probunet"
#: opacity of masks drawn over the image in the thumbnails (napari's Labels default)
MASK_ALPHA = 0.7
#: the status line (current point, z) is rewritten at most this often while dragging
_STATUS_INTERVAL_S = 0.25

HOLD_PRIOR, HOLD_HYPOTHESIS = "prior mean", "selected hypothesis"


# ------------------------------------------------------------------------------ the dock widget


@dataclass
class _Geometry:
    """Where the encoded region sits in the viewer (cached: the image layer may be removed)."""

    scale: np.ndarray
    translate: np.ndarray
    slice_index: tuple[int, ...]
    roi: tuple[int, int, int, int]
    image_scale: np.ndarray
    image_translate: np.ndarray
    extra: dict = field(default_factory=dict)  # the image's rotate / shear / affine, if any


def _write_labels(layer, view: np.ndarray, new: np.ndarray) -> bool:
    """Show ``new`` in ``layer`` whose 2D data is ``view``; return False if nothing changed.

    Only the bounding box of the changed pixels is recoloured and sent to the canvas (napari's
    partial labels update, what its paint brush uses) without recording undo history, which
    would keep up to 100 copies of every change. This uses napari internals (napari 0.5-0.9)
    and falls back to a full refresh when they are missing or the view is not a plain 2D one.
    """
    changed = view != new
    rows = np.flatnonzero(changed.any(axis=1))
    if rows.size == 0:
        return False
    cols = np.flatnonzero(changed.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    view[r0:r1, c0:c1] = new[r0:r1, c0:c1]
    lead = layer.data.ndim - 2
    try:
        if not layer.visible or layer.contour != 0 or layer._slice_input.ndisplay != 2:
            raise AttributeError  # only the plain 2D display has a partial update
        displayed = layer._slice.image.view
        if (displayed.shape != view.shape
                or list(layer._slice_input.displayed) != [lead, lead + 1]
                or any(int(i) != 0 for i in layer._get_pt_not_disp().values())):
            raise AttributeError  # transposed, or another slice of a stack is shown
        displayed[r0:r1, c0:c1] = layer.colormap._data_to_texture(new[r0:r1, c0:c1])
        layer._updated_slice = tuple([slice(0, 1)] * lead + [slice(r0, r1), slice(c0, c1)])
        # the canvas listens to labels_update directly; through the layer's event group the
        # layer list would repaint its rows on every frame for nothing (it shows no pixels)
        with layer.events.labels_update.blocker(layer.events):
            layer._partial_labels_refresh()
    except (AttributeError, TypeError, ValueError, IndexError):
        layer.refresh(thumbnail=False, extent=False, highlight=False)
    return True


def _placed_at(layer, g: _Geometry) -> bool:
    """Whether ``layer`` already sits where the region of ``g`` is."""
    n = layer.ndim
    if len(g.scale) != n:
        return False
    affine = g.extra.get("affine")
    return (np.allclose(layer.scale, g.scale) and np.allclose(layer.translate, g.translate)
            and np.allclose(layer.rotate, g.extra.get("rotate", np.eye(n)))
            and np.allclose(layer.shear, g.extra.get("shear", np.zeros(n * (n - 1) // 2)))
            and np.allclose(layer.affine.affine_matrix,
                            np.eye(n + 1) if affine is None else affine.affine_matrix))


class ExplorerWidget(QWidget):
    """Dock widget: the latent-space explorer and the assessment of annotations.

    Public for scripts and tests: :meth:`set_point`, :attr:`point`, :attr:`current_z`,
    :attr:`plane`, :meth:`set_axes`, :meth:`set_hold`, :meth:`use_as_best_fit`,
    :meth:`assess`, :attr:`assessments`, :attr:`explorer_layer`, :attr:`idle`, :attr:`map`.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self._token = 0  # bumped when the model or the encoded region changes
        self._grid_token = 0  # bumped when the plane changes
        self._plane: core.Plane | None = None
        self._ranking: list[core.AxisScore] = []
        self._geometry: _Geometry | None = None
        self._underlay: np.ndarray | None = None
        self._grid_n = core.DEFAULT_GRID
        self._grid_labels: np.ndarray | None = None  # (cells, th, tw) thumbnails
        self._grid_area: np.ndarray | None = None  # (cells,) foreground share
        self._grid_done = 0
        self._grid_started = 0.0
        self._cell = 64
        self._mosaic: np.ndarray | None = None
        self._underlay_thumb: np.ndarray | None = None
        self._point: tuple[float, float] = (0.0, 0.0)
        self._z: np.ndarray | None = None
        self._shown: _PointResult | None = None  # last result written to the layer
        self._final_pending = False
        self._status_time = 0.0
        self._layer = None
        self._layer_data = None
        self._selected_hypothesis: int | None = None
        self._reference = None
        self._assessments: list = []
        self._assess_errors: dict[str, str] = {}
        self._checked: set[str] = set()
        self._mu = self._sigma = None
        self._focus: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.grid_seconds: float | None = None  # time the last full grid took
        self.frames = 0  # layer updates shown (benchmark)
        self.decode_seconds: list[float] = []

        self._bridge = _Bridge(self)
        self._worker = _Worker(self.state.lock, self._bridge)
        self._build_ui()
        self._bridge.point_ready.connect(self._on_point_ready)
        self._bridge.job_result.connect(self._on_job_result)
        self._bridge.state_event.connect(self._on_state_event)
        self._connect_state()
        self._connect_viewer()
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

        axes = QGridLayout()
        self.x_combo, self.y_combo = QComboBox(), QComboBox()
        self.auto_button = QPushButton("Auto")
        self.auto_button.setToolTip("the two axes along which this image's segmentation changes most")
        self.hold_combo = QComboBox()
        self.hold_combo.addItems([HOLD_PRIOR, HOLD_HYPOTHESIS])
        self.hold_combo.setToolTip("where the latent coordinates that are not on the map are held")
        axes.addWidget(QLabel("Horizontal"), 0, 0)
        axes.addWidget(self.x_combo, 0, 1)
        axes.addWidget(QLabel("Vertical"), 0, 2)
        axes.addWidget(self.y_combo, 0, 3)
        axes.addWidget(self.auto_button, 0, 4)
        axes.addWidget(QLabel("Others at"), 1, 0)
        axes.addWidget(self.hold_combo, 1, 1, 1, 2)
        self.background_combo = QComboBox()
        self.background_combo.addItems(list(BACKGROUNDS))
        self.grid_spin = QSpinBox()
        self.grid_spin.setRange(3, 21)
        self.grid_spin.setSingleStep(2)
        self.grid_spin.setValue(self._grid_n)
        self.grid_spin.setToolTip("decoded masks per side of the background grid")
        axes.addWidget(QLabel("Show"), 2, 0)
        axes.addWidget(self.background_combo, 2, 1, 1, 2)
        axes.addWidget(QLabel("Grid"), 2, 3)
        axes.addWidget(self.grid_spin, 2, 4)
        layout.addLayout(axes)

        # the map above, the assessment below; the user can move the split
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        layout.addWidget(splitter, stretch=1)
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        self.map = LatentMap(self)
        top_layout.addWidget(self.map, stretch=1)

        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        top_layout.addWidget(self.status)
        buttons = QHBoxLayout()
        self.best_fit_button = QPushButton("Use as best fit")
        self.best_fit_button.setToolTip(
            "make the segmentation at the current point the editable correction (z is recorded)")
        self.centre_button = QPushButton("Prior mean")
        self.centre_button.setToolTip("go back to the centre of the map (Home key)")
        self.open_review_button = QPushButton("Open review widget")
        self.open_review_button.setToolTip("load a model and encode an image region there")
        buttons.addWidget(self.best_fit_button)
        buttons.addWidget(self.centre_button)
        buttons.addWidget(self.open_review_button)
        top_layout.addLayout(buttons)
        splitter.addWidget(top)

        box = QGroupBox("Assess annotations")
        box_layout = QVBoxLayout(box)
        self.annotation_list = QListWidget()
        self.annotation_list.setToolTip(
            "tick the Labels layers that are annotations of this image (graders, a correction)")
        self.annotation_list.setMaximumHeight(80)
        box_layout.addWidget(self.annotation_list)
        self.assess_button = QPushButton("Assess ticked annotations")
        box_layout.addWidget(self.assess_button)
        self.table = QTableWidget(0, 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(80)
        box_layout.addWidget(self.table)
        self.rule_label = QLabel("")
        self.rule_label.setWordWrap(True)
        box_layout.addWidget(self.rule_label)
        box.setMinimumHeight(250)
        splitter.addWidget(box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        self.splitter = splitter

        self.x_combo.activated.connect(lambda _i: self._on_axes_chosen("x"))
        self.y_combo.activated.connect(lambda _i: self._on_axes_chosen("y"))
        self.auto_button.clicked.connect(self._use_ranked_axes)
        self.hold_combo.activated.connect(lambda _i: self._rebuild_plane())
        self.background_combo.activated.connect(lambda _i: self._render_background())
        self.grid_spin.valueChanged.connect(self._on_grid_size)
        self.map.point_moved.connect(self._on_user_point)
        self.map.hypothesis_clicked.connect(self.select_hypothesis)
        self.map.annotation_clicked.connect(self._on_annotation_clicked)
        self.best_fit_button.clicked.connect(self.use_as_best_fit)
        self.centre_button.clicked.connect(lambda: self.set_point(0.0, 0.0))
        self.open_review_button.clicked.connect(self._open_review_widget)
        self.assess_button.clicked.connect(lambda: self.assess())
        self.annotation_list.itemChanged.connect(self._on_annotation_item_changed)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.table.cellDoubleClicked.connect(self._on_table_double_click)

    # -- wiring ------------------------------------------------------------------------------------
    def _connect_state(self) -> None:
        bridge = self._bridge

        def relay(name):
            def forward(*args):
                with contextlib.suppress(RuntimeError):  # the widget was deleted
                    bridge.state_event.emit(name, args[0] if args else None)
            return forward

        s = self.state
        self._relays = [(sig, relay(name)) for sig, name in (
            (s.model_changed, "model_changed"), (s.image_encoded, "image_encoded"),
            (s.hypotheses_changed, "hypotheses_changed"),
            (s.current_hypothesis_changed, "current_hypothesis_changed"))]
        for sig, fn in self._relays:
            sig.connect(fn)
        worker, relays = self._worker, self._relays
        layer_events, on_layers = self.viewer.layers.events, self._on_layers_changed

        def teardown(*_):
            worker.stop()
            for sig, fn in relays:
                with contextlib.suppress(Exception):
                    sig.disconnect(fn)
            for emitter in (layer_events.inserted, layer_events.removed, layer_events.moved):
                with contextlib.suppress(Exception):
                    emitter.disconnect(on_layers)

        self._teardown = teardown
        self.destroyed.connect(teardown)

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._on_layers_changed)
        ev.removed.connect(self._on_layers_changed)
        ev.moved.connect(self._on_layers_changed)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the worker and let go of the viewer (the dock is being closed)."""
        self._teardown()

    # -- public API ------------------------------------------------------------------------------
    @property
    def plane(self) -> core.Plane | None:
        """The plane shown, or None before an image is encoded."""
        return self._plane

    @property
    def point(self) -> tuple[float, float]:
        """The current point in plane coordinates (prior sigmas)."""
        return self._point

    @property
    def current_z(self) -> np.ndarray | None:
        """The latent of the current point ``(d,)``."""
        return None if self._z is None else self._z.copy()

    @property
    def explorer_layer(self):
        """The ``<image> explorer`` Labels layer, if it exists in the viewer."""
        layer = self._layer
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def assessments(self) -> list:
        """:class:`~napari_probunet.review.assess.Assessment` per assessed annotation (table order)."""
        return list(self._assessments)

    @property
    def ranking(self) -> list[core.AxisScore]:
        """The latent axes ordered by how much the segmentation changes along them."""
        return list(self._ranking)

    @property
    def idle(self) -> bool:
        """No decode, grid or assessment is pending or running (tests wait for this)."""
        return self._worker.idle and not self._final_pending

    def set_point(self, u: float, v: float = 0.0) -> None:
        """Go to plane coordinates ``(u, v)`` and decode there (as a click does)."""
        self._on_user_point(float(u), float(v), True)

    def _on_user_point(self, u: float, v: float, final: bool) -> None:
        # The explorer layer appears once the user moves through the map; until then an
        # automatic re-centring (new image, new hypotheses) must not cover the hypotheses.
        self._layer_wanted = True
        self._on_map_point(u, v, final)

    def set_axes(self, axis_x: int, axis_y: int | None = None) -> None:
        """Show the plane of latent axes ``axis_x``, ``axis_y`` (0-based)."""
        if self._plane is None:
            return
        d = self._plane.dim
        if d > 1 and (axis_y is None or axis_y == axis_x):
            raise ValueError("a plane needs two different axes")
        self.x_combo.setCurrentIndex(int(axis_x))
        if d > 1:
            self.y_combo.setCurrentIndex(int(axis_y))
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
        if not self.state.ready or self._z is None:
            self._notify("Encode an image region first (Probabilistic U-Net widget).")
            return None
        z = self._z.copy()
        shown = self._shown
        if shown is not None and shown.token == self._token and np.array_equal(shown.z, z):
            labels = shown.labels.copy()
        else:
            with self.state.lock:
                labels = self.state.session.decode(z)
        choice = Choice(source="explorer", index=None, z=z, labels=labels)
        if len(self.state.best_fit_requested) == 0:
            self._notify("Nothing takes the best fit yet: open Plugins \u203a Probabilistic U-Net "
                         "to turn it into an editable correction.")
        self.state.best_fit_requested.emit(choice)
        return choice

    def assess(self, layer_names: list[str] | None = None) -> None:
        """Assess the ticked Labels layers (or ``layer_names``) under the model, in the worker."""
        if not self.state.ready or self._geometry is None:
            self._notify("Encode an image region first (Probabilistic U-Net widget).")
            return
        names = list(layer_names) if layer_names is not None else self._checked_names()
        if layer_names is not None:
            self._checked.update(names)
            self._refresh_annotation_list()
        masks, errors = [], {}
        g = self._geometry
        for name in names:
            if name not in self.viewer.layers:
                errors[name] = "no such layer"
                continue
            layer = self.viewer.layers[name]
            try:
                mask, coverage = core.crop_to_region(
                    layer.data, layer.scale, layer.translate, g.image_scale, g.image_translate,
                    g.roi, g.slice_index)
            except (ValueError, IndexError, TypeError) as exc:
                errors[name] = str(exc)
                continue
            if coverage < 0.999:
                errors[name] = (f"covers only {coverage:.0%} of the region; place it over the "
                                "image region that was encoded")
                continue
            masks.append((name, mask))
        if not masks and not errors:
            self._notify("Tick the Labels layers to assess (graders' masks, a correction).")
            return
        session, token = self.state.session, self._token
        cached = self._reference if self._reference is not None else None

        def work():
            from napari_probunet.errors import UserError
            from napari_probunet.review import assess as assess_mod

            ref = cached or assess_mod.reference(session)
            found, failed = [], {}
            for name, mask in masks:
                try:
                    found.append(assess_mod.assess_mask(session, mask, name, ref))
                except UserError as exc:
                    failed[name] = str(exc)
            return ref, found, failed

        self._assess_errors = errors
        self.assess_button.setEnabled(False)
        self.assess_button.setText("Assessing\u2026")
        self._worker.submit(token, "assess", _once(work))

    # -- state events ----------------------------------------------------------------------------
    def _on_state_event(self, name: str, arg) -> None:
        if name == "model_changed":
            self._reset("No image region encoded yet: pick an image and sample hypotheses in "
                        "Plugins \u203a Probabilistic U-Net; the map of what the model decodes "
                        "appears here." if self.state.session is not None else
                        "No model loaded yet. Open Plugins \u203a Probabilistic U-Net to load "
                        "one (the bundled model is ready), then encode an image region.")
            if self._layer is not None and self._layer in self.viewer.layers:
                self._layer.visible = False  # its content came from the old model
        elif name == "image_encoded":
            self._on_image_encoded()
        elif name == "hypotheses_changed":
            self._selected_hypothesis = None
            self._update_markers()
            if self.hold_combo.currentText() == HOLD_HYPOTHESIS:
                self._rebuild_plane()
        elif name == "current_hypothesis_changed" and arg is not None:
            if arg != self._selected_hypothesis:
                self._set_selected_hypothesis(int(arg))

    def _reset(self, hint: str) -> None:
        self._token += 1
        self._grid_token += 1
        self._worker.cancel()
        self._plane = None
        self._mu = self._sigma = None
        self._ranking = []
        self._grid_labels = None
        self._reference = None
        self._assessments = []
        self._selected_hypothesis = None
        self._shown = None
        self._z = None
        self._final_pending = False
        self.map.hint = hint
        self.map.background = None
        self.map.markers = MapMarkers()
        self.map.update()
        self._fill_table()
        self.rule_label.setText("")
        self.status.setText("")
        for w in (self.x_combo, self.y_combo, self.hold_combo, self.background_combo,
                  self.grid_spin, self.auto_button, self.best_fit_button, self.centre_button,
                  self.assess_button):
            w.setEnabled(False)
        self.open_review_button.setVisible(True)

    def _on_image_encoded(self) -> None:
        self._reset("Preparing the map\u2026")
        if not self.state.ready:
            self._on_state_event("model_changed", None)
            return
        self._geometry = self._read_geometry()
        enc = self.state.encoded
        self._underlay = None if enc.image is None else _grey(enc.image)
        session, token = self.state.session, self._token

        def prepare():
            mu, sigma = session.prior()
            maps = session.decode(core.axis_probes(mu, sigma))
            far = session.decode(core.axis_probes(mu, sigma, step=core.DEFAULT_EXTENT))
            focus = core.focus_box(np.concatenate([maps, far]))
            return mu, sigma, core.rank_axes(maps, session.config.num_classes), focus

        self._worker.submit(token, "prepare", _once(prepare))

    def _read_geometry(self) -> _Geometry:
        enc = self.state.encoded
        slice_index = tuple(int(i) for i in enc.slice_index)
        roi = tuple(int(x) for x in enc.roi)
        layer = self.viewer.layers[enc.layer_name] if enc.layer_name in self.viewer.layers else None
        if layer is None or layer.ndim != len(slice_index) + 2:
            # gone, or a layer we cannot line up: the region at the origin of its last 2 axes
            scale = np.ones(2) if layer is None else np.asarray(layer.scale, float)[-2:]
            translate = np.zeros(2) if layer is None else np.asarray(layer.translate, float)[-2:]
            s, t = core.region_placement(scale, translate, roi, ())
            return _Geometry(s, t, (), roi, scale, translate)
        scale, translate = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
        s, t = core.region_placement(scale, translate, roi, slice_index)
        extra: dict = {}
        rotate, shear = np.asarray(layer.rotate), np.asarray(layer.shear)
        if not np.allclose(rotate, np.eye(layer.ndim)) or np.any(shear != 0):
            # the offset moves along the image's rotated and sheared axes, as napari draws it
            from napari.utils.transforms import Affine

            linear = Affine(scale=scale, rotate=rotate, shear=shear).linear_matrix
            t = translate + linear @ np.array([*slice_index, roi[0], roi[1]], float)
            extra.update(rotate=rotate, shear=shear)
        if not np.allclose(layer.affine.affine_matrix, np.eye(layer.ndim + 1)):
            extra["affine"] = layer.affine
        return _Geometry(s, t, slice_index, roi, scale, translate, extra)

    def _on_prepared(self, mu, sigma, ranking, focus) -> None:
        cfg = self.state.session.config
        d = cfg.latent_dim
        self._ranking = ranking
        order = [s.axis for s in ranking]
        scores = {s.axis: s for s in ranking}
        for combo in (self.x_combo, self.y_combo):
            combo.blockSignals(True)
            combo.clear()
            for i in range(d):
                combo.addItem(core.axis_name(i))
                s = scores.get(i)
                if s is not None:
                    combo.setItemData(
                        i, f"change along {core.axis_name(i)} at \u00b1{core.PROBE_STEP:g}\u03c3: "
                        f"{s.change:.2f} (1 - IoU), {s.pixels:.1%} of pixels",
                        Qt.ItemDataRole.ToolTipRole)
            combo.blockSignals(False)
        self.x_combo.setCurrentIndex(order[0])
        if d > 1:
            self.y_combo.setCurrentIndex(order[1])
        self.y_combo.setEnabled(d > 1)
        self.x_combo.setEnabled(d > 1)
        self.auto_button.setEnabled(d > 1)
        self.hold_combo.setEnabled(d > 2)
        for w in (self.background_combo, self.grid_spin, self.best_fit_button, self.centre_button,
                  self.assess_button):
            w.setEnabled(True)
        self.open_review_button.setVisible(False)
        names = list(cfg.class_names)
        colors = self._class_colors(cfg.num_classes)
        self.map.class_legend = [(names[c], QColor(*[int(x) for x in colors[c][:3]]))
                                 for c in range(1, cfg.num_classes)]
        self._mu, self._sigma = mu, sigma
        self._focus = focus
        self._rebuild_plane(point=(0.0, 0.0))
        self._update_markers()

    # -- the plane ---------------------------------------------------------------------------------
    def _use_ranked_axes(self) -> None:
        if self._ranking and self._plane is not None and self._plane.dim > 1:
            self.set_axes(self._ranking[0].axis, self._ranking[1].axis)

    def _on_axes_chosen(self, which: str) -> None:
        if self._plane is None:
            return
        x, y = self.x_combo.currentIndex(), self.y_combo.currentIndex()
        if self._plane.dim > 1 and x == y:  # keep two different axes: swap with the old one
            old = self._plane.axis_y if which == "x" else self._plane.axis_x
            (self.y_combo if which == "x" else self.x_combo).setCurrentIndex(old)
        self._rebuild_plane()

    def _on_grid_size(self, n: int) -> None:
        self._grid_n = int(n)
        if self._plane is not None:
            self._start_grid()

    def _base(self) -> np.ndarray | None:
        hyp = self.state.hypotheses
        k = self._selected_hypothesis
        if (self.hold_combo.currentText() == HOLD_HYPOTHESIS and hyp is not None and k is not None
                and 0 <= k < len(hyp.z)):
            return np.asarray(hyp.z[k], np.float32)
        return None

    def _rebuild_plane(self, point: tuple[float, float] | None = None) -> None:
        if self._mu is None or not self.state.ready:
            return
        d = len(self._mu)
        x = self.x_combo.currentIndex() if self.x_combo.count() else 0
        y = (self.y_combo.currentIndex() if self.y_combo.count() else 1) if d > 1 else None
        if y == x:
            y = next(i for i in range(d) if i != x)
        old_plane, old_z = self._plane, self._z
        plane = core.Plane.through_prior(self._mu, self._sigma, x, y, self._base())
        if point is None:  # keep the current latent where it projects onto the new plane
            point = tuple(plane.coords(old_z)) if old_z is not None else (0.0, 0.0)
        self._plane = plane
        self.map.hint = ""
        self.map.is_line = plane.is_line
        self.map.extent = plane.extent
        self.map.axis_labels = tuple(f"{core.axis_name(a)} / \u03c3" for a in (x, y if y is not None
                                                                                else x))
        changed = old_plane is None or (old_plane.axes != plane.axes
                                        or not np.array_equal(old_plane.base, plane.base))
        if changed:
            self._start_grid()
        self._update_markers()
        self._fill_table()
        self._on_map_point(*plane.clamp(*point), True)

    def _start_grid(self) -> None:
        plane, n = self._plane, self._grid_n
        self._grid_token += 1
        token = (self._token, self._grid_token)
        latents = plane.grid_latents(n)
        # thumbnails show the focus box (where the masks are); keep only them and the areas
        r0, r1, c0, c1 = self._focus
        self._cell = int(min(64, max(r1 - r0, c1 - c0)))
        th, tw = core.thumbnail_size((r1 - r0, c1 - c0), self._cell)
        self._grid_labels = np.zeros((len(latents), th, tw), np.uint8)
        self._grid_area = np.full(len(latents), np.nan)
        self._underlay_thumb = (None if self._underlay is None else
                                core.thumbnail(self._underlay[r0:r1, c0:c1], self._cell))
        self._grid_done = 0
        self._mosaic = None  # drawn incrementally as rows arrive
        self.map._line_cells = n
        self._render_background()
        chunk = n  # a row per step: a live decode never waits long
        session = self.state.session

        def job():
            for s in range(0, len(latents), chunk):
                yield s, session.decode(latents[s:s + chunk])

        self.map.progress = f"decoding the map 0/{len(latents)}\u2026"
        self._grid_started = time.perf_counter()
        self._worker.submit(token, "grid", job())

    def _on_grid_chunk(self, start: int, labels: np.ndarray) -> None:
        r0, r1, c0, c1 = self._focus
        self._grid_labels[start:start + len(labels)] = core.thumbnail(
            labels[:, r0:r1, c0:c1], self._cell)
        self._grid_area[start:start + len(labels)] = core.foreground_fraction(labels)
        self._grid_done = max(self._grid_done, start + len(labels))
        total = len(self._grid_labels)
        self.map.progress = (f"decoding the map {self._grid_done}/{total}\u2026"
                             if self._grid_done < total else "")
        if self._grid_done >= total:
            self.grid_seconds = time.perf_counter() - self._grid_started
        self._render_background(new=(start, start + len(labels)))

    def _class_colors(self, num_classes: int) -> np.ndarray:
        """RGBA uint8 per class, as napari colours them (the explorer layer's colormap)."""
        layer = self.explorer_layer
        try:
            if layer is not None:
                cols = layer.colormap.map(np.arange(num_classes))
            else:
                from napari.utils.colormaps import label_colormap

                cols = label_colormap(49, 0.5, background_value=0).map(np.arange(num_classes))
        except Exception:  # noqa: BLE001 - fall back to a fixed palette
            cols = np.array([[0, 0, 0, 0], [1, .5, .1, 1], [.2, .7, 1, 1], [.4, .9, .3, 1],
                             [.9, .3, .9, 1], [1, .9, .2, 1]])[np.arange(num_classes) % 6]
        return np.clip(np.rint(np.asarray(cols, float) * 255), 0, 255).astype(np.uint8)

    def _render_background(self, new: tuple[int, int] | None = None) -> None:
        """Redraw the map's background; ``new``: only these grid cells arrived since."""
        plane, labels = self._plane, self._grid_labels
        if plane is None or labels is None:
            return
        n = self._grid_n
        rows, cols = (1, n) if plane.is_line else (n, n)
        kind = self.background_combo.currentText()
        self.map.background_kind = kind
        if kind == BACKGROUNDS[1]:
            frac = self._grid_area[: self._grid_done]
            rgba = core.value_image(frac, rows, cols, 0.0, max(1e-6, float(frac.max(initial=0))))
        else:
            cfg = self.state.session.config
            colors = self._class_colors(cfg.num_classes)
            if new is None or self._mosaic is None:
                self._mosaic, new = core.mosaic_canvas(rows, cols, self._cell), (0, self._grid_done)
            core.paint_cells(self._mosaic, labels[new[0]:new[1]], new[0], cols, colors,
                             self._cell, underlay=self._underlay_thumb, alpha=MASK_ALPHA)
            rgba = self._mosaic
        self.map.background = _qimage(rgba)
        self.map.request_repaint()

    # -- markers and the table --------------------------------------------------------------------
    def _set_selected_hypothesis(self, index: int | None) -> None:
        self._selected_hypothesis = index
        self.map.markers.selected_hypothesis = index
        self.map.request_repaint()
        if self.hold_combo.currentText() == HOLD_HYPOTHESIS:
            self._rebuild_plane()

    def _update_markers(self) -> None:
        plane = self._plane
        m = self.map.markers
        hyp = self.state.hypotheses
        if plane is None or hyp is None or len(hyp.z) == 0 or hyp.z.shape[1] != plane.dim:
            m.hypotheses, m.hypothesis_off_plane = np.zeros((0, 2)), np.zeros(0)
        else:
            m.hypotheses = plane.coords(hyp.z)
            m.hypothesis_off_plane = plane.off_plane(hyp.z)
        m.selected_hypothesis = self._selected_hypothesis
        m.annotations = []
        if plane is not None:
            for a in self._assessments:
                u, v = plane.coords(a.mu)
                m.annotations.append((a.name, float(u), float(v), a.outlier))
        m.point = self._point if plane is not None else None
        m.components = self._component_markers(plane)
        self.map.request_repaint()

    def _component_markers(self, plane) -> list[tuple[float, float, float]]:
        """A mixture prior's components on the plane: (u, v, weight); none for a Gaussian."""
        session = self.state.session
        if plane is None or session is None or not session.has_image:
            return []
        weights, means, _ = session.prior_components()
        if len(weights) < 2 or means.shape[1] != plane.dim:
            return []
        return [(float(u), float(v), float(w))
                for (u, v), w in zip(plane.coords(means), weights)]

    def _fill_table(self) -> None:
        plane = self._plane
        ax = plane.axes if plane is not None else (0, 1)
        heads = ["Annotation", "KL (nats)", "IoU"]
        heads += [f"{core.axis_name(a)}/\u03c3" for a in ax]
        heads += ["Flag"]
        self.table.blockSignals(True)
        self.table.clear()
        self.table.setColumnCount(len(heads))
        self.table.setHorizontalHeaderLabels(heads)
        rows = [(a, None) for a in self._assessments]
        rows += [(name, err) for name, err in self._assess_errors.items()]
        self.table.setRowCount(len(rows))
        red = QColor(235, 90, 90)
        for r, (a, err) in enumerate(rows):
            if err is not None:
                cells = [a, "", "", *[""] * len(ax), "error"]
                tip = err
            else:
                coords = plane.coords(a.mu) if plane is not None else np.zeros(2)
                flag = {("kl",): "look again: unlikely", ("fit",): "look again: not redrawn",
                        ("kl", "fit"): "look again: unlikely, not redrawn"}.get(a.reasons, "")
                cells = [a.name, f"{a.kl:.2f}", f"{a.iou:.2f}",
                         *[f"{c:+.2f}" for c in coords[: len(ax)]], flag or "\u2014"]
                tip = ("posterior mean / \u03c3: (" + ", ".join(f"{x:+.2f}" for x in a.u) + ")\n"
                       "posterior \u03c3 / prior \u03c3 shown in the CSV of probunet assess")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if 0 < c < len(cells) - 1:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight
                                              | Qt.AlignmentFlag.AlignVCenter))
                if err is not None or (err is None and a.outlier):
                    item.setForeground(red)
                self.table.setItem(r, c, item)
        self.table.blockSignals(False)

    def _on_assessed(self, ref, found, failed) -> None:
        self._reference = ref
        self._assessments = found
        self._assess_errors.update(failed)
        self._fill_table()
        self._update_markers()
        from napari_probunet.review.assess import FIT_IOU, KL_MARGIN, MIN_FIT_IOU

        fit = (f" or IoU < {ref.iou_threshold:.2f}" if ref.fit_assessed
               else "; fit not judged here (the model redraws its own samples poorly)")
        self.rule_label.setText(
            f"'Look again' when KL > {ref.kl_threshold:.2f} nats{fit} (from {len(ref.kl)} of "
            "the model's own samples of this image). A hint, not a verdict.")
        self.rule_label.setToolTip(
            f"An annotation is marked when the model finds it less likely (KL to the prior) "
            f"than {ref.quantile:.0%} of its own samples of this image, by more than "
            f"{KL_MARGIN:.0f} nat, or reconstructs it worse (IoU at the posterior mean) than "
            f"{ref.quantile:.0%} of them and below {FIT_IOU:.1f}. Where the model cannot "
            f"redraw its own samples (their IoU below {MIN_FIT_IOU:.2f}), fit is not judged. "
            "A mark says the model finds the annotation unusual, not that it is wrong: the "
            "model can be the one that is wrong. See docs/explorer.md.")

    def _on_annotation_clicked(self, index: int) -> None:
        if 0 <= index < self.table.rowCount():
            self.table.selectRow(index)

    def _on_table_selection(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        index = next(iter(rows), None)
        self.map.markers.selected_annotation = index if index is not None and index < len(
            self._assessments) else None
        self.map.request_repaint()

    def _on_table_double_click(self, row: int, _col: int) -> None:
        if self._plane is not None and 0 <= row < len(self._assessments):
            self.set_point(*self._plane.clamp(*self._plane.coords(self._assessments[row].mu)))

    # -- annotation list ---------------------------------------------------------------------------
    def _candidate_layers(self) -> list:
        from napari.layers import Labels

        skip = {id(x) for x in self.state.hypothesis_layers}
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and id(layer) not in skip
                and layer.metadata.get(LAYER_KEY) != "explorer"]

    def _refresh_annotation_list(self) -> None:
        names = [layer.name for layer in self._candidate_layers()]
        self._checked &= set(names)
        self.annotation_list.blockSignals(True)
        self.annotation_list.clear()
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in self._checked
                               else Qt.CheckState.Unchecked)
            self.annotation_list.addItem(item)
        self.annotation_list.blockSignals(False)

    def _on_annotation_item_changed(self, item: QListWidgetItem) -> None:
        if item.checkState() == Qt.CheckState.Checked:
            self._checked.add(item.text())
        else:
            self._checked.discard(item.text())

    def _checked_names(self) -> list[str]:
        return [self.annotation_list.item(i).text() for i in range(self.annotation_list.count())
                if self.annotation_list.item(i).checkState() == Qt.CheckState.Checked]

    def _on_layers_changed(self, event=None) -> None:
        try:
            self._layers_changed(event)
        except RuntimeError:  # the widget was deleted
            pass

    def _layers_changed(self, event) -> None:
        if self._layer is not None and self._layer not in self.viewer.layers:
            self._layer, self._layer_data = None, None
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and layer is not None:
            with contextlib.suppress(Exception):
                layer.events.name.connect(self._on_layer_renamed)
        self._refresh_annotation_list()

    def _on_layer_renamed(self, event=None) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was deleted
            self._refresh_annotation_list()

    def _on_layer_colormap(self, event=None) -> None:
        with contextlib.suppress(RuntimeError):  # the widget was deleted
            self._render_background()

    # -- live decoding ---------------------------------------------------------------------------
    def _on_map_point(self, u: float, v: float, final: bool) -> None:
        plane = self._plane
        if plane is None or not self.state.ready:
            return
        u, v = plane.clamp(u, v)
        self._point = (u, v)
        self._z = plane.latent(u, v)
        self.map.markers.point = (u, v)
        # normally repainted with the frame that shows this point; this is the fallback
        self.map.request_repaint(delay=_SYNC_FALLBACK_S)
        if final:
            self._final_pending = True
        self._worker.request_point(self._token, self.state.session, self._z, (u, v))

    def _on_point_ready(self) -> None:
        result = self._worker.take_point()
        if result is None or result.token != self._token:
            return
        self._shown = result
        self.decode_seconds.append(result.seconds)
        try:
            self._show_labels(result.labels)
        except Exception as exc:  # noqa: BLE001 - a layer removed or replaced under us
            self._layer, self._layer_data = None, None
            self._notify(f"Could not update the explorer layer: {exc}")
        final = self._final_pending and np.array_equal(result.z, self._z)
        self.map.repaint_with_frame(force=final)
        if final:
            self._final_pending = False
            layer = self.explorer_layer
            if layer is not None:
                layer.refresh(extent=False, highlight=False)  # the thumbnail, once
        now = time.perf_counter()
        if final or now - self._status_time > _STATUS_INTERVAL_S:  # a label relayout costs
            self._status_time = now
            u, v = result.uv
            z = ", ".join(f"{x:+.2f}" for x in result.z[:8]) + (
                ", \u2026" if len(result.z) > 8 else "")
            line = self._plane is not None and self._plane.is_line
            where = f"u = {u:+.2f}\u03c3" if line else (
                f"u = {u:+.2f}\u03c3, v = {v:+.2f}\u03c3")
            self.status.setText(f"{where}   z = ({z})   decode {result.seconds * 1000:.1f} ms")

    def _ensure_layer(self, shape: tuple[int, int]):
        g = self._geometry
        lead = len(g.slice_index)
        full = (1,) * lead + tuple(shape)
        layer = self._layer
        if (layer is not None and layer.data is self._layer_data and layer.visible
                and self._layer_data.shape == full):
            return layer  # the per-frame path: nothing that could trigger a refresh
        enc = self.state.encoded
        name = f"{enc.layer_name} explorer"
        layer = self.explorer_layer
        if layer is None and name in self.viewer.layers:
            candidate = self.viewer.layers[name]
            if candidate.metadata.get(LAYER_KEY) == "explorer":
                layer = candidate
        if layer is None:
            data = np.zeros(full, np.uint8)
            layer = self.viewer.add_labels(data, name=name, scale=g.scale, translate=g.translate,
                                           metadata={LAYER_KEY: "explorer"}, **g.extra)
            layer.events.colormap.connect(self._on_layer_colormap)
        elif layer.data.shape != full or not _placed_at(layer, g):
            if layer.ndim != len(full):  # napari cannot change a layer's dimensions
                self.viewer.layers.remove(layer)
                return self._ensure_layer(shape)
            layer.data = np.zeros(full, np.uint8)
            n = layer.ndim
            layer.scale, layer.translate = g.scale, g.translate
            layer.rotate = g.extra.get("rotate", np.eye(n))
            layer.shear = g.extra.get("shear", np.zeros(n * (n - 1) // 2))
            layer.affine = g.extra.get("affine", np.eye(n + 1))
        if not layer.visible:
            layer.visible = True  # (a napari refresh, so not on every frame)
        if layer is not self._layer or layer.data is not self._layer_data:
            self._layer, self._layer_data = layer, layer.data
        return layer

    def _show_labels(self, labels: np.ndarray) -> None:
        if self._geometry is None:
            return
        if self.explorer_layer is None and not getattr(self, "_layer_wanted", False):
            return
        layer = self._ensure_layer(labels.shape)
        lead = layer.data.ndim - 2
        view = layer.data[(0,) * lead] if lead else layer.data
        if _write_labels(layer, view, labels):
            self.frames += 1

    # -- worker results ----------------------------------------------------------------------------
    def _on_job_result(self, message) -> None:
        self._worker.delivered()
        token, kind, item, error = message
        base_token = token[0] if isinstance(token, tuple) else token
        if base_token != self._token:
            return
        if kind == "grid" and token[1] != self._grid_token:
            return
        if error is not None:
            if kind == "assess":
                self._restore_assess_button()
            if kind == "point":
                self._final_pending = False
            self._notify(f"Latent-space explorer: {error}")
            return
        if kind == "prepare":
            self._on_prepared(*item)
        elif kind == "grid":
            self._on_grid_chunk(*item)
        elif kind == "assess":
            self._restore_assess_button()
            self._on_assessed(*item)

    def _restore_assess_button(self) -> None:
        self.assess_button.setEnabled(True)
        self.assess_button.setText("Assess ticked annotations")

    # -- misc --------------------------------------------------------------------------------------
    def _open_review_widget(self) -> None:
        try:
            self.viewer.window.add_plugin_dock_widget("napari-probunet", "Probabilistic U-Net")
        except Exception as exc:  # noqa: BLE001 - not installed as a plugin, or no window
            self._notify(f"Could not open the review widget: {exc}")

    @staticmethod
    def _notify(text: str) -> None:
        try:
            from napari.utils.notifications import show_info

            show_info(text)
        except Exception:  # noqa: BLE001 - no napari notification manager
            print(text)


def _grey(image: np.ndarray) -> np.ndarray:
    """The region's pixels as 8-bit grey (1st..99th percentile), for thumbnail underlays."""
    a = np.asarray(image, np.float32)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=-1) if a.shape[-1] >= 3 else a[..., 0]
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
