"""3D evaluation: hypotheses that are nodules, against the radiologists' 3D masks.

For each nodule (all the slices of one nodule of the LIDC-IDRI slices set, or a nodule of a
whole scan that at least one radiologist outlined in a reading file) the click goes to the
centre of the radiologists' union (its centre of mass, rounded to a voxel), and
:func:`~napari_probunet.review.nodule.sample_nodule` draws ``n`` 3D hypotheses. Every figure
compares 3D masks: a hypothesis and a radiologist's mask of the nodule are each one
``(S, H, W)`` volume over the same slices, and their IoU is the 3D IoU (empty masks included as
in the 2D figures: both empty 1, one empty 0). Reported over nodules (``docs/evaluation.md``,
"3D figures"):

- ``ged{n}_3d``, ``hm_iou{n}_3d``: the generalized energy distance and the Hungarian-matched
  IoU of the 3D hypotheses (one draw per hypothesis shared by the slices, the piece connected
  to the click) against the radiologists' 3D masks.
- ``ged{n}_3d_independent``, ``hm_iou{n}_3d_independent``: the same model with every slice
  sampled on its own and hypothesis ``i`` taken as the ``i``-th sample of every slice (the
  behaviour before 3D hypotheses, on the same slices): the baseline.
- ``ged{n}_3d_offset``: the shared hypotheses with the click moved ``offset_mm`` in the slice
  plane, in a direction drawn per nodule (seeded).
- ``volume_coverage``: the share of the radiologists' non-empty volumes that lie inside the
  5-95% range of the hypotheses' volumes (of the largest ``n``).
- ``gaps``: for hypotheses (shared, independent) and radiologists, the share of non-empty
  masks with a gap along z (an empty slice between two non-empty ones) and the mean number of
  such slices per non-empty mask.
- ``empty_hypotheses`` / ``empty_radiologists``: shares of empty 3D masks.

Sample counts: the smaller sets are prefixes of the largest draw, as in the 2D evaluation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probunet.data.measure import z_gaps
from napari_probunet.errors import DataError, UserError
from napari_probunet.review.metrics import ged, hungarian_iou
from napari_probunet.review.nodule import NoduleRequest, sample_nodule
from napari_probunet.review.seeds import seed_for_index

#: the slices set's crops carry no spacing; LIDC-IDRI's typical pixel (0.7 mm) and slice step
#: (2.5 mm) stand in for it (volumes are only compared with each other, so the scale cancels)
SLICES_SET_SPACING = (2.5, 0.7, 0.7)
#: how far the click is moved for the ``_offset`` figures (the issue's "up to 5 mm")
OFFSET_MM = 5.0
#: stream of seed_for_index for the offset direction (other streams: review.seeds)
STREAM_OFFSET = 3


@dataclass
class NoduleTruth:
    """One nodule: the scan (or the nodule's slices) and each radiologist's 3D mask of it."""

    nodule_id: str
    volume: np.ndarray  # (Z, Y, X) intensities: a whole series, or the slices of one nodule
    masks: np.ndarray  # (R, dz, dy, dx) uint8/bool, the radiologists' masks from `origin`
    spacing: tuple[float, float, float]
    origin: tuple[int, int, int] = (0, 0, 0)  # (slice, row, column) of masks[:, 0, 0, 0]
    slices: tuple[int, int] | None = None  # sample exactly these slices (slices set)

    def click(self) -> tuple[int, int, int]:
        """The centre of mass of the radiologists' union, rounded to a voxel of ``volume``."""
        union = self.masks.any(axis=0)
        if not union.any():
            raise DataError(f"{self.nodule_id}: no radiologist outlined this nodule")
        c = np.rint(np.argwhere(union).mean(axis=0)).astype(int)
        return tuple(int(v) + int(o) for v, o in zip(c, self.origin))


def nodules_of_slices(cases) -> list[NoduleTruth]:
    """The nodules of an LIDC-IDRI slices set (a :class:`~napari_probunet.data.lidc_slices.
    LidcSlices` or a split of it): each nodule's slices in order, with its radiologists'
    masks (the same radiologist ``k`` on every slice, ``mask-k``)."""
    ids = getattr(cases, "ids_of", None)
    if ids is None:
        raise UserError("3D figures need data with nodule ids (the LIDC-IDRI slices layout or a "
                        "scan folder with reading files); this data has none")
    groups: dict[str, list[int]] = {}
    for i, nod in enumerate(ids("nodule")):
        groups.setdefault(nod, []).append(i)
    out = []
    for nod, idx in groups.items():
        items = sorted((cases[i] for i in idx), key=lambda c: int(c.ids["slice"]))
        images = np.stack([c.image for c in items])
        masks = np.stack([c.masks for c in items], axis=1)  # (R, S, H, W)
        if not masks.any():
            continue
        out.append(NoduleTruth(nod, images, masks, SLICES_SET_SPACING,
                               slices=(0, len(items))))
    return out


def scan_folders(path) -> list:
    """``path`` if it is a scan folder (``ct/`` + ``annotations/``), else the scan folders in
    it (one level down, name order); empty when there are none."""
    from pathlib import Path

    from napari_probunet.data.lidc_scan import is_scan_folder

    path = Path(path)
    if is_scan_folder(path):
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if is_scan_folder(p))


def nodules_of_scans(folders, include_outline: bool = False) -> tuple[list[NoduleTruth], list]:
    """The nodules that at least one radiologist outlined in each scan folder's reading files,
    and the notes of reading them. ``include_outline=False`` (the default here) leaves each
    outline's own pixels out of its mask, as the LIDC-IDRI slices set the models were trained
    on does (docs/scans.md, "Outline pixels")."""
    from napari_probunet.data.lidc_scan import read_scan_folder

    out, notes = [], []
    for folder in folders:
        scan = read_scan_folder(folder, include_outline=include_outline)
        notes += [f"{scan.name}: {n}" for n in scan.problems]
        for nod in scan.nodules:
            z0, _, y0, _, x0, _ = nod.bbox
            out.append(NoduleTruth(f"{scan.name}/nodule-{nod.index + 1}", scan.volume.data,
                                   nod.masks.astype(np.uint8), tuple(scan.volume.spacing),
                                   origin=(z0, y0, x0)))
    return out, notes


def _boxes(hyp, truth: NoduleTruth) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """``((lo, hi) of the hypotheses, (lo, hi) of the masks)`` in the scan's voxels."""
    lo_h, lo_t = np.array([hyp.first, *hyp.roi[:2]]), np.array(truth.origin)
    return ((lo_h, lo_h + np.array(hyp.labels.shape[1:])),
            (lo_t, lo_t + np.array(truth.masks.shape[1:])))


def common_box(hyp, truth: NoduleTruth) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the (slice, row, column) corners in the scan of the box that holds the
    hypotheses and the radiologists' masks (``hi`` exclusive)."""
    (lo_h, hi_h), (lo_t, hi_t) = _boxes(hyp, truth)
    return np.minimum(lo_h, lo_t), np.maximum(hi_h, hi_t)


def paired(hyp, truth: NoduleTruth) -> tuple[np.ndarray, np.ndarray]:
    """The hypotheses ``(n, ...)`` and the radiologists' masks ``(R, ...)`` on the box that
    holds both (:func:`common_box`; so a hypothesis running past the outlines counts against
    it)."""
    (lo_h, hi_h), (lo_t, hi_t) = _boxes(hyp, truth)
    lo, hi = common_box(hyp, truth)
    hm = np.zeros((hyp.n, *(hi - lo)), np.uint8)
    tm = np.zeros((len(truth.masks), *(hi - lo)), np.uint8)
    a, b = lo_h - lo, hi_h - lo
    hm[:, a[0]:b[0], a[1]:b[1], a[2]:b[2]] = hyp.labels
    a, b = lo_t - lo, hi_t - lo
    tm[:, a[0]:b[0], a[1]:b[1], a[2]:b[2]] = truth.masks
    return hm, tm


def _flat(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(masks.shape[0], -1, masks.shape[-1])


def _scores(hyp_masks: np.ndarray, truth: np.ndarray, counts: Sequence[int]) -> dict:
    out = {}
    for n in counts:
        out[f"ged{n}"] = ged(_flat(hyp_masks[:n]), _flat(truth))
        out[f"hm_iou{n}"] = hungarian_iou(_flat(hyp_masks[:n]), _flat(truth))
    return out


def _gap_counts(masks: np.ndarray) -> list[int]:
    """Gaps along z of each non-empty ``(S, H, W)`` mask of ``masks``."""
    return [z_gaps(m) for m in masks if m.any()]


def _offset_click(truth: NoduleTruth, index: int, seed: int) -> tuple[int, int, int]:
    k, r, c = truth.click()
    angle = np.random.default_rng(seed_for_index(seed, index, STREAM_OFFSET)).uniform(0, 2 * np.pi)
    dr = OFFSET_MM / truth.spacing[1] * np.sin(angle)
    dc = OFFSET_MM / truth.spacing[2] * np.cos(angle)
    shape = truth.volume.shape
    return (k, int(np.clip(np.rint(r + dr), 0, shape[1] - 1)),
            int(np.clip(np.rint(c + dc), 0, shape[2] - 1)))


def evaluate_nodule(session, truth: NoduleTruth, index: int, counts: Sequence[int],
                    seed: int) -> dict[str, Any]:
    """The figures of one nodule (see the module docstring); nodule ``index`` of the run uses
    the seed ``seed_for_index(seed, index)`` for its hypotheses."""
    n, nseed = max(counts), seed_for_index(seed, index)
    base = dict(volume=truth.volume, spacing=truth.spacing, n=n, seed=nseed,
                slices=truth.slices, click=truth.click())
    shared = sample_nodule(session, NoduleRequest(**base))
    slices = truth.slices or (shared.first, shared.first + shared.labels.shape[1])
    indep = sample_nodule(session, NoduleRequest(**{**base, "slices": slices},
                                                 coupling="independent", connect=False))
    moved = sample_nodule(session, NoduleRequest(**{**base, "click": _offset_click(
        truth, index, seed)}))
    (hs, ts), (hi, ti), (hm, tm) = (paired(h, truth) for h in (shared, indep, moved))
    vols = shared.volumes_mm3
    voxel = float(np.prod(truth.spacing))
    rad_vols = [float(np.count_nonzero(m)) * voxel for m in truth.masks if m.any()]
    p5, p95 = np.percentile(vols, [5, 95])
    return {
        "nodule": truth.nodule_id,
        "click": list(base["click"]),
        "shared": _scores(hs, ts, counts),
        "independent": _scores(hi, ti, counts),
        "offset": _scores(hm, tm, counts),
        "volumes_mm3": [float(v) for v in vols],
        "radiologist_volumes_mm3": rad_vols,
        "covered": [bool(p5 <= v <= p95) for v in rad_vols],
        "gaps_shared": _gap_counts(shared.labels),
        "gaps_independent": _gap_counts(indep.labels),
        "gaps_radiologists": _gap_counts(truth.masks),
        "empty_shared": float(np.mean(~hs.reshape(n, -1).any(axis=1))),
        "empty_radiologists": float(np.mean(~truth.masks.reshape(len(truth.masks), -1)
                                            .any(axis=1))),
        "reached_limit": bool(shared.reached_limit),
    }


def _gap_summary(lists: Iterable[list[int]]) -> dict[str, float | int | None]:
    g = [x for lst in lists for x in lst]
    if not g:
        return {"masks": 0, "share_with_gaps": None, "mean_gap_slices": None}
    return {"masks": len(g), "share_with_gaps": float(np.mean(np.asarray(g) > 0)),
            "mean_gap_slices": float(np.mean(g))}


def summarise(per_nodule: list[dict], counts: Sequence[int]) -> dict[str, Any]:
    """The dataset-wide 3D figures from :func:`evaluate_nodule`'s per-nodule results."""
    out: dict[str, Any] = {"n_nodules": len(per_nodule)}
    for n in counts:
        for key, part in (("3d", "shared"), ("3d_independent", "independent"),
                          ("3d_offset", "offset")):
            out[f"ged{n}_{key}"] = float(np.mean([r[part][f"ged{n}"] for r in per_nodule]))
            out[f"hm_iou{n}_{key}"] = float(np.mean([r[part][f"hm_iou{n}"] for r in per_nodule]))
        g, gi = out[f"ged{n}_3d"], out[f"ged{n}_3d_independent"]
        out[f"ged{n}_3d_change_vs_independent"] = (g - gi) / gi if gi else None
    covered = [c for r in per_nodule for c in r["covered"]]
    out["volume_coverage"] = float(np.mean(covered)) if covered else None
    out["gaps"] = {"hypotheses": _gap_summary(r["gaps_shared"] for r in per_nodule),
                   "independent": _gap_summary(r["gaps_independent"] for r in per_nodule),
                   "radiologists": _gap_summary(r["gaps_radiologists"] for r in per_nodule)}
    out["empty_hypotheses"] = float(np.mean([r["empty_shared"] for r in per_nodule]))
    out["empty_radiologists"] = float(np.mean([r["empty_radiologists"] for r in per_nodule]))
    out["nodules_at_extent_limit"] = int(sum(r["reached_limit"] for r in per_nodule))
    return out


def evaluate_nodules(model_or_session, nodules: Sequence[NoduleTruth],
                     n_samples: Sequence[int] = (16,), seed: int = 0, device: str = "auto",
                     progress: bool = True, per_nodule: bool = False,
                     count: int | None = None) -> dict[str, Any]:
    """3D figures of a model over ``nodules`` (see the module docstring), or over ``count``
    of them drawn with ``seed`` (nodule ``i`` keeps its seed); JSON-ready."""
    from tqdm import tqdm  # lazy

    from napari_probunet.session import Session
    from napari_probunet.training.evaluate_clicks import pick_slices

    counts = sorted({int(n) for n in n_samples})
    if not counts or counts[0] < 1:
        raise UserError(f"sample counts must be positive integers, got {list(n_samples)}")
    if not nodules:
        raise DataError("no nodule that a radiologist outlined: nothing to evaluate in 3D")
    session = (model_or_session if isinstance(model_or_session, Session)
               else Session(model_or_session, device=device))
    start = time.perf_counter()
    chosen = pick_slices(len(nodules), count, seed, "--nodule-count")
    results = [evaluate_nodule(session, nodules[int(i)], int(i), counts, seed)
               for i in tqdm(chosen, desc="evaluate 3D", unit="nodule", file=sys.stderr,
                             disable=not progress, leave=False)]
    out = summarise(results, counts)
    out["nodules_total"] = len(nodules)
    out["nodules_subsample_seed"] = None if len(chosen) == len(nodules) else seed
    out["spacing_note"] = ("slices set: spacing assumed "
                           f"{SLICES_SET_SPACING} mm" if any(t.slices for t in nodules)
                           else "spacing from each series")
    out["offset_mm"] = OFFSET_MM
    out["seconds"] = time.perf_counter() - start
    if per_nodule:
        out["per_nodule"] = results
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_nodule_report(result: dict[str, Any]) -> str:
    """The 3D figures of :func:`evaluate_nodules` as a short table for the terminal."""
    counts = sorted(int(k[3:-3]) for k in result if k.startswith("ged") and k.endswith("_3d"))
    lines = [f"model {result.get('model')}  data {result.get('data')}",
             f"{result['n_nodules']} of {result.get('nodules_total', result['n_nodules'])} "
             f"nodules, {result['seconds']:.1f} s "
             f"({result['spacing_note']})", "",
             f"{'':28}" + "".join(f"{'n=' + str(n):>10}" for n in counts)]
    for label, key in (("GED 3D", "ged{}_3d"), ("GED 3D, slice by slice", "ged{}_3d_independent"),
                       (f"GED 3D, click {result['offset_mm']:g} mm off", "ged{}_3d_offset"),
                       ("HM-IoU 3D", "hm_iou{}_3d"),
                       ("HM-IoU 3D, slice by slice", "hm_iou{}_3d_independent")):
        lines.append(f"{label:28}" + "".join(f"{_fmt(result[key.format(n)]):>10}"
                                            for n in counts))
    lines.append("")
    lines.append(f"volume coverage (radiologists' volumes in the 5-95% range): "
                 f"{_fmt(result['volume_coverage'])}")
    lines.append(f"empty 3D masks: hypotheses {_fmt(result['empty_hypotheses'])}, "
                 f"radiologists {_fmt(result['empty_radiologists'])}")
    for who, g in result["gaps"].items():
        lines.append(f"gaps along z, {who:13}: {_fmt(g['share_with_gaps'])} of "
                     f"{g['masks']} non-empty masks, {_fmt(g['mean_gap_slices'])} slices each")
    return "\n".join(lines)
