"""Leaks: pieces of a segmentation that touch no radiologist's outline (no Qt, no torch).

A hypothesis on a small nodule that runs along an adjacent vessel, or adds a second blob on
one, has a connected piece where no radiologist drew anything. Counted per mask
(``docs/evaluation.md``, "Leaks"):

- a **piece** is a connected component of a mask's foreground (8-connectivity in 2D,
  26-connectivity in 3D);
- the **reference** is the union of the radiologists' masks, dilated by ``margin`` pixels
  (default 2: a piece that grazes an outline is not a leak);
- a mask **leaks** when one of its pieces does not touch the reference. Empty masks neither
  leak nor count.

For the model's hypotheses the reference is all the radiologists' masks; for a radiologist's
own mask, the *other* radiologists' masks (so the radiologists' share is the floor the model
is compared with: a piece one radiologist drew where none of the others did).
"""

from __future__ import annotations

import numpy as np

#: pixels the radiologists' union is dilated by before pieces are tested against it
MARGIN = 2


def _dilated(union: np.ndarray, margin: int) -> np.ndarray:
    from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

    if margin <= 0 or not union.any():
        return union
    structure = ndimage.generate_binary_structure(union.ndim, union.ndim)
    return ndimage.binary_dilation(union, structure=structure, iterations=int(margin))


def leaks(mask: np.ndarray, reference: np.ndarray) -> bool:
    """Whether a non-empty ``mask`` has a piece that does not touch ``reference`` (bool, the
    same shape, already dilated)."""
    from scipy import ndimage

    fg = np.asarray(mask) > 0
    structure = ndimage.generate_binary_structure(fg.ndim, fg.ndim)
    pieces, count = ndimage.label(fg, structure=structure)
    if count == 0:
        return False
    touched = np.unique(pieces[reference & fg])
    return int(np.count_nonzero(touched)) < count


def leak_counts(masks: np.ndarray, radiologists: np.ndarray, margin: int = MARGIN
                ) -> tuple[int, int]:
    """``(leaking, non-empty)`` among ``masks`` ``(k, ...)`` against the union of
    ``radiologists`` ``(R, ...)`` dilated by ``margin``."""
    reference = _dilated(np.asarray(radiologists).reshape(len(radiologists), *masks.shape[1:])
                         .any(axis=0), margin)
    nonempty = [m for m in masks if np.any(m)]
    return sum(leaks(m, reference) for m in nonempty), len(nonempty)


def radiologist_leak_counts(radiologists: np.ndarray, margin: int = MARGIN
                            ) -> tuple[int, int]:
    """``(leaking, non-empty)`` among the radiologists' masks ``(R, ...)``, each against the
    others' union dilated by ``margin``."""
    radiologists = np.asarray(radiologists) > 0
    leaking = nonempty = 0
    for r in range(len(radiologists)):
        if not radiologists[r].any():
            continue
        others = np.delete(radiologists, r, axis=0).any(axis=0)
        nonempty += 1
        leaking += leaks(radiologists[r], _dilated(others, margin))
    return leaking, nonempty
