"""What a radiologist meets at a glance (issue #29): colours, the window on the screen, a new
image resetting the review, a drag that warns nowhere, closing and cancelling during a job."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from qtpy.QtCore import QEvent, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from napari_probunet.gui.dock import get_state
from napari_probunet.gui.palette import RADIOLOGIST_COLOURS
from napari_probunet.gui.review.common import HYPOTHESIS_COLOURS

PLUGIN = "napari-probunet"


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])


def _distance(a, b) -> float:
    """Euclidean distance in CIE Lab (a colour difference a reader sees)."""
    from skimage.color import rgb2lab

    la, lb = rgb2lab(np.array([[a, b]], float))[0]
    return float(np.linalg.norm(la - lb))


def test_radiologist_colours_are_apart_from_each_other_and_from_the_hypotheses():
    four = [_rgb(c) for c in RADIOLOGIST_COLOURS[:4]]
    cyan = np.array(HYPOTHESIS_COLOURS[0])
    for i, a in enumerate(four):
        assert _distance(a, cyan) > 30, (RADIOLOGIST_COLOURS[i], "too close to the hypotheses")
        for j in range(i):
            assert _distance(a, four[j]) > 20, (RADIOLOGIST_COLOURS[i], RADIOLOGIST_COLOURS[j])


def test_every_reader_and_sample_draws_radiologists_in_the_one_palette(tmp_path):
    from napari_probunet._reader import read_case
    from napari_probunet.data.readers import write_multirater_folder
    from napari_probunet.data.synthetic import SyntheticDataset
    from napari_probunet.gui.samples import sample_lesion, sample_lidc_nodule

    cases = list(SyntheticDataset("lesions", 1, seed=4, size=32))
    root = write_multirater_folder(cases, tmp_path / "data")
    folder = next(p for p in root.iterdir() if p.is_dir())
    for layers in (read_case(folder), sample_lidc_nodule(), sample_lesion()):
        graders = [(d, kw) for d, kw, kind in layers if kw.get("metadata", {}).get("kind")
                   == "grader"]
        assert graders
        for d, kw in graders:
            r = kw["metadata"]["grader"] - 1
            colour = np.asarray(kw["colormap"].map(np.array([1]))[0][:3])
            np.testing.assert_allclose(colour, _rgb(RADIOLOGIST_COLOURS[r]), atol=1e-6)


def _mouse(widget, kind, pos: QPointF):
    button = Qt.MouseButton.LeftButton
    etype, b, bs = {"press": (QEvent.Type.MouseButtonPress, button, button),
                    "move": (QEvent.Type.MouseMove, Qt.MouseButton.NoButton, button),
                    "release": (QEvent.Type.MouseButtonRelease, button,
                                Qt.MouseButton.NoButton)}[kind]
    ev = QMouseEvent(etype, pos, QPointF(widget.mapToGlobal(pos.toPoint())), b, bs,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)


def test_a_drag_in_the_explorer_docked_as_a_plugin_warns_nowhere(make_napari_viewer, qtbot):
    """Docked from the Plugins menu, the explorer gets napari's proxy of the viewer, which
    warned (FutureWarning, 7 a frame) on every private attribute the fast repaint read."""
    from napari_probunet.model.testing import tiny_model, two_mode_case
    from napari_probunet.review.state import EncodedRegion
    from napari_probunet.session import Session

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Latent-space explorer")
    image, _ = two_mode_case(64)
    viewer.add_image(image, name="image")
    state = get_state(viewer)
    model = tiny_model(0, latent_dim=3)
    session = Session(model, "cpu")
    session.set_image(image)
    state.model, state.session = model, session
    state.model_changed.emit()
    state.encoded = EncodedRegion("image", (), (0, 0, 64, 64), session.image_signature, image)
    state.image_encoded.emit()
    qtbot.waitUntil(lambda: widget.plane is not None and widget.idle, timeout=30000)
    m = widget.map
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _mouse(m, "press", m.to_pixel(-2, 2))
        for t in np.linspace(0, 1, 30):
            _mouse(m, "move", m.to_pixel(-2 + 3 * t, 2 - 4 * t))
            qtbot.wait(5)
        _mouse(m, "release", m.to_pixel(1, -2))
        qtbot.waitUntil(lambda: widget.idle, timeout=30000)
        qtbot.wait(100)
    assert widget.frames >= 2  # the layer was repainted during the drag
    layer = widget.explorer_layer
    assert np.array_equal(layer.data, session.decode(widget.current_z))
