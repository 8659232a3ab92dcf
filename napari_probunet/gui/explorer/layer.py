"""The ``<image> explorer`` Labels layer: created on first use, placed over the region,
updated in place.

Live dragging writes a new decode into this layer many times a second, so an update touches as
little as it can, through napari's public API only: the changed pixels are written with
``Labels.data_setitem`` (what napari's own paint brush uses: the layer's array in place, only the
box of the changed pixels recoloured and sent to the canvas; :func:`write_labels`), and nothing
that could trigger a full napari refresh happens on the per-frame path
(:meth:`ExplorerLayer.ensure`). The thumbnail follows, and the undo steps that ``data_setitem``
records are dropped, once the drag ends (:meth:`ExplorerLayer.settle`). The layer is placed
over the region by the one placement rule (:mod:`napari_probunet.gui.placement`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_probunet.gui.placement import fallback_placement, is_placed, move_to, placement

#: metadata key marking the layer this widget writes to
LAYER_KEY = "napari_probunet"


@dataclass
class RegionGeometry:
    """Where the encoded region sits in the viewer (cached: the image layer may be removed).

    ``place``: the explorer layer's keyword arguments from the one placement rule
    (:func:`~napari_probunet.gui.placement.placement`); ``slice_index``, ``roi``,
    ``image_scale`` and ``image_translate``: the region in the image, for reading annotations
    on it (:func:`~napari_probunet.review.plane.crop_to_region`).
    """

    place: dict
    slice_index: tuple[int, ...]
    roi: tuple[int, int, int, int]
    image_scale: np.ndarray
    image_translate: np.ndarray


def read_geometry(viewer, encoded) -> RegionGeometry:
    """Where a layer the size of ``encoded``'s region must sit to lie exactly over it."""
    slice_index = tuple(int(i) for i in encoded.slice_index)
    roi = tuple(int(x) for x in encoded.roi)
    name = encoded.layer_name
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is None or layer.ndim != len(slice_index) + 2:
        # gone, or a layer we cannot line up: the region at the origin of its last 2 axes
        place = fallback_placement(layer, roi)
        translate = np.zeros(2) if layer is None else np.asarray(layer.translate, float)[-2:]
        return RegionGeometry(place, (), roi, np.asarray(place["scale"], float), translate)
    return RegionGeometry(placement(layer, roi, slice_index), slice_index, roi,
                          np.asarray(layer.scale, float), np.asarray(layer.translate, float))


def write_labels(layer, new: np.ndarray) -> bool:
    """Show ``new`` ``(H, W)`` in the Labels ``layer`` (its 2D data, or the one slice of its
    ``(1, ..., H, W)`` data); return False if nothing changed.

    Only the changed pixels are written, by ``layer.data_setitem``, which recolours and uploads
    just their bounding box (in every view napari has: contours, 3D, a transposed view, another
    slice shown). Its ``labels_update`` and ``paint`` events reach the canvas and any direct
    listener, not the layer's event group: through it the layer list would repaint its rows on
    every frame for nothing (it shows no pixels).
    """
    data = layer.data
    lead = data.ndim - 2
    view = data[(0,) * lead] if lead else data
    rows, cols = np.nonzero(view != new)
    if rows.size == 0:
        return False
    indices = (*([np.zeros_like(rows)] * lead), rows, cols)
    events = layer.events
    with events.labels_update.blocker(events), events.paint.blocker(events):
        layer.data_setitem(indices, new[rows, cols])
    return True


def forget_undo(layer) -> None:
    """Drop ``layer``'s undo history (napari's public way: it forgets it when the layer stops
    being editable), keeping its mode. The explorer's frames are not edits to undo."""
    if not layer.editable:
        return
    mode = layer.mode
    layer.editable = False
    layer.editable = True
    if layer.mode != mode:
        layer.mode = mode


class ExplorerLayer:
    """The explorer's output layer in ``viewer`` (it may be removed or renamed at any time).

    ``wanted`` turns True once the user moves through the map: until then an automatic
    re-centring (a new image, new hypotheses) must not create a layer that covers the
    hypotheses. ``frames`` counts layer updates shown (the benchmark's measure).
    """

    def __init__(self, viewer, on_colormap) -> None:
        self.viewer = viewer
        self.name = ""  # "<image> explorer"
        self.geometry: RegionGeometry | None = None  # where the encoded region sits
        self.wanted = False
        self.frames = 0
        self._on_colormap = on_colormap  # connected to a layer this creates
        self._layer = None
        self._data = None  # the layer's array when last seen (changed: not the per-frame path)

    def set_region(self, image_name: str, g: RegionGeometry) -> None:
        """A new encoded region: the layer is ``<image_name> explorer``, placed by ``g``."""
        self.name, self.geometry = f"{image_name} explorer", g

    @property
    def layer(self):
        """The layer, if it is (still) in the viewer."""
        layer = self._layer
        return layer if layer is not None and layer in self.viewer.layers else None

    def forget(self) -> None:
        """Let go of the layer (removed, or replaced under us)."""
        self._layer, self._data = None, None

    def forget_if_removed(self) -> None:
        if self._layer is not None and self._layer not in self.viewer.layers:
            self.forget()

    def hide(self) -> None:
        """Hide the layer (its content came from a model that is gone)."""
        if self._layer is not None and self._layer in self.viewer.layers:
            self._layer.visible = False

    def settle(self) -> None:
        """A drag (or a click) is shown: refresh the layer's thumbnail and drop the undo steps
        its frames left."""
        layer = self.layer
        if layer is not None:
            layer.refresh(extent=False, highlight=False)
            forget_undo(layer)

    def show(self, labels: np.ndarray) -> None:
        """Write ``labels`` ``(h, w)``, the decode of the region, into the layer."""
        if self.geometry is None:
            return
        if self.layer is None and not self.wanted:
            return
        layer = self.ensure(labels.shape)
        if write_labels(layer, labels):
            self.frames += 1

    def ensure(self, shape: tuple[int, int]):
        """The layer, shown and sized and placed for the region (created if missing)."""
        g, name = self.geometry, self.name
        lead = len(g.slice_index)
        full = (1,) * lead + tuple(shape)
        layer = self._layer
        if (layer is not None and layer.data is self._data and layer.visible
                and self._data.shape == full):
            return layer  # the per-frame path: nothing that could trigger a refresh
        layer = self.layer
        if layer is None and name in self.viewer.layers:
            candidate = self.viewer.layers[name]
            if candidate.metadata.get(LAYER_KEY) == "explorer":
                layer = candidate
        if layer is None:
            data = np.zeros(full, np.uint8)
            layer = self.viewer.add_labels(data, name=name, metadata={LAYER_KEY: "explorer"},
                                           **g.place)
            layer.events.colormap.connect(self._on_colormap)
        elif layer.data.shape != full or not is_placed(layer, g.place):
            if layer.ndim != len(full):  # napari cannot change a layer's dimensions
                self.viewer.layers.remove(layer)
                return self.ensure(shape)
            layer.data = np.zeros(full, np.uint8)
            move_to(layer, g.place)
        if not layer.visible:
            layer.visible = True  # (a napari refresh, so not on every frame)
        if layer is not self._layer or layer.data is not self._data:
            self._layer, self._data = layer, layer.data
        return layer

    def class_colors(self, num_classes: int) -> np.ndarray:
        """RGBA uint8 per class, as napari colours them (the layer's colormap, once it exists)."""
        layer = self.layer
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
