"""Neighbouring slices as input channels (2.5D): a slice and the ``c`` slices each side of it.

A model with ``slice_context = c`` (:class:`~napari_probunet.model.config.ModelConfig`) takes
``2c + 1`` channels: the slices ``i - c .. i + c`` of the scan, the slice to segment in the
middle. Whether a radiologist outlined a slice is mostly a question of where the nodule
starts and ends, which one slice cannot show; its neighbours can.

Where a neighbour is not there (the first or last slice of a nodule in the LIDC-IDRI slices
set, or a single 2D image) the nearest slice toward the middle stands in for it, so a single
image is the slice repeated. In the slices set a missing neighbour marks the end of a nodule,
a hint a whole scan never gives (its neighbours are always there): training therefore also
replaces present neighbours at random (:func:`drop_neighbours`), and the evaluation can be
restricted to the slices whose neighbours are all there (:func:`interior`) or run without
any (``neighbours="none"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_probunet.data.case import Case

NEIGHBOURS = ("data", "none")


def _slice_keys(cases: Sequence) -> list[tuple[str, int] | None]:
    """``(nodule id, slice number)`` of every case, ``None`` where a case has no such ids."""
    if hasattr(cases, "ids_of"):
        nodules = cases.ids_of("nodule")
        slices = [s.rsplit("slice-", 1)[-1] for s in cases.ids_of("slice")]
    else:
        ids = [case.ids or {} for case in cases]
        nodules = [i.get("nodule") for i in ids]
        slices = [i.get("slice") for i in ids]
    keys: list[tuple[str, int] | None] = []
    for nodule, number in zip(nodules, slices):
        try:
            keys.append((str(nodule), int(number)) if nodule is not None else None)
        except (TypeError, ValueError):
            keys.append(None)
    return keys


def neighbour_table(cases: Sequence, context: int) -> np.ndarray:
    """``(n, 2c + 1)`` positions in ``cases`` of slices ``i - c .. i + c`` of each case's
    nodule; a missing one is the nearest present position toward the middle (the case
    itself at worst)."""
    keys = _slice_keys(cases)
    where = {k: i for i, k in enumerate(keys) if k is not None}
    table = np.empty((len(keys), 2 * context + 1), np.int64)
    for i, key in enumerate(keys):
        for side in (-1, 1):
            last, gap = i, key is None
            for step in range(context + 1):
                j = None if gap or step == 0 else where.get((key[0], key[1] + side * step))
                gap = gap or (step > 0 and j is None)  # beyond a gap: not neighbours any more
                last = last if j is None else j
                table[i, context + side * step] = last
    return table


def interior(cases: Sequence, context: int) -> np.ndarray:
    """Positions of the cases whose ``context`` neighbours each side are all in ``cases``."""
    table = neighbour_table(cases, context)
    middle = np.arange(len(table))[:, None]
    own = table == middle
    own[:, context] = False
    return np.flatnonzero(~own.any(axis=1))


def stack_neighbours(images: Sequence[np.ndarray]) -> np.ndarray:
    """``(H, W, len(images))`` from grey ``(H, W)`` slices (the one to segment in the middle)."""
    return np.stack([np.asarray(a, np.float32) for a in images], axis=-1)


def volume_context(volume: np.ndarray, index: int, context: int) -> np.ndarray:
    """Slice ``index`` of a ``(Z, H, W)`` volume with ``context`` neighbours each side as
    ``(H, W, 2c + 1)``; beyond the volume's first or last slice the edge slice repeats."""
    z = np.clip(np.arange(index - context, index + context + 1), 0, volume.shape[0] - 1)
    return stack_neighbours([volume[k] for k in z])


def drop_neighbours(image: np.ndarray, context: int, rate: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Training: each side's neighbours replaced by the middle slice with probability ``rate``
    (so a missing neighbour says little about where a nodule ends, and a single image, the
    slice repeated, is something the model has seen)."""
    if context == 0 or rate <= 0:
        return image
    out = image
    for side in (-1, 1):
        if rng.random() < rate:
            if out is image:
                out = image.copy()
            for step in range(1, context + 1):
                out[..., context + side * step] = image[..., context]
    return out


class SliceContext(Sequence):
    """``cases`` whose images are ``(H, W, 2c + 1)``: each slice with its neighbours
    (:func:`neighbour_table`), or (``neighbours="none"``) the slice repeated, as a single image
    is. Other attributes (``group_ids``, ``ids_of``, ``spec``...) are those of ``cases``."""

    def __init__(self, cases: Sequence, context: int, neighbours: str = "data",
                 table: np.ndarray | None = None):
        if neighbours not in NEIGHBOURS:
            raise ValueError(f"neighbours must be one of {NEIGHBOURS}, not {neighbours!r}")
        self.cases, self.context, self.neighbours = cases, int(context), neighbours
        self.table = neighbour_table(cases, context) if table is None else table

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.subset(range(len(self))[i])
        case = self.cases[i]
        image = np.asarray(case.image, np.float32)
        if image.ndim != 2:
            raise ValueError(f"{case.case_id}: slice context needs grey slices, not "
                             f"{image.shape}")
        if self.neighbours == "none":
            slices = [image] * (2 * self.context + 1)
        else:
            slices = [image if j == i else np.asarray(self.cases[int(j)].image, np.float32)
                      for j in self.table[i]]
        return Case(image=stack_neighbours(slices), masks=case.masks,
                    case_id=case.case_id, group_id=case.group_id, truth=case.truth,
                    ids=case.ids, source=case.source)

    def subset(self, indices) -> SliceContext:
        """A view of some cases; their neighbours are still looked up in the whole set."""
        indices = np.asarray(list(indices), np.int64)
        return _Subset(self, indices)

    def __getattr__(self, name):
        if name == "cases":
            raise AttributeError(name)
        return getattr(self.cases, name)


class _Subset(Sequence):
    """Some positions of a :class:`SliceContext` (neighbours from the whole set)."""

    def __init__(self, parent: SliceContext, indices: np.ndarray):
        self.parent, self.indices = parent, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return _Subset(self.parent, self.indices[i])
        return self.parent[int(self.indices[i])]

    def ids_of(self, key: str) -> list[str]:
        ids = self.parent.cases.ids_of(key) if hasattr(self.parent.cases, "ids_of") else [
            (self.parent.cases[int(j)].ids or {}).get(key) for j in range(len(self.parent))]
        return [ids[int(j)] for j in self.indices]

    @property
    def group_ids(self) -> list:
        ids = getattr(self.parent.cases, "group_ids", None)
        if ids is None:
            return [self[i].group_id for i in range(len(self))]
        return [ids[int(j)] for j in self.indices]


def with_slice_context(cases: Sequence, context: int, neighbours: str = "data") -> Sequence:
    """``cases`` as a model with ``slice_context = context`` takes them (unchanged for 0)."""
    return cases if context == 0 else SliceContext(cases, context, neighbours)
