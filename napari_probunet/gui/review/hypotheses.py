"""The hypothesis layers of the review widget: showing them, cycling through them.

``<image> hypothesis 01`` … are ROI-sized Labels layers placed over the image
(:mod:`napari_probunet.gui.placement`); only one is visible at a time (``.``/``,`` cycle), and
``<image> uncertainty`` shows where the samples disagree. A new run reuses the previous layers
where it can, and adds new ones a few per event-loop turn so that the viewer stays responsive.

Above :data:`LAYERS_ON_DEMAND_ABOVE` hypotheses, a layer joins the viewer only when it is
needed: the first at once, then each one when it is shown (navigation, gallery, explorer) or
shortlisted in the gallery, or all of them on :meth:`HypothesisLayers.add_all`. napari spends
0.1-0.5 s on every Labels layer it adds (its Qt controls, vispy visuals and overlays, and a
scene-graph update that grows with the layer count), so 100 layers took 30-55 s to arrive on the
2-core machine and flooded the layer list; the gallery shows all of them at a glance instead.
The layers not yet in the viewer exist (``hypothesis_layers`` lists them all, with their data
and record) and keep their place: one joins right below the nearest earlier hypothesis.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QSizePolicy

from napari_probunet.gui.napari_compat import no_layer_activation
from napari_probunet.gui.placement import move_to
from napari_probunet.gui.review.common import (
    HYPOTHESIS_COLOURS,
    KEY_NEXT,
    KEY_PREVIOUS,
    ElidedLabel,
    colormap,
    remove_layers,
)
from napari_probunet.review import export
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.geometry import embed
from napari_probunet.review.jobs import Sampled
from napari_probunet.review.provenance import Provenance

#: more hypotheses than this: their layers join the viewer on demand (see the module's doc)
LAYERS_ON_DEMAND_ABOVE = 40


class HypothesisLayers:
    """The hypothesis and uncertainty layers of the review, which one shows, and the
    navigation row (◀, the hypothesis shown, ▶) that the widget puts in the Sampling box."""

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.state = controller.state
        self.layers: list[Labels] = []  # ours, also while state's list is cleared
        self.pending: list[tuple[Labels, Labels | None]] = []  # layers still to add
        self.deferred: list[Labels] = []  # layers that join the viewer when needed
        self.uncertainty: Image | None = None
        self.navigation = self._build_navigation()
        self.previous_button.clicked.connect(lambda: controller.previous_hypothesis())
        self.next_button.clicked.connect(lambda: controller.next_hypothesis())
        c = controller
        c.hook_all(((c.results_ready, self.show_sampled),
                    (c.hypotheses_changed, self._on_hypotheses_changed),
                    (c.current_changed, self._on_current_changed),
                    (c.input_changed, self.update_navigation),
                    (c.model_changed, self.update_controls),
                    (c.correction_placed, self._hide),
                    (c.layer_wanted, self.join),
                    (c.all_layers_wanted, self.add_all)))
        c.hook(viewer.layers.selection.events.active, self.on_active_layer)
        self._follow_state()
        self.update_navigation()

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

    def _follow_state(self) -> None:
        """Take over hypothesis layers the state holds that were made elsewhere (an opened
        bundle, a widget closed and reopened)."""
        st = self.state
        layers = st.hypothesis_layers
        if st.hypotheses is None or not layers or len(layers) != len(st.hypotheses.labels) \
                or (len(layers) == len(self.layers)
                    and all(a is b for a, b in zip(layers, self.layers))):
            return
        self.layers = list(layers)
        self.deferred = []
        self.uncertainty = st.uncertainty_layer
        self._report()

    def _report(self) -> None:
        """Tell the controller how many layers are still to join the viewer."""
        self.controller.set_layer_queue(len(self.pending), len(self.deferred))

    # ------------------------------------------------------------------ a new run
    def show_sampled(self, result: Sampled, run) -> None:
        """Show a sampling result (``run`` is the GUI's ``SamplingRun``) and make it the
        review's hypotheses."""
        self._show(result, run)
        self.controller.set_hypotheses(result.hypotheses, self.layers, self.uncertainty,
                                       result.plane_signature)

    def _layer_data(self, result: Sampled, image=None):
        """``(the record shared by all layers, hypothesis i -> layer data, uncertainty data)``;
        ``image`` is the image layer sampled (its scan record goes into the hypotheses' so that
        File > Save writes a hypothesis as the whole scan, as the correction's export does)."""
        request = result.request
        c = self.controller
        base = Provenance(
            image_layer=request.layer_name, roi=request.roi,
            plane_shape=request.plane.shape[:2], slice_index=request.index,
            image_signature=result.image_signature, plane_signature=result.plane_signature,
            model_sha256=c.model_sha(), model_name=c.model_name(),
            seed=request.seed, n_samples=request.n,
            volume=export.volume_source(getattr(image, "metadata", None)),
            extra={"refined_by_clicks": result.refinement} if result.refinement else {})
        if result.stack_labels is None:
            def to_layer(i):
                # a copy: brush edits on a hypothesis layer must not change state.hypotheses
                return embed(result.labels[i].copy(), request.index)

            return base, to_layer, embed(result.uncertainty, request.index)
        lead = (1,) * (len(request.index) - 1)
        # (z_per_slice stays None on the shared record: each hypothesis gets its own)
        base = base.with_(slices="all", stack_axis=len(request.index) - 1,
                          slices_done=result.slices_done)

        def to_stack_layer(i):
            return result.stack_labels[i].reshape(lead + result.stack_labels.shape[1:])

        unc = result.stack_uncertainty.reshape(lead + result.stack_uncertainty.shape)
        return base, to_stack_layer, unc

    def _show(self, result: Sampled, run) -> None:
        """Put the hypotheses and the uncertainty map into layers, reusing the previous ones."""
        request = result.request
        n, viewer, place = request.n, self.viewer, run.placement
        num_classes = self.state.model.config.num_classes if self.state.model else 2
        width = max(2, len(str(n)))
        base, to_layer, unc_data = self._layer_data(result, run.plane.layer)
        old = [la for la in self.layers if la in viewer.layers]
        shape = to_layer(0).shape
        # reuse the previous layers (a new ROI size just changes their data): fewer layers to
        # build, and fewer to remove (see remove_layers)
        reuse = [la for la in old if la.data.ndim == len(shape)][:n]
        drop = [la for la in old if la not in reuse]
        new_layers: list[Labels] = []
        layers: list[Labels] = []
        for i in range(n):
            name = f"{request.layer_name} hypothesis {i + 1:0{width}d}"
            hyp = base.with_(kind="hypothesis", index=i, z=[float(v) for v in result.z[i]])
            if result.stack_labels is not None:
                hyp = hyp.with_(z_per_slice=[None if zs is None else zs[i]
                                             for zs in result.z_per_slice])
            meta = hyp.to_metadata()
            if i < len(reuse):
                la = reuse[i]
                la.metadata = meta
                la.data = to_layer(i)
                update_layer(la, name, i == 0, place)
            else:
                la = Labels(to_layer(i), name=name, visible=i == 0, opacity=0.6, metadata=meta,
                            colormap=colormap(num_classes, HYPOTHESIS_COLOURS), **place)
                new_layers.append(la)
            layers.append(la)
        unc, new_unc = self._uncertainty_layer(request.layer_name, unc_data,
                                               base.with_(kind="uncertainty").to_metadata(),
                                               place, num_classes, drop)
        self.pending.clear()
        if drop:
            with no_layer_activation(viewer.layers):
                remove_layers(viewer, drop)
        with no_layer_activation(viewer.layers):
            if new_unc is not None:
                viewer.layers.append(new_unc)
        # New hypothesis layers join the viewer a few per event-loop turn: napari builds
        # Qt controls and vispy overlays for every Labels layer (about 0.1-0.3 s each here),
        # so the shown hypothesis and the uncertainty map appear at once and the hidden ones
        # follow while the viewer stays responsive. Hypothesis k goes right below k-1.
        previous = {la: (layers[i - 1] if i else None) for i, la in enumerate(layers)}
        self.deferred = []
        if n > LAYERS_ON_DEMAND_ABOVE:  # only the shown one now, the others on demand
            self.deferred = [la for la in new_layers if la is not layers[0]]
            new_layers = [la for la in new_layers if la is layers[0]]
        self.pending = [(la, previous[la]) for la in new_layers]
        self.layers = layers
        self.uncertainty = unc
        self.add_pending()

    def _uncertainty_layer(self, image_name: str, data, meta: dict[str, Any],
                           place: dict[str, Any], num_classes: int, drop: list):
        """Reuse the uncertainty layer for ``data`` or make a new one (the old one joins
        ``drop``): ``(the layer, the new layer to add or None)``."""
        name = f"{image_name} uncertainty"
        unc = self.uncertainty
        if unc is not None and unc in self.viewer.layers and unc.data.ndim == data.ndim:
            unc.data = data
            unc.metadata = meta
            update_layer(unc, name, unc.visible, place)
            return unc, None
        if unc is not None and unc in self.viewer.layers:
            drop.append(unc)
        new = Image(data, name=name, colormap="magma", blending="additive", opacity=0.7,
                    metadata=meta, contrast_limits=(0.0, max(1e-6, 1 - 1 / num_classes)),
                    **place)
        return new, new

    def add_pending(self) -> None:
        """Add queued hypothesis layers for about 40 ms (at least one), then yield to Qt."""
        if self.controller.closed:
            return
        viewer = self.viewer
        start = time.perf_counter()
        with no_layer_activation(viewer.layers):
            while self.pending:
                layer, previous = self.pending.pop(0)
                if layer not in self.layers or layer in viewer.layers:
                    continue
                if previous is not None and previous in viewer.layers:
                    viewer.layers.insert(viewer.layers.index(previous), layer)
                else:
                    viewer.layers.append(layer)
                if time.perf_counter() - start > 0.04:
                    break
        self.keep_correction_on_top()
        self._report()
        if self.pending:
            QTimer.singleShot(0, self.add_pending)
        else:
            self.update_navigation()

    def join(self, index: int) -> None:
        """Bring hypothesis ``index``'s layer into the viewer now if it is queued or waiting
        on demand (as it is: shown or hidden)."""
        if 0 <= index < len(self.layers):
            self._add_now(self.layers[index])
            self._report()
            self.update_navigation()

    def add_all(self) -> None:
        """Queue every layer waiting on demand; they join a few per event-loop turn."""
        if self.deferred:
            previous = {la: (self.layers[i - 1] if i else None)
                        for i, la in enumerate(self.layers)}
            self.pending.extend((la, previous[la]) for la in self.deferred)
            self.deferred = []
            self.add_pending()

    def _add_now(self, layer) -> None:
        """Add a queued or on-demand hypothesis layer at once (the one the user asked for)."""
        if any(la is layer for la in self.deferred):
            self.deferred = [la for la in self.deferred if la is not layer]
            self.pending.insert(0, (layer, None))
        for k, (queued, _) in enumerate(self.pending):
            if queued is layer:
                del self.pending[k]
                viewer = self.viewer
                # right below the nearest earlier hypothesis already there, so that the
                # list stays in order when the ones in between arrive
                ours = self.layers
                earlier = next((la for la in reversed(ours[:ours.index(layer)])
                                if la in viewer.layers), None)
                with no_layer_activation(viewer.layers):
                    if earlier is not None:
                        viewer.layers.insert(viewer.layers.index(earlier), layer)
                    else:
                        viewer.layers.append(layer)
                self.keep_correction_on_top()
                return

    def keep_correction_on_top(self) -> None:
        viewer = self.viewer
        correction = self.state.correction_layer
        if correction is not None and correction in viewer.layers:
            i = viewer.layers.index(correction)
            if i != len(viewer.layers) - 1:
                viewer.layers.move(i, len(viewer.layers))

    # ------------------------------------------------------------------ navigation
    def _on_hypotheses_changed(self) -> None:
        self._follow_state()
        self.update_navigation()

    def _on_current_changed(self, index: int, show: bool) -> None:
        """The controller's current hypothesis is ``index``: show its layer (hide the
        others) when ``show``."""
        if show and self.layers:
            for i, layer in enumerate(self.layers):
                # layers still queued too: they join the viewer with the right visibility
                if layer.visible != (i == index):
                    layer.visible = i == index
            self._add_now(self.layers[index])
            self._report()
        self.update_navigation()

    def _hide(self, uncertainty_too: bool) -> None:
        """The correction is on screen: the hypotheses step back (and the uncertainty map,
        which would wash out the correction's colour; one click brings it back)."""
        for la in self.layers:
            if la in self.viewer.layers:
                la.visible = False
        unc = self.uncertainty
        if uncertainty_too and unc is not None and unc in self.viewer.layers:
            unc.visible = False

    def on_active_layer(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        if active is not None and active in self.layers:
            self.controller.select(self.layers.index(active))

    def update_navigation(self, *_) -> None:
        """The navigation row: the hypothesis shown, its area, and why its layer is not in
        the list if it is not."""
        n = len(self.layers)
        hyp = self.state.hypotheses
        current = self.controller.current
        label = self.hypothesis_label
        if self.controller.other_image_chosen:
            label.set_texts(f"No hypotheses of '{self.controller.input.image}' yet",
                            "No hypotheses yet")
        elif hyp is None or n == 0 or len(hyp.labels) != n or not 0 <= current < n:
            label.set_texts("No hypotheses yet")
        else:
            layer = self.layers[current]
            area = int(np.count_nonzero(hyp.labels[current]))
            queued = any(layer is q for q, _ in self.pending)
            waiting = any(layer is la for la in self.deferred)
            where = ("" if layer in self.viewer.layers
                     else "layer being added" if queued
                     else "no layer yet" if waiting else "layer deleted")
            label.set_texts(*navigation_texts(current, n, area, where))
        self.update_controls()

    def update_controls(self, *_) -> None:
        """◀ and ▶ only with hypotheses of the image chosen."""
        can = self.controller.can_choose
        for b in (self.previous_button, self.next_button):
            b.setEnabled(can)


def navigation_texts(current: int, n: int, area: int, where: str = "") -> tuple[str, str]:
    """The navigation label's full text and its short form (shown where the dock is too
    narrow for the full one; the tooltip keeps the full text): ``("Hypothesis 100/100 ·
    15192 px (no layer yet)", "100/100 · 15192 px (no layer)")``. ``where``: why its layer is
    not in the layer list, if it is not."""
    shown = f"{current + 1}/{n} · {area} px"
    brief = SHORT_WHERE.get(where, where)
    return (f"Hypothesis {shown}" + (f" ({where})" if where else ""),
            shown + (f" ({brief})" if brief else ""))


#: the short forms of why a hypothesis' layer is not in the list
SHORT_WHERE = {"layer being added": "adding", "no layer yet": "no layer",
               "layer deleted": "deleted"}


def update_layer(layer, name: str, visible: bool, place: dict[str, Any]) -> None:
    """Rename, show/hide and move a reused layer, touching only what changes (each setter
    makes napari recompute extents and redraw)."""
    if layer.name != name:
        layer.name = name
    if layer.visible != visible:
        layer.visible = visible
    move_to(layer, place)
