"""The Nodule widget's *Refine by clicks*: inside/outside clicks on any slice of the scan steer
the nodule's 3D hypotheses.

The clicks are a ``nodule clicks`` Points layer over the scan (:mod:`napari_probunet.gui.clicks`:
a click inside the nodule, a Shift+click outside it, on whichever slice is shown). Each change
runs :func:`napari_probunet.review.refine.refine_nodule_job` for the nodule found last (its
click, number and seed) on the widget's worker: the shared draws that agree with every click
are chosen (one draw per hypothesis serves all slices, so a click on one slice steers the whole
nodule), and the result replaces the layers and the gallery; its note says how many agree.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from napari_probunet.errors import UserError
from napari_probunet.gui.clicks import add_point, clear, clicks_layer, is_change, points
from napari_probunet.gui.placement import placement
from napari_probunet.review.nodule import check_request
from napari_probunet.review.refine import as_clicks_3d, refine_nodule_job

#: the clicks layer's name
CLICKS_LAYER = "nodule clicks"


class NodulePrompts:
    """Refine-by-clicks controls of a :class:`~napari_probunet.gui.nodule.widget.NoduleWidget`
    (``widget``: its ``viewer``, ``request`` of the nodule found last, ``scan_layer()``,
    ``session_for_job()`` and ``submit(job, text)``)."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.layer = None
        self.box = QWidget()
        lay = QVBoxLayout(self.box)
        lay.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.refine_button = QPushButton("Refine by clicks", checkable=True)
        self.refine_button.setToolTip("Click inside the nodule where the hypotheses miss it, "
                                      "Shift+click outside where they go too far, on any slice")
        self.clear_button = QPushButton("Clear clicks")
        row.addWidget(self.refine_button, 1)
        row.addWidget(self.clear_button)
        lay.addLayout(row)
        self.outside_check = QCheckBox("Next click outside (or Shift+click)")
        lay.addWidget(self.outside_check)
        self.refine_button.toggled.connect(self.set_active)
        self.clear_button.clicked.connect(lambda: clear(self._layer()))
        self._timer = QTimer(self.box)  # points added in one event-loop turn: one run
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refine)

    def _layer(self):
        viewer = self.widget.viewer
        return self.layer if self.layer is not None and self.layer in viewer.layers else None

    @property
    def pending(self) -> bool:
        """A refinement is due (the clicks just changed) or running."""
        return self._timer.isActive() or self.widget.busy

    def set_active(self, on: bool) -> None:
        """Take clicks on the scan (the button), or stop (the points stay)."""
        layer = self._layer()
        if not on:
            if layer is not None:
                layer.mode = "pan_zoom"
            return
        scan = self.widget.scan_layer()
        if self.widget.request is None or scan is None:
            show_warning("Find a nodule first (Click on a nodule…); then click where its "
                         "hypotheses are wrong")
            self.refine_button.setChecked(False)
            return
        if layer is None:
            layer = self.layer = clicks_layer(
                CLICKS_LAYER, 3, placement(scan, (0, 0, 0, 0), (0,)), 3.0,
                self.outside_check.isChecked, self._on_data)
            self.widget.viewer.layers.append(layer)
        self.widget.viewer.layers.selection.active = layer
        layer.mode = "add"

    def add_click(self, voxel, inside: bool = True) -> None:
        """A click at ``voxel`` ``(slice, row, col)`` of the scan (scripts and tests)."""
        if self._layer() is None:
            self.set_active(True)
        if self._layer() is not None:
            add_point(self.layer, voxel, inside)

    def forget(self) -> None:
        """A new nodule: its clicks start afresh (removed without a run)."""
        layer = self._layer()
        if layer is not None:
            with layer.events.data.blocker(self._on_data):
                clear(layer)

    def _on_data(self, event) -> None:
        if is_change(event):
            self._timer.start(0)

    def clicks(self) -> list[tuple[int, int, int, bool]]:
        """The clicks, ``(slice, row, col, inside)`` voxels of the scan."""
        data, inside = points(self._layer())
        return [(*(int(v) for v in np.rint(p[-3:])), bool(q)) for p, q in zip(data, inside)]

    def refine(self) -> bool:
        """Steer the nodule's hypotheses by the clicks now. Returns whether a run started."""
        w = self.widget
        if w.busy:
            self._timer.start(200)  # after the run under way
            return False
        request = w.request
        if request is None:
            return False
        try:
            session = w.session_for_job()
            clicks = self.clicks()
            roi = check_request(request, int(session.config.input_size))
            as_clicks_3d(clicks, np.shape(request.volume), roi)
        except UserError as exc:
            show_warning(str(exc))
            return False
        w.submit(refine_nodule_job(session, request, clicks),
                 f"Refining the nodule by {len(clicks)} click(s)…")
        return True
