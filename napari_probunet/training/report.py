"""The report of ``probunet evaluate`` on screen: the result of
:func:`~napari_probunet.training.evaluate.evaluate_model` as a readable table.

From the top: the model and the data; one row per metric with a column per method (model,
deterministic, and the oracle where the truth is known); the model's GED against the oracle
and the prior's sigmas; then a section each where the result has one (by graders who drew
something, the baseline model, per-class IoU, mode frequencies, the reliability table, flip
rates) and the notes. Missing numbers and NaNs show as ``-``. ``--json`` prints the result
itself instead (:mod:`napari_probunet.cli.evaluate`).
"""

from __future__ import annotations

from typing import Any

#: the key prefix of each method's numbers in the result
_PREFIX = {"model": "", "deterministic": "deterministic_", "oracle": "oracle_"}


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
    lines = _header_lines(result)
    for section in (_metric_lines, _summary_lines, _groups_lines, _baseline_lines,
                    _per_class_lines, _mode_lines, _reliability_lines, _flip_lines):
        lines += section(result, counts, has_oracle)
    for note in result.get("notes", []):
        lines += [f"note: {note}"]
    return "\n".join(lines)


def _header_lines(result: dict[str, Any]) -> list[str]:
    """The model (and its sha256) and the data (images, seed, device, time)."""
    return [
        f"model   {result.get('model', '?')}  (sha256 {str(result.get('model_sha256'))[:12]})",
        f"data    {result.get('data', '?')}  ({result['n_images']} images, seed {result['seed']}, "
        f"{result['device']}, {result['seconds']:.1f} s)",
        "",
    ]


def _metric_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """The table of metrics: a row per metric and sample count, a column per method; rows
    with no number in any column are left out."""
    cols = ["model", "deterministic"] + (["oracle"] if has_oracle else [])
    lines = [f"{'metric':<28}" + "".join(f"{c:>15}" for c in cols)]

    def row(label: str, key: str, digits: int = 3) -> None:
        cells = [result.get(_PREFIX[c] + key) for c in cols]
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
    return lines


def _summary_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """The model's GED against the oracle's (known truth), then the prior's sigmas, the empty
    samples and masks, and the graders' diversity."""
    lines: list[str] = []
    if has_oracle:
        n = counts[0]
        lines.append(
            f"GED({n}) = {_fmt(result.get(f'ged{n}_over_oracle'), 2)} x oracle (this draw), "
            f"{_fmt(result.get(f'ged{n}_over_expected_oracle'), 2)} x its expectation; closes "
            f"{_fmt(result.get(f'ged{n}_gap_closed'), 2)} of the deterministic-oracle gap"
        )
    bounds = result["prior_sigma_bounds"]
    lines.append(
        f"prior sigma mean {_fmt(result['prior_sigma_mean'])}, "
        f"min {_fmt(result['prior_sigma_min'])}, "
        f"max {_fmt(result['prior_sigma_max'])} (bounds {_fmt(bounds[0], 4)}"
        f"..{_fmt(bounds[1], 2)}); empty samples "
        f"{_fmt(result['empty_sample_fraction'])} (graders' masks empty: "
        f"{_fmt(result.get('empty_grader_fraction'))}); grader diversity "
        f"{_fmt(result['grader_diversity'])}"
    )
    if "leak_share" in result:
        lines.append(
            f"leaks (non-empty masks with a piece touching no grader's mask, "
            f"+{result.get('leak_margin_px')} px): samples {_fmt(result['leak_share'])}, "
            f"graders against each other {_fmt(result.get('leak_share_graders'))}")
    return lines



def _groups_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """The table by the number of graders who drew something (when there are two groups)."""
    lines: list[str] = []
    groups = result.get("by_graders_marking") or {}
    if len(groups) > 1:
        n = counts[0]
        lines += ["", f"by graders who drew something   images  GED({n})  HM-IoU({n})  "
                  f"determ. GED({n})  empty samples  empty masks  leaks  graders' leaks"]
        for k, g in groups.items():
            lines.append(
                f"  {k:>2} graders{'':<20}{g['n_images']:>7}{_fmt(g.get(f'ged{n}')):>9}"
                f"{_fmt(g.get(f'hm_iou{n}')):>13}{_fmt(g.get(f'deterministic_ged{n}')):>17}"
                f"{_fmt(g.get('empty_samples')):>15}{_fmt(g.get('empty_graders')):>13}"
                f"{_fmt(g.get('leak_share')):>7}{_fmt(g.get('leak_share_graders')):>16}")
    return lines


def _baseline_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """The baseline model's GED and HM-IoU beside the model's."""
    lines: list[str] = []
    baseline = result.get("baseline")
    if baseline:
        lines += ["", f"baseline {baseline.get('model')}:"]
        for n in counts:
            ged, hm_iou = f"ged{n}", f"hm_iou{n}"
            lines.append(f"  GED({n}) {_fmt(baseline.get(ged))}   HM-IoU({n}) "
                         f"{_fmt(baseline.get(hm_iou))}   (model: {_fmt(result.get(ged))}, "
                         f"{_fmt(result.get(hm_iou))})")
        lines.append(f"  empty samples {_fmt(baseline.get('empty_sample_fraction'))}")
    return lines


def _per_class_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """Per-class IoU of the Hungarian-matched pairs (multi-class models)."""
    lines: list[str] = []
    per_class = result.get(f"per_class_iou{counts[0]}")
    if per_class:
        lines += ["", f"per-class IoU({counts[0]}, Hungarian-matched pairs)"]
        det = result.get(f"deterministic_per_class_iou{counts[0]}", {})
        for name, v in per_class.items():
            lines.append(f"  {name:<20}{_fmt(v):>10}   deterministic {_fmt(det.get(name))}")
    return lines


def _mode_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """True probability against sampled frequency of each mode (known truth)."""
    lines: list[str] = []
    if "mode_prob" in result:
        names = result.get("mode_names") or [str(i) for i in range(len(result["mode_prob"]))]
        lines += ["", f"{'mode':<12}{'true prob':>10}{'model':>10}"
                  + ("" if not has_oracle else f"{'oracle':>10}")]
        for k, name in enumerate(names):
            lines.append(
                f"{name:<12}{_fmt(result['mode_prob'][k]):>10}{_fmt(result['mode_freq'][k]):>10}"
                + (f"{_fmt(result['oracle_mode_freq'][k]):>10}" if has_oracle else "")
            )
    return lines


def _reliability_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """The reliability table and its ECE (known truth)."""
    lines: list[str] = []
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
    return lines


def _flip_lines(result: dict[str, Any], counts: list[int], has_oracle: bool) -> list[str]:
    """Flip rates of the flips data: true, model, deterministic, oracle."""
    lines: list[str] = []
    if "flip_rate" in result:
        lines += ["", f"{'flip rate':<14}{'true':>8}{'model':>8}{'determ.':>9}{'oracle':>8}"]
        for name, v in result["flip_rate"].items():
            lines.append(
                f"{name:<14}{_fmt(result['flip_prob'][name]):>8}{_fmt(v):>8}"
                f"{_fmt(result['deterministic_flip_rate'][name]):>9}"
                f"{_fmt(result['oracle_flip_rate'][name]):>8}"
            )
    return lines

