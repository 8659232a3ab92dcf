"""``probunet evaluate`` and :func:`evaluate_model`: evaluate a model on synthetic data with a
known truth, next to its deterministic baseline and the oracle, from Python and the command line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_probunet import cli
from napari_probunet.data.case import Case, ModeTruth
from napari_probunet.errors import DataError
from napari_probunet.model import testing as _testing
from napari_probunet.review.seeds import STREAM_ORACLE, seed_for_index
from napari_probunet.training.evaluate import evaluate_model, open_data
from napari_probunet.training.report import format_report

LESIONS = "synthetic:lesions?n=6&size=32"


@pytest.fixture(scope="module")
def lesion_result():
    cases, _ = open_data(LESIONS)
    return evaluate_model(_testing.tiny_model(seed=0), cases, n_samples=(16, 100), seed=0,
                          device="cpu", progress=False)


def test_evaluate_reports_the_metrics_with_sane_ranges(lesion_result):
    r = lesion_result
    for key in ("ged16", "ged100", "hm_iou16", "deterministic_ged16", "oracle_ged16",
                "mode_freq_max_abs_err", "mode_freq_max_abs_err16", "consistency", "ece",
                "reliability", "prior_sigma_mean", "prior_sigma_min", "prior_sigma_max",
                "sample_diversity16", "n_images", "model_sha256"):
        assert key in r, key
    assert r["n_images"] == 6 and r["n_samples"] == [16, 100]
    for key in ("ged16", "ged100", "deterministic_ged16", "oracle_ged16", "oracle_ged100"):
        assert 0.0 <= r[key] <= 2.0, key
    for key in ("hm_iou16", "hm_iou100", "oracle_hm_iou16", "consistency", "consistency16",
                "mode_freq_max_abs_err", "ece", "empty_sample_fraction", "sample_diversity16"):
        assert 0.0 <= r[key] <= 1.0, key
    assert 0 < r["prior_sigma_min"] <= r["prior_sigma_mean"] <= r["prior_sigma_max"]
    lo, hi = r["prior_sigma_bounds"]
    assert lo <= r["prior_sigma_min"] and r["prior_sigma_max"] <= hi
    assert r["mode_names"] == ["core", "core+halo", "nothing"]
    assert sum(r["mode_prob"]) == pytest.approx(1.0)
    assert sum(r["mode_freq"]) == pytest.approx(1.0)
    assert sum(r["reliability"]["count"]) == 6 * 3
    # the model's samples are scored on the same images as the oracle's and the baseline's
    assert r["oracle_consistency"] == 1.0
    json.dumps(r, allow_nan=False)  # JSON-ready: no NaN, no numpy types


def test_numbers_equal_the_metrics_applied_by_hand(lesion_result):
    """The one-matrix-per-image bookkeeping gives what the plain metric functions give."""
    from napari_probunet.review import calibration, metrics
    from napari_probunet.session import Session

    cases, _ = open_data(LESIONS)
    session = Session(_testing.tiny_model(seed=0), device="cpu")
    ged16, hm16, det16, oracle16 = [], [], [], []
    for i, case in enumerate(cases):
        session.set_image(case.image)
        samples = session.sample(100, seed=seed_for_index(0, i)).labels[:16]
        det = session.decode(session.prior()[0])
        rng = np.random.default_rng(seed_for_index(0, i, STREAM_ORACLE))
        oracle = calibration.oracle_samples(case.truth.modes, case.truth.probs, 100, rng)[:16]
        ged16.append(metrics.ged(samples, case.masks, 2))
        hm16.append(metrics.hungarian_iou(samples, case.masks, 2))
        det16.append(metrics.ged(det[None], case.masks, 2))
        oracle16.append(metrics.ged(oracle, case.masks, 2))
    r = lesion_result
    assert r["ged16"] == pytest.approx(np.mean(ged16))
    assert r["hm_iou16"] == pytest.approx(np.mean(hm16))
    assert r["deterministic_ged16"] == pytest.approx(np.mean(det16))
    assert r["oracle_ged16"] == pytest.approx(np.mean(oracle16))


def test_expected_oracle_ged_is_the_mean_over_draws(lesion_result):
    """The closed form equals the average of the oracle's GED over many draws, per image and
    in the evaluation's dataset figure (whose single draw differs from it)."""
    from napari_probunet.review import calibration, metrics

    cases, _ = open_data(LESIONS)
    rng = np.random.default_rng(5)
    expected = []
    for case in cases:
        modes, masks, probs = case.truth.modes, case.masks, case.truth.probs
        both = np.concatenate([modes, masks])
        d = 1.0 - metrics.pairwise_iou(both, both, 2)
        m = len(modes)
        closed = calibration.expected_oracle_ged(d[:m, m:], d[:m, :m], d[m:, m:], probs, 4)
        draws = [metrics.ged(calibration.oracle_samples(modes, probs, 4, rng), masks, 2)
                 for _ in range(4000)]
        assert closed == pytest.approx(np.mean(draws), abs=4 * np.std(draws) / np.sqrt(4000) + 1e-9)
        expected.append(calibration.expected_oracle_ged(d[:m, m:], d[:m, :m], d[m:, m:], probs, 16))
    r = lesion_result
    assert r["oracle_expected_ged16"] == pytest.approx(np.mean(expected))
    assert r["oracle_expected_ged16"] != pytest.approx(r["oracle_ged16"], abs=1e-6)
    assert r["ged16_over_expected_oracle"] == pytest.approx(r["ged16"] / r["oracle_expected_ged16"])
    # fewer samples count their self-pairs more: the expected GED falls with n
    assert r["oracle_expected_ged100"] < r["oracle_expected_ged16"]


def test_oracle_beats_the_deterministic_baseline(lesion_result):
    r = lesion_result
    assert r["oracle_ged16"] < r["deterministic_ged16"]
    assert r["oracle_ged100"] < r["oracle_ged16"]  # fewer self-pairs: closer to the true D^2
    assert r["oracle_mode_freq_max_abs_err"] < r["deterministic_mode_freq_max_abs_err"]
    assert r["oracle_sample_diversity16"] > 0.1


def test_evaluation_reproduces_for_a_seed():
    cases, _ = open_data("synthetic:lesions?n=2&size=32")
    model = _testing.tiny_model(seed=1)
    a = evaluate_model(model, cases, n_samples=(4,), seed=5, device="cpu", progress=False)
    b = evaluate_model(model, cases, n_samples=(4,), seed=5, device="cpu", progress=False)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert seed_for_index(5, 0) != seed_for_index(5, 1) != seed_for_index(6, 1)


def test_flips_report_per_class_iou_flip_rates_and_32_modes():
    cases, _ = open_data("synthetic:flips?n=2&size=32")
    model = _testing.tiny_model(num_classes=11, class_names=cases.class_names)
    r = evaluate_model(model, cases, n_samples=(4, 8), device="cpu", progress=False)
    assert len(r["mode_freq"]) == 32 and len(r["mode_prob"]) == 32
    assert set(r["per_class_iou4"]) == set(cases.class_names[1:])
    assert set(r["flip_rate"]) == {"sidewalk", "person", "car", "vegetation", "road"}
    assert r["flip_prob"]["sidewalk"] == pytest.approx(8 / 17)
    for v in r["oracle_flip_rate"].values():
        assert 0.0 <= v <= 1.0
    assert "flip rate" in format_report({"model": "tiny", "data": "flips", **r})


def test_a_trained_model_beats_its_deterministic_baseline():
    """Two-mode toy problem (core vs core + halo, 50/50): the samples find both modes.

    Trains for ~6 s on one thread (two threads next to a busy process took minutes here).
    """
    model = _testing.train_two_mode_model(steps=300)
    image, masks = _testing.two_mode_case(32)
    truth = ModeTruth(modes=masks, probs=np.array([0.5, 0.5]), names=["core", "core+halo"])
    cases = [Case(image=image, masks=masks, case_id=str(i), truth=truth) for i in range(2)]
    r = evaluate_model(model, cases, n_samples=(16, 100), device="cpu", progress=False)
    # measured over training seeds: GED(16) 0.18-0.26 vs deterministic 0.45-0.49, oracle 0.015
    assert r["oracle_ged16"] < r["ged16"] < 0.8 * r["deterministic_ged16"]
    assert min(r["mode_freq"]) > 0.05  # both modes are sampled (the toy model's split is loose)
    assert r["deterministic_mode_freq_max_abs_err"] == pytest.approx(0.5)
    assert r["sample_diversity100"] > 0.05


def test_real_data_without_truth_has_no_oracle_numbers():
    image, masks = _testing.two_mode_case(32)
    cases = [Case(image=image, masks=masks, case_id="a")]
    r = evaluate_model(_testing.tiny_model(), cases, n_samples=(4,), device="cpu", progress=False)
    assert "ged4" in r and "deterministic_ged4" in r
    assert not any(k.startswith("oracle_") for k in r) and "consistency" not in r


def test_masks_with_labels_the_model_does_not_know_are_refused():
    cases, _ = open_data("synthetic:flips?n=1&size=32")
    with pytest.raises(DataError, match="11 classes|2 classes"):
        evaluate_model(_testing.tiny_model(), cases, n_samples=(2,), device="cpu",
                       progress=False)


def test_cli_json_prints_exactly_one_object(tmp_path, capsys):
    from napari_probunet.model.modelfile import file_sha256, save_model

    path = tmp_path / "tiny.safetensors"
    save_model(_testing.tiny_model(), path)
    out = tmp_path / "eval" / "result.json"
    code = cli.main(["evaluate", "--model", str(path), "--data", "synthetic:lesions?n=2&size=32",
                     "--samples", "16", "100", "--json", "--out", str(out), "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole of stdout is one JSON object
    assert result["model_sha256"] == file_sha256(path)
    assert result["data"].startswith("synthetic:lesions?n=2")
    for key in ("ged16", "ged100", "hm_iou16", "deterministic_ged16", "oracle_ged16",
                "mode_freq_max_abs_err", "consistency"):
        assert isinstance(result[key], float), key
    assert json.loads(out.read_text()) == result


def test_cli_table_on_screen(tmp_path, capsys):
    from napari_probunet.model.modelfile import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(_testing.tiny_model(), path)
    code = cli.main(["evaluate", "--model", str(path), "--data", "synthetic:lesions?n=1&size=32",
                     "--samples", "4", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "GED(4)" in text and "oracle" in text and "reliability" in text
    assert cli.main(["evaluate", "--model", str(path), "--data", "synthetic:nope"]) == 2


def _unwritable_outs(tmp_path):
    """--out values that cannot be written: under a file, and in a read-only folder (where the
    file system enforces it: root may write anywhere)."""
    (tmp_path / "afile").write_text("")
    outs = [tmp_path / "afile" / "result.json"]
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (locked / "probe").write_text("")
        (locked / "probe").unlink()
    except OSError:
        outs.append(locked / "result.json")
    return outs


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Hours of evaluation must not end in a PermissionError: --out is checked first."""
    from napari_probunet.cli import evaluate as evaluate_cli
    from napari_probunet.model.modelfile import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(_testing.tiny_model(), path)
    monkeypatch.setattr(evaluate_cli, "evaluate_model",
                        lambda *a, **k: pytest.fail("evaluated before checking --out"))
    try:
        for out in _unwritable_outs(tmp_path):
            code = cli.main(["evaluate", "--model", str(path), "--data",
                             "synthetic:lesions?n=1&size=32", "--samples", "4", "--quiet",
                             "--out", str(out)])
            err = capsys.readouterr().err
            assert code == 2, out
            assert err.startswith(f"probunet evaluate: error: cannot write --out {out}")
            assert err.count("\n") == 1 and "Traceback" not in err
    finally:
        (tmp_path / "locked").chmod(0o700)
    # a folder that does not exist yet is fine, and is not left behind when the run fails
    code = cli.main(["evaluate", "--model", str(path), "--data", "synthetic:nope",
                     "--out", str(tmp_path / "new" / "deep" / "result.json")])
    assert code == 2 and not (tmp_path / "new").exists()
