"""Encode once, sample many: the Session the widgets, the CLI and the tests share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_probunet.errors import InputError
from napari_probunet.iou import foreground_iou
from napari_probunet.model.testing import tiny_model, two_mode_case
from napari_probunet.session import Session, pixel_disagreement


def test_sample_shapes_dtypes_and_crop_back(tiny):
    s = Session(tiny, device="cpu")
    s.set_image(np.random.default_rng(0).random((37, 45)))  # not a multiple of the stride
    hyp = s.sample(5, seed=1)
    assert hyp.labels.shape == (5, 37, 45) and hyp.labels.dtype == np.uint8
    assert hyp.z.shape == (5, tiny.config.latent_dim) and hyp.z.dtype == np.float32
    labels, probs = s.decode(hyp.z, return_probs=True)
    assert probs.shape == (5, 2, 37, 45)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(labels, hyp.labels)


def test_multiclass_and_rgb():
    model = tiny_model(seed=3, num_classes=4, class_names=list("abcd"), in_channels=3)
    s = Session(model, device="cpu")
    rgb = (np.random.default_rng(1).random((20, 24, 3)) * 255).astype(np.uint8)
    s.set_image(rgb)
    hyp = s.sample(3, seed=0, return_probs=True)
    assert hyp.labels.max() < 4 and hyp.probs.shape == (3, 4, 20, 24)
    assert (hyp.probs.argmax(axis=1) == hyp.labels).all()
    s.set_image(rgb[..., 0])  # grey into an RGB model: replicated
    assert s.sample(1).labels.shape == (1, 20, 24)


def test_seeded_sampling_is_reproducible_and_prefix_stable(two_mode_model):
    image, _ = two_mode_case()
    s = Session(two_mode_model, device="cpu")
    s.set_image(image)
    a, b = s.sample(16, seed=7), s.sample(16, seed=7)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.z, b.z)
    np.testing.assert_array_equal(s.sample(4, seed=7).z, a.z[:4])
    assert not np.array_equal(s.sample(16, seed=8).z, a.z)


def test_split_fcomb_equals_unsplit(two_mode_model):
    """The z term as a per-channel bias gives the same logits as convolving [F; z]."""
    image, _ = two_mode_case()
    s = Session(two_mode_model, device="cpu")
    s.set_image(image[:30, :29])
    hyp = s.sample(12, seed=0, return_probs=True)
    with torch.inference_mode():
        x = s.preprocess(image[:30, :29])
        feats = two_mode_model.unet(x)
        for i in range(12):
            logits = two_mode_model.fcomb(feats, torch.from_numpy(hyp.z[i])[None])[0, :, :30, :29]
            np.testing.assert_allclose(hyp.probs[i], logits.softmax(0).numpy(), atol=1e-5)
    np.testing.assert_array_equal(s.decode_unsplit(hyp.z), hyp.labels)
    assert s.decode(hyp.z[3]).shape == (30, 29)
    np.testing.assert_array_equal(s.decode(hyp.z[3]), hyp.labels[3])


def test_decoding_in_blocks_matches_one_block(two_mode_model, monkeypatch):
    import napari_probunet.model.decode as decode_module

    image, _ = two_mode_case()
    s = Session(two_mode_model, device="cpu")
    s.set_image(image)
    ref = s.sample(10, seed=2)
    monkeypatch.setattr(decode_module, "BLOCK_ROWS", 300)  # blocks split images and samples
    np.testing.assert_array_equal(s.sample(10, seed=2).labels, ref.labels)


def test_two_mode_model_samples_both_masks_about_half_the_time(two_mode_model):
    image, masks = two_mode_case()
    s = Session(two_mode_model, device="cpu")
    s.set_image(image)
    hyp = s.sample(200, seed=0)
    nearest = np.array([foreground_iou(h, masks[1], 2) > foreground_iou(h, masks[0], 2)
                        for h in hyp.labels])
    share_b = nearest.mean()
    assert 0.25 <= share_b <= 0.75, share_b
    for k in range(2):  # each mask is reproduced exactly by some samples
        assert max(foreground_iou(h, masks[k], 2) for h in hyp.labels) > 0.9


def test_locate_puts_the_two_masks_at_different_places(two_mode_model):
    image, masks = two_mode_case()
    s = Session(two_mode_model, device="cpu")
    s.set_image(image)
    a, b = s.locate(masks[0]), s.locate(masks[1])
    assert a.iou > 0.9 and b.iou > 0.9
    sigma = np.maximum(a.sigma, b.sigma)
    assert np.max(np.abs(a.mu - b.mu) / sigma) > 2  # separated by more than 2 posterior sigmas
    assert a.kl > 0 and b.kl > 0


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros(10), "2D grey"),
        (np.zeros((2, 8, 8, 8)), "2D grey"),
        (np.zeros((0, 8)), "empty"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
        (np.zeros((8, 8, 2)), "2D grey"),
        (np.zeros((8, 8), complex), "dtype"),
    ],
)
def test_bad_images_are_refused_clearly(tiny, image, match):
    s = Session(tiny, device="cpu")
    with pytest.raises(InputError, match=match):
        s.set_image(image)


def test_nothing_before_set_image_and_bad_arguments(tiny):
    s = Session(tiny, device="cpu")
    with pytest.raises(InputError, match="set_image"):
        s.sample(3)
    s.set_image(np.zeros((16, 16), np.uint16))
    with pytest.raises(InputError, match="at least 1"):
        s.sample(0)
    with pytest.raises(InputError, match="entries per latent"):
        s.decode(np.zeros(5))
    with pytest.raises(InputError, match="shape"):
        s.locate(np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="labels"):
        s.locate(np.full((16, 16), 7, np.uint8))
    big = Session(tiny, device="cpu", max_pixels=100)
    with pytest.raises(InputError, match="region of interest"):
        big.set_image(np.zeros((20, 20)))


def test_device_auto_resolves_at_session_time(tiny):
    s = Session(tiny, device="auto")
    assert s.device.type in ("cuda", "mps", "cpu")
    from napari_probunet.errors import UserError

    with pytest.raises(UserError, match="choose one of"):
        Session(tiny, device="tpu")


def test_pixel_disagreement():
    labels = np.array([[[0, 1]], [[0, 1]], [[0, 0]], [[0, 0]]], np.uint8)
    np.testing.assert_allclose(pixel_disagreement(labels, 2), [[0.0, 0.5]])


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, napari_probunet, napari_probunet.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inference_runs_channels_last_on_cpu_and_training_models_are_left_alone():
    """Channels-last convolutions are faster on CPUs (docs/performance.md); a model being
    trained (validated mid-run) keeps its memory format, or its arithmetic would change."""
    import torch

    from napari_probunet.model.testing import tiny_model

    image = np.random.default_rng(3).random((32, 32)).astype(np.float32)
    model = tiny_model()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model.unet(torch.from_numpy(image)[None, None] - 0.5)
    s = Session(model, "cpu")
    assert s.channels_last
    assert model.unet.encoder.blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    s.set_image(image)
    with torch.no_grad():
        torch.testing.assert_close(model.unet(s.model_input.clone()), reference, rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, plain[k], rtol=0, atol=0)
    training = tiny_model().train()
    s2 = Session(training, "cpu")
    assert not s2.channels_last
    assert training.unet.encoder.blocks[0][0].weight.is_contiguous()


def test_non_finite_encodings_are_refused_never_shown_as_background():
    """Weights that overflow (here scaled by 1e30, or NaN in the prior) give NaN features or
    a NaN prior: every hypothesis would be background with zero disagreement. set_image
    refuses with a clear message and leaves no image set."""
    image, _ = two_mode_case()
    scaled = tiny_model(0)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(1e30)
    s = Session(scaled, "cpu")
    with pytest.raises(InputError, match="not finite numbers .*model file is probably damaged"):
        s.set_image(image)
    assert not s.has_image
    with pytest.raises(InputError, match="no image is set"):
        s.sample(4)

    nan_prior = tiny_model(0)
    with torch.no_grad():
        nan_prior.prior.to_params.bias[0] = float("nan")
    s = Session(nan_prior, "cpu")
    with pytest.raises(InputError, match="prior mean") as exc:
        s.set_image(image)
    assert "encoded features" not in str(exc.value)
    assert not s.has_image

    healthy = Session(tiny_model(0), "cpu")  # the check lets a healthy model through
    healthy.set_image(image)
    assert healthy.sample(2, seed=0).labels.shape == (2, *image.shape[:2])
