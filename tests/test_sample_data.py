"""File → Open Sample: real CT nodules and synthetic lesions with their graders, in napari's
sample-data format, without importing torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_probunet import _sample_data
from napari_probunet.data.synthetic import make_case


@pytest.mark.parametrize("make", [_sample_data.sample_lesion, _sample_data.sample_lesion_faint,
                                  _sample_data.sample_lesion_large])
def test_samples_are_an_image_and_four_hidden_graders(make):
    layers = make()
    assert [kind for _, _, kind in layers] == ["image"] + ["labels"] * 4
    image, kwargs, _ = layers[0]
    assert image.dtype == np.float32 and np.isfinite(image).all() and np.ptp(image) > 0.5
    assert kwargs["contrast_limits"] == _sample_data.CONTRAST
    probs = kwargs["metadata"]["truth"]["mode_probabilities"]
    assert set(probs) == {"core", "core+halo", "nothing"} and abs(sum(probs.values()) - 1) < 1e-9
    for r, (mask, kw, _) in enumerate(layers[1:], start=1):
        assert mask.shape == image.shape and mask.dtype == np.uint8
        assert kw["name"] == f"grader {r}" and kw["visible"] is False


def test_the_graders_disagree_on_the_lesion():
    masks = np.stack([m for m, _, _ in _sample_data.sample_lesion()[1:]])
    areas = masks.reshape(4, -1).sum(axis=1)
    assert len(set(areas.tolist())) >= 2 and areas.max() > 0  # an ambiguous case
    faint = _sample_data.sample_lesion_faint()[0][1]["metadata"]["truth"]
    assert faint["c"] < 0.1  # the faint halo


def test_large_slice_has_the_lesion_off_centre_where_the_graders_drew_it():
    layers = _sample_data.sample_lesion_large()
    image = layers[0][0]
    assert image.shape == (256, 256)
    r0, c0 = _sample_data.LARGE_OFFSET
    case = make_case("lesions", *_sample_data.LARGE_CASE, size=64)
    masks = np.stack([m for m, _, _ in layers[1:]])
    np.testing.assert_array_equal(masks[:, r0:r0 + 64, c0:c0 + 64], case.masks)
    assert masks.sum() == case.masks.sum()  # nothing outside the pasted crop
    np.testing.assert_allclose(image[r0 + 32, c0 + 32], case.image[32, 32], atol=1e-6)
    rows, cols = np.nonzero(masks.any(axis=0))
    centre = np.array([rows.mean(), cols.mean()])
    assert np.linalg.norm(centre - 128) > 40  # far from the centre: the click ROI matters


def test_opening_a_sample_does_not_import_torch():
    code = ("import sys; from napari_probunet import _sample_data as s; "
            "s.sample_lesion(); s.sample_lesion_large(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("key", list(_sample_data.LIDC_SAMPLES))
def test_real_ct_samples_are_test_patients_with_four_radiologists(key):
    layers = getattr(_sample_data, f"sample_{key}")()
    assert [kind for _, _, kind in layers] == ["image"] + ["labels"] * 4
    image, kwargs, _ = layers[0]
    assert image.shape == (128, 128) and image.dtype == np.uint8
    assert image.min() == 0 and image.max() == 255  # the data's per-crop stretch
    assert "CC BY 3.0" in kwargs["metadata"]["source"]
    patient = kwargs["metadata"]["source"].split(", ")[-1].split("/")[0]
    test_patients = (_sample_data.Path(__file__).resolve().parents[1] / "docs"
                     / "lidc-test-patients.txt").read_text().split()
    assert patient in test_patients  # never trained on
    masks = np.stack([m for m, _, _ in layers[1:]])
    marked = int(masks.reshape(4, -1).any(axis=1).sum())
    assert marked == {"lidc_nodule": 4, "lidc_nodule_2of4": 2, "lidc_nodule_1of4": 1}[key]
    colours = [kw["colormap"].color_dict[1].tolist() for _, kw, _ in layers[1:]]
    assert len({tuple(c) for c in colours}) == 4  # one colour per radiologist
    for r, (_, kw, _) in enumerate(layers[1:], start=1):
        assert kw["name"].startswith(f"radiologist {r}") and kw["visible"] is False
