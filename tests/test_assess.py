"""Assessing annotations under the model: the explorer's table and ``probunet assess``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_probunet.cli import assess as assess_cli
from napari_probunet.cli import main
from napari_probunet.errors import InputError
from napari_probunet.gui.dock import get_state
from napari_probunet.gui.explorer.widget import ExplorerWidget
from napari_probunet.model.modelfile import save_model
from napari_probunet.model.testing import tiny_model, two_mode_case
from napari_probunet.review import assess
from napari_probunet.review.seeds import STREAM_REFERENCE, seed_for_index
from napari_probunet.review.state import EncodedRegion
from napari_probunet.session import Session


def encode(viewer, model, image, roi, scale, translate):
    """Encode ``roi`` of a new image layer as the review widget does (no hypotheses)."""
    viewer.add_image(image, name="image", scale=scale, translate=translate)
    r0, c0, h, w = roi
    crop = image[r0:r0 + h, c0:c0 + w]
    state = get_state(viewer)
    session = Session(model, "cpu")
    session.set_image(crop)
    state.model, state.session = model, session
    state.model_changed.emit()
    state.encoded = EncodedRegion("image", (), roi, session.image_signature, crop)
    state.image_encoded.emit()
    return state, session


@pytest.fixture
def session():
    image, _ = two_mode_case(32)
    s = Session(tiny_model(0, latent_dim=3), "cpu")
    s.set_image(image)
    return s


# ------------------------------------------------------------------------------ GUI-free core


def test_prepare_mask_checks_labels_against_the_model():
    m = np.array([[0, 3], [7, 0]])
    np.testing.assert_array_equal(assess.prepare_mask(m, 2), [[0, 1], [1, 0]])  # binary: any label
    np.testing.assert_array_equal(assess.prepare_mask(m.astype(bool), 2), [[0, 1], [1, 0]])
    with pytest.raises(InputError, match="up to 7 but the model has 3 classes"):
        assess.prepare_mask(m, 3)
    with pytest.raises(InputError, match="fractions"):
        assess.prepare_mask(np.array([[0.5, 0]]), 2)
    with pytest.raises(InputError, match="2D"):
        assess.prepare_mask(np.zeros((2, 3, 4)), 2)
    with pytest.raises(InputError, match="negative"):
        assess.prepare_mask(np.array([[-1, 0]]), 3)


def test_assessment_is_the_posterior_location_and_flags_follow_the_reference(session):
    image, masks = two_mode_case(32)
    loc = session.locate(masks[1])
    a = assess.assess_mask(session, masks[1], "halo")
    assert a.kl == loc.kl and a.iou == loc.iou and not a.outlier
    np.testing.assert_array_equal(a.mu, loc.mu)
    mu, sigma = session.prior()
    np.testing.assert_allclose(a.u, (loc.mu - mu) / sigma, rtol=1e-6)
    # thresholds are quantiles of the model's own samples
    ref = assess.reference(session, n=8, seed=3)
    assert ref.kl.shape == (8,) and ref.iou.shape == (8,)
    assert ref.kl_threshold == pytest.approx(np.quantile(ref.kl, 0.95) + assess.KL_MARGIN)
    if ref.fit_assessed:
        assert ref.iou_threshold == pytest.approx(min(np.quantile(ref.iou, 0.05), assess.FIT_IOU))
    again = assess.reference(session, n=8, seed=3)
    np.testing.assert_array_equal(again.kl, ref.kl)  # seeded
    strict = assess.Reference(np.array([loc.kl - 2, loc.kl - 3]), np.array([1.0, 1.0]))
    expected = ("kl",) + (("fit",) if loc.iou < assess.FIT_IOU else ())
    assert assess.assess_mask(session, masks[1], "halo", strict).reasons == expected
    lenient = assess.Reference(np.array([loc.kl + 1, loc.kl + 2]), np.array([0.0, 0.0]))
    assert not assess.assess_mask(session, masks[1], "halo", lenient).outlier


def test_a_flag_needs_a_margin_and_a_fit_test_that_can_trigger(session):
    """0.07 nats over the samples' quantile is noise, not a flag; and where the model cannot
    redraw its own samples (IoU quantile 0.00), no "IoU < 0.00" rule is pretended."""
    image, masks = two_mode_case(32)
    loc = session.locate(masks[1])
    just_over = assess.Reference(np.array([loc.kl - 0.07] * 4), np.array([1.0] * 4))
    assert "kl" not in assess.assess_mask(session, masks[1], "halo", just_over).reasons
    clearly = assess.Reference(np.array([loc.kl - 1.5] * 4), np.array([1.0] * 4))
    assert "kl" in assess.assess_mask(session, masks[1], "halo", clearly).reasons
    blind = assess.Reference(np.array([loc.kl + 5] * 4), np.array([0.0, 0.0, 0.1, 0.9]))
    assert not blind.fit_assessed and np.isnan(blind.iou_threshold)
    assert assess.assess_mask(session, np.zeros_like(masks[1]), "empty", blind).reasons == ()


# ----------------------------------------------------------------------- the explorer's table


def test_table_values_match_session_locate(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    try:
        image, masks = two_mode_case(48)
        roi = (4, 6, 32, 36)
        # graders' layers lie over the whole image with its scale and translate; the
        # correction-like one is crop-sized and placed on the region
        state, session = encode(viewer, tiny_model(0, latent_dim=3), image, roi,
                                (0.5, 0.5), (3.0, -2.0))
        viewer.add_labels(masks[0], name="grader 1", scale=(0.5, 0.5), translate=(3.0, -2.0))
        viewer.add_labels(masks[1] * 2, name="grader 2", scale=(0.5, 0.5), translate=(3.0, -2.0))
        crop = masks[1][4:36, 6:42].copy()
        crop[:3] = 1
        viewer.add_labels(crop, name="correction", scale=(0.5, 0.5),
                          translate=(3.0 + 4 * 0.5, -2.0 + 6 * 0.5))
        viewer.add_labels(np.zeros((5, 5), np.uint8), name="elsewhere")
        qtbot.waitUntil(lambda: widget.plane is not None and widget.idle, timeout=20000)
        listed = [widget.annotation_list.item(i).text()
                  for i in range(widget.annotation_list.count())]
        assert listed[:4] == ["grader 1", "grader 2", "correction", "elsewhere"]
        widget.assess(["grader 1", "grader 2", "correction", "elsewhere"])
        qtbot.waitUntil(lambda: widget.idle and bool(widget.assessments), timeout=30000)
        expected = {
            "grader 1": masks[0][4:36, 6:42],
            "grader 2": masks[1][4:36, 6:42],  # label 2 counts as the lesion (binary model)
            "correction": crop,
        }
        got = {a.name: a for a in widget.assessments}
        assert set(got) == set(expected)
        mu, sigma = session.prior()
        plane = widget.plane
        for row, a in enumerate(widget.assessments):
            loc = session.locate(expected[a.name])
            assert a.kl == pytest.approx(loc.kl, abs=1e-5) and a.iou == loc.iou
            np.testing.assert_allclose(a.mu, loc.mu, atol=1e-5)
            cells = [widget.table.item(row, c).text() for c in range(widget.table.columnCount())]
            u, v = plane.coords(loc.mu)
            assert cells[:5] == [a.name, f"{loc.kl:.2f}", f"{loc.iou:.2f}", f"{u:+.2f}",
                                 f"{v:+.2f}"]
            marker = widget.map.markers.annotations[row]
            assert marker[0] == a.name and marker[1:3] == pytest.approx((u, v), abs=1e-6)
        # the layer that does not cover the region is reported, not assessed
        last = [widget.table.item(3, c).text() for c in range(widget.table.columnCount())]
        assert last[0] == "elsewhere" and last[-1] == "error"
        assert "covers only" in widget.table.item(3, 0).toolTip()
        assert "own samples" in widget.rule_label.text()
        assert f"{widget.assessment_reference.kl_threshold:.2f}" in widget.rule_label.text()
        # double-clicking a row decodes at the annotation's place on the map
        widget.go_to_assessment(0)
        qtbot.waitUntil(lambda: widget.idle, timeout=20000)
        np.testing.assert_allclose(widget.point, plane.coords(widget.assessments[0].mu),
                                   atol=1e-6)
        # removing an assessed layer and assessing again does not crash
        viewer.layers.remove("grader 2")
        widget.assess()
        qtbot.waitUntil(lambda: widget.idle, timeout=20000)
        assert "grader 2" not in [a.name for a in widget.assessments]
    finally:
        widget.shutdown()


# ------------------------------------------------------------------------------ probunet assess


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0, latent_dim=2), path)
    return path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_scores_every_grader_of_a_synthetic_dataset(model_file, tmp_path, capsys):
    out = tmp_path / "scores" / "scores.csv"
    spec = "synthetic:lesions?n=2&seed=4&size=32&graders=3"
    rc = main(["assess", "--model", str(model_file), "--data", spec, "--out", str(out),
               "--reference-samples", "6", "--quiet"])
    assert rc == 0
    rows = read_csv(out)
    assert len(rows) == 6
    assert list(rows[0]) == assess.csv_columns(2)
    assert [r["grader"] for r in rows] == ["1", "2", "3"] * 2
    assert all(r["mode"] in ("core", "core+halo", "nothing") for r in rows)
    # the numbers are those of the library on the same case
    from napari_probunet.data.readers import open_cases
    from napari_probunet.model.modelfile import load_model

    case = open_cases(spec)[1]
    s = Session(load_model(model_file), "cpu")
    s.set_image(case.image)
    ref = assess.reference(s, 6, seed_for_index(0, 1, STREAM_REFERENCE))
    a = assess.assess_mask(s, case.masks[2], "g", ref)
    row = rows[5]
    assert row["case_id"] == case.case_id
    assert float(row["kl"]) == pytest.approx(a.kl, rel=1e-5, abs=1e-6)
    assert float(row["iou"]) == pytest.approx(a.iou, rel=1e-5)
    assert float(row["mu_z2"]) == pytest.approx(float(a.mu[1]), rel=1e-5, abs=1e-6)
    assert float(row["u_z1"]) == pytest.approx(float(a.u[0]), rel=1e-4, abs=1e-5)
    assert float(row["kl_threshold"]) == pytest.approx(ref.kl_threshold, rel=1e-5, abs=1e-6)
    assert row["outlier"] == str(int(a.outlier))


def test_cli_reads_a_folder_and_prints_csv_without_out(model_file, tmp_path, capsys):
    from napari_probunet.data.readers import write_multirater_folder
    from napari_probunet.data.synthetic import make_case

    folder = write_multirater_folder([make_case("lesions", 0, i, size=32, graders=2)
                                      for i in range(2)], tmp_path / "cases")
    rc = main(["assess", "--model", str(model_file), "--data", str(folder),
               "--reference-samples", "0"])
    captured = capsys.readouterr()
    assert rc == 0
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("case_id,grader,mode,kl,iou,outlier")
    assert len(lines) == 1 + 4
    assert "assessed 4 masks of 2 cases" in captured.err
    assert all(line.split(",")[5] == "0" for line in lines[1:])  # no reference: no flags


def test_cli_explains_bad_input(model_file, tmp_path, capsys):
    rc = main(["assess", "--model", str(model_file), "--data", str(tmp_path / "missing")])
    assert rc == 2 and "no such file or folder" in capsys.readouterr().err
    rc = main(["assess", "--model", str(model_file), "--data", "synthetic:lesions?n=1",
               "--quantile", "1.5"])
    assert rc == 2 and "--quantile" in capsys.readouterr().err
    rc = main(["assess", "--model", str(model_file), "--data", "synthetic:lesions?n=1",
               "--out", str(tmp_path)])
    assert rc == 2 and "is a folder" in capsys.readouterr().err
    rc = main(["assess", "--model", str(tmp_path / "nope.safetensors"), "--data",
               "synthetic:lesions?n=1"])
    assert rc == 2
    # the flips data has 11 classes: a 3-class model refuses its masks, naming the case
    three = tmp_path / "three.safetensors"
    save_model(tiny_model(0, latent_dim=2, num_classes=3,
                          class_names=["background", "a", "b"]), three)
    rc = main(["assess", "--model", str(three), "--data", "synthetic:flips?n=1&size=32",
               "--reference-samples", "0", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "case" in err and "classes" in err


def test_cli_refuses_an_unwritable_out_before_any_work(model_file, tmp_path, capsys,
                                                       monkeypatch):
    """Scoring a whole study must not end in a PermissionError: --out is checked first."""
    monkeypatch.setattr(assess_cli, "assess_cases",
                        lambda *a, **k: pytest.fail("assessed before checking --out"))
    (tmp_path / "afile").write_text("")
    outs = [tmp_path / "afile" / "scores.csv"]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        try:  # root may write anywhere: the read-only folder counts only where it is enforced
            (locked / "probe").write_text("")
            (locked / "probe").unlink()
        except OSError:
            outs.append(locked / "scores.csv")
        for out in outs:
            rc = main(["assess", "--model", str(model_file), "--data",
                       "synthetic:lesions?n=1&size=32", "--out", str(out), "--quiet"])
            err = capsys.readouterr().err
            assert rc == 2, out
            assert err.startswith(f"probunet assess: error: cannot write --out {out}")
            assert err.count("\n") == 1 and "Traceback" not in err
    finally:
        locked.chmod(0o700)
    rc = main(["assess", "--model", str(model_file), "--data", "synthetic:nope",
               "--out", str(tmp_path / "new" / "deep" / "scores.csv")])
    assert rc == 2 and not (tmp_path / "new").exists()
