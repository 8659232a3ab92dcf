"""Losses of the Probabilistic U-Net: the ELBO with a fixed beta, and GECO.

**Reduction convention** (the one that keeps beta meaningful). The loss of one image is its
negative ELBO in nats::

    loss_i = sum over pixels of CE(logits, y)  +  beta * KL(q(z | x_i, y_i) || p(z | x_i))

and the batch loss is the **mean over images** of ``loss_i``. The cross-entropy is summed
over pixels because the likelihood is that of the whole segmentation map: with beta = 1 this
is exactly the ELBO at any image size, and averaging over the batch makes it independent of
the batch size. (Averaging the cross-entropy over pixels instead scales the KL's weight by
H*W and the decoder learns to ignore z: posterior collapse.) Logged values follow the same
convention: ``ce`` per image (summed over pixels), ``kl`` per image in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from napari_probunet.model.network import mixture_moments


def kl_diag_gaussians(
    q_mu: torch.Tensor, q_logsigma: torch.Tensor, p_mu: torch.Tensor, p_logsigma: torch.Tensor
) -> torch.Tensor:
    """Analytic KL(q || p) between axis-aligned Gaussians, summed over the latent dims: ``(b,)``."""
    var_ratio = torch.exp(2 * (q_logsigma - p_logsigma))
    mean_term = ((q_mu - p_mu) * torch.exp(-p_logsigma)) ** 2
    return (p_logsigma - q_logsigma + 0.5 * (var_ratio + mean_term - 1)).sum(dim=1)


LOG_2PI = math.log(2 * math.pi)


def mixture_log_density(z: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                        logsigma: torch.Tensor) -> torch.Tensor:
    """log p(z) under a mixture of axis-aligned Gaussians: z ``(s, b, d)``, logits ``(b, K)``,
    mu and logsigma ``(b, K, d)`` -> ``(s, b)``."""
    diff = (z[:, :, None, :] - mu[None]) * torch.exp(-logsigma[None])  # (s, b, K, d)
    comp = -0.5 * (diff ** 2).sum(-1) - logsigma.sum(-1)[None] - 0.5 * z.shape[-1] * LOG_2PI
    return torch.logsumexp(torch.log_softmax(logits, dim=-1)[None] + comp, dim=-1)


def kl_to_mixture(q_mu: torch.Tensor, q_logsigma: torch.Tensor, logits: torch.Tensor,
                  mu: torch.Tensor, logsigma: torch.Tensor, samples: int = 4,
                  eps: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q || p) for a Gaussian q and a mixture p, per image ``(b,)``: no closed form exists.

    Estimated as ``-H(q) - E_q[log p(z)]``: the entropy of the Gaussian q is exact, and only
    the cross term is averaged over ``samples`` reparameterised draws ``z = mu_q + sigma_q * eps``
    (so the gradient flows to q and to p). Unbiased for the KL (the expectation of the estimate
    is the KL; tests check it against closed forms), with a variance that falls as 1/samples.
    ``eps`` ``(samples, b, d)`` may be given for a reproducible estimate.
    """
    q_mu, q_logsigma = q_mu.float(), q_logsigma.float()
    if eps is None:
        eps = torch.randn((samples, *q_mu.shape), device=q_mu.device)
    z = q_mu[None] + torch.exp(q_logsigma)[None] * eps
    neg_entropy = -(q_logsigma.sum(-1) + 0.5 * q_mu.shape[-1] * (1.0 + LOG_2PI))
    cross = mixture_log_density(z, logits.float(), mu.float(), logsigma.float()).mean(0)
    return neg_entropy - cross


def reconstruction_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over pixels, per image: logits ``(b, c, h, w)``, y ``(b, h, w)``
    -> ``(b,)``."""
    return F.cross_entropy(logits.float(), y.long(), reduction="none").flatten(1).sum(dim=1)


def prior_anchor(out: dict[str, torch.Tensor], scope: str = "image") -> torch.Tensor:
    """KL(p(z | x) || N(0, I)) per image ``(b,)``: fixes the otherwise free scale of z.

    The ELBO with a learned prior is unchanged when z is rescaled (prior, posterior and fcomb's
    z weights together), so nothing stops the scale drifting until log-sigma hits its bound
    (seen here: one prior sigma at the bound, most samples empty). A small multiple of this
    term pins the scale near the standard normal without changing which modes are learned.

    ``scope="image"`` anchors every image's prior; ``"batch"`` anchors the batch's priors
    pooled into one distribution (each image an equal share), so the gauge (one scale and
    offset for all images, which is all the ELBO leaves free) is fixed while each image's prior
    may still move with its image. Per image, the anchor makes a prior that ignores its image
    the cheapest, and the trained prior nets did (docs/model.md, "Does the prior net see its
    image?").
    The value is the same for every image of the batch then.
    """
    if "prior_logits" in out:
        # a mixture prior: pin its overall moments, which fixes the scale of z without pulling
        # the components onto one another (anchoring each component to N(0, I) did, and the
        # first mixture run collapsed to one component). The weights are held fixed in this
        # term: they are the modes' frequencies, which only the ELBO may set (with the weights
        # free, the anchor moved them toward whatever centred the mixture, and the second run
        # sampled its far-off "nothing" mode 16% of the time against a true 21%)
        mu, logsigma = out["prior_mix_mu"], out["prior_mix_logsigma"]
        logits = out["prior_logits"].detach().float()
    elif scope == "image":
        mu, logsigma = out["prior_mu"].float(), out["prior_logsigma"].float()
        zeros = torch.zeros_like(mu)
        return kl_diag_gaussians(mu, logsigma, zeros, zeros)
    else:  # one Gaussian per image: the batch pools them as a mixture of b equal components
        mu, logsigma = out["prior_mu"][:, None], out["prior_logsigma"][:, None]
        logits = torch.zeros(mu.shape[:2], device=mu.device)
    b, d = mu.shape[0], mu.shape[-1]
    if scope == "batch":  # every component of every image, each image's weights shared by b
        mu, logsigma = mu.reshape(1, -1, d), logsigma.reshape(1, -1, d)
        logits = torch.log_softmax(logits, dim=-1).reshape(1, -1)
    mean, log_sd = mixture_moments(mu, logsigma, logits)
    zeros = torch.zeros_like(mean)
    return kl_diag_gaussians(mean, log_sd, zeros, zeros).expand(b)


def elbo_loss(out: dict[str, torch.Tensor], y: torch.Tensor, beta: float = 1.0,
              anchor: float = 0.0, anchor_scope: str = "image",
              equal_weights: bool = False) -> dict[str, torch.Tensor]:
    """Negative ELBO (see the module docstring) plus ``anchor`` times :func:`prior_anchor`
    (of scope ``anchor_scope``). ``equal_weights``: a mixture prior's weights count as equal
    (its logits get no gradient), as training does for its first ``mixture_weight_hold_steps``.

    ``out`` is :meth:`ProbUNet.forward`'s result. Returns ``loss`` (scalar, to minimise),
    ``ce`` and ``kl`` (batch means, per image), ``anchor`` and ``ce_per_pixel`` (for logging
    and GECO).
    """
    ce = reconstruction_ce(out["logits"], y)
    if "prior_logits" in out and equal_weights:
        out = {**out, "prior_logits": torch.zeros_like(out["prior_logits"])}
    if "prior_logits" in out:  # mixture prior: a Monte-Carlo estimate (kl_to_mixture)
        kl = kl_to_mixture(out["posterior_mu"], out["posterior_logsigma"], out["prior_logits"],
                           out["prior_mix_mu"], out["prior_mix_logsigma"],
                           samples=int(out.get("kl_samples", 4)))
    else:
        kl = kl_diag_gaussians(
            out["posterior_mu"].float(), out["posterior_logsigma"].float(),
            out["prior_mu"].float(), out["prior_logsigma"].float(),
        )
    reg = prior_anchor(out, anchor_scope)
    loss = (ce + beta * kl + anchor * reg).mean()
    n_pixels = y[0].numel()
    return {"loss": loss, "ce": ce.mean(), "kl": kl.mean(), "anchor": reg.mean(),
            "ce_per_pixel": ce.mean() / n_pixels}


@dataclass
class GECO:
    """Generalized ELBO with Constrained Optimization (Rezende & Viola 2018), as used by the
    Hierarchical Probabilistic U-Net (Kohl et al. 2019).

    Instead of fixing beta, minimise ``KL + lambda * C`` with the constraint
    ``C = mean per-pixel cross-entropy - target`` (nats per pixel). The Lagrange multiplier
    lambda grows while the reconstruction is worse than ``target`` and shrinks once it is
    better, driven by a moving average of C: ``log(lambda) += rate * C_ema`` per step, bounded
    to ``[min_lambda, max_lambda]``. Its state travels with training checkpoints.
    """

    target: float = 0.05
    rate: float = 0.01
    ema: float = 0.99
    lambda_init: float = 1.0
    min_lambda: float = 1e-3
    max_lambda: float = 1e5
    log_lambda: float | None = None
    constraint_ema: float | None = None

    def __post_init__(self) -> None:
        if self.log_lambda is None:
            self.log_lambda = math.log(self.lambda_init)

    @property
    def lagrange_multiplier(self) -> float:
        return math.exp(self.log_lambda)

    def loss(self, out: dict[str, torch.Tensor], y: torch.Tensor,
             anchor: float = 0.0, anchor_scope: str = "image",
             equal_weights: bool = False) -> dict[str, torch.Tensor]:
        """Like :func:`elbo_loss`, but weighted by the multiplier, which is then updated.

        The returned ``loss`` is ``KL + anchor * prior_anchor + lambda * (CE - target * pixels)``
        per image (batch mean): with lambda = 1 its gradient is the ELBO's, so lambda is the
        inverse of an effective beta. Only its gradient matters.
        """
        terms = elbo_loss(out, y, beta=1.0, anchor=anchor, anchor_scope=anchor_scope,
                          equal_weights=equal_weights)
        constraint = terms["ce_per_pixel"] - self.target
        lam = self.lagrange_multiplier
        n_pixels = y[0].numel()
        terms["loss"] = terms["kl"] + anchor * terms["anchor"] + lam * n_pixels * constraint
        c = float(constraint.detach())
        if self.constraint_ema is None:
            self.constraint_ema = c
        else:
            self.constraint_ema = self.ema * self.constraint_ema + (1 - self.ema) * c
        step = self.rate * self.constraint_ema / max(self.target, 1e-8)
        self.log_lambda = min(max(self.log_lambda + step, math.log(self.min_lambda)),
                              math.log(self.max_lambda))
        terms["lambda"] = torch.tensor(lam)
        return terms

    def state_dict(self) -> dict[str, float | None]:
        return {"log_lambda": self.log_lambda, "constraint_ema": self.constraint_ema}

    def load_state_dict(self, state: dict) -> None:
        self.log_lambda = state["log_lambda"]
        self.constraint_ema = state["constraint_ema"]
