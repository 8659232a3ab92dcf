"""The hypothesis gallery of the review widget: all hypotheses at a glance, click to show, keys
to move, marks to shortlist or reject, use as best fit; the similarity order (pure function);
hypothesis layers on demand for many hypotheses.

A real napari viewer and the tiny real model of conftest.py (``review`` fixture).
"""

from __future__ import annotations

import numpy as np
import pytest
from app_model.types import KeyBinding
from qtpy.QtCore import Qt

from napari_probunet.gui.review import hypotheses as hypotheses_module
from napari_probunet.gui.review import thumbnails
from napari_probunet.model.testing import wait_idle
from napari_probunet.review.ordering import ordered, similarity_order

pytestmark = pytest.mark.usefixtures("isolated_settings")


# ----------------------------------------------------------------------------- pure functions


def _disk(centre, radius, size=32):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)


def test_similarity_order_puts_identical_masks_next_to_each_other():
    small, other, big = _disk((8, 8), 3), _disk((22, 22), 4), _disk((16, 16), 10)
    empty = np.zeros((32, 32), np.uint8)
    kinds = ["small", "other", "empty", "big", "small", "other", "empty", "big", "small"]
    masks = {"small": small, "other": other, "big": big, "empty": empty}
    labels = np.stack([masks[k] for k in kinds])
    order = similarity_order(labels)
    assert sorted(order.tolist()) == list(range(len(kinds)))  # a permutation
    seen = [kinds[i] for i in order]
    # each kind is one run of neighbours: identical masks next to each other
    runs = [k for j, k in enumerate(seen) if j == 0 or seen[j - 1] != k]
    assert sorted(runs) == sorted(set(kinds)), seen
    assert seen[0] == "empty"  # empty ones together, first
    assert similarity_order(labels).tolist() == order.tolist()  # deterministic
    assert ordered(labels, "seed").tolist() == list(range(len(kinds)))
    assert similarity_order(labels[:1]).tolist() == [0]
    with pytest.raises(ValueError):
        ordered(labels, "area")


def test_thumbnails_draw_the_contour_over_the_grey_region():
    image = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    labels = np.stack([_disk((32, 32), 12, 64), np.zeros((64, 64), np.uint8)])
    rgb = thumbnails.render(image, labels, 32, [(0.0, 1.0, 0.0)])
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8
    grey = rgb[1]
    assert (grey[..., 0] == grey[..., 1]).all()
    assert (grey[:, -1, 0].astype(int) > grey[:, 0, 0].astype(int) + 150).all()
    edge = rgb[0, 16, 16 - 6]  # on the disk's left border (radius 6 at this size)
    assert tuple(edge) == (0, 255, 0)
    inside = rgb[0, 16, 16]
    assert inside[1] > inside[0]  # a light green fill over the grey
    assert (rgb[0, 0, 0] == grey[0, 0]).all()  # nothing drawn outside
    assert thumbnails.thumbnail_shape((128, 64), 80) == (80, 40)


def test_thumbnails_zoom_on_the_hypotheses():
    labels = np.zeros((3, 128, 128), np.uint8)
    labels[0, 100:110, 20:26] = 1
    labels[2, 104:112, 22:30] = 1
    r0, r1, c0, c1 = thumbnails.focus(labels)
    assert r1 - r0 == c1 - c0 and 0 <= r0 and r1 <= 128 and 0 <= c0 and c1 <= 128  # a square
    assert r0 <= 100 and r1 >= 112 and c0 <= 20 and c1 >= 30  # holds every hypothesis
    assert r1 - r0 < 64  # zoomed in
    assert thumbnails.focus(np.zeros((2, 50, 60), np.uint8)) == (0, 50, 0, 60)  # all empty
    rgb = thumbnails.render(None, labels, 80, [(1.0, 0.0, 0.0)], (r0, r1, c0, c1))
    assert rgb.shape == (3, 80, 80, 3) and rgb[1].max() == 0  # black without an image
    assert (rgb[0, ..., 0] > 0).mean() > 0.03  # 60 of 128x128 pixels: 0.4% unzoomed


# ----------------------------------------------------------------------------- the widget


def press(viewer, key: str) -> None:
    viewer.keymap[KeyBinding.from_str(key)](viewer)


def sample(qtbot, viewer, widget, n: int, seed: int = 0):
    if "lesion" not in viewer.layers:
        viewer.open_sample("napari-probunet", "lesion")
    widget.sampler.n_spin.setValue(n)
    widget.sampler.seed_spin.setValue(seed)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    gallery = widget.gallery
    qtbot.waitUntil(lambda: gallery.pending == 0, timeout=10000)
    return gallery


def item_of(gallery, index: int):
    grid = gallery.grid
    return next(grid.item(r) for r in range(grid.count())
                if grid.item(r).data(Qt.ItemDataRole.UserRole) == index)


def click(qtbot, gallery, index: int, double: bool = False) -> None:
    grid = gallery.grid
    item = item_of(gallery, index)
    grid.scrollToItem(item)
    centre = grid.visualItemRect(item).center()
    qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    if double:  # a double-click is a click, then a double-click event (Qt's order)
        qtbot.mouseDClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=centre)


def shown(widget) -> list[int]:
    return [i for i, layer in enumerate(widget.hypothesis_view.layers)
            if layer.visible and layer in widget.viewer.layers]


def test_sampling_fills_the_gallery_click_shows_keys_move(review, qtbot):
    viewer, widget = review
    gallery = sample(qtbot, viewer, widget, 6)
    hyp = widget.state.hypotheses
    assert gallery.count == 6 and all(t is not None for t in gallery.thumbnails)
    assert gallery.thumbnails[0].width() == gallery.SIZE  # 64x64 region -> 80 px a side
    assert gallery.displayed() == list(range(6))  # seed order
    assert gallery.grid.currentItem() is item_of(gallery, 0)  # the shown one is highlighted
    assert "6 hypotheses" in gallery.summary.text()
    assert "px" in item_of(gallery, 2).toolTip()

    click(qtbot, gallery, 3)
    assert widget.controller.current == 3 and shown(widget) == [3]
    assert "Hypothesis 4/6" in widget.hypothesis_view.hypothesis_label.text()
    assert gallery.grid.currentItem() is item_of(gallery, 3)

    gallery.grid.setFocus()
    qtbot.keyClick(gallery.grid, Qt.Key.Key_Right)  # the next thumbnail in the grid
    assert widget.controller.current == 4 and shown(widget) == [4]
    qtbot.keyClick(gallery.grid, ",")  # the widget's keys work in the grid too
    assert widget.controller.current == 3 and shown(widget) == [3]
    press(viewer, ".")  # the viewer's key: the highlight follows
    press(viewer, ".")
    assert widget.controller.current == 5 and shown(widget) == [5]
    assert gallery.grid.currentItem() is item_of(gallery, 5)
    widget.hypothesis_view.previous_button.click()
    assert gallery.grid.currentItem() is item_of(gallery, 4)

    # a thumbnail is that hypothesis over the region
    fg = hyp.labels[4] > 0
    if fg.any():
        rgb = gallery._rgb[4]
        assert not (rgb[..., 0] == rgb[..., 1]).all()  # colour drawn
    # the region changed: the gallery empties with the hypotheses
    widget.controller.encoded(widget.state.encoded)
    assert gallery.count == 0 and gallery.grid.count() == 0
    assert gallery.summary.text() == "No hypotheses yet"


def test_marks_persist_and_hide_rejected(review, qtbot):
    viewer, widget = review
    gallery = sample(qtbot, viewer, widget, 6)
    gallery.mark(1, "reject")
    gallery.mark(2, "shortlist")
    click(qtbot, gallery, 4)
    gallery.grid.setFocus()
    qtbot.keyClick(gallery.grid, "x")  # reject the shown one (4) from the keyboard
    assert gallery.marks == {1: "reject", 2: "shortlist", 4: "reject"}
    gallery.reject_button.click()  # the same again: the mark is taken back
    assert gallery.marks == {1: "reject", 2: "shortlist"}
    assert "★ 1" in gallery.summary.text() and "✕ 1" in gallery.summary.text()
    assert "★" in item_of(gallery, 2).text() and "rejected" in item_of(gallery, 1).toolTip()

    gallery.hide_rejected_check.click()
    assert gallery.hide_rejected and item_of(gallery, 1).isHidden()
    assert 1 not in gallery.displayed() and len(gallery.displayed()) == 5

    # marks stay through navigation and another order
    widget.controller.next_hypothesis()
    gallery.set_order("similarity")
    assert gallery.order_combo.currentData() == "similarity"
    assert sorted(gallery.displayed()) == [0, 2, 3, 4, 5]
    assert gallery.marks == {1: "reject", 2: "shortlist"}
    gallery.set_hide_rejected(False)
    assert not gallery.hide_rejected_check.isChecked() and 1 in gallery.displayed()
    gallery.mark(1, None)
    assert gallery.marks == {2: "shortlist"}
    with pytest.raises(ValueError):
        gallery.mark(0, "maybe")

    # a new run: new hypotheses, no marks; the order chosen stays
    gallery = sample(qtbot, viewer, widget, 6, seed=5)
    assert gallery.marks == {} and gallery.order == "similarity"
    assert gallery.displayed() == similarity_order(widget.state.hypotheses.labels).tolist()


def test_use_as_best_fit_from_the_gallery(review, qtbot):
    viewer, widget = review
    gallery = sample(qtbot, viewer, widget, 5)
    click(qtbot, gallery, 2, double=True)
    correction = viewer.layers["lesion correction"]
    np.testing.assert_array_equal(correction.data, widget.state.hypotheses.labels[2])
    assert widget.state.choice.index == 2 and widget.controller.current == 2
    assert gallery.grid.currentItem() is item_of(gallery, 2)
    # Enter in the grid does the same for the highlighted one
    widget.correction.confirm = lambda title, text: True
    click(qtbot, gallery, 4)
    gallery.grid.setFocus()
    qtbot.keyClick(gallery.grid, Qt.Key.Key_Return)
    np.testing.assert_array_equal(viewer.layers["lesion correction"].data,
                                  widget.state.hypotheses.labels[4])
    assert widget.state.choice.index == 4


def test_similarity_order_in_the_grid(review, qtbot):
    viewer, widget = review
    gallery = sample(qtbot, viewer, widget, 8)
    gallery.order_combo.setCurrentIndex(gallery.order_combo.findData("similarity"))
    labels = widget.state.hypotheses.labels
    assert gallery.order == "similarity"
    assert gallery.displayed() == similarity_order(labels).tolist()
    assert gallery.grid.currentItem() is item_of(gallery, widget.controller.current)
    gallery.set_order("seed")
    assert gallery.displayed() == list(range(8))


def test_many_hypotheses_get_their_layers_on_demand(review, qtbot, monkeypatch):
    """Above LAYERS_ON_DEMAND_ABOVE hypotheses only the shown, shortlisted or asked-for layers
    join the viewer; every hypothesis still has its layer object, data and record."""
    viewer, widget = review
    monkeypatch.setattr(hypotheses_module, "LAYERS_ON_DEMAND_ABOVE", 4)
    gallery = sample(qtbot, viewer, widget, 7)
    layers = widget.hypothesis_view.layers
    hyp = widget.state.hypotheses
    assert len(layers) == 7 and widget.state.hypothesis_layers == layers
    for i, layer in enumerate(layers):
        np.testing.assert_array_equal(layer.data, hyp.labels[i])
        assert layer.metadata["index"] == i
    assert [la in viewer.layers for la in layers] == [True] + [False] * 6
    assert gallery.add_layers_button.isVisibleTo(gallery.box)
    assert "layers in the list: 1 of 7" in gallery.summary.text()

    click(qtbot, gallery, 5)  # shown: joins
    assert layers[5] in viewer.layers and shown(widget) == [5]
    assert widget.hypothesis_view.hypothesis_label.text() == \
        f"Hypothesis 6/7 · {int(hyp.labels[5].sum())} px"
    gallery.mark(2, "shortlist")  # shortlisted: joins, hidden
    assert layers[2] in viewer.layers and not layers[2].visible
    widget.state.current_hypothesis_changed.emit(3)  # the explorer picks one
    assert layers[3] in viewer.layers and shown(widget) == [3]
    assert gallery.grid.currentItem() is item_of(gallery, 3)
    order = [viewer.layers.index(la) for la in layers if la in viewer.layers]
    assert order == sorted(order, reverse=True)  # hypothesis k below k-1, as always

    gallery.add_layers_button.click()
    wait_idle(qtbot, widget)
    assert all(la in viewer.layers for la in layers)
    order = [viewer.layers.index(la) for la in layers]
    assert order == sorted(order, reverse=True)
    assert shown(widget) == [3] and not gallery.add_layers_button.isVisibleTo(gallery.box)
    widget.controller.use_as_best_fit(6)
    np.testing.assert_array_equal(viewer.layers["lesion correction"].data, hyp.labels[6])


def test_the_gallery_collapses(review, qtbot):
    viewer, widget = review
    gallery = widget.gallery
    assert gallery.content.isVisibleTo(widget)
    gallery.toggle_button.click()
    assert not gallery.content.isVisibleTo(widget)
    gallery.toggle_button.click()
    assert gallery.content.isVisibleTo(widget)
