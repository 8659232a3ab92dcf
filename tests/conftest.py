"""Shared fixtures: small real models (seeded), trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a 2-core machine beside other work, two threads thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def two_mode_model():
    """A tiny model overfitted to ``two_mode_case()`` (core vs core + halo)."""
    from napari_probunet.model.testing import train_two_mode_model

    return train_two_mode_model()


@pytest.fixture(scope="session")
def two_mode_model_file(two_mode_model, tmp_path_factory) -> Path:
    from napari_probunet.model.modelfile import save_model

    path = tmp_path_factory.mktemp("models") / "two_mode.safetensors"
    save_model(two_mode_model, path, {"recipe": "tests: two_mode_case"})
    return path


@pytest.fixture
def tiny():
    """An untrained, seeded tiny model."""
    from napari_probunet.model.testing import tiny_model

    return tiny_model(seed=0)


# ----------------------------------------------------------------------------- GUI


@pytest.fixture
def isolated_settings(tmp_path, monkeypatch):
    """Remembered settings and autosaves go to the test's folder, not the user's.

    GUI test modules opt in with ``pytestmark = pytest.mark.usefixtures("isolated_settings")``.
    """
    from qtpy.QtCore import QSettings

    from napari_probunet.gui.review import common as _common

    ini = str(tmp_path / "settings.ini")
    monkeypatch.setattr(_common, "_settings", lambda: QSettings(ini, QSettings.Format.IniFormat))
    monkeypatch.setenv("NAPARI_PROBUNET_RECOVERY_DIR", str(tmp_path / "recovery"))


@pytest.fixture
def review(make_napari_viewer, qtbot, two_mode_model_file, isolated_settings):
    """``(viewer, widget)``: the review widget docked, the tiny model opened through the widget.

    Any question the widget asks fails the test unless the test answers it itself.
    """
    from napari_probunet.gui.review.widget import ReviewWidget
    from napari_probunet.model.testing import wait_idle

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, load_default=False)
    viewer.window.add_dock_widget(widget, name="Probabilistic U-Net")
    widget.correction.confirm = lambda title, text: pytest.fail(f"unexpected question: {title}")
    widget.model_panel.load_model_file(two_mode_model_file)
    wait_idle(qtbot, widget)
    assert widget.state.session is not None
    yield viewer, widget
    wait_idle(qtbot, widget)
