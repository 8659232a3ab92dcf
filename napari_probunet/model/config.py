"""Configuration of a Probabilistic U-Net, saved with its weights so a model file describes itself.

Defaults reproduce the original TensorFlow implementation of Kohl et al. (NeurIPS 2018)
unless stated otherwise; each field says where its default comes from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class Preprocessing:
    """How raw image intensities map to the network's input range.

    ``mode="fixed"``: ``x' = (x - low) / (high - low) - 0.5`` with the same ``low``/``high`` for
    every image. Absolute contrast then carries meaning (the synthetic ``lesions`` data's mode
    probabilities depend on it), which per-image normalisation would destroy.
    ``mode="percentile"``: ``low``/``high`` are the image's own ``p_low``/``p_high`` percentiles
    (for data whose intensity scale varies between scanners or files).
    Integer images are first divided by their dtype's maximum when ``scale_integers`` is set
    (8-bit 0..255 becomes 0..1), so a PNG and its float version give the same input.
    The -0.5 shift centres [0, 1] data as the original code does for its inputs.
    """

    mode: str = "fixed"
    low: float = 0.0
    high: float = 1.0
    p_low: float = 1.0
    p_high: float = 99.0
    clip: bool = False
    scale_integers: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("fixed", "percentile"):
            raise ValueError(f"unknown preprocessing mode {self.mode!r}: use 'fixed' or "
                             "'percentile'")
        if self.mode == "fixed" and not self.high > self.low:
            raise ValueError(f"preprocessing needs high > low, got low={self.low}, "
                             f"high={self.high}")

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Map a raw ``(H, W)`` or ``(H, W, C)`` array to float32 network input (same shape)."""
        x = np.asarray(image)
        if self.scale_integers and np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
        x = x.astype(np.float32, copy=False)
        if self.mode == "fixed":
            low, high = self.low, self.high
        else:
            low, high = (float(v) for v in np.percentile(x, [self.p_low, self.p_high]))
            if high <= low:  # a constant image: map it to the centre of the range
                high = low + 1.0
        out = (x - low) / (high - low)
        if self.clip:
            out = np.clip(out, 0.0, 1.0)
        return (out - 0.5).astype(np.float32, copy=False)


@dataclass
class ModelConfig:
    """Architecture and loss of a Probabilistic U-Net.

    in_channels: image channels (1 grey, 3 RGB).
    num_classes: classes of the label map, background included (binary = 2).
    class_names: one name per class (``class_names[0]`` is the background).
    channels: feature channels per resolution level of the U-Net and of the prior/posterior
        encoders. Default (32, 64, 128, 192): the original's LIDC setting (which then holds
        192 for deeper levels). Each level after the first halves the resolution (average
        pooling), so an image is padded to a multiple of ``2 ** (len(channels) - 1)``.
    convs_per_block: 3x3 conv + ReLU layers per block (3 in the original).
    latent_dim: dimension d of z (6 in the original's LIDC experiments).
    fcomb_channels: width of fcomb's hidden 1x1 convs (original: channels[0] = 32).
    fcomb_layers: hidden 1x1 conv + ReLU layers in fcomb before the logits (3 in the original).
    beta: weight of KL(q || p) in the loss (1 = the true ELBO, the original's setting).
    prior_anchor: weight of KL(p(z|x) || N(0, I)) added to the loss (not in the original).
        The ELBO does not fix the scale of z (rescaling prior, posterior and fcomb together
        leaves it unchanged), and in our runs the scale drifted until a prior sigma hit its
        bound, where a tanh bound stops all gradients. Weight 1 pins the scale (and offset)
        near N(0, I); the decoder still sees the image, so mode boundaries in z can move per
        image. 0 gives the original loss.
    prior_anchor_scope: ``"image"`` (every image's prior anchored, as all models trained here
        before 2026-12-01; a file without the setting reads as this) or ``"batch"`` (the
        batch's priors pooled, each image an equal share: the scale is fixed once for all
        images, which is all the ELBO leaves free). Per image, the anchor makes a prior that
        ignores its image cheapest, and the trained prior nets did.
    logsigma_bounds: soft bounds for the Gaussians' log-sigma. Public ports leave it free and
        see NaNs and runaway sigmas; a runaway prior sigma makes most samples decode to
        nothing. (-6, 3) allows sigma from 0.0025 to 20 and keeps the tanh far from
        saturation where sigmas should live (around 1).
    posterior_mask_shift: added to the one-hot mask given to the posterior (-0.5 in the original).
    input_size: side of the square crops the model was trained on; the plugin's region of
        interest follows it. (128 in the original's LIDC setting.)
    preprocessing: see :class:`Preprocessing`.
    latent_distribution: ``"gaussian"`` (the paper's axis-aligned Gaussian prior, the default)
        or ``"mixture"``: the prior net gives a mixture of ``mixture_components`` axis-aligned
        Gaussians (the Generalized Probabilistic U-Net's idea, Bhat et al. 2022), so that each
        mode of the segmentations can own a component instead of sharing one Gaussian, whose
        in-between region decodes to in-between shapes. The posterior stays one Gaussian; the
        KL term is then estimated (:func:`napari_probunet.model.losses.kl_to_mixture`).
    mixture_components: K, the number of Gaussians of a mixture prior (at least 2).
    mixture_weights: where a mixture's weights come from: ``"prior_net"`` (K more outputs of
        the prior net's last 1x1 conv, beside the means and sigmas) or ``"unet"`` (a head of
        two linear layers on the U-Net's pooled, standardised features:
        :class:`napari_probunet.model.network.WeightHead`).
    mixture_sigma_max: an upper bound for the components' sigmas (``None``: the
        ``logsigma_bounds``). Narrow components cannot hold two modes with a boundary between
        them (what the decoder otherwise does, decoding a component's middle to in-between
        shapes); with the anchor pinning the overall spread, they must sit apart.
    kl_samples: posterior samples per image of the Monte-Carlo KL estimate (mixture only).
    weight_init: how the convolutions start: ``"he"`` (He normal for the weights, zero biases,
        as in the original implementation; the default) or ``"torch"`` (PyTorch's default
        uniform init). Through the twelve 3x3 convolutions of an encoder the ``"torch"`` init
        shrinks the image-dependent part of the signal about 6x in variance per layer, so the
        prior net's pooled features start constant across images (every model trained here
        before 2026-12-01 has a prior that ignores its image; a Gaussian prior net went blind
        in training with the He init too: docs/model.md). A model file written before this
        setting existed reads as ``"torch"``; it only matters for training.
    deterministic: a plain U-Net of the same size instead (the baseline of ``probunet
        evaluate``'s model cards): no prior or posterior net, fcomb always sees z = 0, the loss
        is the cross-entropy alone. Every "sample" is the same map. Not in the original.
    slice_context: the neighbouring slices each side the model also sees (2.5D; 0 = the slice
        alone, the default): its ``in_channels`` are then the ``2 * slice_context + 1`` grey
        slices ``i - c .. i + c`` of a scan, the one to segment in the middle
        (:mod:`napari_probunet.data.context`). A single 2D image is given as itself repeated.
    domain: what the model expects and was trained on (:class:`napari_probunet.review.domain.Domain`
        as a dict: modality, intensity convention, training-data statistics); empty for a
        model that says nothing. The plugin shows it and warns when an image looks foreign.
    """

    in_channels: int = 1
    num_classes: int = 2
    class_names: list[str] = field(default_factory=lambda: ["background", "lesion"])
    channels: tuple[int, ...] = (32, 64, 128, 192)
    convs_per_block: int = 3
    latent_dim: int = 6
    fcomb_channels: int = 32
    fcomb_layers: int = 3
    beta: float = 1.0
    prior_anchor: float = 1.0
    prior_anchor_scope: str = "image"
    logsigma_bounds: tuple[float, float] = (-6.0, 3.0)
    posterior_mask_shift: float = -0.5
    input_size: int = 128
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    latent_distribution: str = "gaussian"
    mixture_components: int = 4
    mixture_weights: str = "prior_net"
    mixture_sigma_max: float | None = None
    kl_samples: int = 4
    weight_init: str = "he"
    deterministic: bool = False
    slice_context: int = 0
    domain: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.logsigma_bounds = tuple(float(b) for b in self.logsigma_bounds)
        if isinstance(self.preprocessing, dict):
            self.preprocessing = Preprocessing(**self.preprocessing)
        if self.num_classes < 2:
            raise ValueError("num_classes counts the background too: binary segmentation is 2")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes"
            )
        if self.latent_dim < 1:
            raise ValueError("latent_dim must be at least 1")
        if self.latent_distribution not in ("gaussian", "mixture"):
            raise ValueError(f"latent_distribution must be 'gaussian' or 'mixture', not "
                             f"{self.latent_distribution!r}")
        if self.latent_distribution == "mixture" and self.mixture_components < 2:
            raise ValueError("a mixture prior needs mixture_components >= 2 (1 is the Gaussian)")
        if self.prior_anchor_scope not in ("image", "batch"):
            raise ValueError(f"prior_anchor_scope must be 'image' or 'batch', not "
                             f"{self.prior_anchor_scope!r}")
        if self.weight_init not in ("he", "torch"):
            raise ValueError(f"weight_init must be 'he' or 'torch', not {self.weight_init!r}")
        if self.mixture_weights not in ("prior_net", "unet"):
            raise ValueError(f"mixture_weights must be 'prior_net' or 'unet', not "
                             f"{self.mixture_weights!r}")
        if self.mixture_sigma_max is not None:
            sigma_low = math.exp(self.logsigma_bounds[0])
            sigma_high = math.exp(self.logsigma_bounds[1])
            if not sigma_low < self.mixture_sigma_max <= sigma_high:
                raise ValueError(f"mixture_sigma_max must lie within exp(logsigma_bounds), got "
                                 f"{self.mixture_sigma_max}")
        if self.slice_context < 0 or (
                self.slice_context and self.in_channels != 2 * self.slice_context + 1):
            raise ValueError(f"slice_context = {self.slice_context} needs in_channels = "
                             f"{2 * self.slice_context + 1} (the slice and its neighbours)")
        if self.kl_samples < 1:
            raise ValueError("kl_samples must be at least 1")
        if not self.channels or self.convs_per_block < 1 or self.fcomb_layers < 1:
            raise ValueError("channels, convs_per_block and fcomb_layers must be "
                             "non-empty/positive")
        lo, hi = self.logsigma_bounds
        if not lo < hi:
            raise ValueError(f"logsigma_bounds must be (low, high) with low < high, got "
                             f"{self.logsigma_bounds}")

    @property
    def stride(self) -> int:
        """Images are padded to a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["logsigma_bounds"] = list(self.logsigma_bounds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        return cls(**d)
