"""``probunet evaluate --clicks K``: how well clicks steer the hypotheses
(:mod:`napari_probunet.review.refine`), with clicks simulated from one radiologist's mask.

The protocol of interactive segmentation papers, for each slice and each radiologist who
marked it (an empty mask has no inside to click on):

- **click 1** at the mask's centre: the interior pixel farthest from its boundary (the
  maximum of the distance transform, the image border counting as boundary);
- **click k + 1** in the largest error region of the hypothesis nearest that radiologist (the
  one the radiologist would take as the best fit): the error regions are the connected pieces
  (8-connected) of the pixels it misses and of those it adds; the click goes to the largest
  piece's interior pixel farthest from its boundary, **positive** if the piece was missed,
  **negative** if it was added. With no error left, no further click is made (the figures of
  the last click carry on). ``click_on="majority"`` takes the pixel-wise majority of the
  hypotheses instead of the nearest one.

After 0, 1, .., K clicks the hypotheses' IoU to that radiologist is summarised per pair as the
best and the median over the ``n`` hypotheses, then averaged over the pairs; after one click,
the hypotheses that are empty are counted (a positive click on a marked slice: the target is
none). Slice ``i`` (its number in the whole data set, also when ``slices`` subsamples) is
refined with the seed ``seed_for_index(seed, i)`` of ``probunet evaluate``, so after 0 clicks
the hypotheses are ``probunet evaluate``'s first ``n`` samples.

Several selection ``rules`` are scored in one pass over the same encodings and clicks' first
step (each rule's later clicks follow its own hypotheses).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from napari_probunet.errors import DataError, UserError
from napari_probunet.iou import as_label_stack
from napari_probunet.review.metrics import pairwise_iou
from napari_probunet.review.refine import POOL, RULES, refine
from napari_probunet.review.seeds import STREAM_SAMPLES, seed_for_index

CLICK_ON = ("best", "majority")


def _interior_point(region: np.ndarray, spacing=None) -> tuple[int, ...]:
    """The pixel (voxel) of ``region`` (bool, 2D or 3D, not empty) farthest from its boundary
    (the array's border counts as boundary), distances in ``spacing`` units per axis (None:
    pixels); ties: the one nearest the region's centroid (same units), then the first in
    row-major order."""
    from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

    scale = np.ones(region.ndim) if spacing is None else np.asarray(spacing, float)
    inner = tuple(slice(1, -1) for _ in range(region.ndim))
    dist = ndimage.distance_transform_edt(np.pad(region, 1), sampling=scale)[inner]
    at = np.argwhere(dist == dist.max())
    centre = np.argwhere(region).mean(axis=0)
    j = int(np.argmin((((at - centre) * scale) ** 2).sum(axis=1)))
    return tuple(int(v) for v in at[j])


def first_click(mask: np.ndarray, spacing=None) -> tuple:
    """The first simulated click: positive, at the centre of ``mask``'s foreground (2D
    ``(row, col, True)``; 3D ``(slice, row, col, True)``, distances in ``spacing``)."""
    return (*_interior_point(np.asarray(mask) > 0, spacing), True)


def next_click(mask: np.ndarray, prediction: np.ndarray, spacing=None) -> tuple | None:
    """The next simulated click: in the largest error piece (8-connected in 2D, 26-connected
    in 3D) of ``prediction`` against ``mask`` (positive where it misses the mask, negative
    where it adds to it); None when the prediction has no error."""
    from scipy import ndimage

    truth, pred = np.asarray(mask) > 0, np.asarray(prediction) > 0
    best: tuple[int, np.ndarray, bool] | None = None
    for error, positive in ((truth & ~pred, True), (pred & ~truth, False)):
        pieces, count = ndimage.label(error, structure=np.ones((3,) * error.ndim, bool))
        if not count:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        j = int(np.argmax(sizes))
        if best is None or sizes[j] > best[0]:
            best = (int(sizes[j]), pieces == j + 1, positive)
    if best is None:
        return None
    return (*_interior_point(best[1], spacing), best[2])


class _Tally:
    """One rule's results: per click count, the per-pair best and median IoU."""

    def __init__(self, clicks: int) -> None:
        self.best = [[] for _ in range(clicks + 1)]
        self.median = [[] for _ in range(clicks + 1)]
        self.empty_after_one: list[int] = []
        self.shortfalls = [0] * (clicks + 1)  # refinements where fewer than n agreed
        self.agreed_share = [[] for _ in range(clicks + 1)]
        self.ms: list[float] = []

    def summary(self, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, (b, m) in enumerate(zip(self.best, self.median)):
            out[f"clicks{k}"] = {
                "best_iou": float(np.mean(b)), "median_iou": float(np.mean(m)),
                "best_iou_median": float(np.median(b)), "pairs": len(b),
                "shortfall_pairs": self.shortfalls[k],
                "agreed_share": float(np.mean(self.agreed_share[k])),
            }
        if self.empty_after_one:
            e = np.array(self.empty_after_one)
            out["empty_after_one_click"] = {
                "hypotheses": int(e.sum()), "of": int(len(e) * n),
                "pairs_with_any": int((e > 0).sum()), "pairs": int(len(e)),
                "max_in_a_pair": int(e.max())}
        out["refine_ms_median"] = float(statistics.median(self.ms)) if self.ms else None
        return out


def _pair(session, mask, tally: _Tally, n: int, seed: int, clicks: int, rule: str,
          pool: int, click_on: str, first_labels: np.ndarray) -> None:
    """Click ``clicks`` times for one radiologist's ``mask`` and add the figures to ``tally``."""
    labels, made, iou = first_labels, [], None
    for k in range(clicks + 1):
        if k:
            click = first_click(mask) if k == 1 else next_click(mask, _prediction(
                labels, iou, click_on))
            if click is not None:
                made.append(click)
                t = time.perf_counter()
                refined = refine(session, made, n, seed, pool, rule)
                tally.ms.append(1000 * (time.perf_counter() - t))
                labels = refined.hypotheses.labels
                tally.agreed_share[k].append(refined.agreed / refined.pool)
                tally.shortfalls[k] += int(refined.agreed < n)
            else:
                tally.agreed_share[k].append(tally.agreed_share[k - 1][-1])
        else:
            tally.agreed_share[0].append(1.0)
        iou = pairwise_iou(labels, mask[None], 2)[:, 0]
        tally.best[k].append(float(iou.max()))
        tally.median[k].append(float(np.median(iou)))
        if k == 1:
            tally.empty_after_one.append(int((labels.reshape(n, -1).max(axis=1) == 0).sum()))


def _prediction(labels: np.ndarray, iou: np.ndarray, click_on: str) -> np.ndarray:
    """What the simulated radiologist corrects: the hypothesis nearest them, or the majority."""
    if click_on == "best":
        return labels[int(np.argmax(iou))]
    return (labels > 0).mean(axis=0) > 0.5


def pick_slices(total: int, count: int | None, seed: int, option: str = "--slices",
                ) -> np.ndarray:
    """The slice (or nodule) numbers evaluated: all, or ``count`` drawn without replacement
    (sorted) by ``default_rng(seed)``; ``option`` names the count in the message."""
    if count is not None and count < 1:
        raise UserError(f"{option} must be at least 1, got {count}")
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, int(count), replace=False))


def click_session(model_or_session, device: str, clicks: int, rules: Sequence[str],
                  click_on: str):
    """The session of a click evaluation, once its settings are checked (a message naming
    the bad one otherwise)."""
    from napari_probunet.training.evaluate import _session

    if clicks < 1:
        raise UserError(f"--clicks must be at least 1, got {clicks}")
    bad = [r for r in rules if r not in RULES]
    if bad or not rules:
        raise UserError(f"rules must be among {', '.join(RULES)}, not {bad or 'none'}")
    if click_on not in CLICK_ON:
        raise UserError(f"click_on must be one of {', '.join(CLICK_ON)}, not {click_on!r}")
    session = _session(model_or_session, device)
    if int(session.config.num_classes) != 2:
        raise UserError("the click evaluation is for binary models (lesion or not); this model "
                        f"has {session.config.num_classes} classes")
    return session


def evaluate_clicks(model_or_session, cases: Sequence, clicks: int = 3, n: int = 16,
                    seed: int = 0, rules: Sequence[str] = ("sample",), pool: int = POOL,
                    click_on: str = "best", slices: int | None = None, device: str = "auto",
                    progress: bool = True) -> dict[str, Any]:
    """Simulated clicks on multi-rater cases (see the module's docstring). Returns a JSON-ready
    dict: for each rule, ``clicks{k}`` (``best_iou``, ``median_iou`` averaged over the
    (slice, radiologist) pairs, ``best_iou_median``, ``pairs``, ``shortfall_pairs``,
    ``agreed_share``), ``empty_after_one_click`` and ``refine_ms_median``; and the settings."""
    from napari_probunet.training.evaluate import _json_ready

    start = time.perf_counter()
    session = click_session(model_or_session, device, clicks, rules, click_on)
    if len(cases) == 0:
        raise DataError("no cases to evaluate")
    chosen = pick_slices(len(cases), slices, seed)
    tallies = {r: _Tally(clicks) for r in rules}
    pairs = 0
    bar = tqdm(chosen, desc="clicks", unit="slice", file=sys.stderr, disable=not progress,
               leave=False)
    for i in bar:
        case = cases[int(i)]
        masks = as_label_stack(case.masks, 2, f"masks of case {case.case_id!r}")
        marked = [m for m in masks if m.any()]
        if not marked:
            continue
        session.set_image(case.image)
        s = seed_for_index(seed, int(i), STREAM_SAMPLES)
        first = session.sample(n, seed=s).labels
        for mask in marked:
            pairs += 1
            for rule in rules:
                _pair(session, mask, tallies[rule], n, s, clicks, rule, pool, click_on, first)
    bar.close()
    out = {"clicks": clicks, "n": n, "seed": seed, "pool": pool, "click_on": click_on,
           "slices_total": len(cases), "slices_drawn": len(chosen),
           "slices_subsample_seed": None if len(chosen) == len(cases) else seed,
           "pairs": pairs,
           "rules": {r: t.summary(n) for r, t in tallies.items()}}
    out["seconds"] = time.perf_counter() - start
    return _json_ready(out)


def format_clicks_report(result: dict[str, Any]) -> str:
    """The table on screen: best / median IoU after each click, per rule."""
    return "\n".join([f"{result['pairs']} (slice, radiologist) pairs on "
                      f"{result['slices_drawn']} of {result['slices_total']} slices; "
                      f"{result['n']} hypotheses, pool {result['pool']}, next click on the "
                      f"{result['click_on']} hypothesis", *click_table(result)])


def click_table(result: dict[str, Any], iou: str = "IoU") -> list[str]:
    """The lines of the table: per rule, best / median ``iou`` after 0..K clicks and the
    hypotheses empty after one."""
    k = int(result["clicks"])
    lines = [f"{'rule':<10}" + "".join(f"{f'{j} clicks':>16}" for j in range(k + 1))
             + "   empty after 1"]
    for rule, res in result["rules"].items():
        cells = "".join(f"{res[f'clicks{j}']['best_iou']:>8.3f}/"
                        f"{res[f'clicks{j}']['median_iou']:<7.3f}" for j in range(k + 1))
        empty = res.get("empty_after_one_click") or {}
        lines.append(f"{rule:<10}{cells}   {empty.get('hypotheses', 0)} of {empty.get('of', 0)}")
    lines.append(f"(each cell: best / median hypothesis {iou} to the radiologist, mean over "
                 "pairs)")
    return lines
