"""Leaks: pieces of a hypothesis (or a radiologist's mask) that touch no other outline."""

from __future__ import annotations

import numpy as np

from napari_probunet.review.leaks import leak_counts, leaks, radiologist_leak_counts


def disc(r0: int, c0: int, radius: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (np.hypot(yy - r0, xx - c0) <= radius).astype(np.uint8)


def test_a_second_blob_far_from_every_outline_is_a_leak():
    radiologists = np.stack([disc(10, 10, 4), disc(10, 11, 4), np.zeros((32, 32), np.uint8)])
    inside = disc(10, 10, 3)
    grazing = np.zeros((32, 32), np.uint8)
    grazing[10, 16] = 1  # 2 px beyond the outline (column 15): inside the 2 px margin
    vessel = np.maximum(disc(10, 10, 3), disc(25, 25, 2))  # the nodule and a vessel
    empty = np.zeros((32, 32), np.uint8)
    masks = np.stack([inside, grazing, vessel, empty])
    assert leak_counts(masks, radiologists) == (1, 3)  # the empty one does not count
    assert leak_counts(masks, radiologists, margin=0) == (2, 3)  # without the margin


def test_radiologists_are_measured_against_each_other():
    one, two = disc(10, 10, 4), disc(10, 11, 4)
    alone = disc(25, 25, 3)
    assert radiologist_leak_counts(np.stack([one, two, alone])) == (1, 3)
    assert radiologist_leak_counts(np.stack([one, np.zeros_like(one)])) == (1, 1)
    assert radiologist_leak_counts(np.zeros((4, 8, 8))) == (0, 0)


def test_3d_pieces_connect_across_slices():
    ref = np.zeros((3, 16, 16), bool)
    ref[0, 4:8, 4:8] = True
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[0, 5, 5] = mask[1, 6, 6] = mask[2, 7, 7] = 1  # one piece, diagonal through z
    assert not leaks(mask, ref)
    mask[2, 14, 14] = 1
    assert leaks(mask, ref)


def test_evaluate_reports_leaks(two_mode_model):
    from napari_probunet.data.case import Case
    from napari_probunet.model.testing import two_mode_case
    from napari_probunet.training.evaluate import evaluate_model

    image, masks = two_mode_case()
    far = np.zeros_like(masks[0])
    far[0:3, 0:3] = 1
    cases = [Case(image, masks, "a"), Case(image, np.stack([masks[0], far]), "b")]
    out = evaluate_model(two_mode_model, cases, n_samples=[4], progress=False)
    assert 0.0 <= out["leak_share"] <= 1.0 and out["leak_margin_px"] == 2
    # in b the core and the far blob touch nothing of each other: 2 of 4 grader masks leak
    assert out["leak_share_graders"] == 0.5
    assert out["by_graders_marking"]["2"]["leak_share_graders"] == 0.5
