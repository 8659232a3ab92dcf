"""Encode once, decode many: the object the widgets, the command line and the tests share.

A :class:`Session` wraps a :class:`~napari_probunet.model.network.ProbUNet` on one device. Like
segment-anything's predictor, :meth:`Session.set_image` runs the expensive part once (U-Net
and prior net); :meth:`Session.sample` and :meth:`Session.decode` then only run fcomb.

Fast decoding: fcomb's first 1x1 conv acts on ``[F; z]`` with z constant over the image, so
``W [F; z] + b = (W_F F + b) + W_z z``. ``set_image`` computes the image term once, pixel-major
``(pixels, hidden)``; a sample adds its own per-channel bias ``W_z z`` and runs the remaining
1x1 convs as matrix products over the pixels of all samples in a chunk. For two classes only
the logit difference is needed for the label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_probunet.device import resolve_device
from napari_probunet.errors import InputError
from napari_probunet.iou import foreground_iou
from napari_probunet.model.decode import BLOCK_ROWS, PreparedDecoder
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.model.images import as_model_image, image_signature, pixel_disagreement
from napari_probunet.model.losses import kl_diag_gaussians, kl_to_mixture
from napari_probunet.model.network import ProbUNet

__all__ = ["BLOCK_ROWS", "Hypotheses", "Location", "Session", "as_model_image",
           "image_signature", "pixel_disagreement"]


@dataclass
class Location:
    """Where the posterior net places a given mask in latent space."""

    mu: np.ndarray  # (d,) posterior mean
    sigma: np.ndarray  # (d,) posterior sigma
    kl: float  # KL(q(z|x,y) || p(z|x)) in nats: how unusual the model finds the mask
    reconstruction: np.ndarray  # (H, W) uint8: the decode at the posterior mean
    iou: float  # mean foreground IoU between the mask and its reconstruction


class Session:
    """One model on one device, with at most one image encoded at a time.

    >>> s = Session(load_model("default"))          # doctest: +SKIP
    >>> s.set_image(image)                           # U-Net and prior, once
    >>> hyp = s.sample(16, seed=0)                   # cheap: fcomb only
    >>> s.decode(hyp.z[2])                           # the same map as hyp.labels[2]

    ``device="auto"`` picks CUDA, then MPS, then CPU when the session is made (never at import).
    ``max_pixels`` refuses images too large to encode at once (crop a region of interest).
    Not thread-safe: use one session from one thread at a time.
    """

    def __init__(self, model: ProbUNet, device: str = "auto", max_pixels: int = 2048 * 2048):
        """``model``: a network from :func:`~napari_probunet.model.network.build_model` (or
        :func:`~napari_probunet.model.modelfile.load_model`, which calls it); the session only
        uses its ``encode``, ``posterior_params``, ``fcomb.split()`` and ``config`` (and, in
        the reference path :meth:`decode_unsplit`, ``unet`` and ``fcomb``)."""
        self.device = resolve_device(device)
        # a model being trained (validation) keeps its memory format: changing it would change
        # the training's arithmetic (exact resume, identical weights on every rank)
        in_training = model.training
        self.model = model.to(self.device).eval()
        self.channels_last = self.device.type == "cpu" and not in_training
        if self.channels_last:
            # oneDNN's convolutions run on NHWC without reordering every layer's input: the
            # encode takes ~15-20% less time on AVX2 and on AVX-512 CPUs (docs/performance.md)
            self.model.to(memory_format=torch.channels_last)
        self.config = model.config
        self.max_pixels = max_pixels
        self._fcomb = model.fcomb.split()  # fcomb's weights, split for fast decoding
        self._clear()

    def _clear(self) -> None:
        self._mixture = None
        self._image_shape: tuple[int, int] | None = None
        self._decoder: PreparedDecoder | None = None
        self._prior_mu = self._prior_sigma = None
        self._x: torch.Tensor | None = None
        self.image_signature: str | None = None

    # -- encoding ------------------------------------------------------------------------------
    @property
    def has_image(self) -> bool:
        return self._decoder is not None

    @property
    def image_shape(self) -> tuple[int, int]:
        self._require_image()
        return self._image_shape

    @property
    def model_sha256(self) -> str | None:
        return self.model.source_sha256

    @property
    def model_input(self) -> torch.Tensor:
        """The encoded image as the network received it: preprocessed, padded to the model's
        stride, ``(1, in_channels, H', W')`` on the session's device (channels-last when the
        model is). Read-only by convention: the cached encoding was computed from it."""
        self._require_image()
        return self._x

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """Raw image -> padded network input ``(1, in_channels, Hp, Wp)`` on the session's
        device."""
        a = as_model_image(image, self.config.in_channels)
        h, w = a.shape[:2]
        if h * w > self.max_pixels:
            raise InputError(
                f"the image has {h}x{w} pixels, more than this session encodes at once "
                f"({self.max_pixels} pixels); choose a region of interest around the lesion"
            )
        x = self.config.preprocessing.apply(a)
        s = self.config.stride
        ph, pw = (-h) % s, (-w) % s
        if ph or pw:
            mode = "reflect" if (h > ph and w > pw) else "edge"
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode ``image`` ((H, W) grey or (H, W, 3) RGB, any size and dtype): U-Net and prior
        once, and fcomb's image term (the image's prepared decoder)."""
        self._clear()
        x = self.preprocess(image)
        h, w = np.shape(image)[:2]
        enc = self.model.encode(x)
        feats = enc.features[0, :, :h, :w].permute(1, 2, 0)  # crop the padding: (H, W, c_F)
        decoder = self._fcomb.prepare(feats)  # the image term of fcomb's first layer, once
        prior_mu = enc.prior_mu[0].float()
        prior_sigma = torch.exp(enc.prior_logsigma[0]).float()
        # a damaged model (or an image far outside its range) overflows to NaN/inf; decoded,
        # that is "background everywhere, all hypotheses agree": refuse it, never show it
        checked = (("encoded features", feats), ("encoded features", decoder.base),
                   ("prior mean", prior_mu), ("prior sigma", prior_sigma))
        broken = [what for what, t in checked
                  if not bool(torch.isfinite(t).all())]
        if broken:
            raise InputError(
                f"the model's {' and '.join(dict.fromkeys(broken))} for this image are not "
                "finite numbers (NaN or infinity), so its hypotheses would be meaningless; the "
                "model file is probably damaged (open another model) or the image is far "
                "outside the intensity range the model was trained on"
            )
        self._decoder = decoder
        self._prior_mu = prior_mu
        self._prior_sigma = prior_sigma
        self._mixture = None
        if enc.mixture is not None:  # weights (K,), means (K, d), sigmas (K, d)
            logits, mix_mu, mix_logsigma = (t[0].float() for t in enc.mixture)
            self._mixture = (torch.softmax(logits, dim=-1), mix_mu, torch.exp(mix_logsigma))
        self._x = x
        self._image_shape = (h, w)
        self.image_signature = image_signature(np.asarray(image))

    def _require_image(self) -> None:
        if self._decoder is None:
            raise InputError("no image is set: call set_image(image) first")

    def prior(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sigma of p(z | image), each ``(d,)`` float32 (for a mixture prior: its
        overall mean and standard deviation per axis, the frame the explorer measures in)."""
        self._require_image()
        return self._prior_mu.cpu().numpy().copy(), self._prior_sigma.cpu().numpy().copy()

    def prior_components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weights ``(K,)``, means ``(K, d)`` and sigmas ``(K, d)`` of p(z | image): K
        components for a mixture prior, one (weight 1) for the paper's Gaussian."""
        self._require_image()
        if self._mixture is None:
            mu, sigma = self.prior()
            return np.ones(1, np.float32), mu[None], sigma[None]
        return tuple(t.cpu().numpy().copy() for t in self._mixture)

    # -- decoding ------------------------------------------------------------------------------
    def _decode_batch(self, z: torch.Tensor, want_probs: bool):
        """z ``(n, d)`` -> labels ``(n, P)`` uint8 (and probs ``(n, C, P)``): the image's
        prepared decoder (:meth:`PreparedDecoder.decode`)."""
        return self._decoder.decode(z, want_probs)

    def _to_maps(self, labels: torch.Tensor, probs: torch.Tensor | None):
        h, w = self._image_shape
        lab = labels.cpu().numpy().reshape(-1, h, w)
        pr = None if probs is None else probs.cpu().numpy().reshape(probs.shape[0], -1, h, w)
        return lab, pr

    @torch.inference_mode()
    def sample(self, n: int, seed: int = 0, return_probs: bool = False) -> Hypotheses:
        """``n`` hypotheses with z ~ p(z | image); reproducible for a seed.

        The normal draws come from NumPy's generator for ``seed``, so the first k of
        ``sample(n, seed)`` equal ``sample(k, seed)`` on any device.
        """
        z = torch.from_numpy(self.draw_latents(n, seed)).to(self.device)
        labels, probs = self._decode_batch(z, return_probs)
        lab, pr = self._to_maps(labels, probs)
        return Hypotheses(labels=lab, z=z.cpu().numpy(), seed=int(seed), probs=pr,
                          image_signature=self.image_signature)

    def draw_latents(self, n: int, seed: int = 0) -> np.ndarray:
        """The ``(n, d)`` float32 latents ``sample(n, seed)`` decodes: ``mu + sigma * eps``.

        Callers that decode in pieces (with progress, or cancellable) use this so their
        hypotheses equal :meth:`sample`'s for the same seed.
        """
        self._require_image()
        if int(n) < 1:
            raise InputError(f"the number of samples must be at least 1, got {n}")
        d = self.config.latent_dim
        if self._mixture is not None:
            # one extra normal per sample picks its component (its CDF is uniform), so that
            # the first k latents of n are those of k, as for the Gaussian
            from scipy.special import ndtr

            eps = np.random.default_rng(seed).standard_normal((int(n), d + 1))
            weights, means, sigmas = self.prior_components()
            edges = np.cumsum(weights.astype(np.float64))
            comp = np.minimum(np.searchsorted(edges / edges[-1], ndtr(eps[:, d])), len(edges) - 1)
            return (means[comp] + sigmas[comp] * eps[:, :d]).astype(np.float32)
        eps = np.random.default_rng(seed).standard_normal((int(n), d))
        mu, sigma = self.prior()
        return (mu + sigma * eps.astype(np.float32)).astype(np.float32)

    @torch.inference_mode()
    def decode(self, z: np.ndarray, return_probs: bool = False):
        """Label map(s) for given latent(s): z ``(d,)`` -> ``(H, W)``; ``(k, d)`` -> ``(k, H, W)``.

        With ``return_probs`` returns ``(labels, probs)``, probs ``([k,] classes, H, W)``.
        """
        self._require_image()
        z = np.asarray(z, dtype=np.float32)
        single = z.ndim == 1
        zz = z[None] if single else z
        if zz.ndim != 2 or zz.shape[1] != self.config.latent_dim:
            raise InputError(f"z must have {self.config.latent_dim} entries per latent, got "
                             f"shape {z.shape}")
        labels, probs = self._decode_batch(torch.from_numpy(zz).to(self.device), return_probs)
        lab, pr = self._to_maps(labels, probs)
        if single:
            lab, pr = lab[0], (None if pr is None else pr[0])
        return (lab, pr) if return_probs else lab

    @torch.inference_mode()
    def logits_at(self, z: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        """fcomb's class logits at a few pixels of the current image for many latents:
        z ``(n, d)``, ``pixels`` ``(k, 2)`` integer (row, column) -> ``(n, k, classes)``
        float32 (:meth:`PreparedDecoder.logits_at`: the clicks of
        :mod:`napari_probunet.review.refine` scored under a pool of latents)."""
        self._require_image()
        z = np.asarray(z, dtype=np.float32).reshape(-1, self.config.latent_dim)
        px = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
        h, w = self._image_shape
        if len(px) and not ((px >= 0).all() and (px[:, 0] < h).all() and (px[:, 1] < w).all()):
            raise InputError(f"pixels {px.tolist()} are not all inside the {h}x{w} image")
        index = torch.from_numpy(px[:, 0] * w + px[:, 1]).to(self.device)
        zt = torch.from_numpy(z).to(self.device)
        return self._decoder.logits_at(zt, index).float().cpu().numpy()

    @torch.inference_mode()
    def decode_unsplit(self, z: np.ndarray) -> np.ndarray:
        """Reference path: fcomb as plain convolutions on ``[F; z]``, one latent at a time.

        Same result as :meth:`decode` up to float rounding; kept for tests and the benchmark.
        """
        self._require_image()
        h, w = self._image_shape
        feats = self.model.unet(self._x)
        out = []
        for zi in np.atleast_2d(np.asarray(z, np.float32)):
            logits = self.model.fcomb(feats, torch.from_numpy(zi)[None].to(self.device))
            out.append(logits[0, :, :h, :w].argmax(0).to(torch.uint8).cpu().numpy())
        return np.stack(out)

    @torch.inference_mode()
    def locate(self, mask: np.ndarray) -> Location:
        """Place a segmentation of the current image in latent space with the posterior net."""
        self._require_image()
        m = np.asarray(mask)
        if m.shape != self._image_shape:
            raise InputError(f"the mask has shape {m.shape} but the image is {self._image_shape}")
        if m.dtype.kind == "f" and not np.array_equal(m, np.round(m)):
            raise InputError("the mask must hold class labels (integers), not fractions")
        if m.min() < 0 or m.max() >= self.config.num_classes:
            raise InputError(
                f"the mask holds labels {int(m.min())}..{int(m.max())} but the model has "
                f"{self.config.num_classes} classes (0..{self.config.num_classes - 1})"
            )
        hp, wp = self._x.shape[-2:]
        h, w = self._image_shape
        pad_mode = "edge" if (hp > h or wp > w) else "constant"
        y = np.pad(m.astype(np.int64), ((0, hp - h), (0, wp - w)), mode=pad_mode)
        y_t = torch.from_numpy(y)[None].to(self.device)
        q_mu, q_logsigma = self.model.posterior_params(self._x, y_t)
        if self._mixture is not None:  # no closed form: a fixed, seeded 512-sample estimate
            weights, means, sigmas = self._mixture
            eps = torch.from_numpy(np.random.default_rng(0).standard_normal(
                (512, 1, self.config.latent_dim)).astype(np.float32)).to(self.device)
            kl = kl_to_mixture(q_mu, q_logsigma, torch.log(weights)[None], means[None],
                               torch.log(sigmas)[None], eps=eps)
        else:
            kl = kl_diag_gaussians(q_mu, q_logsigma, self._prior_mu[None],
                                   torch.log(self._prior_sigma)[None])
        mu = q_mu[0].float()
        recon = self.decode(mu.cpu().numpy())
        return Location(
            mu=mu.cpu().numpy(),
            sigma=torch.exp(q_logsigma[0]).float().cpu().numpy(),
            kl=float(kl[0]),
            reconstruction=recon,
            iou=foreground_iou(recon, m, self.config.num_classes),
        )
