"""The review widget's Input box: which image, which region of it, which slices.

:class:`RoiTool` keeps the image and Shapes choices in step with the layer list and shows the
controller's :class:`~napari_probunet.review.inputs.InputChoice` (the image, the region
mode, the slices, the last click), which its controls edit: the whole image, the bounding box
of a drawn rectangle, or a crop of the model's input size centred on a click (a mouse
callback, and the yellow ``ROI`` Shapes layer that shows it). The ROI itself is computed when
sampling starts (:func:`napari_probunet.gui.review.region.resolve_roi`).
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel

from napari_probunet.errors import UserError
from napari_probunet.gui.placement import ImagePlane, current_plane, placement, plane_shape
from napari_probunet.gui.review.common import ROI_LABELS, SLICE_LABELS, WHOLE_IMAGE_LIMIT
from napari_probunet.gui.review.region import find_image, image_layers
from napari_probunet.review.controller import ReviewController
from napari_probunet.review.geometry import centred_roi
from napari_probunet.review.inputs import ROI_MODES


class RoiTool:
    """The Input box of the review: the image, the region of interest, the slices."""

    def __init__(self, controller: ReviewController, viewer, runner, parent) -> None:
        self.controller = controller
        self.viewer = viewer
        self.roi_layer: Shapes | None = None
        self._region_suggested: set[str] = set()  # images switched to the click region once
        self._mode_shown: str | None = None  # the mode whose rows and tools are set up
        self.box = self._build()
        self.roi_combo.currentIndexChanged.connect(self._on_mode_chosen)
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        self.shapes_combo.currentIndexChanged.connect(
            lambda _: controller.input.set(shapes=self.shapes_combo.currentText() or None))
        self.slices_combo.currentIndexChanged.connect(
            lambda i: controller.input.set(slices_all=i == 1))
        self.sample_on_click.toggled.connect(lambda on: controller.input.set(run_on_click=on))
        c = controller
        c.hook_all(((c.input_changed, self._follow_input),
                    (c.model_changed, self._on_model_changed), (c.model_failed, self.show_roi)))
        self._follow_input()

    def _build(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image to segment: 2D grey or RGB, or the current slice "
                                    "of a 3D/4D stack")
        self.image_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
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
    def image_layer(self) -> Image | None:
        """The image layer chosen (``None`` if there is none)."""
        return find_image(self.viewer, self.image_combo.currentText())

    def refresh_layer_choices(self) -> None:
        """Bring the image and Shapes choices in step with the viewer's layers."""
        for combo, layers in ((self.image_combo, image_layers(self.viewer)),
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
        self._tell_image()
        self.controller.input.set(shapes=self.shapes_combo.currentText() or None)
        self.suggest_region()
        self.show_roi()

    def _tell_image(self) -> None:
        """The controller hears the chosen image (and whether it has slices)."""
        image = self.image_layer()
        self.controller.input.set(image=None if image is None else image.name,
                                  stack=image is not None and image.ndim >= 3)
        self.slices_combo.setEnabled(image is not None and image.ndim >= 3)

    def _on_image_chosen(self, *_) -> None:
        self._tell_image()
        self.suggest_region()
        self.show_roi()

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
        side = self.controller.roi_side()
        large = max(h, w) > SIZE_FACTOR * side or h * w > WHOLE_IMAGE_LIMIT
        inp = self.controller.input
        if not large and inp.mode == "click" and inp.mode_suggested:
            # the click region was for the large image before
            self.controller.input.set_roi_mode("whole", suggested=True)
            return
        if not large or inp.mode != "whole" or layer.name in self._region_suggested:
            return
        self._region_suggested.add(layer.name)
        self.controller.input.set_roi_mode("click", suggested=True)
        show_info(f"Click on the lesion. '{layer.name}' is {w}x{h} pixels, much larger than the "
                  f"model's {side}x{side} input: the region is now 'Click on the lesion'. "
                  "Choose 'Whole image' to segment it all at once.")

    def _on_model_changed(self, mine: bool) -> None:
        if mine:
            self.suggest_region()  # the input size may differ from the last model's
        self.show_roi()

    # ------------------------------------------------------------------ the region
    @property
    def roi_mode(self) -> str:
        """The region mode shown: ``"whole"``, ``"rectangle"`` or ``"click"``."""
        return ROI_MODES[max(0, self.roi_combo.currentIndex())]

    def _on_mode_chosen(self, *_) -> None:
        # (nothing new when the change came from the controller)
        self.controller.input.set_roi_mode(self.roi_mode)
        if self._mode_shown != self.roi_mode:
            self._show_mode()

    def _follow_input(self) -> None:
        """Show the controller's input (changed here, by a script or by another part)."""
        inp = self.controller.input
        if self.roi_combo.currentIndex() != ROI_MODES.index(inp.mode):
            self.roi_combo.setCurrentIndex(ROI_MODES.index(inp.mode))  # -> _on_mode_chosen
        elif self._mode_shown != inp.mode:
            self._show_mode()
        if inp.image is not None and self.image_combo.currentText() != inp.image \
                and self.image_combo.findText(inp.image) >= 0:
            self.image_combo.setCurrentText(inp.image)  # -> _on_image_chosen
        if self.slices_combo.currentIndex() != int(inp.slices_all):
            self.slices_combo.setCurrentIndex(int(inp.slices_all))
        if self.sample_on_click.isChecked() != inp.run_on_click:
            self.sample_on_click.setChecked(inp.run_on_click)
        self.show_roi()

    def _show_mode(self) -> None:
        """The rows, the click tool and the ROI layer for the region mode."""
        mode = self._mode_shown = self.roi_mode
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

    def on_layer_removed(self, layer) -> None:
        """A layer left the viewer (the ROI layer: draw a new one next time)."""
        if layer is self.roi_layer:
            self.roi_layer = None

    def show_roi(self, *_) -> None:
        """Say which region the model will see."""
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
            click = self.controller.input.click
            if click is not None and click[0] == layer.name:
                r0, c0, h, w = click[2]
                self.roi_label.setText(f"{h}×{w} pixels at row {r0}, column {c0}. Click again "
                                       "to move it.")
            else:
                side = self.controller.roi_side()
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
        self.set_click_roi(start)

    def set_click_roi(self, world_position) -> tuple[int, int, int, int] | None:
        """Centre the ROI (a crop of the model's input size) on a point given in world
        coordinates (a click on the lesion).

        Returns the ROI ``(row, col, height, width)`` in the image's data pixels; the
        controller samples right away when *Run on click* is ticked.
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
        roi = centred_roi(row, col, self.controller.roi_side(), plane.shape)
        self.controller.input.set(click=(layer.name, plane.index, roi))
        self._draw_roi(layer, plane, roi)
        self.show_roi()
        self.controller.region_clicked()
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
                               face_color="transparent",
                               edge_width=max(1, self.controller.roi_side() // 64),
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
