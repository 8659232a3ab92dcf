"""Calibration of sampled label maps against known modes (synthetic data), and the oracle.

The conventions of ``docs/evaluation.md`` ("Calibration"): each sample goes to its nearest
mode (lowest ``d = 1 - IoU``, IoU as in :mod:`napari_probunet.iou`; ties to the lowest mode
index); modes that are identical label maps in an image are merged into the first of them
(their probabilities added). See :func:`image_calibration` and :func:`summarize_calibration`.
The **oracle** draws samples from the true mode distribution: the floor of every metric.

Pure numpy (no torch); the sample x mode IoUs come from
:func:`napari_probunet.review.metrics.pairwise_iou`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_probunet.errors import DataError
from napari_probunet.review.metrics import pairwise_iou

#: A sample is "consistent" when its IoU with its nearest mode is at least this.
CONSISTENCY_IOU = 0.9
#: Equal-width bins over [0, 1] of the reliability table.
RELIABILITY_BINS = 10


def nearest_mode(iou_sm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest mode of each sample from the ``(S, M)`` sample x mode IoU matrix.

    Returns ``(index (S,), iou (S,))``: the mode with the highest IoU (lowest ``d``), ties
    going to the lowest mode index, and that IoU.
    """
    idx = np.argmax(iou_sm, axis=1)
    return idx, iou_sm[np.arange(iou_sm.shape[0]), idx]


def canonical_modes(modes: np.ndarray) -> np.ndarray:
    """``(M,)`` index of the first mode identical to each mode of ``(M, H, W)``.

    Two modes that are the same label map cannot be told apart by any sample (the nearest-mode
    rule sends such samples to the first); their probabilities are merged into that one.
    """
    first: dict[bytes, int] = {}
    flat = np.ascontiguousarray(np.asarray(modes).reshape(len(modes), -1))
    return np.array([first.setdefault(row.tobytes(), i) for i, row in enumerate(flat)], np.int64)


def merged_mode_probs(probs: np.ndarray, canonical: np.ndarray) -> np.ndarray:
    """``(M,)`` probabilities with each duplicate mode's mass moved to its canonical mode."""
    return np.bincount(canonical, weights=np.asarray(probs, np.float64), minlength=len(probs))


def flip_object_mask(modes: np.ndarray, original_class: int) -> np.ndarray:
    """``(H, W)`` bool: the object that may flip, i.e. pixels of ``original_class`` in any mode."""
    return (np.asarray(modes) == original_class).any(axis=0)


def flip_counts(
    samples: np.ndarray, modes: np.ndarray, flip_classes: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels sampled as flipped, per flipping class.

    Args:
        samples: ``(S, H, W)`` label maps.
        modes: ``(M, H, W)`` the image's modes (to locate each flipping object).
        flip_classes: ``K`` pairs ``(original class, flipped class)``.

    Returns:
        ``(flipped (K,), total (K,))`` int64: over all samples, the object's pixels labelled
        with the flipped class, and the object's pixel count times ``S``.
    """
    samples = np.asarray(samples)
    flipped = np.zeros(len(flip_classes), np.int64)
    total = np.zeros(len(flip_classes), np.int64)
    for k, (orig, new) in enumerate(flip_classes):
        obj = flip_object_mask(modes, orig)
        flipped[k] = int(np.count_nonzero(samples[:, obj] == new))
        total[k] = int(obj.sum()) * samples.shape[0]
    return flipped, total


@dataclass
class ImageCalibration:
    """Calibration of the samples of one image against its known modes.

    Attributes:
        freq: ``(M,)`` fraction of the samples whose nearest mode is each mode.
        prob: ``(M,)`` true probabilities, duplicates merged into their first copy.
        valid: ``(M,)`` bool, False for modes merged into an earlier identical one.
        n_samples: ``S``.
        n_consistent: samples with IoU >= :data:`CONSISTENCY_IOU` to their nearest mode.
        flipped, flip_total: ``(K,)`` from :func:`flip_counts` (empty arrays without flips).
    """

    freq: np.ndarray
    prob: np.ndarray
    valid: np.ndarray
    n_samples: int
    n_consistent: int
    flipped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    flip_total: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def image_calibration(
    samples: np.ndarray,
    modes: np.ndarray,
    probs: np.ndarray,
    num_classes: int = 2,
    flip_classes: Sequence[tuple[int, int]] | None = None,
    iou_sm: np.ndarray | None = None,
    canonical: np.ndarray | None = None,
) -> ImageCalibration:
    """Assign each sample to its nearest mode and count.

    Args:
        samples: ``(S, H, W)`` label maps.
        modes: ``(M, H, W)`` the true modes; ``probs`` ``(M,)`` their probabilities.
        num_classes: ``C``.
        flip_classes: for flip data, ``(original, flipped)`` per flipping class.
        iou_sm: optional precomputed ``(S, M)`` sample x mode IoU (skips the computation).
        canonical: optional precomputed :func:`canonical_modes`.
    """
    modes = np.asarray(modes)
    if iou_sm is None:
        iou_sm = pairwise_iou(samples, modes, num_classes)
    if canonical is None:
        canonical = canonical_modes(modes)
    n_s, n_m = iou_sm.shape
    idx, best = nearest_mode(iou_sm)
    idx = canonical[idx]  # a tie between identical modes already picks the first; be explicit
    freq = np.bincount(idx, minlength=n_m).astype(np.float64) / max(n_s, 1)
    cal = ImageCalibration(
        freq=freq,
        prob=merged_mode_probs(probs, canonical),
        valid=canonical == np.arange(n_m),
        n_samples=n_s,
        n_consistent=int(np.count_nonzero(best >= CONSISTENCY_IOU)),
    )
    if flip_classes:
        cal.flipped, cal.flip_total = flip_counts(samples, modes, flip_classes)
    return cal


@dataclass
class ReliabilityTable:
    """Binned true probability vs sampled frequency, one entry per (image, mode).

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges over [0, 1]; a probability ``p`` falls in bin
            ``min(floor(p · n_bins), n_bins - 1)``.
        mean_prob, mean_freq: ``(n_bins,)`` means within each bin (NaN for empty bins).
        count: ``(n_bins,)`` entries per bin.
        ece: expected calibration error, ``sum_b count_b / N · |mean_freq_b - mean_prob_b|``.
        mean_abs_err: unbinned ``mean |freq - prob|`` over all entries.
    """

    edges: np.ndarray
    mean_prob: np.ndarray
    mean_freq: np.ndarray
    count: np.ndarray
    ece: float
    mean_abs_err: float

    def to_dict(self) -> dict:
        """JSON-ready form (NaN kept as float; the caller maps it to null)."""
        return {
            "edges": self.edges.tolist(),
            "mean_prob": self.mean_prob.tolist(),
            "mean_freq": self.mean_freq.tolist(),
            "count": self.count.tolist(),
            "ece": self.ece,
            "mean_abs_err": self.mean_abs_err,
        }


def reliability_table(
    probs: np.ndarray, freqs: np.ndarray, n_bins: int = RELIABILITY_BINS
) -> ReliabilityTable:
    """Bin per-(image, mode) true probabilities ``(N,)`` against sampled frequencies ``(N,)``."""
    probs = np.asarray(probs, np.float64).ravel()
    freqs = np.asarray(freqs, np.float64).ravel()
    if probs.shape != freqs.shape:
        raise DataError(f"{probs.size} probabilities but {freqs.size} frequencies")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.floor(probs * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(b, weights=probs, minlength=n_bins) / count
        mean_freq = np.bincount(b, weights=freqs, minlength=n_bins) / count
    n = count.sum()
    gap = np.abs(mean_freq - mean_prob)
    ece = float(np.sum(count[count > 0] * gap[count > 0]) / n) if n else float("nan")
    mae = float(np.mean(np.abs(freqs - probs))) if n else float("nan")
    return ReliabilityTable(edges, mean_prob, mean_freq, count, ece, mae)


def summarize_calibration(
    images: Sequence[ImageCalibration],
    n_bins: int = RELIABILITY_BINS,
    flip_probs: np.ndarray | None = None,
) -> dict:
    """Dataset-wide calibration from per-image results (modes identified by index).

    Returns a dict with
        ``mode_freq``, ``mode_prob``: ``(M,)`` sampled frequency and true probability of each
        mode, each averaged over the images;
        ``mode_freq_max_abs_err``: ``max_m |mode_freq[m] - mode_prob[m]|``;
        ``consistency``: fraction of all samples with IoU >= :data:`CONSISTENCY_IOU` to their
        nearest mode;
        ``reliability``: :class:`ReliabilityTable` over all (image, valid mode) entries;
        ``ece``: its expected calibration error;
        and for flip data ``flip_rate`` ``(K,)``: object pixels sampled as flipped / object
        pixels, pooled over images and samples (with ``flip_prob`` when given).
    """
    if not images:
        raise DataError("no images to summarise")
    n_modes = {len(c.freq) for c in images}
    if len(n_modes) != 1:
        raise DataError(
            f"images have different numbers of modes ({sorted(n_modes)}); dataset-wide mode "
            "frequencies need the same modes in the same order for every image"
        )
    freq = np.stack([c.freq for c in images])
    prob = np.stack([c.prob for c in images])
    valid = np.stack([c.valid for c in images])
    mode_freq, mode_prob = freq.mean(axis=0), prob.mean(axis=0)
    table = reliability_table(prob[valid], freq[valid], n_bins)
    out = {
        "mode_freq": mode_freq,
        "mode_prob": mode_prob,
        "mode_freq_max_abs_err": float(np.max(np.abs(mode_freq - mode_prob))),
        "consistency": (sum(c.n_consistent for c in images)
                        / max(sum(c.n_samples for c in images), 1)),
        "reliability": table,
        "ece": table.ece,
    }
    if images[0].flip_total.size:
        flipped = np.sum([c.flipped for c in images], axis=0)
        total = np.sum([c.flip_total for c in images], axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["flip_rate"] = np.where(total > 0, flipped / np.maximum(total, 1), np.nan)
        if flip_probs is not None:
            out["flip_prob"] = np.asarray(flip_probs, np.float64)
    return out


def calibration(
    samples: Sequence[np.ndarray],
    truths: Sequence,
    num_classes: int = 2,
    n_bins: int = RELIABILITY_BINS,
) -> dict:
    """Dataset-wide calibration of sampled label maps against known mode distributions.

    Args:
        samples: per image ``(S, H, W)`` samples.
        truths: per image a :class:`~napari_probunet.data.ModeTruth` (``modes``, ``probs``,
            and for flip data ``flip_classes``/``flip_probs``); modes in the same order for
            every image.
        num_classes: ``C``.
        n_bins: bins of the reliability table.

    Returns:
        :func:`summarize_calibration`'s dict.
    """
    if len(samples) != len(truths):
        raise DataError(f"{len(samples)} sample sets but {len(truths)} truths")
    images = [
        image_calibration(s, t.modes, t.probs, num_classes,
                          flip_classes=getattr(t, "flip_classes", None))
        for s, t in zip(samples, truths)
    ]
    flip_probs = getattr(truths[0], "flip_probs", None) if len(truths) else None
    return summarize_calibration(images, n_bins, flip_probs)


# -- oracle ------------------------------------------------------------------------------------


def oracle_mode_indices(probs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` mode indices drawn i.i.d. from the true probabilities ``(M,)``."""
    p = np.asarray(probs, np.float64)
    return rng.choice(len(p), size=n, p=p / p.sum())


def oracle_samples(
    modes: np.ndarray, probs: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n, H, W)`` samples from the true distribution: modes ``(M, H, W)`` drawn with ``probs``.

    The oracle is the best any model can do with ``n`` samples: every metric's floor.
    """
    return np.asarray(modes)[oracle_mode_indices(probs, n, rng)]


def expected_oracle_ged(
    d_mg: np.ndarray, d_mm: np.ndarray, d_gg: np.ndarray, probs: np.ndarray, n: int
) -> float:
    """The oracle's expected GED with ``n`` samples on one image, in closed form.

    The oracle's GED is a random number (it depends on which modes its ``n`` draws hit), and a
    ratio to one draw inherits that noise: on 200 ``lesions`` images the oracle's GED(16)
    varies by 10% from one sampling seed to the next. Its expectation over draws, with GED's
    self-pairs included (:func:`~napari_probunet.review.metrics.ged_from_distances`), is
    ``2 sum_m p_m mean_j d(m, j) - (1 - 1/n) sum_mm' p_m p_m' d(m, m') - mean_jj' d(j, j')``.

    Args:
        d_mg: ``(M, R)`` distances mode x grader; ``d_mm``: ``(M, M)`` among the modes;
            ``d_gg``: ``(R, R)`` among the graders (``d = 1 - IoU``).
        probs: ``(M,)`` the modes' true probabilities (normalised here).
        n: the oracle's number of samples.
    """
    p = np.asarray(probs, np.float64)
    p = p / p.sum()
    cross = float(p @ np.asarray(d_mg, np.float64).mean(axis=1))
    within = float(p @ np.asarray(d_mm, np.float64) @ p) * (1.0 - 1.0 / n)
    return 2.0 * cross - within - float(np.mean(d_gg))
