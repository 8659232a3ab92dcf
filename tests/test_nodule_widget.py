"""The Nodule (3D) dock widget: click a nodule, browse 3D hypotheses with their volumes, pick
one, correct it, export it aligned with the scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.model.testing import wait_idle

pytestmark = pytest.mark.usefixtures("isolated_settings")

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-scans" / \
    "LIDC-IDRI-0001"


def nodule_scan():
    from test_nodule import nodule_scan as scan

    return scan()


def test_click_browse_correct_export(review, qtbot, tmp_path):
    import nibabel

    from napari_probunet.gui.nodule.widget import NoduleWidget

    viewer, _ = review
    vol = nodule_scan()
    viewer.add_image(vol, name="scan", scale=(2.5, 0.7, 0.7))
    widget = NoduleWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Nodule (3D)")
    assert widget.image_combo.currentText() == "scan"
    widget.n_spin.setValue(8)
    widget.seed_spin.setValue(3)
    assert widget.find_nodule((4, 32, 32))
    wait_idle(qtbot, widget)
    layers = [viewer.layers[f"scan nodule hypothesis {i:02d}"] for i in range(1, 9)]
    hyp = widget.result
    assert hyp.slices == range(2, 7) and all(la.data.shape == (5, 32, 32) for la in layers)
    # placed over the scan: data voxel (0, 0, 0) of a hypothesis is scan voxel (2, 16, 16)
    np.testing.assert_allclose(layers[0].data_to_world((0, 0, 0)), (5.0, 11.2, 11.2))
    assert widget.gallery.count() == 8
    first = widget.gallery.item(0).text()
    assert "mm³" in first and "slices 2-6" in first
    assert "Volume: median" in widget.spread.text()
    shown = widget.selected()
    assert layers[shown].visible and sum(la.visible for la in layers) == 1
    assert viewer.dims.current_step[0] == 4  # the hypothesis's central slice

    correction = widget.use_as_best_fit()
    assert correction is not None and correction.mode == "paint"
    correction.data[2, 0:3, 0:3] = 1  # the clinician paints on one slice
    out = tmp_path / "nodule.nii.gz"
    mask_path, record_path = widget.export_to(out)
    assert mask_path == out and record_path.exists()
    written = np.asanyarray(nibabel.load(str(out)).dataobj)
    assert written.sum() == correction.data.sum()
    record = json.loads(record_path.read_text())
    assert record["kind"] == "nodule correction" and record["chosen"]["index"] == shown
    assert record["corrected"]["edited_voxels"] == int(
        np.count_nonzero(correction.data != hyp.labels[shown]))
    assert record["seed"] == 3 and record["click"] == {"slice": 4, "row": 32, "col": 32}
    assert widget.export_to(out) is None  # no silent overwrite


def test_a_click_outside_any_scan_is_explained(review, qtbot):
    from napari_probunet.gui.nodule.widget import NoduleWidget

    viewer, _ = review
    widget = NoduleWidget(viewer)
    assert not widget.find_nodule((0, 0, 0))
    assert "no 3D image" in widget.status.text()
    viewer.add_image(nodule_scan(), name="scan")
    assert not widget.find_nodule((20, 0, 0))
    assert "outside the scan" in widget.status.text()


@pytest.mark.skipif(not SCAN.is_dir(), reason="../shared/data/lidc-idri-scans absent")
def test_the_real_scan_with_its_radiologists(make_napari_viewer, qtbot, tmp_path,
                                             isolated_settings):
    """LIDC-IDRI-0001 opened as a scan folder with the lidc model: the four radiologists'
    volumes beside the hypotheses', and an export that overlays the series."""
    from napari_probunet.data.volumes import read_dicom_series, read_nifti_volume
    from napari_probunet.gui.nodule.widget import NoduleWidget
    from napari_probunet.gui.review.widget import ReviewWidget

    viewer = make_napari_viewer()
    review = ReviewWidget(viewer, load_default=False)
    review.model_panel.load_model_file("lidc")
    wait_idle(qtbot, review)
    layers = viewer.open(str(SCAN), plugin="napari-probunet")
    ct = layers[0]
    widget = NoduleWidget(viewer)
    widget.n_spin.setValue(8)
    assert widget.image_combo.currentText() == ct.name
    assert widget.find_nodule((90, 365, 317))
    wait_idle(qtbot, widget, timeout=120_000)
    assert widget.result.labels.any()
    assert len(widget.radiologists) == 4
    assert all(5000 < v < 9500 for v in widget.radiologists.values())
    assert "radiologists:" in widget.spread.text()
    # one implementation: the command line and the Python API give the same hypotheses
    from napari_probunet.cli import main
    from napari_probunet.review.nodule import NoduleRequest, sample_nodule

    assert main(["sample", str(SCAN), "--click", "90,365,317", "--model", "lidc", "-n", "8",
                 "--seed", "0", "--out", str(tmp_path / "cli"), "--threads", "1"]) == 0
    saved = np.load(tmp_path / "cli" / "LIDC-IDRI-0001_nodule-1.npz")
    np.testing.assert_array_equal(saved["labels"], widget.result.labels)
    assert int(saved["first"]) == widget.result.first
    api = sample_nodule(widget._session, NoduleRequest(np.asarray(ct.data), tuple(ct.scale),
                                                       (90, 365, 317), n=8, seed=0))
    np.testing.assert_array_equal(api.labels, widget.result.labels)
    widget.use_as_best_fit(int(np.argmax(widget.result.volumes_mm3)))
    mask_path, _ = widget.export_to(tmp_path / "nodule.nii.gz")
    back = read_nifti_volume(mask_path)
    assert back.data.shape == ct.data.shape
    series = read_dicom_series(SCAN / "ct")
    np.testing.assert_allclose(back.affine, series.affine, atol=1e-4)  # overlays the series
    z0, z1 = widget.result.slices.start, widget.result.slices.stop
    assert back.data[z0:z1].sum() == widget.correction_layer.data.sum() > 0
    assert not back.data[:z0].any()
    # and as a DICOM SEG over the series, read back to the same 3D mask
    from napari_probunet.data.dicom_seg import read_seg

    seg_path, seg_record = widget.export_to(tmp_path / "nodule.seg.dcm")
    (segment,) = read_seg(seg_path, series).segments
    np.testing.assert_array_equal(segment.mask > 0, back.data > 0)
    assert json.loads(seg_record.read_text())["kind"] == "nodule correction"
