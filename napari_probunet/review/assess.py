"""Assess annotations under the model (``probunet assess`` is its command-line twin).

Kohl et al. note that the Probabilistic U-Net "can be used to assess annotations". For an
annotation ``y`` of an encoded image ``x`` the posterior net gives ``q(z | x, y)``; we report

- **position**: the posterior mean ``mu_q``, and ``u = (mu_q - mu_p) / sigma_p``, the same
  point in units of the prior's sigma (the coordinates of the latent-space explorer);
- **kl**: ``KL(q(z|x,y) || p(z|x))`` in nats, how unusual the model finds the annotation;
- **iou**: mean foreground IoU between ``y`` and the model's reconstruction, the decode at
  ``mu_q`` (empty vs empty = 1), i.e. whether the model can draw it at all.

**Outlier rule.** An annotation is compared with the model's *own* proposals for the same
image: ``n`` samples ``z ~ p(z|x)`` are decoded and located like annotations (seeded, so
reproducible). It is flagged

- ``"kl"`` when its KL is above the ``q``-quantile (default 0.95) of the samples' KL by more
  than :data:`KL_MARGIN` (1 nat): the model finds it less likely than 95 % of what it proposes
  itself, by a margin that means something (one nat is a likelihood ratio of e; a quantile of
  32 samples moves by about that much from one seed to the next, so a smaller excess is noise);
- ``"fit"`` when its IoU is below the ``(1 - q)``-quantile of the samples' IoU and below
  :data:`FIT_IOU` (0.8): the model cannot reconstruct it as well as 95 % of its own proposals,
  nor nearly (a hand-drawn outline never matches a decoded one exactly, while the model
  reconstructs its own samples almost perfectly, so the quantile alone would flag everyone).
  Where that quantile is below :data:`MIN_FIT_IOU` (0.25) the model cannot redraw even its
  own proposals, so no annotation is judged on fit for that image (a threshold such as
  "IoU < 0.00" could never trigger): ``iou_threshold`` is then ``nan`` and the fit is reported
  as not assessed.

A flag is a hint to look again, not a verdict: the wording in the explorer says so.

The rule needs no other annotations (a single correction can be assessed) and adapts to each
image's ambiguity. Nothing here imports Qt or napari; torch is imported only through the
:class:`~napari_probunet.session.Session` a caller passes in (or :func:`assess_cases` makes).
The command line, ``probunet assess``, is :mod:`napari_probunet.cli.assess`.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_probunet.errors import InputError, UserError
from napari_probunet.review.seeds import STREAM_REFERENCE, seed_for_index

#: prior samples located per image to set the outlier thresholds
REFERENCE_SAMPLES = 32
#: quantile of the samples' KL above which an annotation is flagged (1 - it for the IoU)
QUANTILE = 0.95
#: an annotation reconstructed at least this well (IoU) is never flagged as a poor fit
FIT_IOU = 0.8
#: nats by which an annotation's KL must exceed the samples' quantile to be flagged
KL_MARGIN = 1.0
#: below this IoU quantile of its own samples the model's fit is not assessed on that image
MIN_FIT_IOU = 0.25


@dataclass(frozen=True)
class Reference:
    """KL and reconstruction IoU of the model's own samples for one image."""

    kl: np.ndarray  # (n,) nats
    iou: np.ndarray  # (n,)
    quantile: float = QUANTILE
    seed: int = 0

    @property
    def kl_quantile(self) -> float:
        """The ``quantile`` of the model's own samples' KL (nats)."""
        return float(np.quantile(self.kl, self.quantile))

    @property
    def kl_threshold(self) -> float:
        """Annotations with a larger KL are flagged ``"kl"``: the quantile plus
        :data:`KL_MARGIN`."""
        return self.kl_quantile + KL_MARGIN

    @property
    def fit_assessed(self) -> bool:
        """Whether the model redraws its own samples well enough to judge an annotation's fit."""
        return float(np.quantile(self.iou, 1.0 - self.quantile)) >= MIN_FIT_IOU

    @property
    def iou_threshold(self) -> float:
        """Annotations with a smaller IoU are flagged ``"fit"`` (at most :data:`FIT_IOU`);
        ``nan`` where the fit is not assessed (:attr:`fit_assessed`)."""
        if not self.fit_assessed:
            return math.nan
        return min(float(np.quantile(self.iou, 1.0 - self.quantile)), FIT_IOU)


@dataclass
class Assessment:
    """Where one annotation lies under the model, and whether it is an outlier."""

    name: str
    kl: float  # KL(q || p) in nats
    iou: float  # IoU of the annotation with its reconstruction
    mu: np.ndarray  # (d,) posterior mean
    sigma: np.ndarray  # (d,) posterior sigma
    u: np.ndarray  # (d,) posterior mean in prior-sigma units
    reconstruction: np.ndarray  # (H, W) uint8 decode at mu
    reasons: tuple[str, ...] = ()  # "kl" and/or "fit"; empty: not an outlier

    @property
    def outlier(self) -> bool:
        return bool(self.reasons)


def prepare_mask(mask: np.ndarray, num_classes: int, name: str = "the annotation") -> np.ndarray:
    """Check an annotation's labels against the model and return it as uint8 class labels.

    For a two-class model every non-zero label counts as the foreground (napari users paint
    with any label value); for more classes the labels must be ``0..num_classes - 1``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"{name} has shape {m.shape}; expected a 2D label map")
    if m.dtype == np.bool_:
        return m.astype(np.uint8)
    if m.dtype.kind == "f":
        if not np.all(np.isfinite(m)) or not np.array_equal(m, np.round(m)):
            raise InputError(f"{name} must hold integer class labels, not fractions or NaN")
    elif m.dtype.kind not in "iu":
        raise InputError(f"{name} has dtype {m.dtype}; expected integer class labels")
    if m.size and m.min() < 0:
        raise InputError(f"{name} holds negative labels")
    if num_classes == 2:
        return (m != 0).astype(np.uint8)
    if m.size and m.max() >= num_classes:
        raise InputError(
            f"{name} holds labels up to {int(m.max())} but the model has {num_classes} classes "
            f"(0..{num_classes - 1}); relabel it first"
        )
    return m.astype(np.uint8)


def reference(session, n: int = REFERENCE_SAMPLES, seed: int = 0,
              quantile: float = QUANTILE) -> Reference:
    """Locate ``n`` of the model's own samples of the session's image (seeded)."""
    if n < 2:
        raise UserError("the outlier reference needs at least 2 samples")
    if not 0.5 <= quantile < 1.0:
        raise UserError(f"the quantile must be in [0.5, 1), got {quantile}")
    hyp = session.sample(int(n), seed=seed)
    kls, ious = [], []
    for labels in hyp.labels:
        loc = session.locate(labels)
        kls.append(loc.kl)
        ious.append(loc.iou)
    return Reference(np.asarray(kls), np.asarray(ious), float(quantile), int(seed))


def assess_mask(session, mask: np.ndarray, name: str = "annotation",
                ref: Reference | None = None) -> Assessment:
    """Locate one annotation of the session's image and flag it against ``ref``."""
    m = prepare_mask(mask, session.config.num_classes, name)
    loc = session.locate(m)
    prior_mu, prior_sigma = session.prior()
    reasons: list[str] = []
    if ref is not None:
        if loc.kl > ref.kl_threshold:
            reasons.append("kl")
        if ref.fit_assessed and loc.iou < ref.iou_threshold:
            reasons.append("fit")
    return Assessment(
        name=name, kl=float(loc.kl), iou=float(loc.iou), mu=loc.mu, sigma=loc.sigma,
        u=((loc.mu - prior_mu) / prior_sigma).astype(np.float32),
        reconstruction=loc.reconstruction, reasons=tuple(reasons),
    )


def assess_masks(session, masks: Iterable[tuple[str, np.ndarray]],
                 ref: Reference | None = None) -> list[Assessment]:
    """:func:`assess_mask` for ``(name, mask)`` pairs of the session's image."""
    return [assess_mask(session, m, name, ref) for name, m in masks]


# -- many cases: one row per grader's mask, as CSV ----------------------------------------------


def csv_columns(latent_dim: int) -> list[str]:
    dims = [f"z{k + 1}" for k in range(latent_dim)]
    return (["case_id", "grader", "mode", "kl", "iou", "outlier", "reason", "kl_threshold",
             "iou_threshold"]
            + [f"mu_{z}" for z in dims] + [f"u_{z}" for z in dims] + [f"sigma_{z}" for z in dims])


def assess_cases(model, cases: Sequence, device: str = "auto", n_reference: int = REFERENCE_SAMPLES,
                 quantile: float = QUANTILE, seed: int = 0, progress: bool = False) -> list[dict]:
    """Score every grader's mask of every case; one row (dict, see :func:`csv_columns`) each."""
    from tqdm import tqdm  # lazy, with the session's torch

    from napari_probunet.session import Session

    session = Session(model, device)
    rows: list[dict] = []
    bar = tqdm(range(len(cases)), desc="assess", unit="case", file=sys.stderr,
               disable=not progress, leave=False)
    for i in bar:
        case = cases[i]
        try:
            session.set_image(case.image)
            ref = (reference(session, n_reference, seed_for_index(seed, i, STREAM_REFERENCE),
                             quantile)
                   if n_reference else None)
            found = assess_masks(
                session, ((f"grader {r + 1}", case.masks[r]) for r in range(case.n_graders)), ref)
        except UserError as exc:
            raise UserError(f"case {case.case_id!r}: {exc}") from exc
        truth, modes = getattr(case, "truth", None), getattr(case, "grader_modes", None)
        for r, a in enumerate(found):
            row = {
                "case_id": case.case_id, "grader": r + 1,
                "mode": (truth.names[int(modes[r])]
                         if truth is not None and modes is not None else ""),
                "kl": a.kl, "iou": a.iou, "outlier": int(a.outlier), "reason": "+".join(a.reasons),
                "kl_threshold": ref.kl_threshold if ref else math.nan,
                "iou_threshold": ref.iou_threshold if ref else math.nan,
            }
            for k in range(len(a.mu)):
                row[f"mu_z{k + 1}"] = float(a.mu[k])
                row[f"u_z{k + 1}"] = float(a.u[k])
                row[f"sigma_z{k + 1}"] = float(a.sigma[k])
            rows.append(row)
    return rows


def _format(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def to_csv(rows: Sequence[dict], latent_dim: int) -> str:
    """Rows of :func:`assess_cases` as CSV text (floats with 6 significant digits)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = csv_columns(latent_dim)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(c, "")) for c in columns])
    return buf.getvalue()
