"""Refine by clicks in the review widget: a click on the image adds an inside point, a
Shift+click an outside one, and the hypotheses are redrawn off the GUI thread to agree with
them (gui/review/prompts.py over review/refine.py), with the tiny two-mode model (core vs
core + halo)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks
from napari.utils.notifications import notification_manager

from napari_probunet.gui.clicks import INSIDE, OUTSIDE
from napari_probunet.gui.palette import RADIOLOGIST_COLOURS
from napari_probunet.gui.review.common import HYPOTHESIS_COLOURS
from napari_probunet.model.testing import two_mode_case, wait_idle

pytestmark = pytest.mark.usefixtures("isolated_settings")

HALO = (16, 24)  # the halo mode's lesion, the core mode's background


@dataclass
class _Mouse:
    """A vispy mouse event as napari's layer callbacks read it."""

    type: str
    position: tuple
    modifiers: list = field(default_factory=list)
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    handled: bool = False


def click(layer, at, modifiers=()) -> None:
    """A click (press and release, no move) on ``layer`` at world position ``at``."""
    mouse_press_callbacks(layer, _Mouse("mouse_press", tuple(at), list(modifiers)))
    mouse_release_callbacks(layer, _Mouse("mouse_release", tuple(at), list(modifiers)))


@pytest.fixture
def sampled(review, qtbot):
    """The review with 8 hypotheses of the two-mode image (the whole image)."""
    viewer, widget = review
    viewer.add_image(two_mode_case(32)[0], name="two modes")
    widget.sampler.n_spin.setValue(8)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    return viewer, widget


def settle(qtbot, widget) -> None:
    """Wait for the refinement the clicks started (and the layers it shows)."""
    qtbot.waitUntil(lambda: not widget.prompts.pending, timeout=60_000)
    wait_idle(qtbot, widget)


def halo_hypotheses(widget) -> np.ndarray:
    labels = widget.state.hypotheses.labels
    return labels[:, HALO[0], HALO[1]] == 1


def test_a_click_adds_a_point_and_the_hypotheses_agree(sampled, qtbot, tmp_path):
    viewer, widget = sampled
    prompts = widget.prompts
    before = widget.state.hypotheses
    assert not halo_hypotheses(widget).all()  # the plain sample has both modes
    prompts.refine_button.click()
    layer = viewer.layers["clicks"]
    assert viewer.layers.selection.active is layer and layer.mode == "add"

    click(layer, HALO)  # inside
    assert len(layer.data) == 1 and bool(layer.features["positive"][0])
    assert tuple(layer.face_color[0][:3]) == (1.0, 1.0, 1.0)
    settle(qtbot, widget)
    after = widget.state.hypotheses
    assert after is not before and after.n == 8 and after.seed == before.seed
    assert halo_hypotheses(widget).all()
    layers = widget.state.hypothesis_layers
    np.testing.assert_array_equal(layers[0].data, after.labels[0])
    record = layers[0].metadata["refined_by_clicks"]
    assert record["clicks"] == [[16, 24, True]] and len(record["picks"]) == 8
    assert "1 click(s): 8 of 8 hypotheses agree" in prompts.status.text()

    click(layer, (16, 26), ["Shift"])  # outside, next to the first: the halo's rim
    assert not bool(layer.features["positive"][1])
    assert layer.symbol[1].value == OUTSIDE[2]
    settle(qtbot, widget)
    labels = widget.state.hypotheses.labels
    assert (labels[:, 16, 24] == 1).all() or "miss a click" in prompts.status.text() \
        or any("miss a click" in str(n.message) for n in notification_manager.records)
    assert viewer.layers.selection.active is layer  # the user keeps clicking

    # the best fit, exported: its record names the clicks that steered it
    widget.controller.use_as_best_fit(3)
    out = tmp_path / "refined.tif"
    widget.correction.ask_save_path = lambda default: str(out)
    widget.correction.export()
    record = json.loads((tmp_path / "refined.tif.json").read_text())
    steered = record["choice"]["refined_by_clicks"]
    assert steered["clicks"][0] == [16, 24, True] and steered["rule"] == "sample"
    z = widget.state.session.draw_latents(max(steered["picks"]) + 1, 0)[steered["picks"][3]]
    np.testing.assert_allclose(record["choice"]["z"], z, rtol=1e-6)

    prompts.clear_button.click()  # no click: the plain sample again
    settle(qtbot, widget)
    np.testing.assert_array_equal(widget.state.hypotheses.labels, before.labels)


def test_an_outside_click_by_the_box_and_a_new_sample_forgets_the_clicks(sampled, qtbot):
    viewer, widget = sampled
    prompts = widget.prompts
    prompts.outside_check.setChecked(True)
    prompts.add_click(*HALO)
    settle(qtbot, widget)
    assert not halo_hypotheses(widget).any()  # every hypothesis is the core
    assert prompts.clicks() == [(16.0, 24.0, False)]
    assert widget.sampler.sample()  # a plain sample: the clicks were about the old set
    settle(qtbot, widget)
    assert prompts.clicks() == [] and "Sample first" in prompts.status.text()


def test_clicks_need_hypotheses_and_the_region(review, qtbot):
    viewer, widget = review
    start = len(notification_manager.records)
    widget.prompts.refine_button.click()
    assert not widget.prompts.refine_button.isChecked()
    said = [str(n.message) for n in notification_manager.records[start:]]
    assert any("Sample first" in m for m in said)
    viewer.add_image(np.pad(two_mode_case(32)[0], 8), name="padded")
    widget.controller.input.set_roi_mode("click")
    widget.controller.input.set(run_on_click=True)
    widget.roi_tool.set_click_roi((20, 20))  # a 32x32 region inside the 48x48 image: sampled
    wait_idle(qtbot, widget)
    assert widget.state.encoded.roi == (4, 4, 32, 32)
    before = widget.state.hypotheses
    widget.prompts.add_click(40, 2)  # below the region
    settle(qtbot, widget)
    said = [str(n.message) for n in notification_manager.records[start:]]
    assert any("outside the region of interest" in m for m in said)
    assert widget.state.hypotheses is before


def test_click_colours_stand_apart():
    def rgb(colour):
        if isinstance(colour, str):
            return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255
        return np.array(colour, float)

    others = [rgb(c) for c in RADIOLOGIST_COLOURS] + [rgb(HYPOTHESIS_COLOURS[0])]
    for fill in (INSIDE[0], OUTSIDE[0]):
        assert min(np.abs(rgb(fill) - o).sum() for o in others) > 0.5
    assert INSIDE[2] != OUTSIDE[2]  # told apart by shape, not by colour alone


def test_nodule_widget_clicks_on_another_slice_steer_the_nodule(review, qtbot):
    from napari_probunet.gui.nodule.widget import NoduleWidget
    from tests.test_nodule import nodule_scan

    viewer, _ = review
    viewer.add_image(nodule_scan(), name="scan", scale=(2.5, 0.7, 0.7))
    widget = NoduleWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Nodule (3D)")
    widget.n_spin.setValue(8)
    assert widget.find_nodule((4, 32, 32))
    wait_idle(qtbot, widget)
    plain = widget.result
    assert (plain.labels[:, 5 - plain.first, 32 - plain.roi[0], 40 - plain.roi[1]] == 0).any()

    prompts = widget.prompts
    prompts.refine_button.click()
    layer = viewer.layers["nodule clicks"]
    assert viewer.layers.selection.active is layer and layer.mode == "add"
    prompts.add_click((5, 32, 40))  # the halo, one slice up
    assert prompts.clicks() == [(5, 32, 40, True)]
    qtbot.waitUntil(lambda: not prompts.pending and widget.result is not plain, timeout=60_000)
    steered = widget.result
    k = 5 - steered.first
    assert (steered.labels[:, k, 32 - steered.roi[0], 40 - steered.roi[1]] == 1).all()
    assert "8 of 8 hypotheses agree with the 1 click(s)" in widget.status.text()
    assert widget.gallery.count() == 8

    prompts.add_click((4, 2, 2), inside=False)  # outside the nodule's region: explained
    qtbot.waitUntil(lambda: not prompts.pending, timeout=60_000)
    assert widget.result is steered
    said = [str(n.message) for n in notification_manager.records[-3:]]
    assert any("outside the nodule's region" in m for m in said)
    assert widget.find_nodule((4, 32, 32))  # a new nodule: its clicks start afresh
    wait_idle(qtbot, widget)
    assert prompts.clicks() == []
