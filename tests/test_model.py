"""The Probabilistic U-Net's modules and loss: shapes, the KL, bounds, reductions, GECO."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_probunet.model.config import ModelConfig, Preprocessing
from napari_probunet.model.losses import GECO, elbo_loss, kl_diag_gaussians
from napari_probunet.model.network import ProbUNet, bounded_logsigma
from napari_probunet.model.testing import tiny_config


@pytest.mark.parametrize("num_classes", [2, 4])
def test_forward_shapes_binary_and_multiclass(num_classes):
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)])
    model = ProbUNet(cfg)
    x = torch.randn(3, 1, 32, 32)
    y = torch.randint(0, num_classes, (3, 32, 32))
    out = model(x, y)
    assert out["logits"].shape == (3, num_classes, 32, 32)
    for key in ("z", "prior_mu", "prior_logsigma", "posterior_mu", "posterior_logsigma"):
        assert out[key].shape == (3, cfg.latent_dim)
    enc = model.encode(x)
    assert enc.features.shape == (3, cfg.channels[0], 32, 32)


def test_default_config_is_the_papers():
    cfg = ModelConfig()
    assert cfg.channels == (32, 64, 128, 192) and cfg.convs_per_block == 3
    assert cfg.latent_dim == 6 and cfg.fcomb_layers == 3 and cfg.beta == 1.0
    assert cfg.stride == 8 and cfg.weight_init == "he"  # the original implementation's init
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueError, match="class_names"):
        ModelConfig(num_classes=3)
    with pytest.raises(ValueError, match="background"):
        ModelConfig(num_classes=1, class_names=["x"])
    with pytest.raises(ValueError, match="unknown model configuration"):
        ModelConfig.from_dict({"latnet_dim": 3})


def _prior_feature_spread(weight_init: str) -> float:
    """How much the prior net's pooled deepest features vary across 8 different lesion images,
    relative to their size, for a fresh model of the bundled lesions model's depth."""
    from napari_probunet.data.synthetic import make_case

    torch.manual_seed(0)
    cfg = ModelConfig(channels=(16, 32, 64, 128), input_size=64, weight_init=weight_init)
    model = ProbUNet(cfg).eval()
    x = torch.stack([torch.from_numpy(cfg.preprocessing.apply(make_case("lesions", 5, i).image[..., None])
                                      .transpose(2, 0, 1)) for i in range(8)])
    with torch.no_grad():
        h = model.prior.encoder(x)[-1].mean(dim=(2, 3))  # (8, 128)
    return float(h.std(dim=0).mean() / h.abs().mean())


def test_he_init_lets_the_prior_net_see_its_image():
    # PyTorch's default init shrinks the image-dependent signal through the 12 convolutions
    # until the prior starts (and, in our runs, stayed) the same for every image
    he, default = _prior_feature_spread("he"), _prior_feature_spread("torch")
    assert he > 0.01
    assert default < 1e-3 and he > 100 * default


def test_weight_init_is_validated_and_old_files_read_as_torch(tmp_path):
    from napari_probunet.model.modelfile import load_model, save_model
    from napari_probunet.model.testing import write_early_model_file

    with pytest.raises(ValueError, match="weight_init"):
        ModelConfig(weight_init="xavier")
    # files written before the setting existed were trained from torch's init
    write_early_model_file(tmp_path / "early.safetensors")
    early = load_model(tmp_path / "early.safetensors").config
    assert early.weight_init == "torch" and early.prior_anchor_scope == "image"
    path = tmp_path / "m.safetensors"
    save_model(ProbUNet(tiny_config()), path)
    assert load_model(path).config.weight_init == "he"


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    q_mu, p_mu = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    q_ls, p_ls = 0.3 * torch.randn(1, 4, generator=g), 0.3 * torch.randn(1, 4, generator=g)
    analytic = float(kl_diag_gaussians(q_mu, q_ls, p_mu, p_ls))
    q = torch.distributions.Normal(q_mu, q_ls.exp())
    p = torch.distributions.Normal(p_mu, p_ls.exp())
    z = q.sample((200_000,))
    mc = float((q.log_prob(z) - p.log_prob(z)).sum(-1).mean())
    assert analytic == pytest.approx(mc, abs=0.02)
    assert float(kl_diag_gaussians(q_mu, q_ls, q_mu, q_ls)) == pytest.approx(0.0, abs=1e-6)


def test_log_sigma_is_bounded_and_finite_for_extreme_inputs():
    raw = torch.tensor([-1e6, -50.0, 0.0, 50.0, 1e6], requires_grad=True)
    out = bounded_logsigma(raw, (-6.0, 3.0))
    values = out.detach()
    assert float(values.min()) >= -6.0 and float(values.max()) <= 3.0
    assert float(values[2]) == pytest.approx(0.0, abs=0.3)  # close to identity inside the range
    out.sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad[2] > 0.8
    model = ProbUNet(tiny_config())
    x = torch.full((2, 1, 32, 32), 1e4)
    mu, logsigma = model.prior(x)
    assert torch.isfinite(mu).all() and torch.isfinite(logsigma).all()
    assert logsigma.max() <= 3.0 and logsigma.min() >= -6.0


def test_loss_is_per_image_mean_independent_of_batch_size():
    """Batch loss = mean of per-image losses, so beta means the same at any batch size."""
    torch.manual_seed(0)
    model = ProbUNet(tiny_config())
    x = torch.randn(4, 1, 32, 32)
    y = torch.randint(0, 2, (4, 32, 32))
    out = model(x, y)
    whole = elbo_loss(out, y, beta=1.0)["loss"]
    parts = [elbo_loss({k: v[i:i + 1] for k, v in out.items()}, y[i:i + 1])["loss"] for i in range(4)]
    assert float(whole) == pytest.approx(float(torch.stack(parts).mean()), rel=1e-5)


def test_cross_entropy_is_summed_over_pixels():
    """Doubling the image (same logits per pixel) doubles the reconstruction term."""
    logits = torch.randn(1, 2, 8, 8)
    y = torch.randint(0, 2, (1, 8, 8))
    zeros = torch.zeros(1, 2)
    out = {"logits": logits, "prior_mu": zeros, "prior_logsigma": zeros,
           "posterior_mu": zeros, "posterior_logsigma": zeros}
    big = dict(out, logits=torch.cat([logits, logits], dim=-1))
    ce_small = float(elbo_loss(out, y)["ce"])
    ce_big = float(elbo_loss(big, torch.cat([y, y], dim=-1))["ce"])
    assert ce_big == pytest.approx(2 * ce_small, rel=1e-5)


def test_geco_multiplier_follows_the_constraint():
    zeros = torch.zeros(1, 2)
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    bad = {"logits": torch.zeros(1, 2, 8, 8), "prior_mu": zeros, "prior_logsigma": zeros,
           "posterior_mu": zeros, "posterior_logsigma": zeros}  # CE per pixel = log 2 > target
    good = dict(bad, logits=torch.stack([torch.full((8, 8), 10.0), torch.zeros(8, 8)])[None])
    geco = GECO(target=0.1, rate=0.05, ema=0.9)
    lam0 = geco.lagrange_multiplier
    for _ in range(20):
        geco.loss(bad, y)
    assert geco.lagrange_multiplier > lam0
    high = geco.lagrange_multiplier
    for _ in range(200):
        geco.loss(good, y)
    assert geco.lagrange_multiplier < high
    restored = GECO(target=0.1)
    restored.load_state_dict(geco.state_dict())
    assert restored.lagrange_multiplier == geco.lagrange_multiplier


def test_geco_as_adaptive_warmup_keeps_the_elbo_and_the_anchor():
    zeros = torch.zeros(1, 2)
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    good = {"logits": torch.stack([torch.full((8, 8), 10.0), torch.zeros(8, 8)])[None],
            "prior_mu": torch.full((1, 2), 3.0), "prior_logsigma": zeros,
            "posterior_mu": zeros, "posterior_logsigma": zeros}
    geco = GECO(target=0.1, rate=0.05, ema=0.9, min_lambda=1.0)
    for _ in range(200):
        terms = geco.loss(good, y, anchor=0.5)
    assert geco.lagrange_multiplier == pytest.approx(1.0)  # floor: effective beta never above 1
    # with lambda at 1 the loss differs from the anchored ELBO only by the constant target term
    elbo = elbo_loss(good, y, beta=1.0, anchor=0.5)
    assert float(terms["anchor"]) == pytest.approx(9.0)  # KL(N(3, 1) || N(0, 1)) over 2 dims
    assert float(terms["loss"]) == pytest.approx(float(elbo["loss"]) - 0.1 * 64, rel=1e-5)


def test_preprocessing_fixed_and_percentile():
    img = np.array([[0, 128], [255, 64]], np.uint8)
    fixed = Preprocessing().apply(img)
    assert fixed.dtype == np.float32
    np.testing.assert_allclose(fixed, img / 255.0 - 0.5, atol=1e-6)
    pct = Preprocessing(mode="percentile", p_low=0, p_high=100).apply(img.astype(np.float32) * 7)
    assert pct.min() == pytest.approx(-0.5) and pct.max() == pytest.approx(0.5)
    const = Preprocessing(mode="percentile").apply(np.full((4, 4), 3.0))
    assert np.isfinite(const).all()
    with pytest.raises(ValueError, match="mode"):
        Preprocessing(mode="zscore")
