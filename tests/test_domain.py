"""The model's domain: measured on training images, recorded in the model file, and used to
warn (never to block) about colour images, whole large images and foreign intensities."""

from __future__ import annotations

import numpy as np
import pytest

from napari_probunet import cli
from napari_probunet.data.synthetic import SyntheticDataset
from napari_probunet.model.config import Preprocessing
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review.domain import (
    FEATURES,
    Domain,
    check_image,
    fit_domain,
    fit_model_domain,
    intensity_features,
)


def ct_like(rng, size=32):
    """A dark, noisy 'lung' with a bright blob and a bright 'chest wall' band."""
    image = rng.normal(30, 8, (size, size))
    yy, xx = np.mgrid[:size, :size]
    r = rng.uniform(3, 6)
    image[np.hypot(yy - rng.uniform(10, 22), xx - rng.uniform(10, 22)) < r] = rng.normal(140, 10)
    image[:, : rng.integers(2, 6)] = 180
    image = np.clip(image, 0, None)
    return (255 * (image - image.min()) / (image.max() - image.min())).astype(np.float32)


@pytest.fixture(scope="module")
def model_with_domain():
    model = tiny_model(preprocessing=Preprocessing(mode="percentile", p_low=0, p_high=100))
    rng = np.random.default_rng(0)
    cases = [type("C", (), {"image": ct_like(rng), "group_id": f"p{i // 3}"})() for i in range(300)]
    model.config.domain = {"modality": "CT", "description": "toy CT crops"}
    model.config.domain = fit_model_domain(model.config, cases, training_data="toy")
    return model


def test_features_are_named_and_scale_free_under_a_stretching_preprocessing():
    rng = np.random.default_rng(1)
    image = ct_like(rng)
    f = intensity_features(image / 255)
    assert f.shape == (len(FEATURES),) and np.all(np.isfinite(f))
    cfg = tiny_model(preprocessing=Preprocessing(mode="percentile", p_low=0, p_high=100)).config
    from napari_probunet.review.domain import model_input_unit

    hu = image / 255 * 1400 - 1000  # the same crop in Hounsfield-like units
    np.testing.assert_allclose(intensity_features(model_input_unit(cfg, hu)),
                               intensity_features(model_input_unit(cfg, image)), atol=1e-6)


def test_in_domain_images_pass_and_foreign_ones_are_flagged(model_with_domain):
    cfg = model_with_domain.config
    domain = Domain.from_dict(cfg.domain)
    assert domain.modality == "CT" and domain.has_reference and domain.threshold > 0
    assert domain.statistics["images_measured"] == 300
    rng = np.random.default_rng(99)  # new images of the same kind
    flagged = [not check_image(cfg, ct_like(rng)).ok for _ in range(100)]
    assert np.mean(flagged) <= 0.05
    foreign = [rng.uniform(0, 255, (32, 32)),  # noise
               np.tile(np.linspace(0, 255, 32), (32, 1)),  # a smooth ramp
               np.where(rng.random((32, 32)) < 0.5, 0, 255).astype(np.float32)]  # binary
    for image in foreign:
        check = check_image(cfg, image)
        assert not check.ok and "unlike the training data" in check.warnings[0]
        assert "toy CT crops" in check.warnings[0] and check.distance > check.threshold


def test_colour_and_size_warnings_do_not_need_a_reference():
    cfg = tiny_model().config  # no domain recorded: only the structural checks
    assert Domain.from_dict(cfg.domain) is None
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    assert "colour image" in check_image(cfg, rgb).warnings[0]
    grey_rgb = np.repeat(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)[..., None], 3, -1)
    assert check_image(cfg, grey_rgb).ok  # grey stored as RGB is grey
    big = check_image(cfg, np.zeros((200, 90), np.float32))
    assert "90x200 pixels" in big.warnings[0] and "32x32 crops" in big.warnings[0]
    assert check_image(cfg, np.zeros((64, 64), np.float32)).ok  # up to twice the input


def test_the_domain_travels_in_the_model_file(model_with_domain, tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(model_with_domain, path)
    loaded = load_model(path)
    assert loaded.config.domain == model_with_domain.config.domain
    assert Domain.from_dict(loaded.config.domain).summary() == "toy CT crops"


def test_probunet_domain_records_a_models_domain(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path, {"recipe": "x"})
    code = cli.main(["domain", str(path), "--data", "synthetic:lesions?n=40&seed=0&size=32",
                     "--out", str(tmp_path / "d.safetensors"), "--modality", "synthetic",
                     "--description", "synthetic lesions"])
    assert code == 0 and "domain of 40 training images recorded" in capsys.readouterr().out
    model = load_model(tmp_path / "d.safetensors")
    assert model.config.domain["modality"] == "synthetic"
    assert model.metadata["provenance"] == {"recipe": "x"}
    # the synthetic model's own images pass, a real-looking CT crop does not
    flagged = [not check_image(model.config, c.image).ok
               for c in SyntheticDataset("lesions", 40, seed=5, size=32)]
    assert np.mean(flagged) <= 0.1
    assert not check_image(model.config, ct_like(np.random.default_rng(3))).ok


def test_fitting_needs_enough_images():
    with pytest.raises(ValueError, match="at least"):
        fit_domain([np.zeros((8, 8))] * 5)


def test_a_crop_in_hounsfield_units_gives_the_same_hypotheses_as_its_8_bit_version():
    """The LIDC model's convention (each crop's range stretched to the input range) makes the
    window irrelevant: HU in, the same hypotheses out, and no domain warning either way."""
    from napari_probunet.session import Session

    rng = np.random.default_rng(7)
    eight_bit = ct_like(rng).round().astype(np.uint8)
    hu = eight_bit.astype(np.float32) / 255 * 1350.0 - 1024.0  # a linear HU scale
    model = tiny_model(preprocessing=Preprocessing(mode="percentile", p_low=0, p_high=100,
                                                   scale_integers=False))
    s = Session(model, "cpu")
    s.set_image(eight_bit)
    a = s.sample(12, seed=4)
    s.set_image(hu)
    b = s.sample(12, seed=4)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.z, b.z, atol=1e-5)
