"""No model run on the GUI thread (issue #25): through a real review (sample, open a bundle
written by the same model, use the explorer), ``Session.set_image`` always runs on a worker.

Encoding a large image, or with a model on a remote device, takes seconds; on the GUI thread
napari would freeze for that long."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_probunet.cli import main
from napari_probunet.gui.review.widget import ReviewWidget
from napari_probunet.model.modelfile import save_model
from napari_probunet.model.testing import tiny_model, wait_idle
from napari_probunet.session import Session

pytestmark = pytest.mark.usefixtures("isolated_settings")


def test_set_image_never_runs_on_the_main_thread(make_napari_viewer, qtbot, tmp_path,
                                                 monkeypatch):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_model(1), model)
    out = tmp_path / "out"
    assert main(["sample", "synthetic:lesions?n=1&seed=0&size=32", "--model", str(model),
                 "--out", str(out), "--n", "4", "--seed", "7"]) == 0
    on_main: list[bool] = []
    real = Session.set_image

    def recording(self, image):
        on_main.append(threading.current_thread() is threading.main_thread())
        return real(self, image)

    monkeypatch.setattr(Session, "set_image", recording)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-probunet", "Probabilistic U-Net")
    assert isinstance(widget, ReviewWidget)
    widget.correction.confirm = lambda title, text: pytest.fail(f"unexpected question: {title}")
    _, explorer = viewer.window.add_plugin_dock_widget("napari-probunet", "Latent-space explorer")
    wait_idle(qtbot, widget)
    widget.model_panel.load_model_file(model)
    wait_idle(qtbot, widget)
    widget.sampler.n_spin.setValue(4)
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="case")
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    explorer.set_point(1.0, 0.0)
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    sampled = len(on_main)
    viewer.open(str(next(out.glob("*.probunet.zip"))), plugin="napari-probunet")
    qtbot.waitUntil(lambda: widget.state.encoded is not None
                    and widget.state.encoded.layer_name != "case", timeout=10_000)
    wait_idle(qtbot, widget)
    st = widget.state
    assert st.ready and st.session.image_signature == st.encoded.image_signature
    assert len(on_main) > sampled  # the bundle's image was encoded for the explorer ...
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    explorer.set_point(0.0, 1.0)
    qtbot.waitUntil(lambda: explorer.idle, timeout=30_000)
    assert on_main and not any(on_main)  # ... and every encode ran on a worker
