"""Evaluation on real-style multi-rater data: figures by how many graders marked the image,
empty samples against empty graders' masks, and a trained baseline model beside the model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_probunet import cli
from napari_probunet.data.case import Case
from napari_probunet.model import testing as _testing
from napari_probunet.model.modelfile import save_model
from napari_probunet.review import metrics
from napari_probunet.session import Session
from napari_probunet.training.evaluate import evaluate_model
from napari_probunet.training.report import format_report


def _cases():
    """Six 32x32 cases: 0, 1, 2 and 4 of 4 graders draw the same disc (some twice)."""
    image, masks = _testing.two_mode_case()
    disc = masks[0]
    empty = np.zeros_like(disc)
    marked = [0, 1, 2, 4, 4, 1]
    return [Case(image=image, masks=np.stack([disc] * k + [empty] * (4 - k)), case_id=f"c{i}")
            for i, k in enumerate(marked)], marked


@pytest.fixture(scope="module")
def result():
    cases, _ = _cases()
    return evaluate_model(_testing.tiny_model(seed=1), cases, n_samples=(4, 8), seed=0,
                          device="cpu", progress=False)


def test_figures_are_broken_down_by_graders_marking(result):
    cases, marked = _cases()
    groups = result["by_graders_marking"]
    assert sorted(groups) == ["0", "1", "2", "4"]
    assert {k: g["n_images"] for k, g in groups.items()} == {"0": 1, "1": 2, "2": 1, "4": 2}
    assert groups["4"]["empty_graders"] == 0.0 and groups["0"]["empty_graders"] == 1.0
    assert groups["1"]["empty_graders"] == 0.75
    # each group's GED is the mean of its images' GEDs, recomputed by hand
    session = Session(_testing.tiny_model(seed=1), "cpu")
    from napari_probunet.review.seeds import seed_for_index

    by_hand: dict[int, list[float]] = {}
    for i, case in enumerate(cases):
        session.set_image(case.image)
        samples = session.sample(8, seed=seed_for_index(0, i)).labels[:4]
        by_hand.setdefault(marked[i], []).append(metrics.ged(samples, case.masks, 2))
    for k, values in by_hand.items():
        assert groups[str(k)]["ged4"] == pytest.approx(np.mean(values), abs=1e-9)
    # dataset-wide: the share of empty graders' masks
    assert result["empty_grader_fraction"] == pytest.approx((4 + 3 + 2 + 0 + 0 + 3) / 24)
    assert 0.0 <= result["empty_sample_fraction"] <= 1.0
    text = format_report({**result, "model": "m", "data": "d"})
    assert "by graders who drew something" in text and "graders' masks empty: 0.500" in text


def test_cli_reports_a_baseline_model_beside(tmp_path, capsys):
    cases, _ = _cases()
    from napari_probunet.data.readers import write_multirater_folder

    data = write_multirater_folder(cases, tmp_path / "data")
    model, baseline = tmp_path / "m.safetensors", tmp_path / "b.safetensors"
    save_model(_testing.tiny_model(seed=1), model)
    save_model(_testing.tiny_model(seed=2, deterministic=True), baseline)
    out = tmp_path / "eval.json"
    code = cli.main(["evaluate", "--model", str(model), "--baseline", str(baseline),
                     "--data", str(data), "--samples", "4", "--quiet", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert f"baseline {baseline}:" in text and "GED(4)" in text
    result = json.loads(out.read_text())
    base = result["baseline"]
    assert base["model"] == str(baseline) and base["n_images"] == 6
    assert base["sample_diversity4"] == pytest.approx(0.0)  # a deterministic U-Net: one map
    assert base["ged4"] == pytest.approx(base["deterministic_ged4"], abs=1e-9)
    assert result["ged4"] != base["ged4"]
