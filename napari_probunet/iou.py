"""The IoU of label maps, defined once: per class, then the mean over the foreground classes.

A base module (numpy only, nothing of ours above :mod:`napari_probunet.errors`), so that both
:class:`~napari_probunet.session.Session` (the IoU of a mask with its reconstruction) and the
evaluation metrics (:mod:`napari_probunet.review.metrics`, GED and Hungarian-matched IoU) use
the same rule without the session importing upward. The conventions (``docs/evaluation.md``):

- **Label maps** are integer arrays of class indices ``0..C-1`` (``0`` = background), in
  stacks of shape ``(N, H, W)``. ``num_classes`` counts the background (binary = 2).
- **IoU of two maps** is the mean over the foreground classes ``1..C-1`` of the per-class
  IoU; binary maps therefore use their foreground only. Per class: both maps empty of the
  class gives IoU 1, exactly one empty gives IoU 0 (PHiSeg's rule; it falls out of
  ``IoU = |A∩B| / |A∪B|`` with ``0/0 := 1``).

Vectorisation: for each foreground class the maps are flattened to ``{0, 1}`` float32 rows,
cropped to the bounding box of all foreground in the stacks (pixels outside it contribute
nothing), and the intersections of all pairs come from one matrix product ``A @ B.T``
(``X @ X.T`` for a stack with itself, which BLAS computes as a symmetric rank-k update);
``|A ∪ B| = |A| + |B| - |A ∩ B|``. Counts are exact in float32 below ``2**24`` pixels.
"""

from __future__ import annotations

import numpy as np

from napari_probunet.errors import DataError, UserError

_EXACT_FLOAT32 = 2**24  # integers up to this are exact in float32


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as an int, refused below 2 (it counts the background)."""
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


class Workspace:
    """Reusable float buffer, so a per-image loop does not allocate (and page-fault) anew."""

    def __init__(self) -> None:
        self._buf = np.empty(0, np.float32)

    def rows(self, n: int, p: int) -> np.ndarray:
        """An ``(n, p)`` view of the buffer: float32 while counts stay exact, else float64."""
        dtype = np.float32 if p < _EXACT_FLOAT32 else np.float64
        if self._buf.size < n * p or self._buf.dtype != dtype:
            self._buf = np.empty(max(n * p, 1), dtype)
        return self._buf[: n * p].reshape(n, p)


def crop_to_foreground(*stacks: np.ndarray) -> list[np.ndarray]:
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


def class_iou_from_counts(inter: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """IoU from intersection counts ``(N, M)`` and sizes ``(N,)``, ``(M,)``; NaN where 0/0."""
    inter = inter.astype(np.float64, copy=False)
    union = size_a[:, None].astype(np.float64) + size_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)


def stack_class_iou(
    a: np.ndarray,
    b: np.ndarray | None,
    num_classes: int,
    ws: Workspace | None = None,
    crop: bool = True,
) -> np.ndarray:
    """Per-class IoU ``(C-1, N, M)`` of validated stacks (:func:`as_label_stack`) ``a``
    ``(N, H, W)`` and ``b`` ``(M, H, W)`` (``None``: ``a`` with itself); NaN where both maps
    lack the class.

    ``crop=False`` when the caller has already cropped to the foreground bounding box. No
    validation and no control of BLAS threads: see
    :func:`napari_probunet.review.metrics.pairwise_class_iou` for the checked entry point."""
    ws = ws or Workspace()
    if b is None:
        if crop:
            (a,) = crop_to_foreground(a)
    else:
        if a.shape[1:] != b.shape[1:]:
            raise DataError(f"label maps of different sizes: {a.shape[1:]} vs {b.shape[1:]}")
        if crop:
            a, b = crop_to_foreground(a, b)
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
            out[k] = class_iou_from_counts(gram, sizes, sizes)
        else:
            xa, xb = x[:n], x[n:]
            inter = xa @ xb.T
            out[k] = class_iou_from_counts(inter, xa.sum(axis=1), xb.sum(axis=1))
    return out


def mean_foreground_iou(class_iou: np.ndarray) -> np.ndarray:
    """Mean over foreground classes of per-class IoU ``(C-1, ...)`` -> ``(...)``, with NaN
    (class absent from both maps) counted as IoU 1."""
    return np.nan_to_num(class_iou, nan=1.0).mean(axis=0)


def _foreground_labels(x: np.ndarray, num_classes: int) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)`` uint8/int64 labels: each pixel's class if it is one of
    ``1..C-1``, else 0, whatever the dtype (a float mask of whole numbers, say)."""
    x = np.asarray(x)
    out = np.zeros(x.shape, np.uint8 if num_classes <= 256 else np.int64)
    for c in range(1, num_classes):
        out[x == c] = c
    return out[None]


def foreground_iou(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean foreground IoU of two maps ``(H, W)`` (both empty: 1, one empty: 0).

    The single-pair case of :func:`stack_class_iou`; any numeric dtype is accepted, and a
    label outside ``1..C-1`` counts as background (the session passes a user's mask here)."""
    la, lb = _foreground_labels(a, num_classes), _foreground_labels(b, num_classes)
    return float(mean_foreground_iou(stack_class_iou(la, lb, num_classes))[0, 0])
