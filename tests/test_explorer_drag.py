"""The explorer's live drag: public napari API only, the latest position wins, no undo steps,
and a status line that does not lay the window out again on every update.

Real viewer, real tiny model, mouse events sent to the real map (as tests/test_explorer.py).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

# the explorer fixture and helpers of tests/test_explorer.py (pytest puts tests/ on sys.path)
import test_explorer as base
from napari.utils._proxies import PublicOnlyProxy
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QLabel

from napari_probunet.gui import napari_compat
from napari_probunet.gui.explorer.layer import forget_undo, write_labels
from napari_probunet.model.testing import tiny_model

encode, image_64, mouse = base.encode, base.image_64, base.mouse
explorer = base.explorer  # the same fixture: a real viewer with the explorer docked


def drag(widget, qtbot, points, pause_ms: int = 2):
    """Press at the first ``(u, v)``, move through the others, release at the last."""
    m = widget.map
    mouse(m, "press", m.to_pixel(*points[0]))
    for u, v in points[1:]:
        mouse(m, "move", m.to_pixel(u, v))
        qtbot.wait(pause_ms)  # the event loop runs: results arrive between the moves
    mouse(m, "release", m.to_pixel(*points[-1]))
    widget.wait_idle()


def loop(n: int = 30):
    t = np.linspace(0, 2 * np.pi, n)
    return list(zip(2.5 * np.cos(t) - 0.3, 2.5 * np.sin(2 * t) * 0.8, strict=True))


def test_a_drag_warns_nowhere_and_reads_no_private_napari_attribute(explorer, qtbot):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(0, latent_dim=3), image_64())
    widget.wait_ready()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        drag(widget, qtbot, loop())
        qtbot.wait(50)
    assert widget.frames >= 2  # the layer was written during the drag
    layer = widget.explorer_layer
    # the per-frame path through napari's own guard against private attribute access (the
    # proxy plugins get): a read of any private attribute by this package warns (FutureWarning)
    proxy = PublicOnlyProxy(layer)
    new = session.decode(widget.plane.latent(2.0, -2.0))
    assert not np.array_equal(new, layer.data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert write_labels(proxy, new)
        assert not write_labels(proxy, new)  # nothing changed: nothing written
        forget_undo(proxy)
    assert np.array_equal(layer.data, new)


def test_the_latest_position_wins_and_stale_decodes_are_dropped(explorer, qtbot):
    viewer, widget = explorer
    state, session = encode(viewer, tiny_model(2, latent_dim=3), image_64())
    widget.wait_ready()
    decode = session.decode
    calls = []

    def slow_decode(z, *args, **kwargs):  # the real decode, slower than the mouse
        calls.append(np.array(z, copy=True))
        time.sleep(0.02)
        return decode(z, *args, **kwargs)

    session.decode = slow_decode
    points = loop(40)
    drag(widget, qtbot, points, pause_ms=1)
    u, v = points[-1]
    np.testing.assert_allclose(widget.point, (u, v), atol=0.05)  # within a map pixel
    z = widget.plane.latent(*widget.point)
    np.testing.assert_allclose(widget.current_z, z, atol=1e-6)
    np.testing.assert_allclose(calls[-1], z, atol=1e-6)  # the last decode is the last place
    assert len(calls) < len(points)  # moves made while a decode ran were never decoded
    layer = widget.explorer_layer
    assert np.array_equal(layer.data, decode(z))
    # what the canvas shows is what a full refresh of that data shows
    shown = napari_compat.displayed_texture(layer)
    layer.refresh()
    assert shown is not None and np.array_equal(shown, napari_compat.displayed_texture(layer))


def test_a_drag_leaves_nothing_to_undo_and_keeps_the_layer_mode(explorer, qtbot):
    viewer, widget = explorer
    encode(viewer, tiny_model(1, latent_dim=3), image_64())
    widget.wait_ready()
    widget.set_point(-2.0, 2.0)
    widget.wait_idle()
    layer = widget.explorer_layer
    layer.mode = "paint"
    drag(widget, qtbot, loop(20))
    assert widget.frames >= 3
    shown = layer.data.copy()
    layer.undo()  # napari's Ctrl+Z: the frames of the drag were not edits
    assert np.array_equal(layer.data, shown)
    assert layer.mode == "paint"


class _LayoutRequests(QObject):
    """Counts the requests to lay widgets out again, except those to ``ignore`` (a widget
    without a layout, where such a request does nothing)."""

    def __init__(self, ignore=None):
        super().__init__()
        self.count, self.ignore = 0, ignore

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.LayoutRequest and obj is not self.ignore:
            self.count += 1
        return False


@pytest.fixture
def shown_explorer(make_napari_viewer, qtbot):
    """The explorer docked in a viewer window that is shown (hidden widgets lay out nothing)."""
    from napari_probunet.gui.explorer.widget import ExplorerWidget

    viewer = make_napari_viewer(show=True)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Latent-space explorer")
    qtbot.wait(50)
    yield widget
    widget.shutdown()


def test_a_plain_label_would_lay_out_the_window_on_each_text(shown_explorer, qtbot):
    """What the status line avoids (and proof that the counter sees it)."""
    widget = shown_explorer
    label = QLabel("x")
    label.setWordWrap(True)
    widget.status.parentWidget().layout().addWidget(label)
    qtbot.wait(20)
    requests = _LayoutRequests()
    QApplication.instance().installEventFilter(requests)
    label.setText("y")
    qtbot.wait(20)
    QApplication.instance().removeEventFilter(requests)
    assert requests.count >= 1


def test_the_status_line_changes_without_laying_out_the_dock(shown_explorer, qtbot):
    widget = shown_explorer
    status = widget.status
    status.setText("u = +0.10\u03c3, v = -0.20\u03c3   z = (+0.10, -0.20, +0.30)   decode 1.0 ms")
    qtbot.wait(200)  # the window settles (this text may need another line count)
    assert status.layout() is None
    requests = _LayoutRequests(ignore=status)
    app = QApplication.instance()
    app.installEventFilter(requests)  # a relayout anywhere in the window
    status.setText("u = +0.15\u03c3, v = -0.25\u03c3   z = (+0.15, -0.25, +0.35)   decode 1.2 ms")
    qtbot.wait(20)
    assert status.text().startswith("u = +0.15") and requests.count == 0
    # a text that needs more lines grows the line (one relayout), and all of it shows
    before = status.height()
    status.setText(" ".join(["a long status line"] * 30))
    qtbot.wait(20)
    assert status.height() > before and requests.count >= 1
    assert status.label.height() == status.height()
    app.removeEventFilter(requests)
