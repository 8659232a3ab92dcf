"""A nodule in a scan: 3D hypotheses (one draw per hypothesis, one connected piece), their
measurements, and the 3D evaluation against radiologists' masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_probunet.data.measure import (
    longest_3d_diameter_mm,
    longest_axial_diameter_mm,
    nodule_volume_mm3,
    z_gaps,
)
from napari_probunet.errors import InputError
from napari_probunet.model.testing import two_mode_case
from napari_probunet.review.nodule import (
    NoduleRequest,
    crop_box,
    keep_clicked,
    keep_touching,
    sample_nodule,
)

SPACING = (2.5, 0.7, 0.7)


def nodule_scan(first: int = 2, last: int = 6, depth: int = 9, size: int = 64) -> np.ndarray:
    """A (depth, size, size) scan: the two-mode lesion (32x32) centred on slices first..last,
    a constant background elsewhere (blank slices, nothing to segment)."""
    image, _ = two_mode_case(32)
    vol = np.full((depth, size, size), 0.1, np.float32)
    o = size // 2 - 16
    vol[first:last + 1, o:o + 32, o:o + 32] = image
    return vol


@pytest.fixture(scope="module")
def session(two_mode_model):
    from napari_probunet.session import Session

    return Session(two_mode_model, device="cpu")


# ----------------------------------------------------------------------------- measurements


def test_volume_and_diameters_of_a_box():
    mask = np.zeros((5, 20, 20), np.uint8)
    mask[1:4, 2:12, 5:9] = 1  # 3 slices of 10 x 4 pixels
    assert nodule_volume_mm3(mask, SPACING) == pytest.approx(120 * 2.5 * 0.7 * 0.7)
    # in-slice: corner to corner of 10 x 4 pixel centres (9, 3) plus one pixel
    assert longest_axial_diameter_mm(mask, SPACING) == pytest.approx(np.hypot(9, 3) * 0.7 + 0.7)
    d3 = np.sqrt((2 * 2.5) ** 2 + (9 * 0.7) ** 2 + (3 * 0.7) ** 2) + 0.7
    assert longest_3d_diameter_mm(mask, SPACING) == pytest.approx(d3)
    assert longest_axial_diameter_mm(np.zeros((2, 3, 3)), SPACING) == 0.0
    one = np.zeros((1, 5, 5), bool)
    one[0, 2, 2] = True
    assert longest_axial_diameter_mm(one, SPACING) == pytest.approx(0.7)


def test_diameter_of_a_large_disc_uses_its_hull():
    yy, xx = np.mgrid[:201, :201]
    disc = (np.hypot(yy - 100, xx - 100) <= 90)[None]
    assert longest_axial_diameter_mm(disc, (1, 1, 1)) == pytest.approx(181, abs=0.5)


def test_gaps_along_z():
    m = np.zeros((6, 4, 4), np.uint8)
    assert z_gaps(m) == 0
    m[[0, 1, 4], 1, 1] = 1
    assert z_gaps(m) == 2
    m[2:4, 2, 2] = 1
    assert z_gaps(m) == 0


@pytest.mark.parametrize("spacing", [(1, 1), (0, 1, 1), (1, float("nan"), 1), "abc"])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(InputError, match="spacing"):
        nodule_volume_mm3(np.ones((2, 2, 2)), spacing)


# ----------------------------------------------------------------------------- pieces


def test_the_clicked_piece_and_what_touches_it():
    lab = np.zeros((2, 12, 12), np.uint8)
    lab[0, 2:5, 2:5] = 1      # under the click
    lab[0, 8:11, 8:11] = 1    # a vessel elsewhere
    lab[1, 6:8, 2:4] = 1      # 3 px from the click: snapped
    kept = keep_clicked(lab, (3, 3), (4, 4))
    assert kept[0, 2:5, 2:5].all() and not kept[0, 8:, 8:].any()
    assert kept[1].sum() == 4
    assert not keep_clicked(lab, (3, 3), (1, 1))[1].any()  # too far with a 1 px snap
    nxt = np.zeros_like(lab)
    nxt[0, 4:7, 4:7] = 1      # overlaps slice 0's piece at (4, 4)
    nxt[0, 0, 11] = 1         # does not
    nxt[1, 0:2, 0:2] = 1      # hypothesis 1 moved away: it ends
    touching = keep_touching(nxt, kept)
    assert touching[0].sum() == 9 and not touching[1].any()


def test_crop_stays_inside_the_slice():
    assert crop_box((512, 512), (10, 500), 128) == (0, 384, 128, 128)
    assert crop_box((100, 60), (50, 30), 128) == (0, 0, 100, 60)


# ----------------------------------------------------------------------------- 3D hypotheses


def test_hypotheses_are_nodules_found_from_the_click(session):
    vol = nodule_scan()
    hyp = sample_nodule(session, NoduleRequest(vol, SPACING, (4, 32, 32), n=16, seed=3))
    assert hyp.labels.shape[:2] == (16, 5) and hyp.slices == range(2, 7)
    assert hyp.roi == (16, 16, 32, 32)
    nonempty = [i for i in range(16) if hyp.labels[i].any()]
    assert nonempty, "the tiny model draws the lesion"
    for i in nonempty:
        # one draw per hypothesis: every slice of this nodule shows the same image, so the
        # same hypothesis is the same outline on each of them
        assert all(np.array_equal(hyp.labels[i, 0], hyp.labels[i, k]) for k in range(5))
        assert hyp.extent(i) == (2, 6) and z_gaps(hyp.labels[i]) == 0
    sizes = {int(hyp.labels[i, 0].sum()) for i in nonempty}
    assert len(sizes) >= 2, "the hypotheses differ from one another (core, core + halo, ...)"
    vols = hyp.volumes_mm3
    assert vols[nonempty[0]] == pytest.approx(hyp.labels[nonempty[0]].sum() * 2.5 * 0.49)
    s = hyp.volume_summary()
    assert s["p5"] <= s["median"] <= s["p95"]
    full = hyp.full_mask(nonempty[0], vol.shape)
    assert full.shape == vol.shape and full.sum() == hyp.labels[nonempty[0]].sum()
    assert not full[:2].any() and not full[7:].any()
    again = sample_nodule(session, NoduleRequest(vol, SPACING, (4, 32, 32), n=16, seed=3))
    assert np.array_equal(again.labels, hyp.labels), "the same click and seed, the same nodules"


def test_independent_slices_are_not_one_nodule(session):
    vol = nodule_scan()
    req = NoduleRequest(vol, SPACING, (4, 32, 32), n=16, seed=3, coupling="independent",
                        connect=False, slices=(2, 7))
    hyp = sample_nodule(session, req)
    changes = [i for i in range(16)
               if any(not np.array_equal(hyp.labels[i, 0], hyp.labels[i, k]) for k in range(5))]
    assert changes, "drawn slice by slice, some hypothesis changes mode from slice to slice"


def test_the_extent_limit_is_reported(session):
    vol = nodule_scan(first=0, last=8)
    hyp = sample_nodule(session, NoduleRequest(vol, SPACING, (4, 32, 32), n=8, seed=1,
                                               max_extent_mm=2.5))
    assert hyp.slices == range(3, 6)
    assert hyp.reached_limit and "cut there" in hyp.notes[0]


def test_a_click_on_nothing_gives_no_nodule(session):
    vol = nodule_scan()
    hyp = sample_nodule(session, NoduleRequest(vol, SPACING, (0, 5, 5), n=4, seed=0))
    assert not hyp.labels.any() and "no nodule" in hyp.notes[-1]


@pytest.mark.parametrize("change, match", [
    (dict(click=(9, 3, 3)), "outside the scan"),
    (dict(volume=np.zeros((4, 4))), "3D scan"),
    (dict(n=0), "at least 1"),
    (dict(coupling="maybe"), "coupling"),
    (dict(slices=(5, 9)), "clicked slice"),
])
def test_bad_requests_are_refused(session, change, match):
    base = dict(volume=nodule_scan(), spacing=SPACING, click=(4, 32, 32))
    with pytest.raises(InputError, match=match):
        sample_nodule(session, NoduleRequest(**{**base, **change}))


# ----------------------------------------------------------------------------- 3D evaluation


def test_3d_figures_against_radiologists(session):
    from napari_probunet.training.evaluate_nodules import NoduleTruth, evaluate_nodules

    vol = nodule_scan(first=0, last=4, depth=5, size=32)
    _, masks = two_mode_case(32)
    truth = np.zeros((4, 5, 32, 32), np.uint8)
    truth[0] = masks[0]              # core on every slice
    truth[1] = masks[1]              # core + halo on every slice
    truth[2, 1:4] = masks[0]         # core on three slices
    nodule = NoduleTruth("scan/nodule-0", vol, truth, SPACING, slices=(0, 5))
    assert nodule.click() == (2, 16, 16)
    out = evaluate_nodules(session, [nodule], n_samples=[4, 8], progress=False,
                           per_nodule=True)
    assert out["n_nodules"] == 1
    for key in ("ged4_3d", "ged8_3d", "ged8_3d_independent", "ged8_3d_offset", "hm_iou8_3d"):
        assert 0.0 <= out[key] <= 2.0, key
    assert out["gaps"]["hypotheses"]["share_with_gaps"] in (0.0, None)
    assert out["gaps"]["radiologists"]["masks"] == 3
    assert out["empty_radiologists"] == pytest.approx(0.25)
    assert 0.0 <= out["volume_coverage"] <= 1.0
    row = out["per_nodule"][0]
    assert len(row["volumes_mm3"]) == 8 and len(row["radiologist_volumes_mm3"]) == 3


def test_probunet_evaluate_on_a_whole_scan_with_its_reading_file(capsys, tmp_path):
    """The real LIDC-IDRI-0001 series and its four radiologists: one nodule, 3D figures."""
    import json
    from pathlib import Path

    from napari_probunet.cli import main

    scans = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-scans"
    if not (scans / "LIDC-IDRI-0001" / "ct").is_dir():
        pytest.skip("the shared LIDC-IDRI scan is not on this machine")
    out = tmp_path / "scan.json"
    rc = main(["evaluate", "--model", "lidc", "--data", str(scans), "--samples", "4",
               "--threads", "1", "--quiet", "--json", "--out", str(out), "--per-image"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["n_nodules"] == 1 and result["outline_pixels"] == "left out"
    row = result["per_nodule"][0]
    assert len(row["radiologist_volumes_mm3"]) == 4  # all four outlined it
    assert all(5000 < v < 8000 for v in row["radiologist_volumes_mm3"])  # a ~30 mm nodule
    assert 85 <= row["click"][0] <= 95
    assert result["gaps"]["hypotheses"]["share_with_gaps"] == 0.0
    for key in ("ged4_3d", "ged4_3d_independent", "ged4_3d_offset", "hm_iou4_3d"):
        assert 0.0 <= result[key] <= 2.0


def test_probunet_sample_with_clicks_on_a_nifti_scan(two_mode_model_file, tmp_path, capsys):
    import json

    import nibabel

    from napari_probunet.cli import main

    vol = nodule_scan()
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.transpose(vol, (2, 1, 0)),
                                     np.diag([0.7, 0.7, 2.5, 1.0])), path)
    centres = tmp_path / "centres.csv"
    centres.write_text("slice,row,column\n# the second nodule is nothing\n0,5,5\n")
    out = tmp_path / "out"
    rc = main(["sample", str(path), "--model", str(two_mode_model_file), "--out", str(out),
               "-n", "8", "--seed", "3", "--click", "4,32,32", "--centres", str(centres),
               "--threads", "1"])
    assert rc == 0, capsys.readouterr()
    saved = np.load(out / "scan_nodule-1.npz")
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session

    direct = sample_nodule(Session(load_model(two_mode_model_file), "cpu"),
                           NoduleRequest(vol, (2.5, 0.7, 0.7), (4, 32, 32), n=8, seed=3))
    np.testing.assert_array_equal(saved["labels"], direct.labels)
    summary = json.loads((out / "scan_nodule-1.json").read_text())
    assert summary["slices"] == [2, 6] and summary["seed"] == 3
    assert summary["volumes_mm3"] == pytest.approx(direct.volumes_mm3.tolist())
    assert json.loads((out / "scan_nodule-2.json").read_text())["volume"]["empty_share"] == 1.0


@pytest.mark.parametrize("args, match", [
    (["--click", "4,32"], "slice,row,column"),
    (["--click", "40,32,32"], "outside the scan"),
])
def test_probunet_sample_click_errors(two_mode_model_file, tmp_path, capsys, args, match):
    import nibabel

    from napari_probunet.cli import main

    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.transpose(nodule_scan(), (2, 1, 0)), np.eye(4)), path)
    try:
        rc = main(["sample", str(path), "--model", str(two_mode_model_file),
                   "--out", str(tmp_path / "o"), *args])
    except SystemExit as exc:  # argparse refuses the option itself
        rc = exc.code
    captured = capsys.readouterr()
    assert rc != 0 and match in captured.out + captured.err


def test_probunet_evaluate_nodules_on_an_lidc_slices_set(two_mode_model_file, tmp_path, capsys,
                                                         monkeypatch):
    """--nodules groups the slices set's slices by nodule (in slice order, radiologist k the
    same mask-k on every slice) and reports the 3D figures."""
    import json

    from test_lidc_slices import nodule_set

    from napari_probunet.cli import main

    root = nodule_set(tmp_path, monkeypatch)
    out = tmp_path / "nodules.json"
    rc = main(["evaluate", "--model", str(two_mode_model_file), "--data", str(root),
               "--nodules", "--samples", "4", "--threads", "1", "--quiet", "--json",
               "--out", str(out), "--per-image"])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["n_nodules"] == 4
    assert sorted(r["nodule"] for r in result["per_nodule"]) == [
        "LIDC-IDRI-0001/nodule-0", "LIDC-IDRI-0001/nodule-1",
        "LIDC-IDRI-0002/nodule-0", "LIDC-IDRI-0002/nodule-1"]
    # radiologist 4 draws nothing on the first slice and a square on the others: 4 masks each
    row = result["per_nodule"][0]
    assert len(row["radiologist_volumes_mm3"]) == 4 and row["gaps_radiologists"] == [0] * 4
    assert result["gaps"]["hypotheses"]["share_with_gaps"] in (0.0, None)
    assert "ged4_3d" in result and "ged4_3d_independent" in result
