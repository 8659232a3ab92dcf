"""``probunet evaluate``: how good is a model, next to a deterministic baseline and the oracle.

For every image the model is encoded once and sampled ``max(n_samples)`` times (the
smaller sample sets are the first samples of that draw, e.g. GED(16) uses samples 0..15 of
the 100). Three "methods" are scored with the same metrics (:mod:`napari_probunet.review.metrics`,
conventions in ``docs/evaluation.md``):

- ``model``: the Probabilistic U-Net's samples ``z ~ p(z|x)``;
- ``deterministic``: the decode at the prior mean, as if every sample were that one map;
- ``oracle`` (synthetic data only): samples drawn from the true mode distribution with the
  same counts, the floor of every number.

All pairwise IoUs of one image (samples, the deterministic map, the graders' masks and the
true modes) come from one vectorised matrix product; oracle samples are modes, so their
IoUs are rows of that matrix. Seeds: image ``i`` is sampled with a seed derived from
``(seed, i)``, and its oracle draw from ``(seed, i, 1)``
(:func:`~napari_probunet.review.seeds.seed_for_index`), so any seed reproduces.

The command line, ``probunet evaluate``, is :mod:`napari_probunet.cli.evaluate`; its table on
screen is :mod:`napari_probunet.training.report` (:func:`format_report`, importable from here
too).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from napari_probunet.data.context import with_slice_context
from napari_probunet.data.readers import open_cases
from napari_probunet.errors import DataError, UserError
from napari_probunet.iou import as_label_stack, mean_foreground_iou
from napari_probunet.review import calibration, metrics
from napari_probunet.review.leaks import MARGIN as LEAK_MARGIN
from napari_probunet.review.leaks import leak_counts, radiologist_leak_counts
from napari_probunet.review.seeds import STREAM_ORACLE, STREAM_SAMPLES, seed_for_index
from napari_probunet.training.report import format_report

__all__ = ["DEFAULT_SAMPLES", "METHODS", "evaluate_model", "format_report", "open_data"]

DEFAULT_SAMPLES = (16, 100)
METHODS = ("model", "deterministic", "oracle")


# -- accumulating per-image results ------------------------------------------------------------


@dataclass
class _MethodStats:
    """Per-image results of one method, for each sample count."""

    ged: dict[int, list[float]] = field(default_factory=dict)
    diversity: dict[int, list[float]] = field(default_factory=dict)
    hm_iou: dict[int, list[float]] = field(default_factory=dict)
    class_iou_sum: dict[int, np.ndarray] = field(default_factory=dict)
    class_iou_n: dict[int, np.ndarray] = field(default_factory=dict)
    calibration: dict[int, list[calibration.ImageCalibration]] = field(default_factory=dict)

    def add(
        self,
        n: int,
        ged: tuple[float, float, float, float],
        matched: tuple[np.ndarray, np.ndarray, np.ndarray],
        class_iou_matched: np.ndarray,
        calibration: calibration.ImageCalibration | None,
    ) -> None:
        self.ged.setdefault(n, []).append(ged[0])
        within = ged[2]
        self.diversity.setdefault(n, []).append(within * n / (n - 1) if n > 1 else 0.0)
        self.hm_iou.setdefault(n, []).append(float(matched[2].mean()))
        k = class_iou_matched.shape[0]
        s = self.class_iou_sum.setdefault(n, np.zeros(k))
        c = self.class_iou_n.setdefault(n, np.zeros(k, np.int64))
        s += np.nansum(class_iou_matched, axis=1)
        c += np.sum(~np.isnan(class_iou_matched), axis=1)
        if calibration is not None:
            self.calibration.setdefault(n, []).append(calibration)


def _score(
    n: int,
    rows: np.ndarray,
    iou: np.ndarray,
    class_iou: np.ndarray,
    graders: np.ndarray,
    modes: np.ndarray | None,
    truth,
    canonical: np.ndarray | None,
    samples: np.ndarray | None,
    num_classes: int,
    stats: _MethodStats,
) -> None:
    """Score one method on one image from the image's pairwise IoU matrices.

    ``rows`` ``(n,)`` are the rows of the matrices holding the method's samples (repeated rows
    for the deterministic map; mode rows for the oracle); ``samples`` ``(n, H, W)`` their maps
    (needed for flip rates only).
    """
    d = 1.0 - iou
    g = graders
    ged = metrics.ged_from_distances(d[np.ix_(rows, g)], d[np.ix_(rows, rows)], d[np.ix_(g, g)])
    matched = metrics.hungarian_from_iou(iou[np.ix_(rows, g)])
    class_iou_matched = class_iou[:, rows[matched[0]], g[matched[1]]]
    cal = None
    if truth is not None:
        cal = calibration.image_calibration(
            samples,
            truth.modes,
            truth.probs,
            num_classes,
            flip_classes=truth.flip_classes if truth.flip_classes else None,
            iou_sm=iou[np.ix_(rows, modes)],
            canonical=canonical,
        )
    stats.add(n, ged, matched, class_iou_matched, cal)


# -- the evaluation ----------------------------------------------------------------------------


def _session(model_or_session, device: str):
    if hasattr(model_or_session, "set_image") and hasattr(model_or_session, "sample"):
        return model_or_session
    from napari_probunet.session import Session

    return Session(model_or_session, device=device)


def _truth_usable(cases: Sequence) -> tuple[bool, str | None]:
    with_truth = [c.truth is not None for c in cases]
    if not any(with_truth):
        return False, None
    if not all(with_truth):
        return False, (
            f"only {sum(with_truth)} of {len(cases)} cases have a known mode distribution; "
            "oracle and calibration metrics are left out"
        )
    names = {tuple(c.truth.names) for c in cases}
    if len(names) != 1:
        return False, (
            "the cases' modes differ (names or counts); dataset-wide mode frequencies need the "
            "same modes in the same order for every image, so calibration is left out"
        )
    return True, None


def evaluate_model(
    model_or_session,
    cases: Sequence,
    n_samples: Sequence[int] = DEFAULT_SAMPLES,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    n_bins: int = calibration.RELIABILITY_BINS,
    per_image: bool = False,
    neighbours: str = "data",
) -> dict[str, Any]:
    """Evaluate a model on multi-rater cases.

    Args:
        model_or_session: a :class:`~napari_probunet.model.network.ProbUNet` or a
            :class:`~napari_probunet.session.Session` (then ``device`` is ignored).
        cases: a sequence of :class:`~napari_probunet.data.Case` (images ``(H, W[, C])``,
            masks ``(R, H, W)`` with the model's label values; ``truth`` for synthetic data).
        n_samples: sample counts to report (default 16 and 100); the smaller sets are prefixes
            of the largest draw. Calibration's headline numbers use the largest.
        seed: base seed; image ``i`` uses :func:`~napari_probunet.review.seeds.seed_for_index`
            ``(seed, i)``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        progress: a progress bar on stderr.
        n_bins: bins of the reliability table.
        per_image: add per-image GED and HM-IoU lists (key ``per_image``).
        neighbours: a model with ``slice_context``: ``"data"`` (each slice's neighbours in
            ``cases``) or ``"none"`` (the slice repeated, as a single image is given);
            :mod:`napari_probunet.data.context`.

    Returns:
        A JSON-ready dict. Always: ``ged{n}``, ``hm_iou{n}``, ``sample_diversity{n}``,
        ``deterministic_ged{n}``, ``deterministic_hm_iou{n}``, ``grader_diversity``,
        ``prior_sigma_{mean,min,max}``, ``empty_sample_fraction`` (samples with no
        foreground) and ``empty_grader_fraction`` (graders' masks with none),
        ``by_graders_marking`` (the same per number of graders who drew something: ``"0"`` ..
        ``"R"``, each with ``n_images``, ``ged{n}``, ``hm_iou{n}``, ``deterministic_ged{n}``,
        ``empty_samples``, ``empty_graders``), ``n_images``; multi-class:
        ``per_class_iou{n}`` (and ``deterministic_``); with known truth: ``oracle_*`` (of one
        draw; ``oracle_expected_ged{n}`` over all draws), ``ged{n}_over_[expected_]oracle``,
        ``mode_freq_max_abs_err`` (largest n) and ``mode_freq_max_abs_err{n}``,
        ``consistency``, ``ece``, ``reliability``, ``mode_freq``/``mode_prob``, flip rates.
        NaN values (e.g. a class that never occurs) are ``None``.
    """
    start = time.perf_counter()
    counts = sorted({int(n) for n in n_samples})
    if not counts or counts[0] < 1:
        raise UserError(f"sample counts must be positive integers, got {list(n_samples)}")
    if len(cases) == 0:
        raise DataError("no cases to evaluate")
    session = _session(model_or_session, device)
    config = session.config
    cases = with_slice_context(cases, config.slice_context, neighbours)
    use_truth, truth_note = _truth_usable(cases)
    notes = [truth_note] if truth_note else []
    data_classes = getattr(cases, "class_names", None)
    if data_classes is not None and list(data_classes) != list(config.class_names):
        notes.append(
            f"the data's classes {list(data_classes)} differ from the model's "
            f"{list(config.class_names)}; label values are compared as they are"
        )
    run = _Evaluation(session, counts, seed, use_truth, per_image, notes)
    bar = tqdm(range(len(cases)), desc="evaluate", unit="image", file=sys.stderr,
               disable=not progress, leave=False)
    for i in bar:
        run.add_image(i, cases[i])
    bar.close()
    out = run.numbers(cases, n_bins)
    out["seconds"] = time.perf_counter() - start
    return _json_ready(out)


class _Evaluation:
    """The per-image results of one evaluation, and the dataset-wide numbers made of them."""

    def __init__(self, session, counts: list[int], seed: int, use_truth: bool, per_image: bool,
                 notes: list[str]) -> None:
        self.session, self.counts, self.seed = session, counts, seed
        self.use_truth, self.per_image, self.notes = use_truth, per_image, notes
        self.config = session.config
        self.num_classes = int(self.config.num_classes)
        self.stats = {m: _MethodStats() for m in METHODS}
        self.sigmas: list[np.ndarray] = []
        self.grader_div: list[float] = []
        self.empty = self.n_drawn = self.empty_graders = self.n_graders = 0
        #: graders who drew something -> per-image lists of numbers
        self.by_marked: dict[int, dict[str, list[float]]] = {}
        self.image_rows: list[dict[str, Any]] = []
        #: sample count -> per-image expected GED of the oracle (known truth only)
        self.oracle_expected: dict[int, list[float]] = {}
        #: leaks (review/leaks.py): graders who drew something (-1: all images) -> counts of
        #: [leaking samples, non-empty samples, leaking grader masks, non-empty grader masks]
        self.leaks: dict[int, np.ndarray] = {}

    def add_image(self, i: int, case) -> None:
        """Encode case ``i``, sample it once, and score every method at every count."""
        session, num_classes, config = self.session, self.num_classes, self.config
        n_max = self.counts[-1]
        masks = as_label_stack(case.masks, num_classes, f"masks of case {case.case_id!r}")
        session.set_image(case.image)
        samples = session.sample(n_max, seed=seed_for_index(self.seed, i, STREAM_SAMPLES)).labels
        mu, sigma = session.prior()
        det = session.decode(mu)
        if samples.shape[1:] != masks.shape[1:]:
            raise DataError(
                f"case {case.case_id!r}: the model returned {samples.shape[1:]} maps for masks of "
                f"{masks.shape[1:]}"
            )
        if i == 0 and max(case.image.shape[:2]) != config.input_size:
            self.notes.append(
                f"images are {case.image.shape[0]}x{case.image.shape[1]} but the model was "
                f"trained on {config.input_size}x{config.input_size} crops"
            )
        truth = case.truth if self.use_truth else None
        parts = [samples, det[None], masks]
        if truth is not None:
            parts.append(as_label_stack(truth.modes, num_classes, "true modes"))
        class_iou = metrics.pairwise_class_iou(np.concatenate(parts), None, num_classes)
        iou = mean_foreground_iou(class_iou)
        g = np.arange(n_max + 1, n_max + 1 + masks.shape[0])
        self._score_methods(i, samples, det, iou, class_iou, g, truth)
        self._count_image(case, masks, samples, iou, g, sigma)

    def _score_methods(self, i: int, samples: np.ndarray, det: np.ndarray, iou: np.ndarray,
                       class_iou: np.ndarray, g: np.ndarray, truth) -> None:
        """Score the model, the deterministic map and (with truth) the oracle at each count."""
        n_max, num_classes, stats = self.counts[-1], self.num_classes, self.stats
        det_row = n_max
        modes = canonical = oracle_idx = None
        if truth is not None:
            modes = np.arange(g[-1] + 1, g[-1] + 1 + truth.n_modes)
            canonical = calibration.canonical_modes(truth.modes)
            rng = np.random.default_rng(seed_for_index(self.seed, i, STREAM_ORACLE))
            oracle_idx = calibration.oracle_mode_indices(truth.probs, n_max, rng)
            d = 1.0 - iou  # the oracle's expected GED needs only the mode and grader blocks
            blocks = d[np.ix_(modes, g)], d[np.ix_(modes, modes)], d[np.ix_(g, g)]
        for n in self.counts:
            _score(n, np.arange(n), iou, class_iou, g, modes, truth, canonical, samples[:n],
                   num_classes, stats["model"])
            _score(n, np.full(n, det_row), iou, class_iou, g, modes, truth, canonical,
                   det[None], num_classes, stats["deterministic"])
            if truth is not None:
                idx = oracle_idx[:n]
                _score(n, modes[idx], iou, class_iou, g, modes, truth, canonical,
                       truth.modes[idx], num_classes, stats["oracle"])
                self.oracle_expected.setdefault(n, []).append(
                    calibration.expected_oracle_ged(*blocks, truth.probs, n))

    def _count_image(self, case, masks: np.ndarray, samples: np.ndarray, iou: np.ndarray,
                     g: np.ndarray, sigma: np.ndarray) -> None:
        """Grader diversity, empty samples and masks, and the by-graders-marking groups."""
        n_max, counts, stats = self.counts[-1], self.counts, self.stats
        r = masks.shape[0]
        gd = 1.0 - iou[np.ix_(g, g)]
        self.grader_div.append(float(gd.sum() / (r * (r - 1))) if r > 1 else math.nan)
        self.sigmas.append(sigma)
        empty_here = int(np.count_nonzero(samples.reshape(n_max, -1).max(axis=1) == 0))
        self.empty += empty_here
        self.n_drawn += n_max
        drawn = masks.reshape(r, -1).max(axis=1) > 0
        self.empty_graders += int(r - drawn.sum())
        self.n_graders += r
        found = np.array([*leak_counts(samples, masks), *radiologist_leak_counts(masks)])
        for key in (-1, int(drawn.sum())):
            self.leaks[key] = self.leaks.get(key, np.zeros(4, np.int64)) + found
        group = self.by_marked.setdefault(int(drawn.sum()), {})
        group.setdefault("empty_samples", []).append(empty_here / n_max)
        group.setdefault("empty_graders", []).append(1.0 - drawn.mean())
        for n in counts:
            group.setdefault(f"ged{n}", []).append(stats["model"].ged[n][-1])
            group.setdefault(f"hm_iou{n}", []).append(stats["model"].hm_iou[n][-1])
            group.setdefault(f"deterministic_ged{n}", []).append(
                stats["deterministic"].ged[n][-1])
        if self.per_image:
            self.image_rows.append({
                "case_id": case.case_id,
                **{f"ged{n}": stats["model"].ged[n][-1] for n in counts},
                **{f"hm_iou{n}": stats["model"].hm_iou[n][-1] for n in counts},
                f"deterministic_ged{counts[0]}": stats["deterministic"].ged[counts[0]][-1],
            })

    def numbers(self, cases: Sequence, n_bins: int) -> dict[str, Any]:
        """The dataset-wide result (before :func:`_json_ready`; ``seconds`` left to the caller)."""
        config, counts, session, use_truth = self.config, self.counts, self.session, self.use_truth
        sig = np.stack(self.sigmas)
        out: dict[str, Any] = {
            "n_images": len(cases),
            "n_samples": counts,
            "seed": int(self.seed),
            "num_classes": self.num_classes,
            "class_names": list(config.class_names),
            "model_sha256": getattr(session.model, "source_sha256", None),
            "device": str(session.device),
        }
        for method in METHODS:
            if method == "oracle" and not use_truth:
                continue
            out.update(_summarise(method, self.stats[method], counts, config.class_names, n_bins,
                                  flip_probs=cases[0].truth.flip_probs if use_truth else None,
                                  flip_classes=cases[0].truth.flip_classes if use_truth else None))
        out["grader_diversity"] = _nanmean(self.grader_div)
        out["prior_sigma_mean"] = float(sig.mean())
        out["prior_sigma_min"] = float(sig.min())
        out["prior_sigma_max"] = float(sig.max())
        out["prior_sigma_mean_per_dim"] = sig.mean(axis=0).tolist()
        lo, hi = config.logsigma_bounds
        out["prior_sigma_bounds"] = [math.exp(lo), math.exp(hi)]
        out["empty_sample_fraction"] = self.empty / self.n_drawn
        out["empty_grader_fraction"] = self.empty_graders / self.n_graders
        out["by_graders_marking"] = {
            str(k): {"n_images": len(v["empty_samples"]),
                     **{key: float(np.mean(vals)) for key, vals in v.items()},
                     **_leak_shares(self.leaks[k])}
            for k, v in sorted(self.by_marked.items())
        }
        out.update(_leak_shares(self.leaks[-1]))
        out["leak_margin_px"] = LEAK_MARGIN
        if use_truth:
            out["mode_names"] = list(cases[0].truth.names)
            for n in counts:
                o, m, dt = out[f"oracle_ged{n}"], out[f"ged{n}"], out[f"deterministic_ged{n}"]
                out[f"ged{n}_over_oracle"] = m / o if o > 0 else math.nan
                e = out[f"oracle_expected_ged{n}"] = float(np.mean(self.oracle_expected[n]))
                out[f"ged{n}_over_expected_oracle"] = m / e if e > 0 else math.nan
                out[f"ged{n}_gap_closed"] = (dt - m) / (dt - o) if dt != o else math.nan
        if self.notes:
            out["notes"] = self.notes
        if self.per_image:
            out["per_image"] = self.image_rows
        return out


def _leak_shares(c: np.ndarray) -> dict[str, float]:
    """``leak_share`` (of the non-empty samples, a piece touching no grader's mask dilated by
    :data:`~napari_probunet.review.leaks.MARGIN` pixels) and ``leak_share_graders`` (of the
    non-empty grader masks, against the other graders'); NaN where none is non-empty."""
    return {"leak_share": c[0] / c[1] if c[1] else math.nan,
            "leak_share_graders": c[2] / c[3] if c[3] else math.nan}


def _nanmean(values) -> float:
    a = np.asarray(values, np.float64)
    return float(np.nanmean(a)) if np.any(~np.isnan(a)) else math.nan


def _summarise(
    method: str,
    st: _MethodStats,
    counts: list[int],
    class_names: Sequence[str],
    n_bins: int,
    flip_probs: np.ndarray | None,
    flip_classes: Sequence[tuple[int, int]] | None,
) -> dict[str, Any]:
    """Dataset-wide numbers of one method, keys prefixed ``deterministic_`` / ``oracle_``."""
    p = "" if method == "model" else f"{method}_"
    out: dict[str, Any] = {}
    multi = len(class_names) > 2
    for n in counts:
        out[f"{p}ged{n}"] = float(np.mean(st.ged[n]))
        out[f"{p}hm_iou{n}"] = float(np.mean(st.hm_iou[n]))
        if method != "deterministic":
            out[f"{p}sample_diversity{n}"] = float(np.mean(st.diversity[n]))
        if multi:
            with np.errstate(invalid="ignore", divide="ignore"):
                per = st.class_iou_sum[n] / st.class_iou_n[n]
            out[f"{p}per_class_iou{n}"] = {
                class_names[c + 1]: float(v) for c, v in enumerate(per)
            }
    if not st.calibration:
        return out
    for n in counts:
        cal = calibration.summarize_calibration(st.calibration[n], n_bins, flip_probs)
        out[f"{p}mode_freq{n}"] = cal["mode_freq"].tolist()
        out[f"{p}mode_freq_max_abs_err{n}"] = cal["mode_freq_max_abs_err"]
        out[f"{p}consistency{n}"] = cal["consistency"]
        out[f"{p}ece{n}"] = cal["ece"]
        if n == counts[-1]:
            out[f"{p}mode_freq"] = cal["mode_freq"].tolist()
            out[f"{p}mode_freq_max_abs_err"] = cal["mode_freq_max_abs_err"]
            out[f"{p}consistency"] = cal["consistency"]
            out[f"{p}ece"] = cal["ece"]
            out[f"{p}reliability"] = cal["reliability"].to_dict()
            if method == "model":
                out["mode_prob"] = cal["mode_prob"].tolist()
            if "flip_rate" in cal:
                out[f"{p}flip_rate"] = {
                    class_names[orig]: float(r)
                    for (orig, _), r in zip(flip_classes, cal["flip_rate"])
                }
                if method == "model" and flip_probs is not None:
                    out["flip_prob"] = {
                        class_names[orig]: float(q)
                        for (orig, _), q in zip(flip_classes, flip_probs)
                    }
    return out


def _json_ready(x):
    """numpy scalars/arrays to Python, NaN/inf to None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_ready(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def open_data(spec: str):
    """Cases from a folder or a ``synthetic:KIND?n=N&seed=S`` spec; ``(cases, canonical spec)``."""
    cases = open_cases(spec)
    return cases, getattr(cases, "spec", str(spec))
