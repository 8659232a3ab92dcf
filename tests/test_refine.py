"""Refining the hypotheses by clicks: inside/outside clicks steer the hypotheses (review/refine.py),
in 2D and on a nodule's shared draws in 3D, and the simulated clicks of the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from napari_probunet.errors import InputError
from napari_probunet.model.testing import two_mode_case
from napari_probunet.review.refine import (
    Click,
    agrees_with,
    as_clicks,
    decode_chosen,
    prior_log_density,
    refine,
    steer_nodule,
)

HALO = (16, 24)  # inside the halo, outside the core: the two modes disagree here
CORE = (16, 16)  # inside both modes


@pytest.fixture(scope="module")
def session(two_mode_model):
    from napari_probunet.session import Session

    s = Session(two_mode_model, device="cpu")
    s.set_image(two_mode_case(32)[0])
    return s


def areas(labels: np.ndarray) -> np.ndarray:
    return labels.reshape(len(labels), -1).sum(axis=1)


def test_no_click_is_sampling(session):
    refined = refine(session, [], n=16, seed=3)
    plain = session.sample(16, seed=3)
    np.testing.assert_array_equal(refined.hypotheses.labels, plain.labels)
    np.testing.assert_array_equal(refined.hypotheses.z, plain.z)
    assert refined.agreed == refined.pool and refined.message is None
    np.testing.assert_array_equal(refined.picks, np.arange(16))


def test_an_inside_click_in_the_halo_keeps_the_halo_mode(session):
    _, masks = two_mode_case(32)
    core, halo = areas(masks)
    plain = areas(session.sample(64, seed=0).labels)
    assert (plain < (core + halo) / 2).any() and (plain > (core + halo) / 2).any()  # both modes
    inside = refine(session, [(*HALO, True)], n=16, seed=0)
    assert inside.agreeing.all() and inside.message is None
    assert (inside.hypotheses.labels[:, HALO[0], HALO[1]] == 1).all()
    assert (areas(inside.hypotheses.labels) > (core + halo) / 2).all()  # every one is the halo
    outside = refine(session, [(*HALO, False)], n=16, seed=0)
    assert (outside.hypotheses.labels[:, HALO[0], HALO[1]] == 0).all()
    assert areas(outside.hypotheses.labels).mean() < areas(inside.hypotheses.labels).mean()
    # what the hypotheses are decoded from: draws `picks` of the seed's pool
    z = session.draw_latents(int(inside.picks.max()) + 1, 0)[inside.picks]
    np.testing.assert_array_equal(inside.hypotheses.z, z)
    np.testing.assert_array_equal(session.decode(z), inside.hypotheses.labels)


def test_each_click_narrows_the_hypotheses(session):
    clicks = [(*CORE, True), (*HALO, True), (16, 27, True)]
    agreed, spread = [], []
    for k in range(len(clicks) + 1):
        r = refine(session, clicks[:k], n=16, seed=1, pool_max=4096)
        agreed.append(r.agreed)
        spread.append(float(r.hypotheses.uncertainty.mean()))
        assert agrees_with(r.hypotheses.labels, r.clicks)[: min(16, r.agreed)].all()
    assert agreed == sorted(agreed, reverse=True) and agreed[-1] < agreed[0]
    assert spread[2] < spread[0]  # the halo click removed the core-only mode


def test_reproducible_from_the_seed_and_in_any_click_order(session):
    clicks = [(*HALO, True), (3, 3, False)]
    a = refine(session, clicks, n=8, seed=5)
    b = refine(session, clicks[::-1], n=8, seed=5)
    np.testing.assert_array_equal(a.hypotheses.labels, b.hypotheses.labels)
    np.testing.assert_array_equal(a.picks, b.picks)
    c = refine(session, clicks, n=8, seed=6)
    assert not np.array_equal(a.picks, c.picks)
    for rule in ("probable", "score"):
        x = refine(session, clicks, n=8, seed=5, rule=rule)
        y = refine(session, clicks, n=8, seed=5, rule=rule)
        np.testing.assert_array_equal(x.hypotheses.labels, y.hypotheses.labels)


def test_too_few_agree_is_said_never_silent(session):
    # a lesion click in the image's corner: no latent of this model makes the corner lesion
    r = refine(session, [(0, 0, True)], n=4, seed=0, pool=256, pool_max=1024)
    assert r.agreed == 0 and r.pool == 1024 and r.n == 4
    assert not r.agreeing.any()
    assert "only 0 of 1024" in r.message and "miss a click" in r.message


def test_a_map_with_no_lesion_goes_last_after_an_inside_click(session):
    # far-out latents decode to no lesion about a third of the time on this model
    z = session.draw_latents(64, 0) * 10
    empty = ~session.decode(z).reshape(64, -1).any(axis=1)
    assert 2 <= empty[:8].sum() and (~empty).sum() >= 8 and empty.sum() >= 6
    ranked = np.arange(64)
    corner = (Click(0, 0, True),)  # agreed by none: every hypothesis is a fill-in
    picks, labels = decode_chosen(session, z, ranked, 8, corner)
    expected = np.flatnonzero(~empty)[:8]  # the non-empty ones, in their rank order
    np.testing.assert_array_equal(picks, expected)
    np.testing.assert_array_equal(labels, session.decode(z[expected]))
    # fewer non-empty maps than n among the candidates: they come first, then the empty ones
    few = np.concatenate([np.flatnonzero(empty)[:6], np.flatnonzero(~empty)[:2]])
    picks, _ = decode_chosen(session, z, few, 8, corner)
    np.testing.assert_array_equal(picks, np.concatenate([few[6:], few[:6]]))
    # outside clicks only: an empty map is an answer, the ranking stays
    picks, _ = decode_chosen(session, z, ranked, 8, (Click(0, 0, False),))
    np.testing.assert_array_equal(picks, ranked[:8])


def test_bad_clicks_are_refused_with_a_way_out(session):
    with pytest.raises(InputError, match=r"click 2 at \(row 40, column 3\) is outside the "
                                         r"region of interest \(32x32"):
        refine(session, [(1, 1, True), (40, 3, True)])
    with pytest.raises(InputError, match="outside the region"):
        refine(session, [(-1, 3, False)])
    with pytest.raises(InputError, match="clicks 1 and 3 are on the same pixel .* remove one"):
        refine(session, [(5, 5, True), (6, 6, True), (5.2, 4.9, False)])
    with pytest.raises(InputError, match="not a pixel"):
        as_clicks([(np.nan, 2, True)], (8, 8))
    with pytest.raises(InputError, match="a click is \\(row, column, positive\\)"):
        as_clicks([(1, 2)], (8, 8))
    with pytest.raises(InputError, match="rule must be one of"):
        refine(session, [], rule="best")
    assert as_clicks([(1.4, 2.6, 1)], (8, 8)) == (Click(1, 3, True),)


def test_logits_at_agree_with_the_full_decode(session):
    z = session.draw_latents(32, seed=2)
    pixels = np.array([CORE, HALO, (0, 0), (31, 31), (10, 20)])
    logits = session.logits_at(z, pixels)
    labels = session.decode(z)
    np.testing.assert_array_equal(logits.argmax(-1), labels[:, pixels[:, 0], pixels[:, 1]])
    with pytest.raises(InputError, match="not all inside"):
        session.logits_at(z, np.array([[32, 0]]))


def test_prior_log_density_of_a_gaussian():
    from scipy.stats import multivariate_normal

    z = np.array([[0.0, 0.0], [1.0, -2.0]])
    got = prior_log_density(z, [1.0], [[0.5, 0.0]], [[1.0, 2.0]])
    want = multivariate_normal([0.5, 0.0], np.diag([1.0, 4.0])).logpdf(z)
    np.testing.assert_allclose(got, want, rtol=1e-10)


# ----------------------------------------------------------------------------- 3D


def test_a_click_on_another_slice_steers_the_nodule(session):
    from napari_probunet.review.nodule import NoduleRequest, sample_nodule
    from tests.test_nodule import SPACING, nodule_scan

    vol = nodule_scan()  # the two-mode lesion on slices 2..6, centred at (32, 32)
    request = NoduleRequest(vol, SPACING, (4, 32, 32), n=8, seed=0)
    plain = sample_nodule(session, request)

    def run(job):
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value

    steered, agreed, pool, message = run(steer_nodule(session, request, [(5, 32, 40, True)]))
    assert message is None and agreed >= 8 and len(steered.picks) == 8
    result = sample_nodule(session, steered)
    k = 5 - result.first
    assert (result.labels[:, k, 32 - result.roi[0], 40 - result.roi[1]] == 1).all()
    # the draw is shared: the halo kept on the clicked slice is the halo on the others too
    k4 = 4 - result.first
    assert (result.labels[:, k4].reshape(8, -1).sum(1) > 200).all()
    assert (plain.labels[:, 4 - plain.first].reshape(8, -1).sum(1) < 200).any()
    # no click: the plain nodule
    same, *_ = run(steer_nodule(session, request, []))
    np.testing.assert_array_equal(sample_nodule(session, same).labels, plain.labels)
    with pytest.raises(InputError, match="outside the nodule's region"):
        run(steer_nodule(session, request, [(5, 2, 40, True)]))
    with pytest.raises(InputError, match="coupling='shared'"):
        from dataclasses import replace

        run(steer_nodule(session, replace(request, coupling="independent"), []))


# ----------------------------------------------------------------------------- the evaluation


def test_simulated_clicks():
    from napari_probunet.training.evaluate_clicks import first_click, next_click

    mask = np.zeros((20, 20), np.uint8)
    mask[4:15, 2:9] = 1  # 11 x 7: centre row 9, column 5
    assert first_click(mask) == (9, 5, True)
    pred = mask.copy()
    pred[4:15, 2:4] = 0  # misses 22 pixels
    pred[0:2, 10:20] = 1  # adds 20
    assert next_click(mask, pred)[2] is True
    r, c, _ = next_click(mask, pred)
    assert mask[r, c] and not pred[r, c]
    pred[0:4, 10:20] = 1  # now adds 40: the largest error
    r, c, positive = next_click(mask, pred)
    assert not positive and pred[r, c] and not mask[r, c]
    assert next_click(mask, mask) is None


def test_evaluate_clicks_on_synthetic_cases(two_mode_model):
    from napari_probunet.data.case import Case
    from napari_probunet.training.evaluate_clicks import evaluate_clicks, format_clicks_report

    image, masks = two_mode_case(32)
    cases = [Case(image=image, masks=masks, case_id="both"),
             Case(image=image, masks=masks[1:], case_id="halo")]
    out = evaluate_clicks(two_mode_model, cases, clicks=2, n=8, seed=0, pool=512,
                          click_on="best", device="cpu", progress=False)
    assert out["pairs"] == 3
    res = out["rules"]["sample"]
    assert res["empty_after_one_click"]["hypotheses"] == 0
    assert res["clicks0"]["best_iou"] > 0.95  # the model has both modes: nothing to correct
    assert res["clicks2"]["best_iou"] == res["clicks0"]["best_iou"]
    # on the halo grader alone, clicks at the majority's errors: the centre click lands in
    # both modes, the next in the halo the majority misses, and every hypothesis is the halo
    halo = evaluate_clicks(two_mode_model, cases[1:], clicks=2, n=8, seed=0, pool=512,
                           rules=("sample", "probable"), click_on="majority", device="cpu",
                           progress=False)
    for rule in ("sample", "probable"):
        res = halo["rules"][rule]
        assert res["clicks0"]["median_iou"] < 0.8 < 0.95 < res["clicks2"]["median_iou"]
    assert "best / median" in format_clicks_report(halo)


def test_probunet_evaluate_clicks(two_mode_model_file, tmp_path, capsys):
    import json

    from napari_probunet import cli

    out = tmp_path / "clicks.json"
    code = cli.main(["evaluate", "--model", str(two_mode_model_file), "--data",
                     "synthetic:lesions?n=3&size=32", "--clicks", "2", "--samples", "8",
                     "--pool", "256", "--rule", "sample", "score", "--slices", "2", "--quiet",
                     "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "0 clicks" in text and "2 clicks" in text and "empty after 1" in text
    result = json.loads(out.read_text())
    assert result["slices_drawn"] == 2 and result["slices_total"] == 3
    assert set(result["rules"]) == {"sample", "score"} and result["n"] == 8


def test_refine_nodule_job_notes_the_agreement(session):
    from napari_probunet.review.nodule import NoduleRequest
    from napari_probunet.review.refine import refine_nodule_job
    from tests.test_nodule import SPACING, nodule_scan

    request = NoduleRequest(nodule_scan(), SPACING, (4, 32, 32), n=8, seed=0)
    job = refine_nodule_job(session, request, [(5, 32, 40, True), (4, 18, 18, False)])
    while True:
        try:
            next(job)
        except StopIteration as stop:
            result = stop.value
            break
    assert "8 of 8 hypotheses agree with the 2 click(s)" in result.notes[-1]
