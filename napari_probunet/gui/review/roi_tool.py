"""The review widget's Input box: which image, which region of it, which slices.

:class:`RoiTool` keeps the image and Shapes choices in step with the layer list, and turns the
chosen region mode into an ROI ``(row0, col0, height, width)`` of the plane on screen: the
whole image, the bounding box of a drawn rectangle, or a crop of the model's input size centred
on a click (a mouse callback, and the yellow ``ROI`` Shapes layer that shows it).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane, current_plane, placement, plane_shape
from napari_probunet.gui.review.common import (
    FALLBACK_ROI,
    ROI_LABELS,
    ROI_MODES,
    SLICE_LABELS,
    WHOLE_IMAGE_LIMIT,
)
from napari_probunet.review.geometry import bounding_roi, centred_roi
from napari_probunet.review.provenance import Provenance


class RoiTool:
    """The Input box and the region of interest of a :class:`ReviewWidget`."""

    #: controls the widget exposes as its own attributes
    CONTROLS = ("image_combo", "roi_combo", "shapes_combo", "shapes_label", "slices_combo",
                "sample_on_click", "roi_label")

    def __init__(self, widget) -> None:
        self.widget = widget
        self.viewer = widget.viewer
        self.roi_layer: Shapes | None = None
        #: the last click's (image name, plane index, ROI)
        self.click: tuple[str, tuple[int, ...], tuple[int, int, int, int]] | None = None
        self._region_suggested: set[str] = set()  # images switched to the click region once
        #: the region mode is 'Click on the lesion' because an image was too large (not the
        #: user's choice): a small image chosen next goes back to 'Whole image'
        self._click_suggested = False
        self._suggesting = False
        self.box = self._build()
        self.roi_combo.currentIndexChanged.connect(self.on_roi_mode_changed)
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)

    def _build(self) -> QGroupBox:
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
        return box

    # ------------------------------------------------------------------ the image
    def image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image)
                and Provenance.from_metadata(layer.metadata).kind != "uncertainty"]

    def image_layer(self) -> Image | None:
        return self.find_image(self.image_combo.currentText())

    def find_image(self, name: str) -> Image | None:
        for layer in self.image_layers():
            if layer.name == name:
                return layer
        return None

    def refresh_layer_choices(self) -> None:
        for combo, layers in ((self.image_combo, self.image_layers()),
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
        self.suggest_region()
        self.show_roi()

    def _on_image_chosen(self, *_) -> None:
        self.suggest_region()
        self.show_roi()
        self.widget.update_buttons()

    def suggest_region(self) -> None:
        """A newly chosen image much larger than the model's input (more than twice its side)
        starts in 'Click on the lesion': the model was trained on crops of its input size, and
        the whole image would be segmented at once. Once per image, so that choosing 'Whole
        image' again sticks."""
        from napari_probunet.review.domain import SIZE_FACTOR

        layer = self.image_layer()
        if layer is None:
            return
        try:
            h, w = plane_shape(layer)
        except Exception:  # an unusual layer: the ROI line explains what is wrong
            return
        side = self.roi_side()
        large = max(h, w) > SIZE_FACTOR * side or h * w > WHOLE_IMAGE_LIMIT
        if not large and self.roi_mode == "click" and self._click_suggested:
            self._suggest_mode("whole")  # the click region was for the large image before
            return
        if not large or self.roi_mode != "whole" or layer.name in self._region_suggested:
            return
        self._region_suggested.add(layer.name)
        self._suggest_mode("click")
        show_info(f"Click on the lesion. '{layer.name}' is {w}x{h} pixels, much larger than the "
                  f"model's {side}x{side} input: the region is now 'Click on the lesion'. "
                  "Choose 'Whole image' to segment it all at once.")

    @property
    def all_slices(self) -> bool:
        return self.slices_combo.isEnabled() and self.slices_combo.currentIndex() == 1

    # ------------------------------------------------------------------ the region
    @property
    def roi_mode(self) -> str:
        return ROI_MODES[max(0, self.roi_combo.currentIndex())]

    def set_roi_mode(self, mode: str) -> None:
        self.roi_combo.setCurrentIndex(ROI_MODES.index(mode))

    def _suggest_mode(self, mode: str) -> None:
        """Set the region mode for the image (not the user's choice: see ``_click_suggested``)."""
        self._suggesting = True
        try:
            self.set_roi_mode(mode)
        finally:
            self._suggesting = False
        self._click_suggested = mode == "click"

    def on_roi_mode_changed(self, *_) -> None:
        if not self._suggesting:
            self._click_suggested = False  # the user (or a script) chose it
        mode = self.roi_mode
        rect, click = mode == "rectangle", mode == "click"
        self.shapes_label.setVisible(rect)
        self.shapes_combo.setVisible(rect)
        self.sample_on_click.setVisible(click)
        self.set_click_callback(click)
        if rect and not any(isinstance(la, Shapes) for la in self.viewer.layers):
            layer = self._ensure_roi_layer()
            if layer is not None:
                self.viewer.layers.selection.active = layer
                layer.mode = "add_rectangle"
                show_info("Draw the region. Drag a rectangle around the lesion in the 'ROI' "
                          "layer, then click Sample.")
        roi_layer = self.roi_layer
        if roi_layer is not None and roi_layer in self.viewer.layers \
                and roi_layer.visible != (mode != "whole"):  # (setting it resets the tool)
            roi_layer.visible = mode != "whole"
        self.show_roi()

    def roi_side(self) -> int:
        model = self.widget.state.model
        return int(model.config.input_size) if model is not None else FALLBACK_ROI

    def resolve_roi(self, layer, plane: ImagePlane):
        """The ROI for the chosen mode, or raise a UserError that says what to do."""
        mode = self.roi_mode
        h, w = plane.shape
        if mode == "whole":
            if h * w > WHOLE_IMAGE_LIMIT:
                self._suggest_mode("click")
                raise UserError(
                    f"'{layer.name}' is {h}x{w} pixels, too large to segment whole. The region "
                    "is now 'Click on the lesion': click the lesion in the viewer (or draw a "
                    "rectangle)")
            return (0, 0, h, w)
        if mode == "click":
            if self.click is None or self.click[:2] != (layer.name, plane.index):
                raise UserError("Click on the lesion in the viewer first (the region is "
                                "'Click on the lesion')")
            return self.click[2]
        return self._rectangle_roi(layer, plane)

    def _rectangle_roi(self, layer, plane: ImagePlane):
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

    def show_roi(self) -> None:
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
            if self.click is not None and self.click[0] == layer.name:
                r0, c0, h, w = self.click[2]
                self.roi_label.setText(f"{h}×{w} pixels at row {r0}, column {c0}. Click again "
                                       "to move it.")
            else:
                side = self.roi_side()
                self.roi_label.setText(f"Click on the lesion in the viewer: a {side}×{side} "
                                       "crop is centred on the click.")
        else:
            self.roi_label.setText("The selected (or last) shape of the Shapes layer; its "
                                   "bounding box is used.")

    # ------------------------------------------------------------------ the click
    def set_click_callback(self, on: bool) -> None:
        callbacks = self.viewer.mouse_drag_callbacks
        if on and self.on_mouse_press not in callbacks:
            callbacks.append(self.on_mouse_press)
        elif not on and self.on_mouse_press in callbacks:
            callbacks.remove(self.on_mouse_press)

    def on_mouse_press(self, viewer, event):
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
        self.widget.set_click_roi(start)

    def set_click_roi(self, world_position) -> tuple[int, int, int, int] | None:
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
        roi = centred_roi(row, col, self.roi_side(), plane.shape)
        self.click = (layer.name, plane.index, roi)
        self._draw_roi(layer, plane, roi)
        self.show_roi()
        return roi

    def _ensure_roi_layer(self, layer=None, plane: ImagePlane | None = None) -> Shapes | None:
        layer = layer or self.image_layer()
        if layer is None:
            return None
        roi_layer = self.roi_layer
        kwargs = placement(layer, (0, 0, 0, 0), plane.index) if plane is not None else {
            "scale": layer.scale, "translate": layer.translate}
        if roi_layer is None or roi_layer not in self.viewer.layers or roi_layer.ndim != layer.ndim:
            roi_layer = Shapes(name="ROI", ndim=layer.ndim, edge_color="yellow",
                               face_color="transparent", edge_width=max(1, self.roi_side() // 64),
                               metadata={"kind": "roi"}, **kwargs)
            self.viewer.layers.append(roi_layer)
            self.roi_layer = roi_layer
        else:
            roi_layer.scale, roi_layer.translate = kwargs["scale"], kwargs["translate"]
        return roi_layer

    def _draw_roi(self, layer, plane: ImagePlane, roi) -> None:
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
