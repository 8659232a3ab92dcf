"""``probunet evaluate --nodules --clicks K``: how well clicks steer a nodule's 3D hypotheses
(:func:`~napari_probunet.review.refine.steer_nodule`), with clicks simulated from one
radiologist's 3D mask: the protocol of :mod:`~napari_probunet.training.evaluate_clicks` on
volumes.

For each nodule (:class:`~napari_probunet.training.evaluate_nodules.NoduleTruth`) and each
radiologist whose 3D mask of it is not empty:

- the nodule is sampled as the 3D evaluation samples it: the request's click at the centre of
  the radiologists' union, nodule ``i`` (its number among all the nodules, also when ``count``
  draws some) with the seed ``seed_for_index(seed, i)``; so after 0 clicks the hypotheses are
  :func:`~napari_probunet.review.nodule.sample_nodule`'s, the 3D evaluation's ``shared`` ones;
- **click 1**, inside, at the 3D mask's centre: the voxel farthest from its boundary by the 3D
  distance transform in millimetres (the voxel spacing; the border of the box that holds the
  mask and the hypotheses counts as boundary); ties: the one nearest the centroid (mm);
- **click k + 1** in the largest error piece (26-connected: voxels that touch by a face, an
  edge or a corner) of the prediction against the mask, at the piece's voxel farthest from its
  boundary (mm): **inside** if missed, **outside** if added; no click once there is no error.
  The prediction is the hypothesis nearest the radiologist by 3D IoU (``click_on="best"``) or
  the voxel-wise majority of the hypotheses (``"majority"``). Clicks go to the model's crop
  only (the same rows and columns on every slice): an error outside it cannot be clicked (it
  still counts in the IoU);
- a refinement is what the Nodule widget's *Refine by clicks* runs
  (:func:`~napari_probunet.review.refine.refine_nodule_job`): ``steer_nodule`` (the clicks
  choose among the nodule's shared draws), then ``sample_nodule`` on the chosen draws (each
  hypothesis cut to its one connected piece, the extent found again).

After 0..K clicks, per pair and then averaged over the pairs: the best and the median 3D IoU
of the ``n`` hypotheses to the radiologist (on the box that holds both,
:func:`~napari_probunet.training.evaluate_nodules.paired`); after one click, the hypotheses
that are empty; ``shortfall_pairs``: pairs whose hypotheses came from a pool where fewer than
``n`` agreed with every click; ``agreed_share``: the share of the pool that agreed;
``agreeing_share``: the share of the ``n`` final hypotheses that agree with every click (the
cut to one connected piece can drop a clicked piece); ``refine_ms_median``: one refinement,
steering and sampling the nodule (every slice encoded and decoded).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_probunet.errors import DataError
from napari_probunet.review.jobs import run_job
from napari_probunet.review.metrics import pairwise_iou
from napari_probunet.review.nodule import NoduleRequest, sample_nodule
from napari_probunet.review.refine import POOL, steer_nodule
from napari_probunet.review.seeds import seed_for_index
from napari_probunet.training.evaluate_clicks import (
    _prediction,
    _Tally,
    click_session,
    click_table,
    first_click,
    next_click,
    pick_slices,
)
from napari_probunet.training.evaluate_nodules import (
    SLICES_SET_SPACING,
    NoduleTruth,
    _flat,
    common_box,
    paired,
)

#: how the error pieces are connected (the 2D evaluation's 8-connected, in 3D)
CONNECTIVITY = 26


class _Tally3D(_Tally):
    """One rule's results, with the share of the final hypotheses that agree with the clicks."""

    def __init__(self, clicks: int) -> None:
        super().__init__(clicks)
        self.agreeing = [[] for _ in range(clicks + 1)]

    def summary(self, n: int) -> dict[str, Any]:
        out = super().summary(n)
        for k, shares in enumerate(self.agreeing):
            out[f"clicks{k}"]["agreeing_share"] = float(np.mean(shares))
        return out


@dataclass
class _Steering:
    """What every pair of a run shares: the session and the settings of a refinement."""

    session: Any
    clicks: int
    pool: int
    rule: str
    click_on: str


def _measure(hyp, truth: NoduleTruth):
    """``(hypotheses (n, box), the mask (box), the box's corner in the scan, 3D IoU (n,))``
    of the hypotheses against the one radiologist of ``truth``."""
    hm, tm = paired(hyp, truth)
    lo, _ = common_box(hyp, truth)
    return hm, tm[0] > 0, lo, pairwise_iou(_flat(hm), _flat(tm), 2)[:, 0]


def _in_crop(shape, lo: np.ndarray, roi) -> np.ndarray:
    """bool ``shape`` (the box): the voxels inside the model's crop, where a click may go."""
    r0, c0, h, w = roi
    out = np.zeros(shape, bool)
    out[:, r0 - lo[1]:r0 + h - lo[1], c0 - lo[2]:c0 + w - lo[2]] = True
    return out


def simulated_click(k: int, hm: np.ndarray, mask: np.ndarray, lo: np.ndarray, iou: np.ndarray,
                    roi, spacing, click_on: str) -> tuple | None:
    """Click ``k`` (1, 2, ..) on the scan, ``(slice, row, col, positive)``, for hypotheses
    ``hm`` and a radiologist's ``mask`` on the box at ``lo``; None when there is nothing to
    click (no error left in the crop)."""
    crop = _in_crop(mask.shape, lo, roi)
    target = mask & crop
    if not target.any():
        return None
    if k == 1:
        click = first_click(target, spacing)
    else:
        click = next_click(target, _prediction(hm, iou, click_on) & crop, spacing)
    if click is None:
        return None
    return (*(int(v) + int(o) for v, o in zip(click[:3], lo)), bool(click[3]))


def agreeing(hm: np.ndarray, lo: np.ndarray, clicks) -> np.ndarray:
    """``(n,)`` bool: the hypotheses (on the box at ``lo``) whose voxel at every click is the
    click's (outside the box: background)."""
    ok = np.ones(len(hm), bool)
    for *at, positive in clicks:
        j = np.asarray(at) - lo
        inside = (j >= 0).all() and (j < hm.shape[1:]).all()
        fg = hm[(slice(None), *j)] != 0 if inside else np.zeros(len(hm), bool)
        ok &= fg == positive
    return ok


def _pair(run: _Steering, request: NoduleRequest, truth: NoduleTruth, plain, tally: _Tally3D,
          ) -> dict[str, Any]:
    """Click ``run.clicks`` times for ``truth``'s one radiologist, add the figures to
    ``tally``; returns the pair's row: the clicks made and after each, the best and median
    IoU, how many latents of the pool agreed (None before a click) and how many of the ``n``
    hypotheses agree with every click."""
    hyp, made, share, agreed = plain, [], 1.0, None
    row: dict[str, Any] = {"best_iou": [], "median_iou": [], "pool_agreed": [],
                           "agreeing": []}
    for k in range(run.clicks + 1):
        hm, mask, lo, iou = _measure(hyp, truth)
        ok = agreeing(hm, lo, made)
        tally.best[k].append(float(iou.max()))
        tally.median[k].append(float(np.median(iou)))
        tally.agreed_share[k].append(share)
        tally.shortfalls[k] += int(agreed is not None and agreed < request.n)
        tally.agreeing[k].append(float(ok.mean()))
        for key, value in (("best_iou", float(iou.max())), ("median_iou", float(np.median(iou))),
                           ("pool_agreed", agreed), ("agreeing", int(ok.sum()))):
            row[key].append(value)
        if k == 1:
            tally.empty_after_one.append(int((~hm.reshape(len(hm), -1).any(axis=1)).sum()))
        click = None if k == run.clicks else simulated_click(
            k + 1, hm, mask, lo, iou, hyp.roi, request.spacing, run.click_on)
        if click is None:
            continue  # no error left: the figures carry on
        made.append(click)
        t = time.perf_counter()
        steered, agreed, size, _ = run_job(steer_nodule(run.session, request, made, run.pool,
                                                        run.rule))
        hyp = sample_nodule(run.session, steered)
        tally.ms.append(1000 * (time.perf_counter() - t))
        share = agreed / size
    row["clicks"] = [list(c) for c in made]
    return row


def _nodule_request(truth: NoduleTruth, index: int, n: int, seed: int) -> NoduleRequest:
    """The 3D evaluation's request for nodule ``index`` (its click and seed)."""
    return NoduleRequest(volume=truth.volume, spacing=truth.spacing, click=truth.click(),
                         n=int(n), seed=seed_for_index(seed, index), slices=truth.slices)


def evaluate_clicks_3d(model_or_session, nodules: Sequence[NoduleTruth], clicks: int = 3,
                       n: int = 16, seed: int = 0, rules: Sequence[str] = ("sample",),
                       pool: int = POOL, click_on: str = "best", count: int | None = None,
                       device: str = "auto", progress: bool = True,
                       per_pair: bool = False) -> dict[str, Any]:
    """Simulated clicks on nodules (see the module's docstring); ``count``: evaluate that many
    nodules drawn with ``seed`` (None: all). Returns a JSON-ready dict as
    :func:`~napari_probunet.training.evaluate_clicks.evaluate_clicks` does (``clicks{k}`` per
    rule with ``agreeing_share`` added; ``nodules_total``, ``nodules_drawn``), with
    ``per_pair`` each pair's clicks and figures."""
    from tqdm import tqdm  # lazy

    from napari_probunet.training.evaluate import _json_ready

    start = time.perf_counter()
    session = click_session(model_or_session, device, clicks, rules, click_on)
    if not nodules:
        raise DataError("no nodule that a radiologist outlined: nothing to evaluate in 3D")
    chosen = pick_slices(len(nodules), count, seed, "--nodule-count")
    tallies = {r: _Tally3D(clicks) for r in rules}
    rows: list[dict[str, Any]] = []
    for i in tqdm(chosen, desc="clicks 3D", unit="nodule", file=sys.stderr,
                  disable=not progress, leave=False):
        truth = nodules[int(i)]
        request = _nodule_request(truth, int(i), n, seed)
        plain = sample_nodule(session, request)
        for r in range(len(truth.masks)):
            if not truth.masks[r].any():
                continue
            one = replace(truth, masks=truth.masks[r:r + 1])
            for rule in rules:
                row = _pair(_Steering(session, clicks, pool, rule, click_on), request, one,
                            plain, tallies[rule])
                rows.append({"nodule": truth.nodule_id, "radiologist": r, "rule": rule, **row})
    out = {"clicks": clicks, "n": n, "seed": seed, "pool": pool, "click_on": click_on,
           "nodules_total": len(nodules), "nodules_drawn": len(chosen),
           "nodules_subsample_seed": None if len(chosen) == len(nodules) else seed,
           "pairs": len(rows) // len(rules), "error_pieces": f"{CONNECTIVITY}-connected",
           "spacing_note": ("slices set: spacing assumed "
                            f"{SLICES_SET_SPACING} mm" if any(t.slices for t in nodules)
                            else "spacing from each series"),
           "rules": {r: t.summary(n) for r, t in tallies.items()}}
    if per_pair:
        out["per_pair"] = rows
    out["seconds"] = time.perf_counter() - start
    return _json_ready(out)


def format_clicks3d_report(result: dict[str, Any]) -> str:
    """The table on screen: best / median 3D IoU after each click, per rule; the pairs where
    too few of the pool agreed and the time of a refinement."""
    k = int(result["clicks"])
    lines = [f"{result['pairs']} (nodule, radiologist) pairs on {result['nodules_drawn']} of "
             f"{result['nodules_total']} nodules; {result['n']} hypotheses, pool "
             f"{result['pool']}, next click on the {result['click_on']} hypothesis "
             f"({result['error_pieces']} errors; {result['spacing_note']})",
             *click_table(result, "3D IoU")]
    for rule, res in result["rules"].items():
        short = " / ".join(str(res[f"clicks{j}"]["shortfall_pairs"]) for j in range(1, k + 1))
        agree = " / ".join(f"{res[f'clicks{j}']['agreeing_share']:.3f}" for j in range(1, k + 1))
        ms = res["refine_ms_median"]
        lines.append(f"{rule}: pairs with fewer than {result['n']} agreeing after 1..{k} clicks "
                     f"{short}; hypotheses agreeing with every click {agree}; one refinement "
                     f"{'-' if ms is None else f'{ms:.0f} ms'} (median)")
    lines.append(f"{result['seconds']:.1f} s")
    return "\n".join(lines)
