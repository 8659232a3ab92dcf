"""The review widget, driven through its buttons and shortcuts the way a clinician uses it:
open a sample, sample 16 hypotheses, cycle, pick the third, paint, export, read it back.

A tiny real model (trained once per session on ``two_mode_case``, see conftest.py) is opened
through the widget's own "Open model…" path. Dialogs are answered through the widget's
``confirm`` / ``ask_save_path`` attributes.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import suppress
from datetime import datetime

import numpy as np
import pytest
import tifffile
from app_model.types import KeyBinding
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import Qt

import napari_probunet
from napari_probunet._sample_data import LARGE_OFFSET, sample_lesion, sample_lesion_large
from napari_probunet.gui.review.widget import ReviewWidget
from napari_probunet.model.modelfile import file_sha256
from napari_probunet.model.testing import two_mode_case, wait_idle
from napari_probunet.review import export
from napari_probunet.review.recovery import load_recovery, recovery_path
from napari_probunet.review.state import Choice
from napari_probunet.session import image_signature, pixel_disagreement

# ----------------------------------------------------------------------------- helpers


pytestmark = pytest.mark.usefixtures("isolated_settings")


@pytest.fixture
def notes():
    """New napari notifications since the test started: ``notes()`` -> [(severity, message)]."""
    start = len(notification_manager.records)
    return lambda: [(n.severity, str(n.message)) for n in notification_manager.records[start:]]


def said(notes, text: str, severity=None) -> bool:
    return any(text in m and (severity is None or s == severity) for s, m in notes())


@pytest.fixture
def review(review):
    """conftest's docked widget with the tiny model; draws 4 hypotheses instead of 16."""
    viewer, widget = review
    # the defaults
    assert widget.sampler.n_spin.value() == 16 and widget.sampler.seed_spin.value() == 0
    # napari builds controls and overlays for each Labels layer (~0.1-0.3 s here): tests that
    # are not about the count draw 4 hypotheses; the workflow test draws the default 16
    widget.sampler.n_spin.setValue(4)
    return viewer, widget


def press(viewer, key: str) -> None:
    """Press a shortcut: run what the viewer's keymap binds to it (as napari does)."""
    viewer.keymap[KeyBinding.from_str(key)](viewer)


class FakeMouse:
    """What napari hands a mouse callback: world position, canvas pixel, type, button."""

    def __init__(self, position, pos=(200, 200)):
        self.position, self.pos = tuple(position), pos
        self.type, self.button, self.modifiers = "mouse_press", 1, ()


def mouse(viewer, world_position, drag_to=None) -> None:
    """A click (or a drag to ``drag_to`` canvas pixels) through the viewer's drag callbacks."""
    event = FakeMouse(world_position)
    generators = []
    for callback in list(viewer.mouse_drag_callbacks):
        gen = callback(viewer, event)
        if gen is not None and hasattr(gen, "__next__"):
            with suppress(StopIteration):
                next(gen)
                generators.append(gen)
    if drag_to is not None:
        event.type, event.pos = "mouse_move", drag_to
        for gen in list(generators):
            with suppress(StopIteration):
                next(gen)
    event.type = "mouse_release"
    for gen in generators:
        with suppress(StopIteration):
            next(gen)


def hypothesis_layers(viewer, image: str, n: int = 16):
    return [viewer.layers[f"{image} hypothesis {i:02d}"] for i in range(1, n + 1)]


def sample_and_wait(qtbot, widget) -> None:
    assert widget.sampler.sample(), "sampling did not start"
    wait_idle(qtbot, widget)


# ----------------------------------------------------------------------------- the workflow


def test_review_workflow_sample_cycle_pick_paint_export_reload(review, qtbot, tmp_path, notes,
                                                                 two_mode_model_file):
    viewer, widget = review
    viewer.open_sample("napari-probunet", "lesion")
    assert widget.roi_tool.image_combo.currentText() == "lesion"
    widget.sampler.n_spin.setValue(16)

    qtbot.mouseClick(widget.sampler.sample_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)

    layers = hypothesis_layers(viewer, "lesion")
    assert [layer.visible for layer in layers] == [True] + [False] * 15
    state = widget.state
    hyp = state.hypotheses
    assert state.hypothesis_layers == layers and state.encoded.layer_name == "lesion"
    # the same hypotheses as the session's own sample(16, seed=0): reproducible from the record
    reference = state.session.sample(16, seed=0)
    np.testing.assert_allclose(hyp.z, reference.z, rtol=1e-6)
    assert (hyp.labels == reference.labels).mean() > 0.999
    sha = file_sha256(two_mode_model_file)
    for i, layer in enumerate(layers):
        np.testing.assert_array_equal(layer.data, hyp.labels[i])
        meta = layer.metadata
        assert (meta["index"], meta["seed"], meta["model_sha256"]) == (i, 0, sha)
        np.testing.assert_allclose(meta["z"], hyp.z[i], rtol=1e-6)
        assert meta["roi"] == [0, 0, 64, 64]
    uncertainty = viewer.layers["lesion uncertainty"]
    np.testing.assert_allclose(uncertainty.data, pixel_disagreement(hyp.labels, 2))
    assert uncertainty.colormap.name == "magma" and uncertainty.blending == "additive"

    # cycle with the shortcuts: one hypothesis shown at a time
    seen = []
    state.current_hypothesis_changed.connect(seen.append)
    press(viewer, ".")
    press(viewer, ".")
    press(viewer, ".")
    press(viewer, ",")
    assert widget.controller.current == 2 and seen == [1, 2, 3, 2]
    assert [layer.visible for layer in layers] == [i == 2 for i in range(16)]
    assert "Hypothesis 3/16" in widget.hypothesis_view.hypothesis_label.text()
    assert "(key: .)" in widget.hypothesis_view.next_button.toolTip()
    assert "Shift-Enter" in widget.correction.best_fit_button.toolTip()

    # accept #3 as the best fit
    press(viewer, "Shift-Enter")
    correction = viewer.layers["lesion correction"]
    assert state.correction_layer is correction and viewer.layers.selection.active is correction
    assert correction.mode == "paint" and correction.selected_label == 1
    assert not any(layer.visible for layer in layers)
    assert not uncertainty.visible  # it would wash out the correction's colour
    np.testing.assert_array_equal(correction.data, hyp.labels[2])
    assert state.choice.source == "hypothesis" and state.choice.index == 2

    # a brush stroke, with napari's undo
    start = correction.data.copy()
    correction.brush_size = 3
    correction.paint((4, 4), 1)
    correction.paint((4, 10), 1, refresh=True)
    edited = int(np.count_nonzero(correction.data != start))
    assert edited > 0
    correction.undo()
    assert np.count_nonzero(correction.data != start) < edited
    correction.redo()
    assert np.count_nonzero(correction.data != start) == edited

    # export through the button, then read the files back
    target = tmp_path / "lesion_correction.tif"
    widget.correction.ask_save_path = lambda default: str(target)
    assert "(key: Control-Shift-E)" in widget.correction.export_button.toolTip()
    press(viewer, "Control-Shift-E")  # the Export… button's shortcut
    assert said(notes, "Saved lesion_correction.tif and lesion_correction.tif.json")
    np.testing.assert_array_equal(tifffile.imread(target), correction.data)
    record = json.loads((tmp_path / "lesion_correction.tif.json").read_text())
    z3 = record["choice"].pop("z")
    np.testing.assert_allclose(z3, hyp.z[2], rtol=1e-6)
    assert record["choice"] == {"source": "hypothesis", "hypothesis": 3, "index": 2, "seed": 0,
                                "n_samples": 16}
    assert record["pixels_changed_by_hand"] == edited
    assert record["model"] == {"file": "two_mode.safetensors", "sha256": sha}
    image = viewer.layers["lesion"].data
    assert record["image"]["signature"] == image_signature(image)
    assert record["image"]["plane_signature"] == image_signature(image)
    assert record["roi"] == {"row": 0, "col": 0, "height": 64, "width": 64}
    assert record["mask"]["file"] == "lesion_correction.tif" and record["mask"]["shape"] == [64, 64]
    assert record["versions"]["napari_probunet"] == napari_probunet.__version__
    assert record["versions"]["torch"] and record["versions"]["napari"]
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    assert correction in viewer.layers  # exporting leaves the correction in place


def test_sample_has_a_shortcut_and_the_click_option_says_what_it_does(review, qtbot):
    viewer, widget = review
    viewer.open_sample("napari-probunet", "lesion")
    widget.sampler.n_spin.setValue(3)
    assert widget.roi_tool.sample_on_click.text() == "Run on click"  # not a second "Sample"
    assert "(key: Control-Enter)" in widget.sampler.sample_button.toolTip()
    press(viewer, "Control-Enter")
    wait_idle(qtbot, widget)
    assert widget.state.hypotheses is not None and len(widget.state.hypotheses.labels) == 3


def test_a_large_image_opened_from_the_menu_starts_in_click_mode(review, qtbot, notes):
    """File > Open Sample > the 256x256 slice: 'Whole image' would segment the whole body."""
    viewer, widget = review
    widget.model_panel.load_bundled_model("lesions")  # 64x64 input
    wait_idle(qtbot, widget)
    assert widget.roi_tool.roi_mode == "whole"
    viewer.open_sample("napari-probunet", "lesion_large")
    assert widget.roi_tool.roi_mode == "click"
    assert said(notes, "much larger than the model's 64x64 input")
    # the user's choice sticks: no second switch for the same image
    widget.controller.input.set_roi_mode("whole")
    widget.refresh_layer_choices()
    widget.roi_tool.image_combo.currentIndexChanged.emit(widget.roi_tool.image_combo.currentIndex())
    assert widget.roi_tool.roi_mode == "whole"
    # a crop of the model's size keeps the whole image
    viewer.open_sample("napari-probunet", "lesion")
    widget.roi_tool.image_combo.setCurrentText("lesion")
    assert widget.roi_tool.roi_mode == "whole"


def test_cycling_while_layers_are_still_being_added_shows_the_chosen_one(review, qtbot):
    """Press '.' five times as soon as the first hypothesis is on screen: the sixth is shown
    at once (not "layer deleted", not nothing), and stays the only visible one."""
    viewer, widget = review
    viewer.open_sample("napari-probunet", "lesion")
    widget.sampler.n_spin.setValue(40)
    assert widget.sampler.sample()
    qtbot.waitUntil(lambda: widget.state.hypotheses is not None
                    and bool(widget.hypothesis_view.pending),
                    timeout=60000)
    for _ in range(5):
        press(viewer, ".")
    sixth = widget.hypothesis_view.layers[5]
    assert sixth in viewer.layers and sixth.visible
    assert "Hypothesis 6/40" in widget.hypothesis_view.hypothesis_label.text()
    assert "deleted" not in widget.hypothesis_view.hypothesis_label.text()
    wait_idle(qtbot, widget)
    layers = hypothesis_layers(viewer, "lesion", 40)
    assert [layer.visible for layer in layers] == [i == 5 for i in range(40)]
    order = [viewer.layers.index(layer) for layer in layers]
    assert order == sorted(order, reverse=True)  # hypothesis k right below k-1, as always
    assert widget.hypothesis_view.hypothesis_label.text().startswith("Hypothesis 6/40")
    assert "(layer" not in widget.hypothesis_view.hypothesis_label.text()


def test_resampling_replaces_the_previous_set(review, qtbot):
    viewer, widget = review
    image, _ = two_mode_case()
    viewer.add_image(image, name="case")
    widget.sampler.n_spin.setValue(6)
    sample_and_wait(qtbot, widget)
    first = hypothesis_layers(viewer, "case", 6)
    widget.sampler.n_spin.setValue(3)
    widget.sampler.seed_spin.setValue(7)
    sample_and_wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers if "hypothesis" in layer.name]
    assert sorted(names) == [f"case hypothesis {i:02d}" for i in range(1, 4)]
    assert [layer.metadata["seed"] for layer in hypothesis_layers(viewer, "case", 3)] == [7] * 3
    assert hypothesis_layers(viewer, "case", 3) == first[:3]  # reused, not piled up
    assert len([la for la in viewer.layers if la.name == "case uncertainty"]) == 1
    widget.sampler.new_seed_button.click()
    assert widget.sampler.seed_spin.value() != 7


def test_explorer_point_becomes_the_correction(review, qtbot, tmp_path):
    viewer, widget = review
    image, _ = two_mode_case()
    viewer.add_image(image, name="case")
    sample_and_wait(qtbot, widget)
    z = np.array([0.5, -1.0], np.float32)
    labels = widget.state.session.decode(z)
    widget.state.best_fit_requested.emit(Choice(source="explorer", index=None, z=z, labels=labels))
    correction = viewer.layers["case correction"]
    np.testing.assert_array_equal(correction.data, labels)
    path = widget.correction.export(tmp_path / "explorer.npy")
    record = json.loads(export.record_path(path).read_text())
    assert record["choice"]["source"] == "explorer" and "seed" not in record["choice"]
    np.testing.assert_allclose(record["choice"]["z"], z)
    assert record["pixels_changed_by_hand"] == 0


def test_replacing_an_edited_correction_asks_first(review, qtbot):
    viewer, widget = review
    image, _ = two_mode_case()
    viewer.add_image(image, name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit(0)
    correction = viewer.layers["case correction"]
    widget.controller.use_as_best_fit(1)  # nothing edited yet: replaced without a question
    np.testing.assert_array_equal(correction.data, widget.state.hypotheses.labels[1])
    correction.paint((2, 2), 1)
    correction.paint((2, 2), 0)
    correction.paint((28, 28), 1 - correction.data[28, 28])
    edited = correction.data.copy()
    questions = []
    widget.correction.confirm = lambda title, text: questions.append(text) or False
    widget.controller.use_as_best_fit(3)
    assert questions and "edited by hand" in questions[0]
    np.testing.assert_array_equal(viewer.layers["case correction"].data, edited)
    widget.correction.confirm = lambda title, text: True
    widget.controller.use_as_best_fit(3)
    np.testing.assert_array_equal(viewer.layers["case correction"].data,
                                  widget.state.hypotheses.labels[3])


# ----------------------------------------------------------------------------- ROI and placement


def test_click_roi_places_the_hypotheses_over_the_lesion(review, qtbot, tmp_path):
    viewer, widget = review
    data = sample_lesion_large()[0][0]
    image = viewer.add_image(data, name="CT slice", scale=(0.5, 0.5), translate=(10.0, -4.0))
    widget.controller.input.set_roi_mode("click")
    side = widget.state.model.config.input_size  # 32 for the tiny model
    centre = (LARGE_OFFSET[0] + 32, LARGE_OFFSET[1] + 32)  # the lesion, in data pixels
    world = image.data_to_world(centre)

    mouse(viewer, world, drag_to=(260, 240))  # a drag pans: no ROI, no sampling
    assert widget.controller.input.click is None and not widget.busy
    mouse(viewer, world)  # a click: the ROI is centred on it and sampling starts
    wait_idle(qtbot, widget)

    r0, c0 = centre[0] - side // 2, centre[1] - side // 2
    assert widget.state.encoded.roi == (r0, c0, side, side)
    np.testing.assert_array_equal(widget.state.encoded.image, data[r0:r0 + side, c0:c0 + side])
    first = viewer.layers["CT slice hypothesis 01"]
    assert first.data.shape == (side, side)
    np.testing.assert_allclose(first.data_to_world((0, 0)), image.data_to_world((r0, c0)))
    np.testing.assert_allclose(first.data_to_world((side - 1, side - 1)),
                               image.data_to_world((r0 + side - 1, c0 + side - 1)))
    roi = viewer.layers["ROI"]
    np.testing.assert_allclose(roi.data_to_world(roi.data[0].min(axis=0)),
                               image.data_to_world((r0 - 0.5, c0 - 0.5)))

    # near the border the crop stays inside the image
    assert widget.roi_tool.set_click_roi(image.data_to_world((2, 250))) == \
        (0, 256 - side, side, side)
    wait_idle(qtbot, widget)

    # the export holds the whole 256x256 plane with the crop in place
    widget.controller.use_as_best_fit()
    correction = viewer.layers["CT slice correction"]
    path = widget.correction.export(tmp_path / "slice.npy")
    full = np.load(path)
    assert full.shape == (256, 256)
    roi = widget.state.encoded.roi
    np.testing.assert_array_equal(full[roi[0]:roi[0] + side, roi[1]:roi[1] + side], correction.data)
    inside = np.zeros_like(full, bool)
    inside[roi[0]:roi[0] + side, roi[1]:roi[1] + side] = True
    assert not full[~inside].any()
    record = json.loads(export.record_path(path).read_text())
    assert record["roi"] == dict(zip(("row", "col", "height", "width"), roi))
    assert record["image"]["scale"] == [0.5, 0.5]


def test_rectangle_roi_from_a_shapes_layer(review, qtbot):
    viewer, widget = review
    data = sample_lesion_large()[0][0]
    viewer.add_image(data, name="CT slice")
    widget.controller.input.set_roi_mode("rectangle")
    shapes = viewer.layers["ROI"]  # created for the user to draw in
    assert viewer.layers.selection.active is shapes and shapes.mode == "add_rectangle"
    shapes.add_rectangles(np.array([[59.5, 39.5], [123.5, 103.5]]))
    viewer.layers.selection.active = viewer.layers["CT slice"]
    sample_and_wait(qtbot, widget)
    assert widget.state.encoded.roi == (60, 40, 64, 64)
    assert viewer.layers["CT slice hypothesis 01"].data.shape == (64, 64)


def test_current_slice_of_a_4d_stack_and_rgb(review, qtbot, notes):
    viewer, widget = review
    image, _ = two_mode_case()
    stack = np.stack([np.stack([image * (0.6 + 0.1 * t + 0.05 * z) for z in range(3)])
                      for t in range(2)])  # (t, z, y, x)
    layer = viewer.add_image(stack, name="stack", scale=(1, 2, 0.5, 0.5))
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    sample_and_wait(qtbot, widget)
    assert widget.state.encoded.slice_index == (1, 2)
    np.testing.assert_array_equal(widget.state.encoded.image, stack[1, 2])
    first = viewer.layers["stack hypothesis 01"]
    assert first.data.shape == (1, 1, 32, 32)  # shown on that slice only
    np.testing.assert_allclose(first.data_to_world((0, 0, 0, 0)), layer.data_to_world((1, 2, 0, 0)))

    viewer.dims.ndisplay = 3
    assert not widget.sampler.sample()
    assert said(notes, "switch the viewer to 2D", NotificationSeverity.WARNING)
    viewer.dims.ndisplay = 2

    rgb = (np.stack([image, image * 0.8, image * 0.6], axis=-1) * 255).astype(np.uint8)
    viewer.add_image(rgb, name="colour")
    assert viewer.layers["colour"].rgb
    widget.roi_tool.image_combo.setCurrentText("colour")
    sample_and_wait(qtbot, widget)
    assert viewer.layers["colour hypothesis 01"].data.shape == (32, 32)


# ----------------------------------------------------------------------------- running work


def test_cancel_keeps_the_previous_hypotheses(review, qtbot, notes):
    viewer, widget = review
    viewer.add_image(sample_lesion_large()[0][0], name="CT slice")
    widget.controller.input.set_roi_mode("whole")  # the whole 256x256 slice: a long run, on purpose
    widget.sampler.n_spin.setValue(100)
    assert widget.sampler.sample()
    qtbot.mouseClick(widget.sampler.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, widget)
    assert said(notes, "Sampling cancelled")
    assert widget.state.hypotheses is None
    assert not any("hypothesis" in layer.name for layer in viewer.layers)


def test_second_click_while_sampling_is_refused(review, qtbot, notes):
    viewer, widget = review
    viewer.add_image(sample_lesion_large()[0][0], name="CT slice")
    widget.controller.input.set_roi_mode("whole")  # the whole 256x256 slice: a long run, on purpose
    assert widget.sampler.sample()
    # the worker's end is handled by the Qt event loop, which has not run yet: still running
    qtbot.mouseClick(widget.sampler.sample_button, Qt.MouseButton.LeftButton)
    assert said(notes, "already running", NotificationSeverity.WARNING)
    wait_idle(qtbot, widget)
    assert len(hypothesis_layers(viewer, "CT slice", 4)) == 4
    assert not any(layer.name.endswith("hypothesis 05") for layer in viewer.layers)


def test_image_deleted_while_sampling(review, qtbot, notes):
    viewer, widget = review
    viewer.add_image(sample_lesion_large()[0][0], name="CT slice")
    widget.controller.input.set_roi_mode("whole")  # the whole 256x256 slice: a long run, on purpose
    widget.sampler.n_spin.setValue(100)
    assert widget.sampler.sample()
    viewer.layers.remove("CT slice")
    wait_idle(qtbot, widget)
    assert said(notes, "'CT slice' was removed while sampling", NotificationSeverity.WARNING)
    assert not any("hypothesis" in layer.name for layer in viewer.layers)


def test_hypothesis_layer_deleted_before_and_while_sampling(review, qtbot):
    viewer, widget = review
    image, _ = two_mode_case()
    viewer.add_image(image, name="case")
    widget.sampler.n_spin.setValue(6)
    sample_and_wait(qtbot, widget)
    viewer.layers.remove("case hypothesis 04")
    for _ in range(3):
        widget.controller.next_hypothesis()  # reaches the deleted one without an error
    assert "Hypothesis 4/6" in widget.hypothesis_view.hypothesis_label.text()
    assert "layer deleted" in widget.hypothesis_view.hypothesis_label.text()
    widget.controller.next_hypothesis()
    assert viewer.layers["case hypothesis 05"].visible
    widget.controller.use_as_best_fit(3)  # its labels are still known
    np.testing.assert_array_equal(viewer.layers["case correction"].data,
                                  widget.state.hypotheses.labels[3])
    widget.sampler.seed_spin.setValue(3)
    assert widget.sampler.sample()
    viewer.layers.remove("case hypothesis 02")
    wait_idle(qtbot, widget)
    assert len(hypothesis_layers(viewer, "case", 6)) == 6
    assert viewer.layers[-1].name == "case correction"  # still on top


# ----------------------------------------------------------------------------- bad input


def test_bad_images_are_explained(review, qtbot, notes):
    viewer, widget = review
    assert not widget.sampler.sample()
    assert said(notes, "There is no image layer", NotificationSeverity.ERROR)

    image, _ = two_mode_case()
    holes = image.copy()
    holes[3, 4] = np.nan
    viewer.add_image(holes, name="holes")
    sample_and_wait(qtbot, widget)
    assert said(notes, "'holes' has 1 NaN or infinite pixel(s)", NotificationSeverity.ERROR)

    viewer.add_image(np.full((32, 32), 0.3, np.float32), name="flat")
    widget.roi_tool.image_combo.setCurrentText("flat")
    sample_and_wait(qtbot, widget)
    assert said(notes, "is constant", NotificationSeverity.ERROR)

    viewer.add_image(np.zeros((1100, 1100), np.float32), name="huge")
    widget.roi_tool.image_combo.setCurrentText("huge")
    assert widget.roi_tool.roi_mode == "click"  # chosen for a large image
    assert said(notes, "much larger than the model's")
    widget.controller.input.set_roi_mode("whole")
    assert not widget.sampler.sample()
    assert said(notes, "too large to segment whole", NotificationSeverity.WARNING)
    assert widget.roi_tool.roi_mode == "click"
    assert not widget.sampler.sample()
    assert said(notes, "Click on the lesion in the viewer first")
    assert widget.state.hypotheses is None


def test_incompatible_model_files_keep_the_loaded_model(review, qtbot, notes, tmp_path,
                                                         two_mode_model_file):
    viewer, widget = review
    loaded = widget.state.model
    pickled = tmp_path / "checkpoint.pth"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(two_mode_model_file.read_bytes()[:1000])
    for path, words in ((pickled, "pickled PyTorch checkpoint"), (truncated, "truncated")):
        widget.model_panel.ask_model_path = lambda folder, path=path: str(path)
        qtbot.mouseClick(widget.model_panel.open_model_button, Qt.MouseButton.LeftButton)
        wait_idle(qtbot, widget)
        assert said(notes, words, NotificationSeverity.ERROR)
        assert said(notes, "The previous model stays loaded")
        assert widget.state.model is loaded
    assert "two_mode.safetensors" in widget.model_panel.model_label.text()


def test_missing_bundled_model_says_so(make_napari_viewer, monkeypatch, tmp_path, notes):
    import napari_probunet.model.modelfile as modelfile

    monkeypatch.setattr(modelfile, "MODELS_DIR", tmp_path)  # no bundled model files there
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    assert said(notes, "The bundled model is not installed", NotificationSeverity.WARNING)
    assert "No model loaded" in widget.model_panel.model_label.text()
    assert "Open model" in widget.model_panel.model_label.text()
    viewer.add_image(two_mode_case()[0], name="case")
    assert not widget.sampler.sample()
    assert said(notes, "No model is loaded", NotificationSeverity.ERROR)


def test_bundled_model_loads_off_the_gui_thread(make_napari_viewer, qtbot, monkeypatch,
                                                 two_mode_model_file, tmp_path):
    import shutil

    import napari_probunet.model.modelfile as modelfile

    shutil.copyfile(two_mode_model_file, tmp_path / "lesions.safetensors")
    monkeypatch.setattr(modelfile, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(modelfile, "DEFAULT_MODEL_NAME", "lesions")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    assert widget.controller.loading  # loading in the background
    widget.sampler.n_spin.setValue(4)
    viewer.add_image(two_mode_case()[0], name="case")
    assert not widget.sampler.sample()  # queued until the model is there
    wait_idle(qtbot, widget)
    assert "Synthetic demo lesion (bundled model)" in widget.model_panel.model_label.text()
    assert widget.model_panel.model_combo.currentText() == "Synthetic demo lesion"
    assert widget.state.hypotheses is not None  # the queued sampling ran


def test_devices_listed_and_remembered(review, make_napari_viewer, notes):
    from napari_probunet.device import available_devices
    from napari_probunet.gui.review.common import settings

    viewer, widget = review
    assert widget.model_panel.device_names() == ["auto", *available_devices()]
    widget.model_panel.set_device("cpu")
    assert str(settings().value("device")) == "cpu"
    assert ReviewWidget(make_napari_viewer(), load_default=False).model_panel.device == "cpu"
    if "cuda" not in available_devices():
        widget.model_panel.set_device("cuda")
        assert said(notes, "'cuda' is not available", NotificationSeverity.ERROR)


# ----------------------------------------------------------------------------- never lose work


def test_autosave_and_restore_on_reopening(review, qtbot, tmp_path, notes):
    viewer, widget = review
    widget.correction.timer.setInterval(30)
    image, _ = two_mode_case()
    viewer.add_image(image, name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit(2)
    correction = viewer.layers["case correction"]
    correction.paint((3, 3), 1)
    painted = correction.data.copy()
    recovery = recovery_path(image_signature(image))
    assert recovery.parent == tmp_path / "recovery"
    qtbot.waitUntil(recovery.exists, timeout=5000)
    saved, source, info = load_recovery(image_signature(image))
    np.testing.assert_array_equal(saved, painted)
    assert info["index"] == 2 and "autosaved" in widget.correction.correction_label.text()

    # the correction is deleted by mistake; sampling the same image offers it back
    viewer.layers.remove(correction)
    questions = []
    widget.correction.confirm = lambda title, text: questions.append(title) or True
    widget.sampler.seed_spin.setValue(11)
    sample_and_wait(qtbot, widget)
    assert questions == ["Restore the autosaved correction?"]
    restored = viewer.layers["case correction"]
    np.testing.assert_array_equal(restored.data, painted)
    assert restored.metadata["index"] == 2 and restored.metadata["seed"] == 0

    # declined: kept on disk, not asked again in this session
    viewer.layers.remove(restored)
    widget.correction.confirm = lambda title, text: questions.append(title) or False
    sample_and_wait(qtbot, widget)
    sample_and_wait(qtbot, widget)
    assert len(questions) == 2 and recovery.exists()
    assert "case correction" not in viewer.layers


def test_no_overwrite_without_confirmation(review, qtbot, tmp_path, notes):
    viewer, widget = review
    viewer.add_image(two_mode_case()[0], name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit()
    target = tmp_path / "mask.png"
    target.write_bytes(b"someone else's file")
    widget.correction.confirm = lambda title, text: False
    assert widget.correction.export(target) is None
    assert target.read_bytes() == b"someone else's file"
    assert said(notes, "Nothing was exported")
    widget.correction.confirm = lambda title, text: True
    assert widget.correction.export(target) == target
    from PIL import Image

    stored = np.asarray(Image.open(target))
    np.testing.assert_array_equal(stored > 0, viewer.layers["case correction"].data > 0)


def test_failed_write_keeps_the_correction(review, qtbot, tmp_path, notes, monkeypatch):
    viewer, widget = review
    viewer.add_image(two_mode_case()[0], name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit()
    correction = viewer.layers["case correction"]
    correction.paint((1, 1), 1)
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the folder refuse, as a read-only one does
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr("tempfile.mkstemp", refuse)
    else:
        folder.chmod(0o500)
    try:
        assert widget.correction.export(folder / "mask.tif") is None
    finally:
        folder.chmod(0o700)
    assert said(notes, "read-only", NotificationSeverity.ERROR)
    assert said(notes, "the correction is unchanged in napari")
    assert correction in viewer.layers and list(folder.iterdir()) == []


def test_file_save_uses_the_writer_with_a_record(review, qtbot, tmp_path):
    viewer, widget = review
    viewer.add_image(two_mode_case()[0], name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit(1)
    correction = viewer.layers["case correction"]
    correction.paint((5, 5), 1)
    viewer.layers.selection.active = correction
    written = viewer.layers.save(str(tmp_path / "saved.nii.gz"), selected=True,
                                 plugin="napari-probunet")
    assert str(tmp_path / "saved.nii.gz") in written
    import nibabel

    np.testing.assert_array_equal(np.asarray(nibabel.load(tmp_path / "saved.nii.gz").dataobj),
                                  correction.data)
    record = json.loads((tmp_path / "saved.nii.gz.json").read_text())
    assert record["choice"]["index"] == 1 and record["pixels_changed_by_hand"] >= 1


def test_closing_the_widget_unbinds_its_shortcuts(review, qtbot):
    viewer, widget = review
    assert KeyBinding.from_str(".") in viewer.keymap
    viewer.window.remove_dock_widget(widget)
    widget.close()
    for key in (".", ",", "Shift-Enter", "Control-Enter", "Control-Shift-E"):
        assert KeyBinding.from_str(key) not in viewer.keymap
    assert widget.roi_tool.on_mouse_press not in viewer.mouse_drag_callbacks


def test_samples_open_with_their_graders(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-probunet", "lesion_large")
    assert [layer.name for layer in viewer.layers] == ["CT slice"] + [
        f"grader {r}" for r in range(1, 5)]
    assert not any(layer.visible for layer in viewer.layers[1:])
    assert viewer.layers["CT slice"].data.shape == (256, 256)
    small = sample_lesion()
    assert small[0][0].shape == (64, 64)


def test_the_explorer_shares_the_state_through_napari(make_napari_viewer, qtbot,
                                                       two_mode_model_file):
    """Both widgets as napari docks them (each gets its own proxy of the viewer): the explorer
    sees the hypotheses, and its best fit becomes the review widget's correction."""
    pytest.importorskip("napari_probunet.gui.explorer.widget")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-probunet", "Probabilistic U-Net")
    _, explorer = viewer.window.add_plugin_dock_widget("napari-probunet", "Latent-space explorer")
    assert explorer.state is widget.state
    wait_idle(qtbot, widget)  # the bundled model, if installed
    widget.model_panel.load_model_file(two_mode_model_file)
    wait_idle(qtbot, widget)
    widget.sampler.n_spin.setValue(4)
    viewer.add_image(two_mode_case()[0], name="case")
    sample_and_wait(qtbot, widget)
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    explorer.set_point(1.0, 0.0)
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    choice = explorer.use_as_best_fit()
    correction = viewer.layers["case correction"]
    np.testing.assert_array_equal(correction.data, choice.labels)
    assert correction.metadata["source"] == "explorer"
    np.testing.assert_allclose(correction.metadata["z"], choice.z)


def test_a_reopened_widget_picks_up_the_review(review, qtbot, tmp_path):
    viewer, widget = review
    viewer.add_image(two_mode_case()[0], name="case")
    sample_and_wait(qtbot, widget)
    widget.controller.use_as_best_fit(1)
    viewer.window.remove_dock_widget(widget)
    widget.close()
    again = ReviewWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(again)
    assert "Hypothesis 1/4" in again.hypothesis_view.hypothesis_label.text()
    again.controller.next_hypothesis()
    assert viewer.layers["case hypothesis 02"].visible
    assert again.correction.export(tmp_path / "again.npy") is not None


def test_placement_follows_any_image_transform():
    """ROI-sized layers sit on the image's pixels under scale, translate and rotation."""
    from napari.layers import Image, Labels

    from napari_probunet.gui.placement import placement
    from napari_probunet.gui.review.hypotheses import update_layer
    from napari_probunet.review.geometry import bounding_roi, centred_roi

    image = Image(np.random.rand(32, 32), rotate=30, scale=(0.5, 0.5), translate=(3, 4))
    roi = (4, 6, 8, 8)
    layer = Labels(np.zeros((8, 8), np.uint8), **placement(image, roi))
    for corner in ((0, 0), (7, 7), (0, 7)):
        np.testing.assert_allclose(layer.data_to_world(corner),
                                   image.data_to_world((corner[0] + 4, corner[1] + 6)))
    plain = Image(np.random.rand(32, 32))
    update_layer(layer, "moved", True, placement(plain, (1, 2, 8, 8)))
    np.testing.assert_allclose(layer.data_to_world((0, 0)), (1, 2))
    assert centred_roi(10.4, 3.0, 8, (32, 32)) == (6, 0, 8, 8)
    assert centred_roi(10, 10, 64, (32, 48)) == (0, 0, 32, 48)  # a small image: all of it
    assert bounding_roi(np.array([[1.5, 2.5], [9.5, 20.5]]), (32, 32)) == (2, 3, 8, 18)
    assert bounding_roi(np.array([[-9.0, -9.0], [-5.0, -5.0]]), (32, 32)) is None


def test_model_choice_lists_bundled_models_by_plain_name_and_opened_files(
        review, qtbot, tmp_path, two_mode_model_file):
    from napari_probunet.model.modelfile import BUNDLED_MODELS

    viewer, widget = review
    combo = widget.model_panel.model_combo
    titles = [combo.itemText(i) for i in range(combo.count())]
    shipped = [m.title for m in BUNDLED_MODELS if m.path.exists()]
    assert titles[:len(shipped)] == shipped
    assert "Synthetic demo lesion" in titles
    # the test's model file is listed as a file, selected
    assert widget.model_panel.model_combo.currentText() == f"File: {two_mode_model_file.name}"
    # choosing a bundled model loads it off the GUI thread and shows what it was trained on
    i = widget.model_panel.model_combo.findData("lesions")
    widget.model_panel.model_combo.setCurrentIndex(i)
    widget.model_panel.model_combo.activated.emit(i)
    wait_idle(qtbot, widget)
    assert widget.state.model.config.input_size == 64
    text = widget.model_panel.model_label.text()
    assert "Synthetic demo lesion (bundled model)" in text
    assert "Trained on: synthetic CT-like lesion crops" in text
    assert widget.model_panel.model_label.toolTip().startswith("Input: ")  # the intensities
    assert widget.model_panel.model_combo.currentText() == "Synthetic demo lesion"
    # no stale file entry
    assert widget.model_panel.model_combo.findData(str(two_mode_model_file)) == -1


def test_an_image_unlike_the_training_data_is_warned_about_not_blocked(
        review, qtbot, notes):
    """The synthetic model, given a photograph (colour, larger than its input): sampling runs,
    and the Model box and a notification say why its hypotheses may mean little."""
    import skimage.data

    viewer, widget = review
    widget.model_panel.load_bundled_model("lesions")
    wait_idle(qtbot, widget)
    viewer.add_image(skimage.data.astronaut()[:200, :200], name="photo", rgb=True)
    widget.controller.input.set_roi_mode("whole")
    widget.sampler.n_spin.setValue(2)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    assert widget.state.hypotheses is not None  # not blocked
    assert widget.model_panel.domain_label.isVisible() or not widget.isVisible()
    text = widget.model_panel.domain_label.text()
    assert "colour image" in text and "200x200 pixels" in text
    assert said(notes, "outside what the model knows", NotificationSeverity.WARNING)
    # an image like its training data clears the warning
    from napari_probunet.data.synthetic import SyntheticDataset

    viewer.add_image(SyntheticDataset("lesions", 1, seed=3, size=64)[0].image, name="synthetic")
    widget.roi_tool.image_combo.setCurrentText("synthetic")
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    assert widget.model_panel.domain_label.text() == ""
