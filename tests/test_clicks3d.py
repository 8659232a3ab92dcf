"""Refining a nodule's 3D hypotheses by simulated clicks (training/evaluate_clicks3d.py): where
the clicks go in 3D, 0 clicks is the plain 3D sampling, a click narrows the hypotheses, and
``probunet evaluate --nodules --clicks K`` on a tiny LIDC-IDRI slices set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_probunet.model.testing import two_mode_case
from napari_probunet.review.nodule import NoduleRequest, sample_nodule
from napari_probunet.review.seeds import seed_for_index
from napari_probunet.training.evaluate_clicks import first_click, next_click
from napari_probunet.training.evaluate_clicks3d import (
    agreeing,
    evaluate_clicks_3d,
    format_clicks3d_report,
    simulated_click,
)
from napari_probunet.training.evaluate_nodules import NoduleTruth, paired

SPACING = (2.5, 0.7, 0.7)


@pytest.fixture(scope="module")
def session(two_mode_model):
    from napari_probunet.session import Session

    return Session(two_mode_model, device="cpu")


def scan_and_truth(depth: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The two-mode lesion on every slice of a ``(depth, 32, 32)`` scan, and two radiologists:
    0 outlines the core on every slice, 1 the core and the halo."""
    image, masks = two_mode_case(32)
    vol = np.repeat(image[None], depth, axis=0).astype(np.float32)
    truth = np.zeros((2, depth, 32, 32), np.uint8)
    truth[0] = masks[0]
    truth[1] = masks[1]
    return vol, truth


# ----------------------------------------------------------------------------- click placement


def test_the_first_click_is_the_centre_in_millimetres():
    mask = np.zeros((9, 30, 40), np.uint8)
    mask[0:9, 2:7, 2:7] = 1        # A: 9 slices deep, 5 x 5 pixels (3.5 mm) across
    mask[3:6, 10:25, 20:35] = 1    # B: 3 slices deep (7.5 mm), 15 x 15 pixels (10.5 mm)
    # in voxels A's centre is deepest (3 voxels from its side against B's 2 from its top);
    # in millimetres B's (5 mm from top and bottom against A's 2.1 mm from its side)
    assert first_click(mask) == (4, 4, 4, True)
    assert first_click(mask, SPACING) == (4, 17, 27, True)


def test_later_clicks_go_to_the_largest_26_connected_error():
    truth = np.zeros((4, 12, 12), np.uint8)
    truth[0:4, 0:6, 0:6] = 1
    pred = truth.copy()
    pred[1, 0:2, 0:2] = 0          # missed: 4 voxels on slice 1 ...
    pred[2, 2:4, 2:4] = 0          # ... and 4 on slice 2 that touch them only by a corner
    pred[0, 8:10, 8:11] = 1        # added: 6 voxels
    click = next_click(truth, pred, SPACING)
    assert click[3] is True        # the two missed pieces are one piece of 8 (26-connected)
    assert truth[click[:3]] and not pred[click[:3]]
    pred[1, 8:10, 8:10] = 1        # the added piece grows to 10 voxels
    click = next_click(truth, pred, SPACING)
    assert click[3] is False and pred[click[:3]] and not truth[click[:3]]
    assert next_click(truth, truth, SPACING) is None


def test_clicks_stay_in_the_crop_and_are_placed_on_the_scan():
    mask = np.zeros((3, 20, 20), bool)
    mask[:, 2:8, 2:8] = True       # the radiologist's nodule, inside the crop
    mask[:, 2:18, 14:20] = True    # and a larger part outside the crop (columns >= 12)
    hm = np.zeros((1, *mask.shape), np.uint8)
    hm[0, :, 2:8, 2:8] = 1         # the hypothesis has the nodule, misses the part outside
    lo = np.array([10, 100, 200])  # the box's corner in the scan
    roi = (100, 200, 20, 12)       # the crop: rows 100..119, columns 200..211
    iou = np.array([0.3])
    assert simulated_click(2, hm, mask, lo, iou, roi, SPACING, "best") is None
    hm[0, 1, 4:6, 4:6] = 0         # now it misses 4 voxels in the crop
    assert simulated_click(2, hm, mask, lo, iou, roi, SPACING, "best") == (11, 104, 204, True)
    k, r, c, positive = simulated_click(1, hm, mask, lo, iou, roi, SPACING, "best")
    assert positive and k == 11 and 100 <= r < 120 and 200 <= c < 212
    # agreement is read at the click's voxel on the box (outside the box: background)
    assert agreeing(hm, lo, [(11, 104, 204, True)]).tolist() == [False]
    assert agreeing(hm, lo, [(11, 102, 202, True), (40, 0, 0, False)]).tolist() == [True]


# ----------------------------------------------------------------------------- the evaluation


def test_no_click_is_the_plain_3d_sampling(session):
    vol, masks = scan_and_truth()
    nodules = [NoduleTruth(f"n{i}", vol, masks, SPACING, slices=(0, 5)) for i in range(3)]
    out = evaluate_clicks_3d(session, nodules, clicks=1, n=8, seed=7, pool=256, count=1,
                             progress=False, per_pair=True)
    assert out["nodules_drawn"] == 1 and out["nodules_total"] == 3 and out["pairs"] == 2
    rows = out["per_pair"]
    i = int(rows[0]["nodule"][1:])  # the nodule drawn with the seed keeps its number's seed
    from napari_probunet.review.metrics import pairwise_iou

    plain = sample_nodule(session, NoduleRequest(vol, SPACING, nodules[i].click(), n=8,
                                                 seed=seed_for_index(7, i), slices=(0, 5)))
    hm, tm = paired(plain, nodules[i])
    iou = pairwise_iou(hm.reshape(8, -1, 32), tm.reshape(2, -1, 32), 2)
    for row in rows:
        r = row["radiologist"]
        assert row["best_iou"][0] == pytest.approx(iou[:, r].max())
        assert row["median_iou"][0] == pytest.approx(np.median(iou[:, r]))
    assert out["rules"]["sample"]["clicks0"]["best_iou"] == pytest.approx(
        np.mean([iou[:, r].max() for r in range(2)]))


def test_clicks_narrow_the_hypotheses_to_the_radiologist(session):
    vol, masks = scan_and_truth()
    halo = NoduleTruth("halo", vol, masks[1:], SPACING, slices=(0, 5))  # core + halo only
    out = evaluate_clicks_3d(session, [halo], clicks=2, n=8, seed=0, pool=512,
                             click_on="majority", progress=False, per_pair=True)
    res, row = out["rules"]["sample"], out["per_pair"][0]
    # the first click at the centre of the 5-slice nodule (both modes agree there), the
    # second in the halo that the majority misses: every hypothesis is then the halo, on
    # every slice (one draw per hypothesis)
    first, second = row["clicks"]
    assert first == [2, *first_click(masks[1][2])[:2], True]  # the middle slice's centre
    assert masks[0][tuple(first[:3])]  # in the core: inside both modes
    assert second[3] is True and masks[1][tuple(second[:3])] and not masks[0][tuple(second[:3])]
    assert res["clicks0"]["median_iou"] < 0.8 < 0.95 < res["clicks2"]["median_iou"]
    assert res["clicks2"]["agreeing_share"] == 1.0 and res["clicks2"]["shortfall_pairs"] == 0
    assert res["empty_after_one_click"]["hypotheses"] == 0
    assert row["pool_agreed"][0] is None and row["pool_agreed"][2] >= 8
    assert row["agreeing"] == [8, 8, 8]
    assert "best / median hypothesis 3D IoU" in format_clicks3d_report(out)


def test_probunet_evaluate_nodules_clicks_on_an_lidc_slices_set(two_mode_model_file, tmp_path,
                                                                capsys, monkeypatch):
    from test_lidc_slices import nodule_set

    from napari_probunet.cli import main

    root = nodule_set(tmp_path, monkeypatch)
    out = tmp_path / "clicks3d.json"
    rc = main(["evaluate", "--model", str(two_mode_model_file), "--data", str(root),
               "--nodules", "--clicks", "2", "--samples", "4", "--pool", "64",
               "--nodule-count", "3", "--threads", "1", "--quiet", "--out", str(out),
               "--per-image"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "(nodule, radiologist) pairs on 3 of 4 nodules" in text and "2 clicks" in text
    result = json.loads(out.read_text())
    # every radiologist of the layout outlines each nodule on some slice: 4 pairs a nodule
    assert result["pairs"] == 12 and result["nodules_drawn"] == 3 and result["n"] == 4
    assert result["error_pieces"] == "26-connected"
    assert len({r["nodule"] for r in result["per_pair"]}) == 3
    for row in result["per_pair"]:
        assert len(row["best_iou"]) == 3 and 1 <= len(row["clicks"]) <= 2
        assert row["clicks"][0][3] is True  # the first click is inside
    # --nodule-count draws the nodules of the plain 3D figures too
    rc = main(["evaluate", "--model", str(two_mode_model_file), "--data", str(root),
               "--nodules", "--samples", "4", "--nodule-count", "2", "--quiet", "--json"])
    assert rc == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["n_nodules"] == 2 and plain["nodules_total"] == 4
