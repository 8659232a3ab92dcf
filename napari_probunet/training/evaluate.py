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
``(seed, i)``, and its oracle draw from ``(seed, i, 1)``, so any seed reproduces.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_probunet.errors import DataError, UserError
from napari_probunet.review import metrics

DEFAULT_SAMPLES = (16, 100)
METHODS = ("model", "deterministic", "oracle")


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 32-bit seed for image ``index``: stream 0 = model samples, 1 = oracle draw."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1)[0])


# -- accumulating per-image results ------------------------------------------------------------


@dataclass
class _MethodStats:
    """Per-image results of one method, for each sample count."""

    ged: dict[int, list[float]] = field(default_factory=dict)
    diversity: dict[int, list[float]] = field(default_factory=dict)
    hm_iou: dict[int, list[float]] = field(default_factory=dict)
    class_iou_sum: dict[int, np.ndarray] = field(default_factory=dict)
    class_iou_n: dict[int, np.ndarray] = field(default_factory=dict)
    calibration: dict[int, list[metrics.ImageCalibration]] = field(default_factory=dict)

    def add(
        self,
        n: int,
        ged: tuple[float, float, float, float],
        matched: tuple[np.ndarray, np.ndarray, np.ndarray],
        class_iou_matched: np.ndarray,
        calibration: metrics.ImageCalibration | None,
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
        cal = metrics.image_calibration(
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
    n_bins: int = metrics.RELIABILITY_BINS,
    per_image: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on multi-rater cases.

    Args:
        model_or_session: a :class:`~napari_probunet.model.network.ProbUNet` or a
            :class:`~napari_probunet.session.Session` (then ``device`` is ignored).
        cases: a sequence of :class:`~napari_probunet.data.Case` (images ``(H, W[, C])``,
            masks ``(R, H, W)`` with the model's label values; ``truth`` for synthetic data).
        n_samples: sample counts to report (default 16 and 100); the smaller sets are prefixes
            of the largest draw. Calibration's headline numbers use the largest.
        seed: base seed; image ``i`` uses :func:`image_seed` ``(seed, i)``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        progress: a progress bar on stderr.
        n_bins: bins of the reliability table.
        per_image: add per-image GED and HM-IoU lists (key ``per_image``).

    Returns:
        A JSON-ready dict. Always: ``ged{n}``, ``hm_iou{n}``, ``sample_diversity{n}``,
        ``deterministic_ged{n}``, ``deterministic_hm_iou{n}``, ``grader_diversity``,
        ``prior_sigma_{mean,min,max}``, ``empty_sample_fraction`` (samples with no
        foreground) and ``empty_grader_fraction`` (graders' masks with none),
        ``by_graders_marking`` (the same per number of graders who drew something: ``"0"`` ..
        ``"R"``, each with ``n_images``, ``ged{n}``, ``hm_iou{n}``, ``deterministic_ged{n}``,
        ``empty_samples``, ``empty_graders``), ``n_images``; multi-class:
        ``per_class_iou{n}`` (and ``deterministic_``); with known truth: ``oracle_*``,
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
    n_max = counts[-1]
    session = _session(model_or_session, device)
    config = session.config
    num_classes = int(config.num_classes)
    use_truth, truth_note = _truth_usable(cases)
    notes = [truth_note] if truth_note else []
    data_classes = getattr(cases, "class_names", None)
    if data_classes is not None and list(data_classes) != list(config.class_names):
        notes.append(
            f"the data's classes {list(data_classes)} differ from the model's "
            f"{list(config.class_names)}; label values are compared as they are"
        )
    stats = {m: _MethodStats() for m in METHODS}
    sigmas, empty, n_drawn, grader_div = [], 0, 0, []
    empty_graders, n_graders = 0, 0
    by_marked: dict[int, dict[str, list[float]]] = {}  # graders who drew something -> per image
    image_rows: list[dict[str, Any]] = []

    from tqdm import tqdm

    bar = tqdm(range(len(cases)), desc="evaluate", unit="image", file=sys.stderr,
               disable=not progress, leave=False)
    for i in bar:
        case = cases[i]
        masks = metrics.as_label_stack(case.masks, num_classes, f"masks of case {case.case_id!r}")
        session.set_image(case.image)
        samples = session.sample(n_max, seed=image_seed(seed, i)).labels
        mu, sigma = session.prior()
        det = session.decode(mu)
        if samples.shape[1:] != masks.shape[1:]:
            raise DataError(
                f"case {case.case_id!r}: the model returned {samples.shape[1:]} maps for masks of "
                f"{masks.shape[1:]}"
            )
        if i == 0 and max(case.image.shape[:2]) != config.input_size:
            notes.append(
                f"images are {case.image.shape[0]}x{case.image.shape[1]} but the model was "
                f"trained on {config.input_size}x{config.input_size} crops"
            )
        truth = case.truth if use_truth else None
        parts = [samples, det[None], masks]
        if truth is not None:
            parts.append(metrics.as_label_stack(truth.modes, num_classes, "true modes"))
        class_iou = metrics.pairwise_class_iou(np.concatenate(parts), None, num_classes)
        iou = metrics.mean_foreground_iou(class_iou)
        det_row = n_max
        g = np.arange(n_max + 1, n_max + 1 + masks.shape[0])
        modes = canonical = oracle_idx = None
        if truth is not None:
            modes = np.arange(g[-1] + 1, g[-1] + 1 + truth.n_modes)
            canonical = metrics.canonical_modes(truth.modes)
            rng = np.random.default_rng(image_seed(seed, i, 1))
            oracle_idx = metrics.oracle_mode_indices(truth.probs, n_max, rng)
        for n in counts:
            _score(n, np.arange(n), iou, class_iou, g, modes, truth, canonical, samples[:n],
                   num_classes, stats["model"])
            _score(n, np.full(n, det_row), iou, class_iou, g, modes, truth, canonical,
                   det[None], num_classes, stats["deterministic"])
            if truth is not None:
                idx = oracle_idx[:n]
                _score(n, modes[idx], iou, class_iou, g, modes, truth, canonical,
                       truth.modes[idx], num_classes, stats["oracle"])
        r = masks.shape[0]
        gd = 1.0 - iou[np.ix_(g, g)]
        grader_div.append(float(gd.sum() / (r * (r - 1))) if r > 1 else math.nan)
        sigmas.append(sigma)
        empty_here = int(np.count_nonzero(samples.reshape(n_max, -1).max(axis=1) == 0))
        empty += empty_here
        n_drawn += n_max
        drawn = masks.reshape(r, -1).max(axis=1) > 0
        empty_graders += int(r - drawn.sum())
        n_graders += r
        group = by_marked.setdefault(int(drawn.sum()), {})
        group.setdefault("empty_samples", []).append(empty_here / n_max)
        group.setdefault("empty_graders", []).append(1.0 - drawn.mean())
        for n in counts:
            group.setdefault(f"ged{n}", []).append(stats["model"].ged[n][-1])
            group.setdefault(f"hm_iou{n}", []).append(stats["model"].hm_iou[n][-1])
            group.setdefault(f"deterministic_ged{n}", []).append(
                stats["deterministic"].ged[n][-1])
        if per_image:
            image_rows.append({
                "case_id": case.case_id,
                **{f"ged{n}": stats["model"].ged[n][-1] for n in counts},
                **{f"hm_iou{n}": stats["model"].hm_iou[n][-1] for n in counts},
                f"deterministic_ged{counts[0]}": stats["deterministic"].ged[counts[0]][-1],
            })
    bar.close()

    sig = np.stack(sigmas)
    out: dict[str, Any] = {
        "n_images": len(cases),
        "n_samples": counts,
        "seed": int(seed),
        "num_classes": num_classes,
        "class_names": list(config.class_names),
        "model_sha256": getattr(session.model, "source_sha256", None),
        "device": str(session.device),
    }
    for method in METHODS:
        if method == "oracle" and not use_truth:
            continue
        out.update(_summarise(method, stats[method], counts, config.class_names, n_bins,
                              flip_probs=cases[0].truth.flip_probs if use_truth else None,
                              flip_classes=cases[0].truth.flip_classes if use_truth else None))
    out["grader_diversity"] = _nanmean(grader_div)
    out["prior_sigma_mean"] = float(sig.mean())
    out["prior_sigma_min"] = float(sig.min())
    out["prior_sigma_max"] = float(sig.max())
    out["prior_sigma_mean_per_dim"] = sig.mean(axis=0).tolist()
    lo, hi = config.logsigma_bounds
    out["prior_sigma_bounds"] = [math.exp(lo), math.exp(hi)]
    out["empty_sample_fraction"] = empty / n_drawn
    out["empty_grader_fraction"] = empty_graders / n_graders
    out["by_graders_marking"] = {
        str(k): {"n_images": len(v["empty_samples"]),
                 **{key: float(np.mean(vals)) for key, vals in v.items()}}
        for k, v in sorted(by_marked.items())
    }
    if use_truth:
        out["mode_names"] = list(cases[0].truth.names)
        for n in counts:
            o, m, dt = out[f"oracle_ged{n}"], out[f"ged{n}"], out[f"deterministic_ged{n}"]
            out[f"ged{n}_over_oracle"] = m / o if o > 0 else math.nan
            out[f"ged{n}_gap_closed"] = (dt - m) / (dt - o) if dt != o else math.nan
    if notes:
        out["notes"] = notes
    if per_image:
        out["per_image"] = image_rows
    out["seconds"] = time.perf_counter() - start
    return _json_ready(out)


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
        cal = metrics.summarize_calibration(st.calibration[n], n_bins, flip_probs)
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
                    class_names[orig]: float(r) for (orig, _), r in zip(flip_classes, cal["flip_rate"])
                }
                if method == "model" and flip_probs is not None:
                    out["flip_prob"] = {
                        class_names[orig]: float(q) for (orig, _), q in zip(flip_classes, flip_probs)
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


# -- the table on screen -----------------------------------------------------------------------


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_report(result: dict[str, Any]) -> str:
    """A readable table: one row per metric, columns model / deterministic / oracle."""
    counts = result["n_samples"]
    has_oracle = f"oracle_ged{counts[0]}" in result
    cols = ["model", "deterministic"] + (["oracle"] if has_oracle else [])
    prefix = {"model": "", "deterministic": "deterministic_", "oracle": "oracle_"}
    lines = [
        f"model   {result.get('model', '?')}  (sha256 {str(result.get('model_sha256'))[:12]})",
        f"data    {result.get('data', '?')}  ({result['n_images']} images, seed {result['seed']}, "
        f"{result['device']}, {result['seconds']:.1f} s)",
        "",
        f"{'metric':<28}" + "".join(f"{c:>15}" for c in cols),
    ]

    def row(label: str, key: str, digits: int = 3) -> None:
        cells = [result.get(prefix[c] + key) for c in cols]
        if all(v is None for v in cells):
            return
        lines.append(f"{label:<28}" + "".join(f"{_fmt(v, digits):>15}" for v in cells))

    for n in counts:
        row(f"GED({n})  lower is better", f"ged{n}")
    for n in counts:
        row(f"HM-IoU({n})", f"hm_iou{n}")
    for n in counts:
        row(f"sample diversity({n})", f"sample_diversity{n}")
    if has_oracle:
        for n in counts:
            row(f"mode freq max err({n})", f"mode_freq_max_abs_err{n}")
        for n in counts:
            row(f"consistency({n}) IoU>=0.9", f"consistency{n}")
        for n in counts:
            row(f"ECE({n})", f"ece{n}")
    lines.append("")
    if has_oracle:
        n = counts[0]
        lines.append(
            f"GED({n}) = {_fmt(result.get(f'ged{n}_over_oracle'), 2)} x oracle; closes "
            f"{_fmt(result.get(f'ged{n}_gap_closed'), 2)} of the deterministic-oracle gap"
        )
    lines.append(
        f"prior sigma mean {_fmt(result['prior_sigma_mean'])}, min {_fmt(result['prior_sigma_min'])}, "
        f"max {_fmt(result['prior_sigma_max'])} (bounds {_fmt(result['prior_sigma_bounds'][0], 4)}"
        f"..{_fmt(result['prior_sigma_bounds'][1], 2)}); empty samples "
        f"{_fmt(result['empty_sample_fraction'])} (graders' masks empty: "
        f"{_fmt(result.get('empty_grader_fraction'))}); grader diversity "
        f"{_fmt(result['grader_diversity'])}"
    )
    groups = result.get("by_graders_marking") or {}
    if len(groups) > 1:
        n = counts[0]
        lines += ["", f"by graders who drew something   images  GED({n})  HM-IoU({n})  "
                  f"determ. GED({n})  empty samples  empty masks"]
        for k, g in groups.items():
            lines.append(
                f"  {k:>2} graders{'':<20}{g['n_images']:>7}{_fmt(g.get(f'ged{n}')):>9}"
                f"{_fmt(g.get(f'hm_iou{n}')):>13}{_fmt(g.get(f'deterministic_ged{n}')):>17}"
                f"{_fmt(g.get('empty_samples')):>15}{_fmt(g.get('empty_graders')):>13}")
    baseline = result.get("baseline")
    if baseline:
        lines += ["", f"baseline {baseline.get('model')}:"]
        for n in counts:
            lines.append(f"  GED({n}) {_fmt(baseline.get(f'ged{n}'))}   HM-IoU({n}) "
                         f"{_fmt(baseline.get(f'hm_iou{n}'))}   (model: {_fmt(result.get(f'ged{n}'))}, "
                         f"{_fmt(result.get(f'hm_iou{n}'))})")
        lines.append(f"  empty samples {_fmt(baseline.get('empty_sample_fraction'))}")
    per_class = result.get(f"per_class_iou{counts[0]}")
    if per_class:
        lines += ["", f"per-class IoU({counts[0]}, Hungarian-matched pairs)"]
        det = result.get(f"deterministic_per_class_iou{counts[0]}", {})
        for name, v in per_class.items():
            lines.append(f"  {name:<20}{_fmt(v):>10}   deterministic {_fmt(det.get(name))}")
    if "mode_prob" in result:
        names = result.get("mode_names") or [str(i) for i in range(len(result["mode_prob"]))]
        lines += ["", f"{'mode':<12}{'true prob':>10}{'model':>10}"
                  + ("" if not has_oracle else f"{'oracle':>10}")]
        for k, name in enumerate(names):
            lines.append(
                f"{name:<12}{_fmt(result['mode_prob'][k]):>10}{_fmt(result['mode_freq'][k]):>10}"
                + (f"{_fmt(result['oracle_mode_freq'][k]):>10}" if has_oracle else "")
            )
    rel = result.get("reliability")
    if rel:
        lines += ["", f"reliability ({counts[-1]} samples): per (image, mode), binned by true prob"]
        lines.append(f"  {'bin':<12}{'count':>7}{'true prob':>11}{'sampled':>10}")
        for b in range(len(rel["count"])):
            lo, hi = rel["edges"][b], rel["edges"][b + 1]
            lines.append(
                f"  {lo:.1f}-{hi:.1f}     {rel['count'][b]:>7}{_fmt(rel['mean_prob'][b]):>11}"
                f"{_fmt(rel['mean_freq'][b]):>10}"
            )
        lines.append(f"  ECE {_fmt(rel['ece'])}")
    if "flip_rate" in result:
        lines += ["", f"{'flip rate':<14}{'true':>8}{'model':>8}{'determ.':>9}{'oracle':>8}"]
        for name, v in result["flip_rate"].items():
            lines.append(
                f"{name:<14}{_fmt(result['flip_prob'][name]):>8}{_fmt(v):>8}"
                f"{_fmt(result['deterministic_flip_rate'][name]):>9}"
                f"{_fmt(result['oracle_flip_rate'][name]):>8}"
            )
    for note in result.get("notes", []):
        lines += [f"note: {note}"]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------


def open_data(spec: str):
    """Cases from a folder or a ``synthetic:KIND?n=N&seed=S`` spec; ``(cases, canonical spec)``."""
    try:
        from napari_probunet.data import open_cases
    except ImportError:
        try:
            from napari_probunet.data.readers import open_cases
        except ImportError:  # readers not available: synthetic specs still work
            open_cases = None
    if open_cases is not None:
        cases = open_cases(spec)
    elif str(spec).strip().lower().startswith("synthetic:"):
        from napari_probunet.data.synthetic import SyntheticDataset, parse_synthetic_spec

        cases = SyntheticDataset(**parse_synthetic_spec(spec))
    else:
        raise DataError(f"cannot read {spec!r}: this installation only reads synthetic: specs")
    return cases, getattr(cases, "spec", str(spec))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="model file (.safetensors), or a bundled model: lidc (lung nodule, CT), "
                        "lesions (synthetic demo), default")
    parser.add_argument("--data", required=True,
                        help="a multi-rater folder, or synthetic:KIND?n=N&seed=S[&size=H]")
    parser.add_argument("--samples", type=int, nargs="+", default=list(DEFAULT_SAMPLES),
                        metavar="N", help="sample counts to report (default: 16 100)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                        help="auto = CUDA, then MPS, then CPU")
    parser.add_argument("--bins", type=int, default=metrics.RELIABILITY_BINS,
                        help="bins of the reliability table (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout (progress goes to stderr)")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE")
    parser.add_argument("--per-image", action="store_true", help="include per-image numbers")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch CPU threads (default: torch's choice; 1 is often faster "
                        "for small models on a busy machine)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--baseline", metavar="MODEL",
                        help="also evaluate this model (e.g. a trained deterministic U-Net, "
                        "recipes/lidc_unet.toml) on the same data and report it beside")


def run(args: argparse.Namespace) -> int:
    import os
    from contextlib import suppress

    from napari_probunet.model.modelfile import load_model

    if args.bins < 1:
        raise UserError("--bins must be at least 1")
    from napari_probunet.files import check_writable

    out = check_writable(args.out, "result.json")  # before any work: fail fast, nothing lost
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    cases, spec = open_data(args.data)
    model = load_model(args.model, device="cpu")
    baseline = load_model(args.baseline, device="cpu") if args.baseline else None  # fail fast
    result = evaluate_model(model, cases, n_samples=args.samples, seed=args.seed,
                            device=args.device, progress=not args.quiet, n_bins=args.bins,
                            per_image=args.per_image)
    result = {"model": str(args.model), "data": spec, **result}
    if baseline is not None:
        base = evaluate_model(baseline, cases,
                              n_samples=args.samples, seed=args.seed, device=args.device,
                              progress=not args.quiet, n_bins=args.bins)
        result["baseline"] = {"model": str(args.baseline), **base}
    text = json.dumps(result, indent=2, allow_nan=False)
    if out is not None:
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text + "\n")
            tmp.replace(out)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink()
            print(text)  # the evaluation is not lost
            raise UserError(f"cannot write --out {out} ({exc.strerror or exc}); the result "
                            "was printed above instead") from None
    if args.json:
        for note in result.get("notes", []):
            print(f"probunet evaluate: note: {note}", file=sys.stderr)
        print(text)
    else:
        print(format_report(result))
        if args.out:
            print(f"\nwrote {args.out}")
    return 0
