"""What a model expects, and whether an image looks like it: the model's *domain*.

A model file records its domain in its configuration (``ModelConfig.domain``, a dict written by
:meth:`Domain.to_dict`): the modality, the intensity convention its inputs follow, a summary of
the training data, and a **reference** of intensity features measured on training images.
:func:`check_image` compares an image with it and returns plain warnings (never an error: the
clinician decides):

- a colour image given to a grey model;
- an image much larger than the model's input (the model then sees the whole image at once,
  where it was trained on crops of ``input_size``);
- intensity statistics unlike any training image's.

Features (:data:`FEATURES`) are computed on the image **after the model's preprocessing**, so
they describe what the network sees: for the LIDC model, which stretches each crop's own range
to 0..1, a crop in Hounsfield units and its 8-bit version give the same features. They are the
mean and standard deviation, the mean absolute difference of neighbouring pixels at strides 1,
2, 4 and 8 (texture at four scales), the centre's mean minus the whole mean, the square root of
the share of pixels in each of 16 bins of the 0..1 range (the histogram's shape), the 50/90/99th
percentiles of the gradient magnitude, the mean |Laplacian| over the mean gradient (noise versus
edges), and the square roots of the shares of pixels at the range's ends (clipping).

The test: standardise the features (training mean and scale), take the mean Euclidean distance
to the ``k`` nearest of the ``reference`` training images, and flag the image when it exceeds
``threshold``: the 97.5th percentile of that distance over training images of *other patients*
than the reference's (neighbouring slices of one patient are near-copies, so a threshold set on
the reference's own patients would be far too tight), so about 2.5% of in-domain images are
flagged by design. The percentile was chosen on the LIDC validation patients and a development
set of foreign crops (docs/model-card-lidc.md, "Domain check"): at the 99th, 82% of foreign
images were flagged; at the 97.5th, 94%, with 3% of validation slices. A nearest-neighbour
distance follows the training data's many clusters (nodules by the pleura, in the middle of
the lung, large masses), where a single Gaussian (a Mahalanobis distance) was tried first and
flagged only 40% of foreign images.

numpy only: no torch, napari or Qt. The command line, ``probunet domain``, is
:mod:`napari_probunet.cli.domain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_probunet.errors import DataError
from napari_probunet.model.images import as_model_image

#: names of the intensity features, in order
FEATURES = ("mean", "std", "texture_1", "texture_2", "texture_4", "texture_8", "centre_minus_mean",
            *(f"sqrt_hist_{i:02d}" for i in range(16)),
            "gradient_p50", "gradient_p90", "gradient_p99", "laplacian_over_gradient",
            "sqrt_share_at_min", "sqrt_share_at_max")
#: an image side above this multiple of the input size is "much larger"
SIZE_FACTOR = 2.0
#: share of in-domain (training) images above the threshold
FLAG_QUANTILE = 0.975
#: neighbours averaged in the distance
K_NEIGHBOURS = 5


def intensity_features(unit: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of one preprocessed image whose nominal range is 0..1 (``(H, W)``,
    or ``(H, W, C)``, averaged over channels). Returns ``(len(FEATURES),)`` float64."""
    u = np.asarray(unit, np.float64)
    if u.ndim == 3:
        u = u.mean(axis=-1)
    hist = np.histogram(np.clip(u, 0.0, 1.0), bins=16, range=(0.0, 1.0))[0] / max(u.size, 1)
    feats = [u.mean(), u.std()]
    for stride in (1, 2, 4, 8):
        a = u[::stride, ::stride]
        dy = np.abs(np.diff(a, axis=0)).mean() if a.shape[0] > 1 else 0.0
        dx = np.abs(np.diff(a, axis=1)).mean() if a.shape[1] > 1 else 0.0
        feats.append(0.5 * (dy + dx))
    h, w = u.shape
    centre = u[h // 4: h - h // 4 or h, w // 4: w - w // 4 or w]
    feats.append(centre.mean() - u.mean())
    extra = [0.0, 0.0, 0.0, 0.0]
    if h > 2 and w > 2:
        gradient = np.hypot(np.diff(u, axis=0)[:, :-1], np.diff(u, axis=1)[:-1])
        laplacian = (4 * u[1:-1, 1:-1] - u[:-2, 1:-1] - u[2:, 1:-1] - u[1:-1, :-2]
                     - u[1:-1, 2:])
        extra = [*np.percentile(gradient, [50, 90, 99]),
                 np.abs(laplacian).mean() / (gradient.mean() + 1e-6)]
    at_ends = [np.sqrt((u <= 0.0).mean()), np.sqrt((u >= 1.0).mean())]
    return np.concatenate([feats, np.sqrt(hist), extra, at_ends])


def model_input_unit(config, image: np.ndarray) -> np.ndarray:
    """The image as the network sees it (after the model's preprocessing), shifted to 0..1."""
    a = as_model_image(image, config.in_channels)
    return config.preprocessing.apply(a) + 0.5


@dataclass
class Domain:
    """What a model was trained on and expects (saved in the model file's configuration).

    modality: e.g. ``"CT"``, ``"synthetic"``.
    description: one line a clinician reads next to the model's name.
    intensity: the intensity convention of the inputs, in words (and how to match it).
    training_data: where the training images came from (data spec, counts).
    statistics: a readable summary (intensity percentiles of the training images, ...).
    features: the feature names the reference was measured with (:data:`FEATURES`).
    feature_mean, feature_scale: standardisation of the features (training images).
    reference: standardised features of ``n_reference`` training images.
    k: neighbours averaged in the distance; threshold: the distance above which an image is
        flagged (:data:`FLAG_QUANTILE` of other training images' distances).
    """
    modality: str = ""
    description: str = ""
    intensity: str = ""
    training_data: str = ""
    statistics: dict[str, Any] = field(default_factory=dict)
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    feature_mean: list[float] = field(default_factory=list)
    feature_scale: list[float] = field(default_factory=list)
    reference: list[list[float]] = field(default_factory=list)
    k: int = K_NEIGHBOURS
    threshold: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Domain | None:
        """The domain of a configuration dict; ``None`` where the model records none."""
        if not d:
            return None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def has_reference(self) -> bool:
        return bool(self.reference) and list(self.features) == list(FEATURES) \
            and self.problem is None

    @property
    def problem(self) -> str | None:
        """Why the recorded reference cannot be compared with (a damaged or edited record:
        widths that differ from the features', values that are not finite numbers), or
        None."""
        width = len(FEATURES)
        try:
            ref = np.asarray(self.reference, np.float64)
            mean = np.asarray(self.feature_mean, np.float64)
            scale = np.asarray(self.feature_scale, np.float64)
            threshold, k = float(self.threshold), int(self.k)
        except (TypeError, ValueError, OverflowError):
            return "its reference holds something other than numbers"
        if ref.ndim != 2 or ref.shape[1] != width or mean.shape != (width,) \
                or scale.shape != (width,):
            return (f"its reference is {'x'.join(map(str, ref.shape))} and its mean/scale "
                    f"{mean.size}/{scale.size} wide, not {width} features")
        if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(mean))
                and np.all(np.isfinite(scale)) and np.all(scale > 0)
                and np.isfinite(threshold) and k >= 1):
            return "its reference, scale, threshold or k is not a usable number"
        return None

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mean distance to the ``k`` nearest reference images, for ``(n, F)`` features."""
        ref = np.asarray(self.reference, np.float64)
        centred = np.atleast_2d(features) - np.asarray(self.feature_mean)
        z = centred / np.asarray(self.feature_scale)
        d2 = (z ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None, :] - 2.0 * z @ ref.T
        d = np.sqrt(np.maximum(d2, 0.0))
        k = min(self.k, ref.shape[0])
        return np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1).mean(axis=1)

    def summary(self) -> str:
        """One line for the widget and ``probunet info``."""
        return " · ".join(p for p in (self.description, self.intensity) if p)


def fit_domain(units: Sequence[np.ndarray], groups: Sequence | None = None,
               n_reference: int = 3000, seed: int = 0, **fields_: Any) -> Domain:
    """Measure the reference of :func:`check_image` on training images (preprocessed, 0..1).

    The images are split by ``groups`` (patients; each image its own group if ``None``) into
    two halves, chosen with ``seed``: up to ``n_reference`` images of the first half become
    the reference, the second half sets the threshold. ``fields_`` fill the descriptive
    fields (modality, description, ...).
    """
    feats = np.stack([intensity_features(u) for u in units])
    n = len(feats)
    if n < 2 * K_NEIGHBOURS + 10:
        raise DataError(f"the domain needs at least {2 * K_NEIGHBOURS + 10} training images "
                        f"to measure; got {n}: give the model's whole training data (--data)")
    rng = np.random.default_rng(seed)
    keys = np.array([f"i{i}" for i in range(n)] if groups is None
                    else [f"g{g}" if g is not None else f"i{i}" for i, g in enumerate(groups)])
    unique = np.unique(keys)
    first = set(rng.permutation(unique)[: max(1, len(unique) // 2)].tolist())
    in_first = np.array([k in first for k in keys])
    ref_idx = rng.permutation(np.flatnonzero(in_first))[:n_reference]
    held = np.flatnonzero(~in_first)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale[scale < 1e-9] = 1.0
    domain = Domain(feature_mean=mean.tolist(), feature_scale=scale.tolist(),
                    reference=np.round((feats[ref_idx] - mean) / scale, 3).tolist(), **fields_)
    domain.threshold = float(np.quantile(domain.distances(feats[held]), FLAG_QUANTILE))
    return domain


@dataclass
class DomainCheck:
    """What :func:`check_image` found: ``warnings`` (empty when the image looks in-domain)."""
    warnings: list[str]
    distance: float | None = None
    threshold: float | None = None

    @property
    def ok(self) -> bool:
        return not self.warnings


def check_image(config, image: np.ndarray) -> DomainCheck:
    """Compare ``image`` (what the model will be given: the region of interest or the whole
    image, raw intensities) with the model's domain. Never raises for an unusual image."""
    domain = Domain.from_dict(getattr(config, "domain", None))
    a = np.asarray(image)
    warnings: list[str] = []
    trained_on = f" ({domain.modality})" if domain and domain.modality else ""
    if config.in_channels == 1 and a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3].astype(np.float32)
        if not (np.allclose(rgb[..., 0], rgb[..., 1]) and np.allclose(rgb[..., 0], rgb[..., 2])):
            warnings.append(f"a colour image, but this model was trained on grey images"
                            f"{trained_on}; it sees the image converted to grey.")
    context = getattr(config, "slice_context", 0)
    if context and a.ndim == 2:
        warnings.append(
            f"this model also sees {context} neighbouring slice(s) on each side, but it is "
            "given this slice alone (repeated in their place; the review does not pass a "
            "scan's neighbours yet): expect the figures of 'probunet evaluate --neighbours "
            "none' in its model card.")
    h, w = a.shape[:2]
    size = config.input_size
    if max(h, w) > SIZE_FACTOR * size:
        warnings.append(
            f"the image is {w}x{h} pixels, but this model was trained on {size}x{size} crops; "
            f"choose a region of interest (click on the lesion) for a crop of its size.")
    if domain is not None and domain.reference and domain.problem is not None:
        warnings.append(f"the model's domain record is damaged ({domain.problem}), so the "
                        "intensity check is off; record it again with 'probunet domain'.")
    if domain is None or not domain.has_reference:
        return DomainCheck(warnings)
    try:
        unit = model_input_unit(config, a)
    except Exception:  # the session reports unusable input itself
        return DomainCheck(warnings)
    distance = float(domain.distances(intensity_features(unit))[0])
    if distance > domain.threshold:
        what = domain.description or "its training data"
        warnings.append(
            f"the intensities look unlike the training data (distance {distance:.1f}, "
            f"threshold {domain.threshold:.1f}): this model was trained on {what}. Its "
            "hypotheses may mean little here.")
    return DomainCheck(warnings, distance, domain.threshold)


# -- measuring a model's domain on its training data ---------------------------------------------

def fit_model_domain(config, cases, max_images: int = 8000, seed: int = 0,
                     training_data: str = "") -> dict[str, Any]:
    """The domain dict of ``config`` (its descriptive fields kept) measured on ``cases``.

    Uses at most ``max_images`` cases (chosen with ``seed``), images taken as stored (the
    model's preprocessing applied, as in :func:`check_image`). Also records the intensity
    percentiles of the raw training images in ``statistics``.
    """
    n = len(cases)
    if n == 0:
        raise DataError("no training images to measure the domain on; give the model's "
                        "training data (--data)")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(n, max_images), replace=False))
    images = [cases[int(i)].image for i in idx]
    group_ids = getattr(cases, "group_ids", None)
    groups = ([group_ids[int(i)] for i in idx] if group_ids is not None
              else [cases[int(i)].group_id for i in idx])
    raw = np.concatenate([np.asarray(im, np.float64).ravel()[::7] for im in images])
    described = {k: v for k, v in (getattr(config, "domain", None) or {}).items()
                 if k in ("modality", "description", "intensity", "training_data")}
    stats = {
        "images_measured": len(images),
        "image_size": "x".join(map(str, np.shape(images[0])[:2])),
        "raw_intensity_percentiles": {str(q): round(float(v), 3) for q, v in
                                      zip((0, 1, 5, 25, 50, 75, 95, 99, 100),
                                          np.percentile(raw, [0, 1, 5, 25, 50, 75, 95, 99, 100]))},
    }
    domain = fit_domain([model_input_unit(config, im) for im in images], groups=groups,
                        seed=seed, statistics=stats, **described)
    if training_data and not domain.training_data:
        domain.training_data = training_data
    return domain.to_dict()
