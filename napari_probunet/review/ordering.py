"""Orders of a set of hypotheses for showing them side by side (the review's gallery).

:func:`similarity_order` lays ``N`` label maps out in one line so that similar maps sit next to
each other: identical maps are neighbours, the empty maps form one group at the start, and the
line runs from small, rare shapes to the large ones. It is the leaf order of an average-linkage
clustering on the distance ``1 - IoU`` (:func:`napari_probunet.review.metrics.pairwise_iou`,
the project's one IoU: two empty maps are identical, IoU 1), with the leaves ordered so that
neighbours are as similar as possible (scipy's optimal leaf ordering), turned so that it starts
at the smaller end. Numpy and scipy only: no Qt, no napari.
"""

from __future__ import annotations

import numpy as np

from napari_probunet.review.metrics import pairwise_iou

#: the orders the gallery offers: ``"seed"`` (hypothesis 1, 2, … as drawn) and ``"similarity"``
ORDERS = ("seed", "similarity")


def similarity_order(labels: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Indices of ``labels`` (``(N, H, W)`` label maps) with similar maps next to each other.

    Deterministic for the same maps. Identical maps come out adjacent; the first map of the
    order is not larger (in foreground pixels) than the last, so empty maps lead.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n <= 2:
        areas = np.count_nonzero(labels.reshape(n, -1), axis=1)
        return np.argsort(areas, kind="stable")
    iou = pairwise_iou(labels, None, num_classes)
    dist = np.clip(1.0 - (iou + iou.T) / 2.0, 0.0, 1.0)
    np.fill_diagonal(dist, 0.0)
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering  # lazy
    from scipy.spatial.distance import squareform

    condensed = squareform(dist, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    order = leaves_list(tree)
    areas = np.count_nonzero(labels.reshape(n, -1), axis=1)
    if (areas[order[0]], order[0]) > (areas[order[-1]], order[-1]):
        order = order[::-1]
    return np.asarray(order, dtype=np.intp)


def ordered(labels: np.ndarray, order: str, num_classes: int = 2) -> np.ndarray:
    """The indices of ``labels`` in ``order`` (one of :data:`ORDERS`)."""
    if order == "seed":
        return np.arange(len(labels))
    if order == "similarity":
        return similarity_order(labels, num_classes)
    raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
