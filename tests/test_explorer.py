"""The latent-space explorer: a plane through the prior, live decoding, markers, best fit.

Each test sets up the viewer's review state itself (a real tiny model in a Session, a region
of an image layer encoded, hypotheses sampled into Labels layers), as the review widget would,
so these tests do not depend on that widget.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from napari_probunet.gui import napari_compat
from napari_probunet.gui.dock import get_state
from napari_probunet.gui.explorer.widget import HOLD_HYPOTHESIS, ExplorerWidget
from napari_probunet.iou import foreground_iou
from napari_probunet.model.testing import tiny_model, train_two_mode_model, two_mode_case
from napari_probunet.review import plane as core
from napari_probunet.review.geometry import region_translate
from napari_probunet.review.state import EncodedRegion
from napari_probunet.session import Session

# ----------------------------------------------------------------------------------- helpers


def encode(viewer, model, image, *, roi=None, name="image", scale=(1.0, 1.0),
           translate=(0.0, 0.0), n=4, seed=0, layers=True):
    """Do what the review widget does: encode ``roi`` of an image layer and sample ``n``.

    ``layers=False`` skips the hypotheses' Labels layers (napari adds layers slowly).
    """
    if name not in viewer.layers:
        viewer.add_image(image, name=name, scale=scale, translate=translate)
    layer = viewer.layers[name]
    h, w = image.shape[:2]
    r0, c0, rh, rw = roi or (0, 0, h, w)
    crop = np.asarray(image)[r0:r0 + rh, c0:c0 + rw]
    state = get_state(viewer)
    session = Session(model, "cpu")
    session.set_image(crop)
    state.model, state.session = model, session
    state.model_changed.emit()
    state.encoded = EncodedRegion(name, (), (r0, c0, rh, rw), session.image_signature, crop)
    state.image_encoded.emit()
    hyp = session.sample(n, seed=seed)
    state.hypotheses = hyp
    t = np.asarray(layer.translate) + np.array([r0, c0]) * np.asarray(layer.scale)
    state.hypothesis_layers = [
        viewer.add_labels(hyp.labels[k], name=f"hypothesis {k + 1}", scale=layer.scale,
                          translate=t, visible=False, metadata={"z": hyp.z[k]})
        for k in range(n if layers else 0)
    ]
    state.hypotheses_changed.emit()
    return state, session


def mouse(widget, kind, pos: QPointF, held=True):
    button = Qt.MouseButton.LeftButton
    if kind == "press":
        etype, b, bs = QEvent.Type.MouseButtonPress, button, button
    elif kind == "move":
        etype, b, bs = QEvent.Type.MouseMove, Qt.MouseButton.NoButton, (
            button if held else Qt.MouseButton.NoButton)
    else:
        etype, b, bs = QEvent.Type.MouseButtonRelease, button, Qt.MouseButton.NoButton
    ev = QMouseEvent(etype, pos, QPointF(widget.mapToGlobal(pos.toPoint())), b, bs,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)


def click(widget, pos: QPointF):
    mouse(widget, "press", pos)
    mouse(widget, "release", pos)


@pytest.fixture
def explorer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Latent-space explorer")
    widget.map.resize(420, 480)

    def ready(timeout=20000):
        qtbot.waitUntil(lambda: widget.plane is not None and widget.idle, timeout=timeout)

    def idle(timeout=20000):
        qtbot.waitUntil(lambda: widget.idle, timeout=timeout)

    widget.wait_ready, widget.wait_idle = ready, idle
    yield viewer, widget
    widget.shutdown()


def image_64():
    image, _ = two_mode_case(64)
    return image


# ----------------------------------------------------------------------- GUI-free geometry


def test_plane_maps_sigma_units_to_latents_and_back():
    mu = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    sigma = np.array([1.0, 0.5, 2.0, 0.25], np.float32)
    plane = core.LatentPlane.through_prior(mu, sigma, 2, 0)
    z = plane.latent(1.5, -0.75)
    e2, e0 = np.eye(4, dtype=np.float32)[2], np.eye(4, dtype=np.float32)[0]
    np.testing.assert_array_equal(z, mu + sigma * (1.5 * e2 - 0.75 * e0))
    np.testing.assert_allclose(plane.coords(z), [1.5, -0.75], atol=1e-6)
    assert plane.off_plane(z) == 0
    # other coordinates held at a hypothesis: only the plane's axes move
    base = np.array([9, 8, 7, 6], np.float32)
    held = core.LatentPlane.through_prior(mu, sigma, 2, 0, base=base)
    z = held.latent(1.0, 1.0)
    assert z[1] == 8 and z[3] == 6
    assert z[2] == mu[2] + sigma[2] and z[0] == mu[0] + sigma[0]
    np.testing.assert_allclose(held.off_plane(mu), np.hypot((8 + 1.0) / 0.5, 6 / 0.25))
    # the grid tiles -3..3: row 0 at the top, centres symmetric about 0
    g = plane.grid_coords(9)
    assert g.shape == (81, 2)
    assert g[0, 0] < 0 < g[0, 1] and g[40].tolist() == [0, 0]
    np.testing.assert_allclose(g[:9, 0], -3 + (np.arange(9) + 0.5) * 6 / 9, atol=1e-6)
    # a line for one-dimensional latents
    line = core.LatentPlane.through_prior(mu[:1], sigma[:1], 0)
    assert line.is_line and line.grid_latents(5).shape == (5, 1)
    assert line.coords(line.latent(2.0))[1] == 0
    with pytest.raises(ValueError):
        core.LatentPlane.through_prior(mu, sigma, 1, 1)


def test_the_oblique_plane_goes_through_the_three_heaviest_components():
    mu = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    sigma = np.array([1.0, 0.5, 2.0, 0.25], np.float32)
    weights = np.array([0.1, 0.4, 0.2, 0.3], np.float32)
    means = np.array([[5, 5, 5, 5], [1, -1, 2, 0.5], [0, -2, 4, -0.5], [2, 0, 1, 0.25]],
                     np.float32)
    plane = core.LatentPlane.through_components(mu, sigma, weights, means)
    assert plane.is_oblique and plane.labels == ("c1\u2192c2", "\u2192c3 \u27c2")
    c1, c2, c3, light = means[1], means[3], means[2], means[0]
    np.testing.assert_allclose(plane.off_plane(np.stack([c1, c2, c3])), 0, atol=1e-5)
    assert plane.off_plane(light) > 1  # the lightest component is not on this plane
    uv = plane.coords(np.stack([c1, c2, c3]))
    assert abs(uv[1, 1] - uv[0, 1]) < 1e-5 and uv[1, 0] > uv[0, 0]  # c1 -> c2 runs across
    assert uv[2, 1] > uv[0, 1]  # c3 is up
    # u and v are in sigma units: one step of u moves the whitened latent by one
    step = (plane.latent(1.0, 0.0) - plane.latent(0.0, 0.0)) / sigma
    assert np.linalg.norm(step) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(plane.coords(plane.latents(uv)), uv, atol=1e-4)
    # (0, 0) is the plane's point nearest the overall mean
    w0 = (plane.latent(0, 0) - mu) / sigma
    np.testing.assert_allclose(plane.directions @ w0, 0, atol=1e-5)
    assert plane.same_plane(core.LatentPlane.through_components(mu, sigma, weights, means))
    # the map is widened (in half sigmas) until the three means are inside it with a margin
    assert plane.extent >= np.abs(uv).max() + 0.5 and plane.extent % 0.5 == 0
    assert plane.extent == core.DEFAULT_EXTENT or plane.extent - 0.5 < np.abs(uv).max() + 0.5
    near = core.LatentPlane.through_components(mu, sigma * 10, weights, means)
    assert near.extent == core.DEFAULT_EXTENT  # close components keep the usual +-3
    assert core.LatentPlane.through_components(mu, sigma, weights, means, extent=2).extent == 2
    # a component that lost its weight may have drifted far: it does not widen the map
    far = means.copy()
    far[2] = [0, -2, 90, -0.5]
    weights_far = np.array([0.0005, 0.6, 0.001, 0.3], np.float32)  # c3: the drifted one
    assert core.LatentPlane.through_components(mu, sigma, weights_far, far).extent <= 3.5
    assert core.LatentPlane.through_components(mu, sigma, weights, far).extent == core.MAX_COMPONENT_EXTENT
    assert not plane.same_plane(core.LatentPlane.through_prior(mu, sigma, 0, 1))
    # two components: v is the latent axis most perpendicular to c1 -> c2
    two = core.LatentPlane.through_components(mu, sigma, weights[:2], means[:2])
    np.testing.assert_allclose(two.off_plane(means[:2]), 0, atol=1e-5)
    assert two.labels[1] == "\u27c2" and abs(two.directions[0] @ two.directions[1]) < 1e-6
    with pytest.raises(ValueError, match="same mean"):
        core.LatentPlane.through_components(mu, sigma, weights[:2], np.stack([c1, c1]))
    with pytest.raises(ValueError, match="at least two components"):
        core.LatentPlane.through_components(mu, sigma, weights[:1], means[:1])


def test_rank_axes_prefers_the_axis_that_changes_the_mask():
    d, h, w = 3, 10, 10
    centre = np.zeros((h, w), np.uint8)
    centre[3:7, 3:7] = 1
    maps = np.repeat(centre[None], 2 * d + 1, axis=0)
    maps[1 + 2 * 2] = 0  # axis 2: the mask vanishes at +2 sigma
    maps[1 + 2 * 0, 3:7, 7] = 1  # axis 0: one column more at +2 sigma
    ranking = core.rank_axes(maps, num_classes=2)
    assert [s.axis for s in ranking] == [2, 0, 1]
    assert ranking[-1].change == 0 and ranking[0].change > ranking[1].change > 0
    probes = core.axis_probes(np.zeros(3), np.full(3, 0.5))
    np.testing.assert_allclose(probes[1], [1, 0, 0])
    np.testing.assert_allclose(probes[6], [0, 0, -1])


def test_crop_to_region_follows_scale_and_translate():
    # image 20x30 at scale 2 and translate (10, 4); ROI rows 5..9, cols 10..15
    roi = (5, 10, 4, 5)
    full = np.zeros((20, 30), np.uint8)
    full[6, 11] = 1
    mask, cover = core.crop_to_region(full, (2, 2), (10, 4), (2, 2), (10, 4), roi)
    assert cover == 1 and mask[1, 1] == 1 and mask.sum() == 1
    # a crop-sized layer placed by the placement rule reads back identically
    scale, translate = (2, 2), region_translate((10, 4), np.diag([2.0, 2.0]), (), roi)
    np.testing.assert_allclose(translate, [10 + 5 * 2, 4 + 10 * 2])
    crop = full[5:9, 10:15]
    mask2, cover2 = core.crop_to_region(crop, scale, translate, (2, 2), (10, 4), roi)
    assert cover2 == 1 and np.array_equal(mask2, mask)
    # a layer at half the pixel size (twice the pixels) is sampled at the nearest centres
    fine = np.kron(full, np.ones((2, 2), np.uint8))
    mask3, _ = core.crop_to_region(fine, (1, 1), (10, 4), (2, 2), (10, 4), roi)
    assert np.array_equal(mask3, mask)
    # partly outside: zeros there, coverage says so
    small = full[:7, :12]
    _, cover4 = core.crop_to_region(small, (2, 2), (10, 4), (2, 2), (10, 4), roi)
    assert 0 < cover4 < 1
    # a stack: the slice of the encoded region
    stack = np.stack([full, 2 * full])
    mask5, _ = core.crop_to_region(stack, (1, 2, 2), (0, 10, 4), (1, 2, 2), (0, 10, 4), roi,
                                   slice_index=(1,))
    assert mask5[1, 1] == 2


def test_mosaic_tiles_thumbnails_in_class_colours():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[1] = 1
    labels[2] = 2
    colors = np.array([[0, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 255]], np.uint8)
    img = core.mosaic(labels, 2, 2, colors, cell=8, gap=1, alpha=1.0)
    assert img.shape == (17, 17, 4)
    assert tuple(img[0, 0, :3]) == core.BACKGROUND_RGBA[:3]  # class 0: background shows
    assert tuple(img[0, 9, :3]) == (255, 0, 0) and tuple(img[9, 0, :3]) == (0, 0, 255)
    assert tuple(img[12, 12, :3]) == core.BACKGROUND_RGBA[:3]  # not decoded yet
    over = core.mosaic(labels, 2, 2, colors, cell=8, underlay=np.full((8, 8), 100, np.uint8),
                       alpha=0.5)
    assert tuple(over[0, 0, :3]) == (100, 100, 100) and tuple(over[0, 9, :3]) == (178, 50, 50)
    # thumbnails focus on where the masks are, with a margin, square where possible
    maps = np.zeros((2, 100, 80), np.uint8)
    maps[0, 40:50, 30:36] = 1
    maps[1, 45:60, 32:34] = 1
    r0, r1, c0, c1 = core.focus_box(maps, margin=0.25, min_size=16)
    assert r1 - r0 == c1 - c0 == 30 and r0 <= 40 and r1 >= 60 and c0 <= 30 and c1 >= 36
    assert core.focus_box(np.zeros((1, 10, 12))) == (0, 10, 0, 12)
    assert core.focus_box(np.ones((1, 10, 12))) == (0, 10, 0, 12)
    # thumbnails keep the aspect ratio and are what the mosaic draws unchanged
    big = np.arange(100 * 50).reshape(100, 50)
    thumb = core.thumbnail(big, 10)
    assert thumb.shape == (10, 5) and thumb[0, 0] == big[5, 5]
    assert np.array_equal(core.mosaic(core.thumbnail(labels, 4), 2, 2, colors, cell=4),
                          core.mosaic(labels, 2, 2, colors, cell=4))


# ------------------------------------------------------------------------ the dock widget


def test_without_a_model_the_map_explains_what_to_do(explorer):
    viewer, widget = explorer
    assert "model" in widget.map.hint.lower()
    click(widget.map, QPointF(200, 200))
    assert widget.plane is None and widget.explorer_layer is None
    assert widget.use_as_best_fit() is None
    assert not widget.best_fit_button.isEnabled()


def test_click_decodes_the_latent_of_the_plane_point(explorer, qtbot):
    viewer, widget = explorer
    image = image_64()
    state, session = encode(viewer, tiny_model(0, latent_dim=3), image, roi=(8, 4, 32, 48),
                            scale=(0.5, 2.0), translate=(10.0, -3.0))
    widget.wait_ready()
    widget.set_axes(2, 0)
    pos = widget.map.to_pixel(1.5, -0.75)
    click(widget.map, pos)
    widget.wait_idle()
    u, v = widget.point
    assert abs(u - 1.5) < 0.05 and abs(v + 0.75) < 0.05  # within a pixel of the map
    mu, sigma = session.prior()
    e = np.eye(3, dtype=np.float32)
    expected = mu + sigma * (u * e[2] + v * e[0])
    np.testing.assert_allclose(widget.current_z, expected, rtol=0, atol=1e-6)
    layer = widget.explorer_layer
    assert layer.name == "image explorer"
    assert np.array_equal(layer.data, session.decode(expected))
    # the layer sits on the region: translate = image translate + offset * scale
    np.testing.assert_allclose(layer.translate, [10 + 8 * 0.5, -3 + 4 * 2.0])
    np.testing.assert_allclose(layer.scale, [0.5, 2.0])
    np.testing.assert_allclose(layer.data_to_world((5, 7)),
                               viewer.layers["image"].data_to_world((8 + 5, 4 + 7)))
    # a drag decodes every new position; the last one is what stays
    mouse(widget.map, "press", widget.map.to_pixel(-2, 2))
    for t in np.linspace(0, 1, 25):
        mouse(widget.map, "move", widget.map.to_pixel(-2 + 3 * t, 2 - 4 * t))
    mouse(widget.map, "release", widget.map.to_pixel(1, -2))
    widget.wait_idle()
    np.testing.assert_allclose(widget.point, (1, -2), atol=0.05)
    assert np.array_equal(layer.data, session.decode(widget.current_z))
    # the in-place partial updates left the displayed colours as a full refresh makes them
    shown = napari_compat.displayed_texture(layer)
    layer.refresh()
    assert shown is not None and np.array_equal(shown, napari_compat.displayed_texture(layer))
    # keyboard nudges by 0.1 sigma
    widget.map.setFocus()
    qtbot.keyClick(widget.map, Qt.Key.Key_Left)
    widget.wait_idle()
    np.testing.assert_allclose(widget.point, (0.9, -2.0), atol=1e-6)


def test_default_axes_are_the_ones_that_change_the_segmentation_most(explorer):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(3, latent_dim=4), image_64())
    widget.wait_ready()
    mu, sigma = session.prior()
    expected = core.rank_axes(session.decode(core.axis_probes(mu, sigma)), 2)
    assert [s.axis for s in widget.ranking] == [s.axis for s in expected]
    assert widget.plane.axes == (expected[0].axis, expected[1].axis)
    assert widget.map.axis_labels[0] == f"z{expected[0].axis + 1} / \u03c3"
    # choosing the same axis twice swaps instead, and the lists show what the map shows
    old_x, old_y = widget.plane.axes
    widget.x_combo.setCurrentIndex(old_y)
    widget.apply_axis_choice("x")
    assert widget.plane.axes == (old_y, old_x)
    widget.y_combo.setCurrentIndex(old_y)
    widget.apply_axis_choice("y")
    assert widget.plane.axes == (old_x, old_y)
    assert (widget.x_combo.currentIndex(), widget.y_combo.currentIndex()) == (old_x, old_y)


def test_hypothesis_markers_sit_at_their_coordinates_and_select_their_layer(explorer):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(1, latent_dim=3), image_64(), n=6)
    widget.wait_ready()
    plane = widget.plane
    mu, sigma = session.prior()
    z = state.hypotheses.z
    i, j = plane.axes
    expected = np.stack([(z[:, i] - mu[i]) / sigma[i], (z[:, j] - mu[j]) / sigma[j]], axis=1)
    np.testing.assert_allclose(widget.map.markers.hypotheses, expected, rtol=1e-5, atol=1e-6)
    # click the marker farthest from the others: its layer is shown and selected
    d = np.linalg.norm(expected[:, None] - expected[None], axis=-1) + np.eye(len(z)) * 99
    k = int(np.argmax(d.min(axis=1)))
    if np.abs(expected[k]).max() > 2.9:  # keep it inside the map
        k = int(np.argmin(np.abs(expected).max(axis=1)))
    seen = []
    state.current_hypothesis_changed.connect(seen.append)
    click(widget.map, widget.map.to_pixel(*expected[k]))
    assert seen == [k]
    assert state.hypothesis_layers[k].visible
    assert viewer.layers.selection.active is state.hypothesis_layers[k]
    assert widget.map.markers.selected_hypothesis == k
    # the review widget changing the hypothesis moves the highlight too
    state.current_hypothesis_changed.emit(0)
    assert widget.map.markers.selected_hypothesis == 0


def test_other_coordinates_can_be_held_at_the_selected_hypothesis(explorer):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(2, latent_dim=4), image_64())
    widget.wait_ready()
    widget.set_axes(0, 3)
    widget.select_hypothesis(3)
    widget.set_hold(HOLD_HYPOTHESIS)
    widget.wait_idle()
    widget.set_point(0.5, -1.0)
    widget.wait_idle()
    z, hz = widget.current_z, state.hypotheses.z[3]
    mu, sigma = session.prior()
    assert z[1] == hz[1] and z[2] == hz[2]
    assert z[0] == np.float32(mu[0] + sigma[0] * np.float32(0.5))
    assert z[3] == np.float32(mu[3] + sigma[3] * np.float32(-1.0))
    assert np.array_equal(widget.explorer_layer.data, session.decode(z))
    # the selected hypothesis itself lies on this plane
    assert widget.plane.off_plane(hz) == pytest.approx(0, abs=1e-5)


def test_use_as_best_fit_emits_the_current_latent(explorer):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(0, latent_dim=2), image_64())
    widget.wait_ready()
    widget.set_point(-1.25, 0.5)
    widget.wait_idle()
    got = []
    state.best_fit_requested.connect(got.append)
    widget.best_fit_button.click()
    assert len(got) == 1
    choice = got[0]
    assert choice.source == "explorer" and choice.index is None
    np.testing.assert_array_equal(choice.z, widget.current_z)
    assert np.array_equal(choice.labels, session.decode(choice.z))
    assert choice.labels.shape == session.image_shape


def test_one_dimensional_latent_gives_a_line(explorer):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(0, latent_dim=1), image_64(), n=4)
    widget.wait_ready()
    assert widget.plane.is_line and widget.map.is_line
    assert not widget.y_combo.isEnabled()
    assert len(widget.grid.labels) == widget.grid.n  # one strip of thumbnails
    np.testing.assert_allclose(widget.map.markers.hypotheses[:, 1], 0)
    click(widget.map, widget.map.to_pixel(1.2))
    widget.wait_idle()
    mu, sigma = session.prior()
    u = widget.point[0]
    assert abs(u - 1.2) < 0.05 and widget.point[1] == 0
    np.testing.assert_allclose(widget.current_z, mu + sigma * u, atol=1e-6)
    assert np.array_equal(widget.explorer_layer.data, session.decode(widget.current_z))
    picture = widget.map.grab().toImage()
    assert picture.width() > 200 and not widget.map.hint


def test_multi_class_models_colour_each_class(explorer):
    viewer, widget = explorer
    model = tiny_model(0, latent_dim=2, num_classes=3,
                       class_names=["background", "core", "halo"])
    state, session = encode(viewer, model, image_64())
    widget.wait_ready()
    assert [name for name, _ in widget.map.class_legend] == ["core", "halo"]
    colors = widget.class_colors(3)
    assert len({tuple(c) for c in colors}) == 3
    widget.set_point(2.0, 2.0)
    widget.wait_idle()
    assert np.array_equal(widget.explorer_layer.data, session.decode(widget.current_z))
    # the area map is available for any number of classes
    widget.background_combo.setCurrentIndex(1)
    widget.render_background()
    assert widget.map.background is not None


def test_removing_layers_while_dragging_does_not_crash(explorer, qtbot):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(0, latent_dim=3), image_64(), roi=(4, 4, 40, 40))
    widget.wait_ready()
    m = widget.map
    mouse(m, "press", m.to_pixel(0, 0))
    path = [m.to_pixel(2 * np.cos(t), 2 * np.sin(t)) for t in np.linspace(0, 6, 60)]
    for k, pos in enumerate(path):
        mouse(m, "move", pos)
        if k % 3 == 0:
            qtbot.wait(1)  # let results arrive in between
        if k == 10:
            viewer.layers.remove(widget.explorer_layer or viewer.layers["image explorer"])
        if k == 20:
            viewer.layers.remove("image")
        if k == 30:
            viewer.layers.remove(state.hypothesis_layers[0])
        if k == 40:
            viewer.layers.remove(widget.explorer_layer or viewer.layers["image explorer"])
    mouse(m, "release", path[-1])
    widget.wait_idle()
    # the explorer layer came back where the region was, showing the last point
    layer = widget.explorer_layer
    assert layer is not None and layer.name == "image explorer"
    np.testing.assert_allclose(layer.translate, [4, 4])
    assert np.array_equal(layer.data, session.decode(widget.current_z))
    # clicking a hypothesis whose layer is gone still selects it
    click(m, m.to_pixel(*m.markers.hypotheses[0]))
    # a new model mid-drag resets the map and drops stale frames
    mouse(m, "press", m.to_pixel(1, 1))
    mouse(m, "move", m.to_pixel(1.5, 1))
    state.model_changed.emit()
    mouse(m, "move", m.to_pixel(1.7, 1))
    mouse(m, "release", m.to_pixel(1.7, 1))
    widget.wait_idle()
    assert widget.plane is None and m.hint


def test_model_change_then_new_image_rebuilds_the_map(explorer):
    viewer, widget = explorer
    encode(viewer, tiny_model(0, latent_dim=2), image_64())
    widget.wait_ready()
    state, session = encode(viewer, tiny_model(1, latent_dim=5), image_64(), roi=(0, 0, 32, 32),
                            name="image")
    widget.wait_ready()
    assert widget.plane.dim == 5 and widget.x_combo.count() == 5
    assert widget.hold_combo.isEnabled()
    widget.set_point(0.3, 0.3)
    widget.wait_idle()
    assert widget.explorer_layer.data.shape == (32, 32)


def test_the_explorer_layer_follows_a_rotated_image(explorer):
    viewer, widget = explorer
    viewer.add_image(image_64(), name="image", scale=(0.5, 2.0), translate=(10.0, -3.0),
                     rotate=30)
    encode(viewer, tiny_model(0, latent_dim=2), image_64(), roi=(8, 4, 32, 48), n=1)
    widget.wait_ready()
    widget.set_point(0.5, 0.5)
    widget.wait_idle()
    layer, image = widget.explorer_layer, viewer.layers["image"]
    for r, c in ((0, 0), (31, 0), (0, 47), (31, 47)):  # its corners are the region's
        np.testing.assert_allclose(layer.data_to_world((r, c)),
                                   image.data_to_world((8 + r, 4 + c)), atol=1e-9)


def test_a_slice_of_a_stack_gets_a_one_slice_layer_on_that_slice(explorer):
    viewer, widget = explorer
    stack = np.stack([image_64() * f for f in (0.5, 1.0, 1.5)])
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5), translate=(1.0, 0.0, 0.0))
    viewer.dims.set_point(0, 3.0)  # the encoded slice 1 is shown
    model = tiny_model(0, latent_dim=2)
    state = get_state(viewer)
    crop = stack[1, 8:40, 8:40]
    session = Session(model, "cpu")
    session.set_image(crop)
    state.model, state.session = model, session
    state.model_changed.emit()
    state.encoded = EncodedRegion("stack", (1,), (8, 8, 32, 32), session.image_signature, crop)
    state.image_encoded.emit()
    widget.wait_ready()
    for u in (-1.0, 1.5):
        widget.set_point(u, 0.5)
        widget.wait_idle()
        layer = widget.explorer_layer
        assert layer.data.shape == (1, 32, 32)
        np.testing.assert_allclose(layer.translate, [1.0 + 1 * 2.0, 8 * 0.5, 8 * 0.5])
        assert np.array_equal(layer.data[0], session.decode(widget.current_z))
    viewer.dims.set_point(0, 1.0)  # another slice: the layer is not drawn there, no crash
    widget.set_point(0.0, 0.0)
    widget.wait_idle()
    assert np.array_equal(widget.explorer_layer.data[0], session.decode(widget.current_z))


def test_widget_opened_after_sampling_picks_up_the_state(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    state, session = encode(viewer, tiny_model(0, latent_dim=2), image_64(), n=4)
    widget = ExplorerWidget(viewer)
    try:
        qtbot.waitUntil(lambda: widget.plane is not None and widget.idle, timeout=20000)
        assert len(widget.map.markers.hypotheses) == 4
    finally:
        widget.shutdown()


# -------------------------------------------------------- annotations under a trained model


@pytest.fixture(scope="module")
def two_mode_model():
    """The tiny two-mode model, trained at one thread: 5-10x faster than two on a busy 2-core
    machine, and bit-reproducible across processes (seed 0 learns both masks in 400 steps)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_two_mode_model(400)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_training_mask_lands_near_the_samples_that_reproduce_it(explorer, two_mode_model):
    viewer, widget = explorer
    image, masks = two_mode_case()
    state, session = encode(viewer, two_mode_model, image, n=64, seed=1, layers=False)
    viewer.add_labels(masks[0], name="grader core")
    viewer.add_labels(masks[1], name="grader halo")
    widget.wait_ready()
    widget.assess(["grader core", "grader halo"])
    widget.wait_idle(60000)
    found = {a.name: a for a in widget.assessments}
    assert set(found) == {"grader core", "grader halo"}
    plane = widget.plane
    samples = widget.map.markers.hypotheses  # (64, 2) in prior sigmas
    iou = np.array([[foreground_iou(lab, m, 2) for m in masks] for lab in state.hypotheses.labels])
    for k, name in enumerate(["grader core", "grader halo"]):
        a = found[name]
        where = plane.coords(a.mu)
        marker = next(m for m in widget.map.markers.annotations if m[0] == name)
        np.testing.assert_allclose(marker[1:3], where, atol=1e-6)
        # the samples nearest to the annotation draw it better than they draw the other mask
        nearest = np.argsort(np.linalg.norm(samples - where, axis=1))[:5]
        assert iou[nearest, k].mean() > iou[nearest, 1 - k].mean()
        assert a.iou > 0.8  # the model reproduces its training masks
        # and decoding at the marker (a 2-D latent: the posterior mean itself) shows it
        widget.set_point(*where)
        widget.wait_idle()
        assert foreground_iou(widget.explorer_layer.data, masks[k], 2) > 0.8
    # the two annotations lie apart on the map
    assert np.linalg.norm(plane.coords(found["grader core"].mu)
                          - plane.coords(found["grader halo"].mu)) > 0.5


def test_a_mixture_priors_components_are_shown_with_their_weights(explorer):
    """The explorer marks each component's mean of a mixture prior, with its weight; a
    Gaussian prior has none to show."""
    viewer, widget = explorer
    model = tiny_model(seed=2, latent_distribution="mixture", mixture_components=3)
    state, session = encode(viewer, model, image_64(), layers=False)
    widget.wait_ready()
    weights, means, _ = session.prior_components()
    comps = widget.map.markers.components
    assert len(comps) == 3
    order = np.argsort(-weights)  # heaviest first: c1, c2, c3
    np.testing.assert_allclose([w for _, _, w in comps], weights[order], atol=1e-6)
    np.testing.assert_allclose([(u, v) for u, v, _ in comps], widget.plane.coords(means[order]),
                               atol=1e-6)
    widget.map.repaint()  # the squares and weights paint without error

    # the oblique plane through the components: the last entry of the horizontal list
    assert widget.x_combo.count() == model.config.latent_dim + 1
    widget.x_combo.setCurrentIndex(widget.x_combo.count() - 1)
    widget.apply_axis_choice("x")
    widget.wait_ready()
    plane = widget.plane
    assert plane.is_oblique and widget.map.axis_labels[0].startswith("c1\u2192c2")
    assert not widget.y_combo.isEnabled() and not widget.hold_combo.isEnabled()
    assert widget.x_combo.currentText() == "components c1, c2, c3" and widget.y_combo.currentText() == ""
    assert np.all(plane.off_plane(means[order]) < 1e-4)  # all three means lie on the map
    comps = widget.map.markers.components
    assert comps[1][1] == pytest.approx(comps[0][1], abs=1e-4) and comps[1][0] > comps[0][0]
    assert widget.table.horizontalHeaderItem(3).text().startswith("c1\u2192c2")
    widget.set_point(*comps[1][:2])  # onto c2's mean: the map decodes there
    widget.wait_ready()
    np.testing.assert_allclose(widget.current_z, means[order[1]], atol=1e-3)
    widget.map.repaint()
    widget.set_axes(0, 1)  # back to two latent axes: the vertical list works again
    assert not widget.plane.is_oblique and widget.y_combo.isEnabled()
    assert widget.plane.axes == (0, 1) and widget.y_combo.currentText() == "z2"
    # two heavy components on one mean: no plane through them; a warning, and two axes instead
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    w3 = np.array([0.5, 0.4, 0.1], np.float32)
    widget._view.components = (w3, np.stack([means[0], means[0], means[1]]))
    widget.x_combo.setCurrentIndex(widget.x_combo.count() - 1)
    widget.apply_axis_choice("x")
    assert not widget.plane.is_oblique and widget.y_combo.isEnabled()
    assert any("No plane through the components" in str(n.message)
               for n in notification_manager.records[start:])
    widget.map.repaint()
    widget._view.components = (weights, means)
    widget.x_combo.setCurrentIndex(widget.x_combo.count() - 1)  # oblique, then an axis again
    widget.apply_axis_choice("x")
    widget.x_combo.setCurrentIndex(1)  # the vertical's old axis: the vertical takes another
    widget.apply_axis_choice("x")
    assert widget.plane.axis_x == 1 and widget.plane.axis_y not in (None, 1)
    assert widget.y_combo.currentIndex() == widget.plane.axis_y
    encode(viewer, tiny_model(seed=2), image_64(), name="plain", layers=False)
    widget.wait_ready()
    widget.update_markers()
    assert widget.map.markers.components == []


def test_both_widgets_docked_from_the_plugins_menu_fit_a_1366x768_screen(make_napari_viewer,
                                                                         qtbot):
    """Docked one under the other (what Plugins > ... does), the widgets scroll instead of
    forcing a window taller than a laptop screen (it was 1,111 px)."""
    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget("napari-probunet", "Probabilistic U-Net")
    viewer.window.add_plugin_dock_widget("napari-probunet", "Latent-space explorer")
    qtbot.wait(200)
    hint = napari_compat.main_window(viewer).minimumSizeHint()
    assert hint.width() <= 1366 and hint.height() <= 768 - 40, (hint.width(), hint.height())


def test_radiologists_opened_by_the_case_reader_are_listed_and_assessed(explorer, tmp_path):
    """A multi-rater case opened from disk (napari's File > Open, the case reader): its
    radiologists' layers are candidates of "Assess annotations", and each is scored."""
    from napari_probunet.data.readers import write_multirater_folder
    from napari_probunet.data.synthetic import SyntheticDataset

    viewer, widget = explorer
    cases = list(SyntheticDataset("lesions", 1, seed=4, size=32))
    root = write_multirater_folder(cases, tmp_path / "data")
    folder = next(p for p in root.iterdir() if p.is_dir())
    image, *raters = viewer.open(str(folder), plugin="napari-probunet")
    names = [la.name for la in raters]
    assert all(la.metadata["kind"] == "grader" and la.contour > 0 for la in raters)
    encode(viewer, tiny_model(seed=0), image.data, name=image.name, n=4, layers=False)
    widget.wait_ready()
    listed = [widget.annotation_list.item(i).text() for i in range(widget.annotation_list.count())]
    assert set(names) <= set(listed)
    widget.assess(names)
    widget.wait_idle(60000)
    assert {a.name for a in widget.assessments} == set(names)
    assert not widget.assessment_panel.errors
    assert widget.table.rowCount() == len(names)
    for a in widget.assessments:
        assert np.isfinite(a.kl) and 0.0 <= a.iou <= 1.0
