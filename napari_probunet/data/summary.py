"""Dataset statistics: what ``probunet data info`` prints, as JSON-friendly dicts.

:func:`summarize` takes one pass over any sequence of cases (counts, sizes, graders, intensity
range, empty masks, and for synthetic data the modes); :func:`split_table` counts the cases,
patients and nodules of every part of a split from the ids alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from napari_probunet.data.case import Case
from napari_probunet.data.readers import open_cases
from napari_probunet.data.splits import SPLIT_PARTS, parse_split, split_cases


def _id_counts(cases: Sequence[Case]) -> dict:
    """Patients and nodules, where the data carries such ids (LIDC-IDRI slices)."""
    if hasattr(cases, "ids_of"):
        return {"patients": len(set(cases.ids_of("patient"))),
                "nodules": len(set(cases.ids_of("nodule")))}
    return {}


def summarize(cases: Sequence[Case]) -> dict:
    """Dataset statistics as a JSON-friendly dict (one pass over ``cases``)."""
    shapes: Counter = Counter()
    graders: Counter = Counter()
    classes: set[int] = set()
    groups: set[str] = set()
    lo, hi, total_masks, empty_masks, all_empty, some_empty, fg = np.inf, -np.inf, 0, 0, 0, 0, []
    mode_prob: dict[str, list[float]] = {}
    mode_count: Counter = Counter()
    flip_hits = flip_probs = None
    n = 0
    for case in cases:
        n += 1
        shapes[tuple(int(s) for s in case.image.shape)] += 1
        graders[case.n_graders] += 1
        lo, hi = min(lo, float(case.image.min())), max(hi, float(case.image.max()))
        classes.update(int(v) for v in np.unique(case.masks))
        if case.group_id is not None:
            groups.add(case.group_id)
        empty = ~case.masks.reshape(case.n_graders, -1).any(axis=1)
        total_masks += case.n_graders
        empty_masks += int(empty.sum())
        all_empty += bool(empty.all())
        some_empty += bool(empty.any() and not empty.all())
        fg.append(float((case.masks > 0).mean()))
        truth = case.truth
        if truth is not None:
            for name, p in zip(truth.names, truth.probs):
                mode_prob.setdefault(name, []).append(float(p))
            if case.grader_modes is not None:
                mode_count.update(truth.names[int(m)] for m in case.grader_modes)
            if truth.flip_probs is not None and case.grader_modes is not None:
                bits = np.array([[c == "1" for c in truth.names[int(m)]]
                                 for m in case.grader_modes])
                flip_hits = bits.sum(0) + (0 if flip_hits is None else flip_hits)
                flip_probs = truth.flip_probs
    summary: dict = {
        "cases": n,
        **_id_counts(cases),
        "image_shapes": {"x".join(map(str, s)): c for s, c in sorted(shapes.items())},
        "graders_per_case": {str(k): v for k, v in sorted(graders.items())},
        "intensity_range": [lo, hi] if n else None,
        "classes_present": sorted(classes),
        "groups": len(groups) if groups else None,
        "grader_masks": total_masks,
        "empty_mask_fraction": empty_masks / total_masks if total_masks else None,
        "cases_all_graders_empty": all_empty,
        "cases_some_graders_empty": some_empty,
        "mean_foreground_fraction": float(np.mean(fg)) if fg else None,
    }
    if mode_prob:
        graded = sum(mode_count.values())
        summary["modes"] = {
            name: {"mean_true_prob": float(np.mean(p)),
                   "grader_freq": mode_count[name] / graded if graded else None}
            for name, p in mode_prob.items()
        }
    if flip_hits is not None:
        summary["flip_rates"] = {
            f"class {j + 1}": {"true": float(flip_probs[j]), "graders": float(flip_hits[j])
                               / sum(mode_count.values())}
            for j in range(len(flip_hits))
        }
    return summary


def split_table(source: str) -> dict:
    """``SOURCE#fractions=..&seed=..&by=..`` (no ``part=``): cases, patients and nodules of each
    part of that split, read from the ids only."""
    base, fragment = source.split("#", 1)
    _, fractions, seed, by = parse_split("part=train&" + fragment)
    cases = open_cases(base)
    parts = split_cases(cases, fractions, seed, by=by)
    table = {}
    for name, part in zip(SPLIT_PARTS, parts):
        if hasattr(part, "ids_of"):
            row = {"cases": len(part), **_id_counts(part)}
        else:
            groups = {c.group_id for c in part if c.group_id is not None}
            row = {"cases": len(part), "groups": len(groups)}
        table[name] = row
    return {"source": base, "split": {"fractions": list(fractions), "seed": seed, "by": by},
            "parts": table}
