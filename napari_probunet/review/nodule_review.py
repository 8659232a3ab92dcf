"""What the nodule tool shows and records about 3D hypotheses (no Qt, no napari, no torch).

- :func:`hypothesis_rows`: one line per hypothesis (volume, longest diameter, slices), in the
  gallery's order: largest volume first, "no nodule" hypotheses last.
- :func:`radiologist_volumes`: each open radiologist outline's volume near the nodule (the
  pieces of their mask that overlap the hypotheses' union, or lie within the sampled region).
- :func:`spread_text`: the spread of the hypotheses' volumes (median, 5-95% range) beside the
  radiologists' volumes, as the widget and the docs show it.
- :func:`montage`: a small RGB picture of a hypothesis (its three central slices with the
  outline) for the gallery.
- :func:`nodule_record`: the provenance record of an exported 3D correction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probunet.data.measure import (
    longest_axial_diameter_mm,
    nodule_volume_mm3,
)
from napari_probunet.review.provenance import jsonable, versions

#: the outline colour of a hypothesis in the gallery's pictures (the hypotheses' cyan)
OUTLINE_RGB = (0, 200, 255)


@dataclass(frozen=True)
class HypothesisRow:
    """One hypothesis as the gallery lists it."""

    index: int  # 0-based hypothesis number
    volume_mm3: float
    diameter_mm: float
    extent: tuple[int, int] | None  # first, last scan slice; None for "no nodule"

    @property
    def text(self) -> str:
        if self.extent is None:
            return f"#{self.index + 1}  no nodule"
        a, b = self.extent
        return (f"#{self.index + 1}  {self.volume_mm3:,.0f} mm³ · {self.diameter_mm:.1f} mm · "
                f"slices {a}-{b}")


def hypothesis_rows(hyp) -> list[HypothesisRow]:
    """The hypotheses of a :class:`~napari_probunet.review.nodule.NoduleHypotheses`, largest
    first, "no nodule" last (ties in hypothesis order)."""
    vols, diams = hyp.volumes_mm3, hyp.diameters_mm
    rows = [HypothesisRow(i, float(vols[i]), float(diams[i]), hyp.extent(i))
            for i in range(hyp.n)]
    return sorted(rows, key=lambda r: (r.extent is None, -r.volume_mm3, r.index))


def _nonzero_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of a ``(Z, Y, X)`` mask's non-zero voxels (slices), or None."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        if not len(idx):
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def radiologist_volumes(masks: dict[str, np.ndarray], hyp, spacing) -> dict[str, float]:
    """Each radiologist's volume (mm^3) of the nodule the hypotheses show: the pieces of their
    ``(Z, Y, X)`` mask (the scan's shape) that overlap the union of the hypotheses, or, when
    every hypothesis is empty, that lie in the slices and crop the tool sampled. The pieces
    are found within the mask's own bounding box (a whole scan is not labelled: this runs on
    the GUI thread)."""
    from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

    r0, c0, h, w = hyp.roi
    z0, z1 = hyp.first, hyp.first + hyp.labels.shape[1]
    union = hyp.labels.any(axis=0)
    out = {}
    for name, mask in masks.items():
        m = np.asarray(mask)
        if m.ndim != 3 or m.shape[0] < z1 or m.shape[1] < r0 + h or m.shape[2] < c0 + w:
            continue
        box = _nonzero_box(m)
        if box is None:
            out[name] = 0.0
            continue
        pieces, _ = ndimage.label(m[box] > 0)
        # the sampled region, in the box's coordinates, clipped to it
        lo = [z0 - box[0].start, r0 - box[1].start, c0 - box[2].start]
        hi = [z1 - box[0].start, r0 + h - box[1].start, c0 + w - box[2].start]
        a = [max(0, v) for v in lo]
        b = [min(n, v) for n, v in zip(pieces.shape, hi)]
        if any(x >= y for x, y in zip(a, b)):
            out[name] = 0.0
            continue
        region = pieces[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        inside = union[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1],
                       a[2] - lo[2]:b[2] - lo[2]]
        hits = np.unique(region[inside & (region > 0)] if union.any() else region[region > 0])
        hits = hits[hits > 0]
        mine = np.isin(pieces, hits) if len(hits) else np.zeros(pieces.shape, bool)
        out[name] = nodule_volume_mm3(mine, spacing)
    return out


def spread_text(hyp, radiologists: dict[str, float] | None = None) -> str:
    """"Volume: median 4,191 mm³ (5-95%: 0-6,120) · 3 of 16 no nodule" and, when outlines are
    open, "· radiologists: 7,298 / 5,701 mm³"."""
    s = hyp.volume_summary()
    text = (f"Volume: median {s['median']:,.0f} mm³ (5-95%: {s['p5']:,.0f}-{s['p95']:,.0f})"
            f" · {int(round(s['empty_share'] * hyp.n))} of {hyp.n} no nodule")
    if radiologists:
        vols = " / ".join(f"{v:,.0f}" for v in radiologists.values())
        text += f" · radiologists: {vols} mm³"
    return text


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def montage(image: np.ndarray, labels: np.ndarray, window: tuple[float, float],
            size: int = 64) -> np.ndarray:
    """``(size, 3 * size, 3)`` uint8: the hypothesis's central slice and its neighbours (the
    slices ``labels`` ``(S, h, w)`` covers of ``image`` ``(S, h, w)``), grey in ``window``
    ``(low, high)``, with the outline in :data:`OUTLINE_RGB`; the middle of the crop."""
    filled = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    mid = int(filled[len(filled) // 2]) if len(filled) else len(labels) // 2
    lo, hi = window
    tiles = []
    for k in (mid - 1, mid, mid + 1):
        if not 0 <= k < len(labels):
            tiles.append(np.zeros((size, size, 3), np.uint8))
            continue
        grey = np.clip((np.asarray(image[k], np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        h, w = grey.shape
        c = max(1, min(h, w) // 2)  # the middle half of the crop: the nodule, larger
        rows = np.linspace(h / 2 - c / 2, h / 2 + c / 2 - 1, size).round().astype(int)
        cols = np.linspace(w / 2 - c / 2, w / 2 + c / 2 - 1, size).round().astype(int)
        tile = np.repeat((grey[np.ix_(rows, cols)] * 255).astype(np.uint8)[..., None], 3, -1)
        edge = _outline(labels[k][np.ix_(rows, cols)] > 0)
        tile[edge] = OUTLINE_RGB
        tiles.append(tile)
    return np.concatenate(tiles, axis=1)


def nodule_record(hyp, index: int, *, image_name: str, model: dict[str, Any],
                  edited_voxels: int, corrected: np.ndarray, source: Any = None,
                  radiologists: dict[str, float] | None = None) -> dict[str, Any]:
    """The provenance record of a 3D correction made from hypothesis ``index`` (0-based) of
    ``hyp``: the scan, the click, the rule and seed that drew the hypotheses, the chosen one and
    its latents per slice, the edits, the volumes before and after, the versions. ``corrected``
    is the correction's ``(S, h, w)`` labels on the hypotheses' slices and crop."""
    spacing = hyp.spacing
    chosen = hyp.labels[index]
    record = {
        "kind": "nodule correction",
        "image": {"layer": image_name, "spacing_mm": list(spacing)},
        "model": model,
        "click": {"slice": hyp.click[0], "row": hyp.click[1], "col": hyp.click[2]},
        "n": hyp.n, "seed": hyp.seed, "coupling": hyp.coupling,
        "rule": "one latent draw per hypothesis shared by the nodule's slices; the piece "
                "connected to the click (docs/scans.md)",
        "slices": [hyp.first, hyp.first + hyp.labels.shape[1] - 1],
        "roi": {"row": hyp.roi[0], "col": hyp.roi[1], "height": hyp.roi[2],
                "width": hyp.roi[3]},
        "chosen": {"index": int(index), "number": int(index) + 1,
                   "latents_per_slice": hyp.latents[:, index].tolist(),
                   "volume_mm3": nodule_volume_mm3(chosen, spacing),
                   "longest_diameter_mm": longest_axial_diameter_mm(chosen, spacing)},
        "corrected": {"volume_mm3": nodule_volume_mm3(corrected, spacing),
                      "longest_diameter_mm": longest_axial_diameter_mm(corrected, spacing),
                      "edited_voxels": int(edited_voxels)},
        "hypotheses": {"volumes_mm3": [float(v) for v in hyp.volumes_mm3],
                       **hyp.volume_summary()},
        "radiologists_volumes_mm3": radiologists or {},
        "versions": versions(),
    }
    if source is not None:
        record["volume"] = {"source": source}
    return jsonable(record)
