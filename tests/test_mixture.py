"""The mixture prior option (issue: every hypothesis a clean mode): the default Gaussian is
unchanged, the Monte-Carlo KL is unbiased against closed forms, sampling follows the mixture's
weights, and mixture models train, save, load and locate annotations."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_probunet.model.config import ModelConfig
from napari_probunet.model.losses import elbo_loss, kl_diag_gaussians, kl_to_mixture, prior_anchor
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.model.network import mixture_moments
from napari_probunet.model.testing import tiny_model, two_mode_case, write_early_model_file
from napari_probunet.session import Session


def test_the_default_is_the_papers_gaussian_and_old_files_load_unchanged(tmp_path):
    assert ModelConfig().latent_distribution == "gaussian"
    gaussian = tiny_model()
    assert not gaussian.is_mixture
    assert gaussian.prior.to_params.weight.shape[0] == 2 * gaussian.config.latent_dim
    written = write_early_model_file(tmp_path / "early.safetensors")  # before the option existed
    early = load_model(tmp_path / "early.safetensors")
    assert early.config.latent_distribution == "gaussian" and not early.is_mixture
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(early.prior(x), written.prior(x))
    with pytest.raises(ValueError, match="mixture_components >= 2"):
        ModelConfig(latent_distribution="mixture", mixture_components=1)
    with pytest.raises(ValueError, match="'gaussian' or 'mixture'"):
        ModelConfig(latent_distribution="flow")


def _mc_mean_and_se(q_mu, q_ls, logits, mu, ls, runs=400, samples=4):
    torch.manual_seed(0)
    est = torch.stack([kl_to_mixture(q_mu, q_ls, logits, mu, ls, samples=samples)
                       for _ in range(runs)])
    return float(est.mean()), float(est.std() / math.sqrt(runs))


def test_the_monte_carlo_kl_is_unbiased_where_the_answer_is_known():
    d = 3
    q_mu, q_ls = torch.tensor([[0.3, -0.2, 0.5]]), torch.tensor([[-0.4, 0.1, -0.2]])
    p_mu, p_ls = torch.tensor([[0.1, 0.4, -0.3]]), torch.tensor([[0.2, -0.1, 0.0]])
    # 1. two identical components are the single Gaussian: the analytic KL
    exact = float(kl_diag_gaussians(q_mu, q_ls, p_mu, p_ls)[0])
    mean, se = _mc_mean_and_se(q_mu, q_ls, torch.zeros(1, 2), p_mu[:, None].repeat(1, 2, 1),
                               p_ls[:, None].repeat(1, 2, 1))
    assert abs(mean - exact) < 4 * se + 1e-3, (mean, exact, se)
    # 2. q equal to one of two far-apart components of weight w: KL = -log w
    far = torch.tensor([[[0.0] * d, [40.0] * d]])
    logs = torch.zeros(1, 2, d)
    w = 0.3
    logits = torch.log(torch.tensor([[w, 1 - w]]))
    mean, se = _mc_mean_and_se(torch.zeros(1, d), torch.zeros(1, d), logits, far, logs)
    assert abs(mean - (-math.log(w))) < 4 * se + 1e-3
    # the estimate's spread falls with more samples
    _, se1 = _mc_mean_and_se(q_mu, q_ls, torch.zeros(1, 2), p_mu[:, None].repeat(1, 2, 1) + 0.0,
                             torch.stack([p_ls, p_ls + 0.5], 1), samples=1)
    _, se16 = _mc_mean_and_se(q_mu, q_ls, torch.zeros(1, 2), p_mu[:, None].repeat(1, 2, 1) + 0.0,
                              torch.stack([p_ls, p_ls + 0.5], 1), samples=16)
    assert se16 < se1


def test_samples_follow_the_mixture_weights_and_stay_reproducible():
    model = tiny_model(latent_distribution="mixture", mixture_components=2, latent_dim=2)
    with torch.no_grad():  # hand-set prior: weights 0.25 / 0.75, means far apart, sigma 0.1
        model.prior.to_params.weight.zero_()
        bias = model.prior.to_params.bias
        bias[:4] = torch.tensor([-5.0, 0.0, 5.0, 0.0])
        bias[4:8] = math.log(0.1)
        bias[8:10] = torch.log(torch.tensor([0.25, 0.75]))
    s = Session(model, "cpu")
    s.set_image(two_mode_case()[0])
    weights, means, sigmas = s.prior_components()
    np.testing.assert_allclose(weights, [0.25, 0.75], atol=1e-5)
    np.testing.assert_allclose(means[:, 0], [-5, 5], atol=1e-4)
    z = s.sample(4000, seed=1).z
    assert abs((z[:, 0] < 0).mean() - 0.25) < 0.03
    assert np.all(np.abs(np.abs(z[:, 0]) - 5) < 1)  # every sample from a component, none between
    np.testing.assert_array_equal(s.sample(7, seed=1).z, z[:7])  # prefix property
    mu, sigma = s.prior()  # overall moments: the explorer's frame
    assert abs(mu[0] - 2.5) < 1e-3 and abs(sigma[0] - math.sqrt(0.75 * 25 + 0.25 * 25 - 6.25 + 0.01)) < 1e-2


def test_a_mixture_model_trains_saves_loads_and_locates(tmp_path):
    model = tiny_model(latent_distribution="mixture", mixture_components=3).train()
    image, masks = two_mode_case()
    x = torch.from_numpy(np.repeat(image[None, None] - 0.5, 4, 0))
    y = torch.from_numpy(np.stack([masks[i % 2] for i in range(4)]).astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        terms = elbo_loss(model(x, y), y, beta=1.0, anchor=1.0)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    assert torch.isfinite(terms["loss"]) and float(terms["kl"]) > -1e-3
    path = tmp_path / "mix.safetensors"
    save_model(model.eval(), path)
    loaded = load_model(path)
    assert loaded.is_mixture and loaded.config.mixture_components == 3
    a, b = Session(model, "cpu"), Session(loaded, "cpu")
    a.set_image(image)
    b.set_image(image)
    np.testing.assert_array_equal(a.sample(8, seed=3).labels, b.sample(8, seed=3).labels)
    loc = b.locate(masks[1])
    assert np.isfinite(loc.kl) and loc.kl > -0.05 and loc.mu.shape == (2,)
    assert b.locate(masks[1]).kl == loc.kl  # a seeded estimate: the same number every time


def test_recipes_can_choose_the_mixture(tmp_path):
    from napari_probunet.training.settings import TrainConfig
    from napari_probunet.training.train import train

    cfg = TrainConfig(data="synthetic:lesions?n=8&seed=1&size=32", val_data="", steps=2,
                      batch_size=2, amp="none", channels_last=False, log_every=1,
                      checkpoint_every=2, threads=1)
    mc = replace(tiny_model().config, latent_distribution="mixture", mixture_components=2)
    train(mc, cfg, tmp_path / "run", progress=False)
    assert load_model(tmp_path / "run" / "last.safetensors").is_mixture


def test_the_prior_anchor_moves_a_mixtures_means_but_never_its_weights():
    # the weights are the modes' frequencies: only the ELBO may set them (the anchor once did,
    # and the model undersampled its far-off mode)
    k, d = 3, 2
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    mu = torch.tensor([[[4.0, 0.0], [0.0, 1.0], [-1.0, -2.0]]], requires_grad=True)
    logsigma = torch.zeros(1, k, d, requires_grad=True)
    out = {"prior_logits": logits, "prior_mix_mu": mu, "prior_mix_logsigma": logsigma,
           "prior_mu": torch.zeros(1, d), "prior_logsigma": torch.zeros(1, d)}
    reg = prior_anchor(out)
    assert float(reg) > 0.1  # the mixture is off-centre: the anchor has something to say
    reg.sum().backward()
    assert logits.grad is None or float(logits.grad.abs().max()) == 0.0
    assert float(mu.grad.abs().max()) > 1e-3 and float(logsigma.grad.abs().max()) > 1e-3
    # its value is still the KL of the mixture's overall moments to N(0, I)
    mean, log_std = mixture_moments(mu.detach(), logsigma.detach(), logits.detach())
    expected = kl_diag_gaussians(mean, log_std, torch.zeros(1, d), torch.zeros(1, d))
    torch.testing.assert_close(reg.detach(), expected)


@pytest.mark.parametrize("mixture", [False, True])
def test_the_batch_anchor_fixes_one_gauge_and_lets_each_image_move(mixture):
    # two images whose priors sit either side of 0 and together make exactly N(0, 1): the
    # per-image anchor penalises each, the batch anchor has nothing to say
    a, s = 0.8, 0.6  # s^2 + a^2 = 1
    mu = torch.tensor([[a], [-a]], requires_grad=True)
    logsigma = torch.full((2, 1), math.log(s), requires_grad=True)
    if mixture:  # the same as 2 images x 2 equal components at +-a
        out = {"prior_logits": torch.zeros(2, 2),
               "prior_mix_mu": torch.stack([mu, mu], dim=1), "prior_mix_logsigma": torch.stack([logsigma] * 2, dim=1)}
    else:
        out = {"prior_mu": mu, "prior_logsigma": logsigma}
    per_image, batch = prior_anchor(out, "image"), prior_anchor(out, "batch")
    assert batch.shape == per_image.shape == (2,)
    assert float(batch.max()) < 1e-6 and float(per_image.min()) > 0.3
    # a batch that is too wide as a whole is anchored, with the same value for every image
    wide = {k: v * 3 if k.endswith("mu") else v for k, v in out.items()}
    reg = prior_anchor(wide, "batch")
    assert float(reg[0]) > 1.0 and float(reg[0]) == float(reg[1])
    reg.mean().backward()
    assert float(mu.grad.abs().max()) > 1e-3
    # one image alone: the batch anchor is the per-image anchor
    one = {k: v[:1] for k, v in out.items()}
    torch.testing.assert_close(prior_anchor(one, "batch"), prior_anchor(one, "image"))


def test_mixture_weights_from_the_unets_features_train_save_and_load(tmp_path):
    model = tiny_model(latent_distribution="mixture", mixture_components=3,
                       mixture_weights="unet").train()
    assert model.prior.weight_head is not None and model.prior.to_params.out_channels == 3 * 2 * 2
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 2, (4, 32, 32))
    terms = elbo_loss(model(x, y), y, beta=1.0, anchor=1.0, anchor_scope="batch")
    terms["loss"].backward()
    assert float(model.prior.weight_head.hidden.weight.grad.abs().max()) > 0
    assert float(model.unet.encoder.blocks[-1][0].weight.grad.abs().max()) > 0
    with pytest.raises(ValueError, match="U-Net"):
        model.prior(x)  # the weights need the U-Net's features
    one = model.encode(x[:1]).mixture[0]  # training on one image: the running statistics
    assert one.shape == (1, 3) and torch.isfinite(one).all()
    logits = model.eval().encode(x).mixture[0]
    assert float(logits.std(dim=0).max()) > 0  # they differ per image
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert loaded.config.mixture_weights == "unet"
    torch.testing.assert_close(loaded.encode(x).mixture[0], logits)


def test_mixture_sigma_max_bounds_every_component():
    model = tiny_model(latent_distribution="mixture", mixture_components=3, mixture_sigma_max=0.5)
    with torch.no_grad():
        model.prior.to_params.bias.fill_(50.0)  # drive every raw log-sigma far up
        _, logsigma, _ = model.prior(torch.randn(2, 1, 32, 32))
    assert float(logsigma.exp().max()) <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="mixture_sigma_max"):
        ModelConfig(latent_distribution="mixture", mixture_sigma_max=100.0)


@pytest.mark.parametrize("hold", [0, 3])
def test_mixture_weights_can_be_held_equal_while_the_components_settle(tmp_path, hold):
    from napari_probunet.model.network import ProbUNet
    from napari_probunet.training.settings import TrainConfig
    from napari_probunet.training.train import train

    cfg = TrainConfig(data="synthetic:lesions?n=8&seed=1&size=32", val_data="", steps=3,
                      batch_size=2, amp="none", channels_last=False, log_every=1,
                      checkpoint_every=3, threads=1, seed=5, mixture_weight_hold_steps=hold)
    mc = replace(tiny_model().config, latent_distribution="mixture", mixture_components=2,
                 mixture_weights="unet")
    torch.manual_seed(cfg.seed)
    initial = ProbUNet(mc).prior.weight_head.out.weight.detach().clone()
    train(mc, cfg, tmp_path / "run", progress=False)
    trained = load_model(tmp_path / "run" / "last.safetensors")
    head = trained.prior.weight_head.out.weight
    assert torch.equal(head, initial) == (hold == 3)  # held: the weights' head never moved
    # the rest of the model trained either way
    assert not torch.equal(trained.prior.to_params.bias, ProbUNet(mc).prior.to_params.bias)
