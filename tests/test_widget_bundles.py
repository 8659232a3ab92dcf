"""Opening a hypothesis bundle (``*.probunet.zip``) hands its layers to the review widget: cycle,
pick the best fit, paint and export with no model run (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from napari.utils.notifications import notification_manager

from napari_probunet.cli import main
from napari_probunet.gui.review.widget import ReviewWidget
from napari_probunet.model.modelfile import file_sha256, save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review.bundle import read_bundle

NAME = "lesions-s0-00000"


pytestmark = pytest.mark.usefixtures("isolated_settings")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """One bundle of 16 hypotheses written by `probunet sample` with a tiny model."""
    root = tmp_path_factory.mktemp("bundles")
    model = root / "tiny.safetensors"
    save_model(tiny_model(1), model)
    out = root / "out"
    rc = main(["sample", "synthetic:lesions?n=1&seed=0&size=32", "--model", str(model),
               "--out", str(out), "--n", "16", "--seed", "7"])
    assert rc == 0
    return out / f"{NAME}.probunet.zip", model


@pytest.fixture
def notes():
    start = len(notification_manager.records)
    return lambda: [str(n.message) for n in notification_manager.records[start:]]


def _review_without_model(widget, viewer, bundle_path: Path, tmp_path: Path):
    b = read_bundle(bundle_path)
    st = widget.state
    assert st.session is None
    layers = [viewer.layers[f"{NAME} hypothesis {i:02d}"] for i in range(1, 17)]
    assert st.hypothesis_layers == layers and len(st.hypotheses.labels) == 16
    assert st.uncertainty_layer is viewer.layers[f"{NAME} uncertainty"]
    assert st.encoded.layer_name == NAME and st.encoded.slice_index == ()
    assert st.encoded.roi == (0, 0, *b.hypotheses.labels.shape[1:])
    np.testing.assert_array_equal(st.hypotheses.labels, b.hypotheses.labels)
    np.testing.assert_allclose(st.hypotheses.z, b.hypotheses.z, rtol=1e-6)
    assert st.hypotheses.seed == b.seed
    assert "Hypothesis 1/16" in widget.hypothesis_view.hypothesis_label.text()

    widget.controller.next_hypothesis()
    assert widget.controller.current == 1
    assert [la.visible for la in layers] == [i == 1 for i in range(16)]

    widget.controller.use_as_best_fit(2)
    correction = viewer.layers[f"{NAME} correction"]
    np.testing.assert_array_equal(correction.data, layers[2].data)
    assert not any(la.visible for la in layers)

    start = correction.data.copy()
    correction.paint((3, 3), 1 - int(start[3, 3]), refresh=True)
    edited = int(np.count_nonzero(correction.data != start))
    assert edited > 0

    target = tmp_path / "corr.tif"
    widget.correction.ask_save_path = lambda default: str(target)
    assert widget.correction.export() == target
    np.testing.assert_array_equal(tifffile.imread(target), correction.data)
    record = json.loads((tmp_path / "corr.tif.json").read_text())
    np.testing.assert_allclose(record["choice"]["z"], b.hypotheses.z[2], rtol=1e-6)
    assert record["choice"]["seed"] == b.seed and record["choice"]["index"] == 2
    assert record["choice"]["n_samples"] == 16
    assert record["model"]["sha256"] == b.model_sha256
    assert record["pixels_changed_by_hand"] == edited
    assert record["image"]["signature"] == st.encoded.image_signature


def test_opened_bundle_is_ready_for_review_without_a_model(make_napari_viewer, qtbot, prepared,
                                                           tmp_path, notes):
    path, model = prepared
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-probunet")
    widget = ReviewWidget(viewer, load_default=False)
    widget.correction.confirm = lambda title, text: pytest.fail(f"unexpected question: {title}")
    assert any("Opened bundle" in m and "16 hypotheses ready (no model run)" in m
               for m in notes())
    _review_without_model(widget, viewer, path, tmp_path)
    assert read_bundle(path).model_sha256 == file_sha256(model)


def test_widget_adopts_a_bundle_opened_later(make_napari_viewer, qtbot, prepared, tmp_path,
                                             notes):
    path, _ = prepared
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, load_default=False)
    widget.correction.confirm = lambda title, text: pytest.fail(f"unexpected question: {title}")
    viewer.open(str(path), plugin="napari-probunet")
    qtbot.waitUntil(lambda: widget.state.hypotheses is not None, timeout=10_000)
    assert any(f"Opened bundle {read_bundle(path).case_id}: 16 hypotheses ready (no model run)"
               in m for m in notes())
    _review_without_model(widget, viewer, path, tmp_path)


def test_the_bundles_model_also_encodes_the_image(make_napari_viewer, qtbot, prepared):
    path, model = prepared
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, load_default=False)
    widget.model_panel.load_model_file(model)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert widget.state.session is not None
    viewer.open(str(path), plugin="napari-probunet")
    qtbot.waitUntil(lambda: widget.state.hypotheses is not None, timeout=10_000)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)  # encoded on the worker
    st = widget.state
    assert st.ready and st.session.image_signature == st.encoded.image_signature
    assert len(st.hypothesis_layers) == 16


def test_another_models_session_is_left_alone(make_napari_viewer, qtbot, prepared, tmp_path):
    path, _ = prepared
    other = tmp_path / "other.safetensors"
    save_model(tiny_model(2), other)
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, load_default=False)
    widget.model_panel.load_model_file(other)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    viewer.open(str(path), plugin="napari-probunet")
    qtbot.waitUntil(lambda: widget.state.hypotheses is not None, timeout=10_000)
    st = widget.state
    assert not st.session.has_image and len(st.hypothesis_layers) == 16
