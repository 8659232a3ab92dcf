"""Metrics for ambiguous segmentation: GED, Hungarian-matched IoU, per-class IoU.

Pure numpy/scipy (no torch), vectorised, and written to the conventions of SPEC.md
("Evaluation"); ``docs/evaluation.md`` states each one with its formula. In short:

- **Label maps** and the **IoU of two maps** are defined once, in :mod:`napari_probunet.iou`
  (mean over the foreground classes ``1..C-1``; per class both empty gives 1, exactly one
  empty gives 0); the functions here are its checked, vectorised entry points. The distance
  is ``d = 1 - IoU``.
- **GED**: ``D² = 2·E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]``, each expectation the mean over
  *all ordered pairs*, a mask paired with itself included (``d(x, x) = 0``), as PHiSeg's
  evaluation code does.
- **Hungarian-matched IoU**: each grader is repeated ``k = ceil(S/R)`` times (so when ``S`` is
  a multiple of ``R`` the cost matrix is square, the usual definition); the ``S`` samples are
  matched one-to-one to ``S`` of the ``k·R`` grader copies by ``linear_sum_assignment`` on
  ``1 - IoU``; the score is the mean IoU of the matched pairs. When ``S`` is not a multiple
  of ``R`` the rectangular assignment leaves ``k·R - S`` copies unmatched, which treats the
  graders symmetrically (no grader is favoured by its position in the list).
- **Calibration** against known modes lives in :mod:`napari_probunet.review.calibration`.

Threads: the IoU products are small (a few hundred rows), and a multi-threaded OpenBLAS
busy-waits when another process (or torch's own thread pool) holds the cores: measured here,
200 images took 0.21 s single-threaded but 5-13 s with two BLAS threads next to a busy
process. The entry points therefore run BLAS single-threaded for their duration
(:func:`single_threaded_blas`; with ``threadpoolctl`` when installed, else OpenBLAS's own
thread-local setting through ``ctypes`` on Linux; a no-op where neither is available).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_probunet.errors import DataError
from napari_probunet.iou import (
    Workspace,
    as_label_stack,
    check_num_classes,
    crop_to_foreground,
    mean_foreground_iou,
    stack_class_iou,
)

# -- BLAS threads ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _openblas_local_setters() -> tuple[Callable[[int], int], ...]:
    """``openblas_set_num_threads_local`` of every OpenBLAS loaded in this process (Linux)."""
    if not sys.platform.startswith("linux"):
        return ()
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()})
    except OSError:
        return ()
    setters = []
    for path in paths:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        setters.append(fn)
    return tuple(setters)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS single-threaded in this block (see the module notes on threads)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    setters = _openblas_local_setters()
    previous = [fn(1) for fn in setters]  # thread-local: other threads are not affected
    try:
        yield
    finally:
        for fn, n in zip(setters, previous):
            fn(n)


# -- pairwise IoU ------------------------------------------------------------------------------


def pairwise_class_iou(
    a: np.ndarray, b: np.ndarray | None = None, num_classes: int = 2
) -> np.ndarray:
    """Per-class IoU of every pair of maps.

    Args:
        a: ``(N, H, W)`` label maps (or one ``(H, W)`` map).
        b: ``(M, H, W)`` label maps; ``None`` pairs ``a`` with itself (faster: symmetric).
        num_classes: ``C`` (background included).

    Returns:
        ``(C-1, N, M)`` float64: entry ``[c-1, i, j]`` is the IoU of class ``c`` between
        ``a[i]`` and ``b[j]``; NaN where neither map has class ``c``, 0 where exactly one has.
    """
    num_classes = check_num_classes(num_classes)
    a = as_label_stack(a, num_classes, "a")
    b = None if b is None else as_label_stack(b, num_classes, "b")
    with single_threaded_blas():
        return stack_class_iou(a, b, num_classes)


def pairwise_iou(a: np.ndarray, b: np.ndarray | None = None, num_classes: int = 2) -> np.ndarray:
    """IoU of every pair: ``(N, H, W) x (M, H, W) -> (N, M)``, the mean over foreground classes
    (empty vs empty = 1, exactly one empty = 0, per class). ``b=None`` pairs ``a`` with itself."""
    return mean_foreground_iou(pairwise_class_iou(a, b, num_classes))


def pairwise_distance(
    a: np.ndarray, b: np.ndarray | None = None, num_classes: int = 2
) -> np.ndarray:
    """GED's distance ``d = 1 - IoU`` of every pair: ``(N, H, W) x (M, H, W) -> (N, M)``."""
    return 1.0 - pairwise_iou(a, b, num_classes)


def per_class_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class IoU of one map against another: ``(H, W), (H, W) -> (C-1,)``.

    Entry ``c-1`` is class ``c``'s IoU; NaN where both maps lack the class (leave it out of
    averages with ``np.nanmean``), 0 where exactly one has it.
    """
    return pairwise_class_iou(np.asarray(pred)[None], np.asarray(target)[None], num_classes)[
        :, 0, 0
    ]


# -- generalized energy distance ---------------------------------------------------------------


def ged_from_distances(
    d_sy: np.ndarray, d_ss: np.ndarray, d_yy: np.ndarray
) -> tuple[float, float, float, float]:
    """GED from precomputed distance matrices.

    Args:
        d_sy: ``(S, R)`` distances sample x grader.
        d_ss: ``(S, S)`` distances among samples (diagonal = self-pairs, 0).
        d_yy: ``(R, R)`` distances among graders.

    Returns:
        ``(ged, cross, within_samples, within_graders)``: ``D² = 2·cross - within_samples -
        within_graders``, each term the mean over all ordered pairs, self-pairs included.
    """
    cross, ss, yy = float(d_sy.mean()), float(d_ss.mean()), float(d_yy.mean())
    return 2.0 * cross - ss - yy, cross, ss, yy


@dataclass
class GEDTerms:
    """GED of a batch of images and its three terms, each ``(B,)`` float64.

    ``within_samples`` and ``within_graders`` include self-pairs (as GED does);
    :attr:`sample_diversity` is the mean ``d`` over *distinct* sample pairs.
    """

    ged: np.ndarray
    cross: np.ndarray
    within_samples: np.ndarray
    within_graders: np.ndarray
    n_samples: np.ndarray
    n_graders: np.ndarray

    @property
    def sample_diversity(self) -> np.ndarray:
        """``(B,)`` mean ``d`` over ordered pairs of distinct samples (NaN for one sample)."""
        s = self.n_samples.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s > 1, self.within_samples * s / np.maximum(s - 1, 1), np.nan)

    @property
    def grader_diversity(self) -> np.ndarray:
        """``(B,)`` mean ``d`` over ordered pairs of distinct graders (NaN for one grader)."""
        r = self.n_graders.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(r > 1, self.within_graders * r / np.maximum(r - 1, 1), np.nan)


def _batch_pairs(samples, graders) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(samples) != len(graders):
        raise DataError(f"{len(samples)} sample sets but {len(graders)} grader sets")
    return list(zip(samples, graders))


def ged_terms_batch(
    samples: np.ndarray | Sequence[np.ndarray],
    graders: np.ndarray | Sequence[np.ndarray],
    num_classes: int = 2,
) -> GEDTerms:
    """GED of many images, with its terms.

    Args:
        samples: ``(B, S, H, W)`` model samples, or a sequence of ``B`` arrays ``(S_b, H_b, W_b)``
            (counts and sizes may differ between images).
        graders: ``(B, R, H, W)`` graders' masks, or a sequence of ``(R_b, H_b, W_b)``.
        num_classes: ``C`` (background included).

    Each image costs one float32 symmetric matrix product of its ``S + R`` maps (cropped to
    their foreground bounding box) per foreground class; one buffer is reused for all images.
    """
    num_classes = check_num_classes(num_classes)
    with single_threaded_blas():
        return _ged_terms_batch(_batch_pairs(samples, graders), num_classes)


def _ged_terms_batch(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> GEDTerms:
    ws = Workspace()
    rows = []
    counts = []
    for i, (s, y) in enumerate(pairs):
        s = as_label_stack(s, num_classes, f"samples of image {i}")
        y = as_label_stack(y, num_classes, f"graders' masks of image {i}")
        if s.shape[1:] != y.shape[1:]:
            raise DataError(f"image {i}: samples are {s.shape[1:]} but masks are {y.shape[1:]}")
        n_s = s.shape[0]
        s, y = crop_to_foreground(s, y)
        d = 1.0 - mean_foreground_iou(
            stack_class_iou(np.concatenate([s, y]), None, num_classes, ws, crop=False)
        )
        rows.append(ged_from_distances(d[:n_s, n_s:], d[:n_s, :n_s], d[n_s:, n_s:]))
        counts.append((n_s, y.shape[0]))
    arr = np.asarray(rows, np.float64).reshape(-1, 4)
    cnt = np.asarray(counts, np.int64).reshape(-1, 2)
    return GEDTerms(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], cnt[:, 0], cnt[:, 1])


def ged_batch(
    samples: np.ndarray | Sequence[np.ndarray],
    graders: np.ndarray | Sequence[np.ndarray],
    num_classes: int = 2,
) -> np.ndarray:
    """Squared generalized energy distance per image: ``(B, S, H, W), (B, R, H, W) -> (B,)``.

    See :func:`ged_terms_batch` (which also returns the three terms); equal to :func:`ged`
    applied image by image.
    """
    return ged_terms_batch(samples, graders, num_classes).ged


def ged(samples: np.ndarray, graders: np.ndarray, num_classes: int = 2) -> float:
    """Squared generalized energy distance of one image.

    ``D² = 2·E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]``, ``d = 1 - IoU``, each expectation the mean
    over all ordered pairs including a mask with itself.

    Args:
        samples: ``(S, H, W)`` model samples.
        graders: ``(R, H, W)`` graders' masks.
        num_classes: ``C`` (background included).
    """
    return float(ged_batch([samples], [graders], num_classes)[0])


def _benchmark_masks(
    rng: np.random.Generator, n: int, size: int, centre: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """``(n, size, size)`` uint8 discs around ``centre``: random jitter and radius, ~10% empty."""
    cy = centre[0] + rng.normal(0, size / 40, n)
    cx = centre[1] + rng.normal(0, size / 40, n)
    r = rng.uniform(size / 16, size / 5, n) * (rng.random(n) > 0.1)
    inside = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    return (inside < (r**2)[:, None, None]).astype(np.uint8)


def ged_benchmark_seconds(
    n_images: int = 1000, n_samples: int = 100, n_graders: int = 4, size: int = 128, seed: int = 0
) -> float:
    """Seconds :func:`ged_batch` takes on ``n_images`` images of ``n_samples`` samples and
    ``n_graders`` masks at ``size x size``, binary.

    The masks are plausible lesion-like discs (per image a random centre; per mask a jittered
    centre and a random radius, about 10% empty) so the IoUs are non-trivial. To keep memory
    small, up to 64 distinct images are generated and the batch cycles through them (64 images
    of 104 maps are ~100 MB, larger than any cache, so repetition gives no speed-up). Only
    :func:`ged_batch` is timed.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    pool_s, pool_y = [], []
    for _ in range(min(n_images, 64)):
        centre = rng.uniform(size * 0.3, size * 0.7, 2)
        pool_s.append(_benchmark_masks(rng, n_samples, size, centre, yy, xx))
        pool_y.append(_benchmark_masks(rng, n_graders, size, centre, yy, xx))
    samples = [pool_s[i % len(pool_s)] for i in range(n_images)]
    graders = [pool_y[i % len(pool_y)] for i in range(n_images)]
    ged_batch(samples[:2], graders[:2], 2)  # warm up BLAS threads
    start = time.perf_counter()
    ged_batch(samples, graders, 2)
    return time.perf_counter() - start


# -- Hungarian-matched IoU ---------------------------------------------------------------------


def hungarian_from_iou(iou_sy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match ``S`` samples to graders repeated ``k = ceil(S/R)`` times, maximising total IoU.

    Args:
        iou_sy: ``(S, R)`` IoU of each sample with each grader.

    Returns:
        ``(sample_index, grader_index, iou)``, each ``(S,)`` (every sample is matched once;
        ``grader_index`` is in ``0..R-1``): ``linear_sum_assignment`` on ``1 - IoU`` tiled to
        ``(S, k·R)``.
    """
    n_s, n_r = iou_sy.shape
    if n_s == 0 or n_r == 0:
        raise DataError("Hungarian matching needs at least one sample and one grader")
    k = math.ceil(n_s / n_r)
    rows, cols = linear_sum_assignment(np.tile(1.0 - iou_sy, (1, k)))
    cols = cols % n_r
    return rows, cols, iou_sy[rows, cols]


def hungarian_iou(samples: np.ndarray, graders: np.ndarray, num_classes: int = 2) -> float:
    """Hungarian-matched IoU of one image: ``(S, H, W), (R, H, W) -> float``.

    Graders are repeated ``ceil(S/R)`` times, samples matched one-to-one to grader copies by
    ``linear_sum_assignment`` on ``1 - IoU``; the mean IoU of the ``S`` matched pairs.
    """
    return float(hungarian_from_iou(pairwise_iou(samples, graders, num_classes))[2].mean())


def hungarian_iou_batch(
    samples: np.ndarray | Sequence[np.ndarray],
    graders: np.ndarray | Sequence[np.ndarray],
    num_classes: int = 2,
) -> np.ndarray:
    """:func:`hungarian_iou` per image: ``(B, S, H, W), (B, R, H, W) -> (B,)``."""
    pairs = _batch_pairs(samples, graders)
    return np.array([hungarian_iou(s, y, num_classes) for s, y in pairs], np.float64)
