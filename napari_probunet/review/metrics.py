"""Metrics for ambiguous segmentation: GED, Hungarian-matched IoU, per-class IoU, calibration.

Pure numpy/scipy (no torch), vectorised, and written to the conventions of SPEC.md
("Evaluation"); ``docs/evaluation.md`` states each one with its formula. In short:

- **Label maps** are integer arrays of class indices ``0..C-1`` (``0`` = background), in
  stacks of shape ``(N, H, W)``. ``num_classes`` counts the background (binary = 2).
- **IoU of two maps** is the mean over the foreground classes ``1..C-1`` of the per-class
  IoU; binary maps therefore use their foreground only. Per class: both maps empty of the
  class gives IoU 1, exactly one empty gives IoU 0 (PHiSeg's rule; it falls out of
  ``IoU = |A∩B| / |A∪B|`` with ``0/0 := 1``). The distance is ``d = 1 - IoU``.
- **GED**: ``D² = 2·E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]``, each expectation the mean over
  *all ordered pairs*, a mask paired with itself included (``d(x, x) = 0``), as PHiSeg's
  evaluation code does.
- **Hungarian-matched IoU**: each grader is repeated ``k = ceil(S/R)`` times (so when ``S`` is
  a multiple of ``R`` the cost matrix is square, the usual definition); the ``S`` samples are
  matched one-to-one to ``S`` of the ``k·R`` grader copies by ``linear_sum_assignment`` on
  ``1 - IoU``; the score is the mean IoU of the matched pairs. When ``S`` is not a multiple
  of ``R`` the rectangular assignment leaves ``k·R - S`` copies unmatched, which treats the
  graders symmetrically (no grader is favoured by its position in the list).
- **Calibration** (synthetic data, known modes): each sample goes to its nearest mode (lowest
  ``d``, ties to the lowest mode index); modes that are identical label maps in an image are
  merged into the first of them (their probabilities added). See :func:`image_calibration`
  and :func:`summarize_calibration`.

Vectorisation: for each foreground class the maps are flattened to ``{0, 1}`` float32 rows,
cropped to the bounding box of all foreground in the stacks (pixels outside it contribute
nothing), and the intersections of all pairs come from one matrix product ``A @ B.T``
(``X @ X.T`` for a stack with itself, which BLAS computes as a symmetric rank-k update);
``|A ∪ B| = |A| + |B| - |A ∩ B|``. Counts are exact in float32 below ``2**24`` pixels.

Threads: these products are small (a few hundred rows), and a multi-threaded OpenBLAS
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
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_probunet.errors import DataError, UserError

#: A sample is "consistent" when its IoU with its nearest mode is at least this.
CONSISTENCY_IOU = 0.9
#: Equal-width bins over [0, 1] of the reliability table.
RELIABILITY_BINS = 10

_EXACT_FLOAT32 = 2**24  # integers up to this are exact in float32


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


# -- label stacks ------------------------------------------------------------------------------


def _check_num_classes(num_classes: int) -> int:
    num_classes = int(num_classes)
    if num_classes < 2:
        raise UserError(
            f"num_classes={num_classes}: it counts the background too, so binary segmentation "
            "is 2"
        )
    return num_classes


def as_label_stack(x: np.ndarray, num_classes: int, name: str = "masks") -> np.ndarray:
    """Validate label maps and return them as an ``(N, H, W)`` integer stack.

    Args:
        x: ``(H, W)`` (one map) or ``(N, H, W)`` integer or bool class labels.
        num_classes: ``C``; every value must lie in ``0..C-1``.
        name: what ``x`` is, for the error message.

    Raises:
        DataError: wrong rank, non-integer dtype or labels outside ``0..C-1``.
    """
    x = np.asarray(x)
    if x.dtype == np.bool_:
        x = x.view(np.uint8)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise DataError(f"{name} have shape {x.shape}; expected (N, H, W) label maps")
    if not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{name} have dtype {x.dtype}; expected integer class labels")
    if x.size:
        lo = 0 if np.issubdtype(x.dtype, np.unsignedinteger) else int(x.min())
        hi = int(x.max())
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{name} hold labels {lo}..{hi} but there are {num_classes} classes "
                f"(labels 0..{num_classes - 1}); binary masks must be 0/1, not 0/255"
            )
    return x


class _Workspace:
    """Reusable float buffer, so the per-image loop does not allocate (and page-fault) anew."""

    def __init__(self) -> None:
        self._buf = np.empty(0, np.float32)

    def rows(self, n: int, p: int) -> np.ndarray:
        dtype = np.float32 if p < _EXACT_FLOAT32 else np.float64
        if self._buf.size < n * p or self._buf.dtype != dtype:
            self._buf = np.empty(max(n * p, 1), dtype)
        return self._buf[: n * p].reshape(n, p)


def _crop_to_foreground(*stacks: np.ndarray) -> list[np.ndarray]:
    """Crop ``(N_i, H, W)`` stacks to the bounding box of the foreground of all of them."""
    union = np.zeros(stacks[0].shape[1:], dtype=bool)
    for s in stacks:
        if s.shape[0]:
            union |= s.max(axis=0) > 0
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return [s[:, :0, :0] for s in stacks]
    cols = np.flatnonzero(union.any(axis=0))
    return [s[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] for s in stacks]


def _class_iou_from_counts(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """IoU from intersection counts ``(N, M)`` and sizes ``(N,)``, ``(M,)``; NaN where 0/0."""
    inter = inter.astype(np.float64, copy=False)
    union = size_a[:, None].astype(np.float64) + size_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def _pairwise_class_iou(
    a: np.ndarray,
    b: np.ndarray | None,
    num_classes: int,
    ws: _Workspace | None = None,
    crop: bool = True,
) -> np.ndarray:
    """Per-class IoU ``(C-1, N, M)`` of validated stacks; NaN where both maps lack the class.

    ``crop=False`` when the caller has already cropped to the foreground bounding box."""
    ws = ws or _Workspace()
    if b is None:
        if crop:
            (a,) = _crop_to_foreground(a)
    else:
        if a.shape[1:] != b.shape[1:]:
            raise DataError(f"label maps of different sizes: {a.shape[1:]} vs {b.shape[1:]}")
        if crop:
            a, b = _crop_to_foreground(a, b)
    n = a.shape[0]
    m = n if b is None else b.shape[0]
    p = a.shape[1] * a.shape[2]
    out = np.empty((num_classes - 1, n, m), np.float64)
    stack = a if b is None else np.concatenate([a, b])
    flat = stack.reshape(stack.shape[0], p)
    x = ws.rows(stack.shape[0], p)
    for k, c in enumerate(range(1, num_classes)):
        if num_classes == 2:
            np.copyto(x, flat)  # labels are 0/1 already: the foreground indicator
        else:
            np.equal(flat, c, out=x, casting="unsafe")
        if b is None:
            gram = x @ x.T  # symmetric rank-k update
            sizes = np.diagonal(gram).copy()
            out[k] = _class_iou_from_counts(gram, sizes, sizes)
        else:
            xa, xb = x[:n], x[n:]
            inter = xa @ xb.T
            out[k] = _class_iou_from_counts(inter, xa.sum(axis=1), xb.sum(axis=1))
    return out


def mean_foreground_iou(class_iou: np.ndarray) -> np.ndarray:
    """Mean over foreground classes of per-class IoU ``(C-1, ...)`` -> ``(...)``, with NaN
    (class absent from both maps) counted as IoU 1."""
    return np.nan_to_num(class_iou, nan=1.0).mean(axis=0)


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
    num_classes = _check_num_classes(num_classes)
    a = as_label_stack(a, num_classes, "a")
    b = None if b is None else as_label_stack(b, num_classes, "b")
    with single_threaded_blas():
        return _pairwise_class_iou(a, b, num_classes)


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
    num_classes = _check_num_classes(num_classes)
    with single_threaded_blas():
        return _ged_terms_batch(_batch_pairs(samples, graders), num_classes)


def _ged_terms_batch(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> GEDTerms:
    ws = _Workspace()
    rows = []
    counts = []
    for i, (s, y) in enumerate(pairs):
        s = as_label_stack(s, num_classes, f"samples of image {i}")
        y = as_label_stack(y, num_classes, f"graders' masks of image {i}")
        if s.shape[1:] != y.shape[1:]:
            raise DataError(f"image {i}: samples are {s.shape[1:]} but masks are {y.shape[1:]}")
        n_s = s.shape[0]
        s, y = _crop_to_foreground(s, y)
        d = 1.0 - mean_foreground_iou(
            _pairwise_class_iou(np.concatenate([s, y]), None, num_classes, ws, crop=False)
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


# -- calibration -------------------------------------------------------------------------------


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
        "consistency": sum(c.n_consistent for c in images) / max(sum(c.n_samples for c in images), 1),
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
