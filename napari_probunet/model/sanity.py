"""Model sanity beyond NaN: weights that make every hypothesis identical (torch).

A model file can hold only finite, moderate weights and still be useless: a mixture
weight-head bias of 1e11 puts all the weight on one component (16 identical empty hypotheses
with zero uncertainty on a nodule), an fcomb whose z weights are zero ignores the latent. Such a
model reads as "all hypotheses agree", the opposite of what the review is for.
:func:`diversity_problem` probes a loaded model on fixed synthetic images and says why it is
broken, or ``None``. ``probunet info`` reports it (exit 2), ``probunet sample`` and the review
widget refuse the model.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_probunet.errors import ModelFileError

#: mixture logits further apart than this leave a component a weight below e^-60 ~ 1e-26: it
#: is never drawn, and no trained weight head comes near (a few units apart at most)
MAX_LOGIT_SPREAD = 60.0
#: latents drawn per probe image
PROBE_SAMPLES = 16


def probe_images(config, size: int = 64) -> list[np.ndarray]:
    """Two fixed ``(size, size)`` float32 probe images in the intensity range of ``config``'s
    preprocessing (its ``low``..``high`` for ``"fixed"``): a bright disk on a noisy background,
    and a dark disk on a ramp."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 5) ** 2).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    unit = [0.25 + 0.5 * disk + 0.05 * noise, 0.2 + 0.6 * (xx + yy) / (2 * size) - 0.15 * disk]
    pre = config.preprocessing
    low, high = (pre.low, pre.high) if pre.mode == "fixed" else (0.0, 1000.0)
    return [(low + (high - low) * u).astype(np.float32) for u in unit]


@torch.inference_mode()
def diversity_problem(model, images: list[np.ndarray] | None = None) -> str | None:
    """Why ``model`` (a :class:`~napari_probunet.model.network.ProbUNet`) cannot give diverse
    hypotheses, or ``None`` if it can. A deterministic U-Net gives one map by design: ``None``.

    On each probe image ``(H, W)`` (``H``, ``W`` multiples of the model's stride; default
    :func:`probe_images`): a mixture prior whose component logits span more than
    :data:`MAX_LOGIT_SPREAD` is broken; so is a model whose :data:`PROBE_SAMPLES` latents
    drawn from its prior decode to the very same class probabilities everywhere.
    """
    cfg = model.config
    if cfg.deterministic:
        return None
    device = next(model.parameters()).device
    split = model.fcomb.split()
    if images is None:
        images = probe_images(cfg, max(64, cfg.stride))
    for k, image in enumerate(images):
        a = np.asarray(image)[..., None].repeat(cfg.in_channels, axis=-1)
        x = torch.from_numpy(np.ascontiguousarray(
            cfg.preprocessing.apply(a).transpose(2, 0, 1)))[None].to(device)
        enc = model.encode(x)
        mu, sigma = enc.prior_mu[0].float(), torch.exp(enc.prior_logsigma[0]).float()
        if enc.mixture is not None:
            logits = enc.mixture[0][0].float()
            spread = float(logits.max() - logits.min())
            if not spread <= MAX_LOGIT_SPREAD:  # NaN too
                return (f"the mixture prior's component weights are saturated (their logits "
                        f"span {spread:.3g} on probe image {k + 1}): every hypothesis comes "
                        "from one component, so all hypotheses agree whatever the image")
            mu, sigma = enc.mixture[1][0].float(), torch.exp(enc.mixture[2][0]).float()
        eps = torch.from_numpy(np.random.default_rng(k).standard_normal(
            (PROBE_SAMPLES, cfg.latent_dim)).astype(np.float32)).to(device)
        comp = torch.arange(PROBE_SAMPLES, device=device) % mu.shape[0] if mu.ndim == 2 else None
        z = (mu[comp] + sigma[comp] * eps) if comp is not None else (mu + sigma * eps)
        feats = enc.features[0].permute(1, 2, 0)
        _, probs = split.prepare(feats).decode(z, want_probs=True)
        if not bool(torch.isfinite(probs).all()):
            return f"the model's class probabilities on probe image {k + 1} are not finite"
        if float((probs - probs[:1]).abs().max()) == 0.0:
            return (f"all {PROBE_SAMPLES} hypotheses on probe image {k + 1} are identical to "
                    "the last digit: the decoder ignores the latent, so the model shows no "
                    "uncertainty at all")
    return None


def check_diversity(model, name: str) -> None:
    """Refuse ``model`` (loaded from the file ``name``) with a
    :class:`~napari_probunet.errors.ModelFileError` if :func:`diversity_problem` finds one."""
    problem = diversity_problem(model)
    if problem is not None:
        raise ModelFileError(
            f"{name}: {problem}. The model file is damaged or its training went wrong: open "
            "another model, or use an earlier checkpoint"
        )
