"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018) as plain ``nn.Module`` s.

Tensors are ``(batch, channels, height, width)`` throughout. Notation of the paper:

- the U-Net maps an image x to a feature map F (``channels[0]`` channels, full resolution);
- the prior net maps x to an axis-aligned Gaussian p(z | x) over the latent z in R^d;
- the posterior net maps x and a one-hot segmentation y to q(z | x, y) (training, and to place
  a given mask in latent space);
- fcomb broadcasts z over the image, concatenates it with F and applies 1x1 convolutions
  to give class logits.

The loss lives in :mod:`napari_probunet.model.losses`; fast sampling (fcomb's first layer split
into an image term and a per-sample bias) in :mod:`napari_probunet.model.decode`
(:meth:`Fcomb.split`). :func:`build_model` is the one place a network is made from its
configuration (the session, model files, training and tests call it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from napari_probunet.model.config import ModelConfig
from napari_probunet.model.decode import PreparedDecoder, SplitFcomb


def _conv_block(in_ch: int, out_ch: int, n_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """The U-Net's contracting path, also used by the prior and posterior nets.

    Level 0 keeps the resolution; each further level average-pools by 2 first.
    ``forward`` returns every level's output, finest first: ``[(b, channels[i], h/2^i, w/2^i)]``.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], convs_per_block: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        prev = in_channels
        for ch in channels:
            self.blocks.append(_conv_block(prev, ch, convs_per_block))
            prev = ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            outs.append(x)
        return outs


class UNet(nn.Module):
    """U-Net without its output layer: image ``(b, in_channels, h, w)`` -> F
    ``(b, channels[0], h, w)``.

    Decoder: bilinear upsampling, concatenation with the skip connection, then a conv block
    (as in the original code). ``h`` and ``w`` must be multiples of ``2 ** (levels - 1)``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.channels
        self.encoder = Encoder(cfg.in_channels, ch, cfg.convs_per_block)
        self.decoder = nn.ModuleList(
            _conv_block(ch[i + 1] + ch[i], ch[i], cfg.convs_per_block)
            for i in reversed(range(len(ch) - 1))
        )

    def forward(self, x: torch.Tensor, with_skips: bool = False):
        """F; with ``with_skips``, ``(F, skips)`` where skips are the contracting path's
        outputs, finest first (:meth:`Encoder.forward`)."""
        skips = self.encoder(x)
        h = skips[-1]
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
        return (h, skips) if with_skips else h


def bounded_logsigma(raw: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    """Softly bound log-sigma to ``bounds``: identity near the centre, tanh-saturating at the edges.

    Makes NaN-producing values (exp overflow, sigma -> 0) unreachable while keeping a gradient
    inside the range. (A straight-through clamp was tried and rejected: with the gradient
    passing unchanged the raw value ran off to 1e8 and the KL exploded.) Whether the prior's
    sigmas stay well inside the bound is checked by evaluation (``prior_sigma_max``).
    """
    lo, hi = bounds
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    return centre + half * torch.tanh((raw - centre) / half)


class GaussianEncoder(nn.Module):
    """Prior or posterior net: encoder, global average pool, 1x1 conv to ``(mu, log_sigma)``.

    Input ``(b, in_channels, h, w)``; returns ``mu, log_sigma`` each ``(b, latent_dim)``.
    The 1x1 conv is initialised small so that training starts from a near-standard normal.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        self.encoder = Encoder(in_channels, cfg.channels, cfg.convs_per_block)
        self.to_params = nn.Conv2d(cfg.channels[-1], 2 * cfg.latent_dim, 1)
        nn.init.normal_(self.to_params.weight, std=1e-3)
        nn.init.zeros_(self.to_params.bias)
        self.latent_dim = cfg.latent_dim
        self.bounds = cfg.logsigma_bounds

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)
        params = self.to_params(h).flatten(1)
        mu, raw = params[:, : self.latent_dim], params[:, self.latent_dim :]
        return mu, bounded_logsigma(raw, self.bounds)


class MixtureEncoder(nn.Module):
    """Prior net of the mixture option: encoder, global average pool, 1x1 conv to the means
    ``(b, K, d)``, log-sigmas ``(b, K, d)`` and (``mixture_weights = "prior_net"``) the weights'
    logits ``(b, K)``. With ``mixture_weights = "unet"`` the logits come from a head of their
    own instead (:class:`WeightHead`) on the U-Net's features, which the reconstruction keeps
    alive (the prior net's own features went constant across images in training; docs/model.md,
    "A mixture prior"). The means start spread out (a fixed draw of N(0, I), one per component)
    so that the components are not interchangeable from the first step: identical components
    would get identical gradients and never separate.
    """

    def __init__(self, cfg: ModelConfig, in_channels: int):
        super().__init__()
        k, d = cfg.mixture_components, cfg.latent_dim
        self.encoder = Encoder(in_channels, cfg.channels, cfg.convs_per_block)
        own_logits = cfg.mixture_weights == "prior_net"
        self.to_params = nn.Conv2d(cfg.channels[-1], k * (2 * d + int(own_logits)), 1)
        nn.init.normal_(self.to_params.weight, std=1e-3)
        nn.init.zeros_(self.to_params.bias)
        with torch.no_grad():
            spread = torch.randn(k, d, generator=torch.Generator().manual_seed(0))
            self.to_params.bias[: k * d] = spread.flatten()
        self.weight_head = None if own_logits else WeightHead(2 * sum(cfg.channels), k)
        self.k, self.latent_dim, self.bounds = k, d, cfg.logsigma_bounds
        if cfg.mixture_sigma_max is not None:
            self.bounds = (cfg.logsigma_bounds[0], math.log(cfg.mixture_sigma_max))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x ``(b, in_channels, h, w)``; ``skips`` the U-Net's contracting-path outputs (needed
        when the weights have their own head)."""
        h = self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)
        params = self.to_params(h).flatten(1)
        k, d = self.k, self.latent_dim
        mu = params[:, : k * d].reshape(-1, k, d)
        logsigma = bounded_logsigma(params[:, k * d: 2 * k * d].reshape(-1, k, d), self.bounds)
        if self.weight_head is None:
            return mu, logsigma, params[:, 2 * k * d:]
        if skips is None:
            raise ValueError("this mixture prior takes its weights from the U-Net's features: "
                             "pass skips (ProbUNet.encode does)")
        return mu, logsigma, self.weight_head(skips)


class WeightHead(nn.Module):
    """A mixture's weights from the U-Net: the mean and the maximum of every contracting-path
    level's features, standardised per feature (batch normalisation without a learned scale,
    running statistics at inference), then two linear layers to K logits.

    The standardisation is what makes it learn: the pooled features' image-to-image variation
    is small beside their constant part, and without it the head stayed blind to the image
    (a probe on a trained model: mean |weight - true probability| 0.117 without it, as a
    constant would, and 0.033 with it).
    """

    def __init__(self, n_features: int, k: int, width: int = 64):
        super().__init__()
        self.norm = nn.BatchNorm1d(n_features, affine=False)
        self.hidden = nn.Linear(n_features, width)
        self.out = nn.Linear(width, k)
        nn.init.kaiming_normal_(self.hidden.weight, nonlinearity="relu")
        nn.init.zeros_(self.hidden.bias)
        nn.init.normal_(self.out.weight, std=1e-2)  # near-equal weights at first
        nn.init.zeros_(self.out.bias)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        pooled = [f.mean(dim=(2, 3)) for f in skips] + [f.amax(dim=(2, 3)) for f in skips]
        x = torch.cat(pooled, dim=1).float()
        if self.training and x.shape[0] < 2:  # one image has no batch statistics of its own
            x = F.batch_norm(x, self.norm.running_mean, self.norm.running_var, eps=self.norm.eps)
        else:
            x = self.norm(x)
        return self.out(F.relu(self.hidden(x)))


def mixture_moments(mu: torch.Tensor, logsigma: torch.Tensor,
                    logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(b, d)`` and log of the standard deviation ``(b, d)`` of a mixture (per axis):
    the single Gaussian the explorer's plane and the annotation coordinates are measured in."""
    w = torch.softmax(logits.float(), dim=-1)[..., None]  # (b, K, 1)
    mu, var = mu.float(), torch.exp(2 * logsigma.float())
    mean = (w * mu).sum(dim=1)
    second = (w * (var + mu ** 2)).sum(dim=1)
    return mean, 0.5 * torch.log(torch.clamp(second - mean ** 2, min=1e-12))


class Fcomb(nn.Module):
    """Combine F ``(b, c_F, h, w)`` with z ``(b, d)`` into class logits ``(b, num_classes, h, w)``.

    ``layers[0]`` is a 1x1 conv on ``[F; z]`` (z broadcast to every pixel); the first
    ``c_F`` input channels of its weight act on F, the last ``d`` on z. Because z is constant
    over the image, ``W [F; z] = W_F F + W_z z``: the z term is a per-channel bias
    (see :meth:`split_first_layer`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c_f, c_h = cfg.channels[0], cfg.fcomb_channels
        convs = [nn.Conv2d(c_f + cfg.latent_dim, c_h, 1)]
        convs += [nn.Conv2d(c_h, c_h, 1) for _ in range(cfg.fcomb_layers - 1)]
        self.hidden = nn.ModuleList(convs)
        self.logits = nn.Conv2d(c_h, cfg.num_classes, 1)
        self.feature_channels = c_f

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        zmap = z[:, :, None, None].expand(b, z.shape[1], h, w)
        x = torch.cat([features, zmap], dim=1)
        for conv in self.hidden:
            x = F.relu(conv(x))
        return self.logits(x)

    def split_first_layer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_F (c_h, c_F), W_z (c_h, d), bias (c_h,))`` of the first 1x1 conv."""
        w = self.hidden[0].weight[:, :, 0, 0]
        return w[:, : self.feature_channels], w[:, self.feature_channels :], self.hidden[0].bias

    def split(self) -> SplitFcomb:
        """The weights as they are now, split for fast decoding: ``split().prepare(F)`` gives
        an image's :class:`~napari_probunet.model.decode.PreparedDecoder`."""
        return SplitFcomb(self)

    def prepare(self, features: torch.Tensor) -> PreparedDecoder:
        """The fast decoder of one image's F ``(H, W, c_F)`` (pixel-major)."""
        return self.split().prepare(features)


@dataclass
class Encoded:
    """What the expensive part of the model gives for a batch of images."""

    features: torch.Tensor  # F: (b, channels[0], h, w)
    prior_mu: torch.Tensor  # (b, d); for a mixture prior its overall mean
    prior_logsigma: torch.Tensor  # (b, d); for a mixture prior the log of its overall std
    # mixture prior only: logits (b, K), means (b, K, d), log-sigmas (b, K, d) of the components
    mixture: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None


def he_init(module: nn.Module) -> None:
    """He-normal weights (fan in, for ReLU) and zero biases for every convolution of ``module``:
    the original implementation's init, which keeps the image-dependent part of the signal alive
    through deep ReLU stacks (see :attr:`ModelConfig.weight_init`)."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)


class ProbUNet(nn.Module):
    """The Probabilistic U-Net. ``config`` is a :class:`~napari_probunet.model.config.ModelConfig`.

    Attributes set by :func:`napari_probunet.model.modelfile.load_model`: ``source_path``,
    ``source_sha256`` and ``metadata`` (provenance), or ``None`` for a model built in code.
    """

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        cfg = self.config
        self.unet = UNet(cfg)
        if cfg.weight_init == "he":
            he_init(self.unet)
        # a deterministic U-Net (the baseline) has no prior or posterior net: z is always 0
        prior = MixtureEncoder if cfg.latent_distribution == "mixture" else GaussianEncoder
        self.prior = None if cfg.deterministic else prior(cfg, cfg.in_channels)
        self.posterior = (None if cfg.deterministic
                          else GaussianEncoder(cfg, cfg.in_channels + cfg.num_classes))
        self.fcomb = Fcomb(cfg)
        if cfg.weight_init == "he":  # the encoders and fcomb; to_params keep their small init
            for part in (self.prior, self.posterior):
                if part is not None:
                    he_init(part.encoder)
            he_init(self.fcomb)
        if cfg.deterministic:  # z is always 0 in training: its weights would keep their init
            with torch.no_grad():  # and turn the point mass's tiny sigma into varying samples
                self.fcomb.split_first_layer()[1].zero_()
        self.source_path: str | None = None
        self.source_sha256: str | None = None
        self.metadata: dict = {}

    def _point_mass(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A deterministic model's "Gaussian": mean 0, sigma at its lower bound (0.0025 by
        default), so every sample decodes to the same map."""
        mu = x.new_zeros(x.shape[0], self.config.latent_dim, dtype=torch.float32)
        return mu, torch.full_like(mu, self.config.logsigma_bounds[0])

    @property
    def is_mixture(self) -> bool:
        return isinstance(self.prior, MixtureEncoder)

    def encode(self, x: torch.Tensor) -> Encoded:
        """Run the U-Net and the prior once: x ``(b, in_channels, h, w)``."""
        if self.is_mixture:
            features, skips = self.unet(x, with_skips=True)
            mix_mu, mix_logsigma, logits = self.prior(x, skips)
            mu, logsigma = mixture_moments(mix_mu, mix_logsigma, logits)
            return Encoded(features, mu, logsigma, (logits, mix_mu, mix_logsigma))
        mu, logsigma = self._point_mass(x) if self.prior is None else self.prior(x)
        return Encoded(self.unet(x), mu, logsigma)

    def posterior_params(self, x: torch.Tensor,
                         y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, y): x ``(b, in_channels, h, w)``, y ``(b, h, w)`` integer labels -> mu,
        log_sigma."""
        if self.posterior is None:
            return self._point_mass(x)
        onehot = F.one_hot(y.long(), self.config.num_classes).permute(0, 3, 1, 2).to(x.dtype)
        return self.posterior(torch.cat([x, onehot + self.config.posterior_mask_shift], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training pass: reconstruct y from a posterior sample.

        Returns ``logits (b, classes, h, w)``, ``z (b, d)`` and the two Gaussians' parameters;
        :func:`napari_probunet.model.losses.elbo_loss` turns them into the loss.
        """
        if self.config.deterministic:  # a plain U-Net: z = 0, no KL and no prior anchor
            zeros = x.new_zeros(x.shape[0], self.config.latent_dim, dtype=torch.float32)
            return {"logits": self.fcomb(self.unet(x), zeros.to(x.dtype)), "z": zeros,
                    "prior_mu": zeros, "prior_logsigma": zeros,
                    "posterior_mu": zeros, "posterior_logsigma": zeros}
        enc = self.encode(x)
        q_mu, q_logsigma = self.posterior_params(x, y)
        z = q_mu + torch.exp(q_logsigma) * torch.randn_like(q_mu)
        out = {
            "logits": self.fcomb(enc.features, z),
            "z": z,
            "prior_mu": enc.prior_mu,
            "prior_logsigma": enc.prior_logsigma,
            "posterior_mu": q_mu,
            "posterior_logsigma": q_logsigma,
        }
        if enc.mixture is not None:  # the loss estimates KL(q || mixture) from these
            out["prior_logits"], out["prior_mix_mu"], out["prior_mix_logsigma"] = enc.mixture
            out["kl_samples"] = torch.tensor(self.config.kl_samples)
        return out


def build_model(config: ModelConfig | None = None) -> ProbUNet:
    """The network of ``config`` (the default configuration if ``None``), freshly initialised.

    The one entry that maps a configuration to an architecture: a new architecture is added
    here (and in :mod:`napari_probunet.model`), not in the session or the model-file code.
    """
    return ProbUNet(config)
