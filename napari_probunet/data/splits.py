"""Deterministic splits of a dataset into train / val / test parts that never share a patient.

``open_cases("<source>#part=train&fractions=0.8,0.1,0.1&seed=0&by=patient")``
(:func:`~napari_probunet.data.readers.open_cases`) names one part, so training and evaluation
can name the same held-out cases; :func:`split_cases` does the splitting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_probunet.data.case import Case
from napari_probunet.errors import DataError

SPLIT_PARTS = ("train", "val", "test")


SPLIT_UNITS = ("group", "patient", "nodule", "case")


def parse_split(fragment: str) -> tuple[str, tuple[float, ...], int, str]:
    """``part=train&fractions=0.8,0.1,0.1&seed=0&by=patient`` -> (part, fractions, seed, by)."""
    items = [item.split("=", 1) for item in fragment.split("&") if "=" in item]
    fields = dict(items)
    repeated = sorted({k for k, _ in items if sum(key == k for key, _ in items) > 1})
    if repeated:
        raise DataError(f"bad split '#{fragment}': {', '.join(repeated)} given more than once; "
                        "give each of part, fractions, seed and by at most once")
    unknown = set(fields) - {"part", "fractions", "seed", "by"}
    part = fields.get("part", "")
    by = fields.get("by", "group")
    if unknown or part not in SPLIT_PARTS or by not in SPLIT_UNITS:
        raise DataError(
            f"bad split '#{fragment}': use '#part=train|val|test' with optional "
            "'&fractions=0.8,0.1,0.1&seed=0&by=patient' (by: group, patient, nodule or case)"
        )
    try:
        fractions = tuple(float(f) for f in fields.get("fractions", "0.8,0.1,0.1").split(","))
        seed = int(fields.get("seed", "0")) if len(fields.get("seed", "0")) <= 20 else -1
    except ValueError as exc:
        raise DataError(f"bad split '#{fragment}': {exc}") from exc
    if len(fractions) != 3:
        raise DataError(f"bad split '#{fragment}': give three fractions (train, val, test)")
    if not 0 <= seed < 2**63:
        raise DataError(f"bad split '#{fragment}': the seed must be a whole number from 0 to "
                        f"2**63 - 1, not {seed}")
    return part, fractions, seed, by


def split_groups(cases: Sequence[Case], by: str = "group") -> list[str | None]:
    """The id that keeps cases together in a split: ``by="group"`` (or ``"patient"``) the
    ``group_id``, ``"nodule"`` the nodule id where the data has one, ``"case"`` none."""
    if by not in SPLIT_UNITS:
        raise DataError(f"unknown split unit {by!r}: use one of {', '.join(SPLIT_UNITS)}.")
    if by == "case":
        return [None] * len(cases)
    if by == "nodule":
        if hasattr(cases, "ids_of"):
            return list(cases.ids_of("nodule"))
        return [(case.ids or {}).get("nodule", case.group_id) for case in cases]
    group_ids = getattr(cases, "group_ids", None)
    if group_ids is None:
        group_ids = [case.group_id for case in cases]
    if by == "patient" and len(group_ids) and all(g is None for g in group_ids):
        raise DataError("split by=patient: this data carries no patient ids; use by=case, or "
                        "give each case a group_id (case.json) first.")
    return list(group_ids)


def split_indices(
    cases: Sequence[Case], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
    by: str = "group",
) -> tuple[list[int], ...]:
    """Split case indices into ``len(fractions)`` parts, keeping each group together.

    Groups are given by ``by`` (:func:`split_groups`: the ``group_id`` -- the patient -- by
    default; a case without one is its own group). Groups are shuffled with ``seed`` and dealt,
    one at a time, to the part furthest below its target count of cases, so the parts approach
    ``fractions`` of the cases without ever sharing a group. Indices within a part are
    ascending. Ids are read without loading cases where the data offers them (``group_ids``).
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(f < 0 or not math.isfinite(f) for f in fractions) or not math.isclose(
        sum(fractions), 1.0, abs_tol=1e-6
    ):
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}.")
    group_ids = split_groups(cases, by)
    members: dict[str, list[int]] = {}
    for i, gid in enumerate(group_ids):
        members.setdefault(f"g:{gid}" if gid is not None else f"i:{i}", []).append(i)
    keys = sorted(members)
    order = np.random.default_rng(seed).permutation(len(keys))
    targets = [f * len(group_ids) for f in fractions]
    parts: list[list[int]] = [[] for _ in fractions]
    for k in order:
        deficit = [t - len(p) for t, p in zip(targets, parts)]
        parts[int(np.argmax(deficit))].extend(members[keys[k]])
    return tuple(sorted(p) for p in parts)


def split_cases(
    cases: Sequence[Case], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
    by: str = "group",
) -> tuple[Sequence[Case], ...]:
    """Split cases into ``len(fractions)`` parts by group (see :func:`split_indices`).

    A data set with a ``subset`` method (the memory-mapped LIDC slices) gives views of itself;
    anything else gives lists of cases.
    """
    parts = split_indices(cases, fractions, seed, by=by)
    if hasattr(cases, "subset"):
        return tuple(cases.subset(part) for part in parts)
    return tuple([cases[i] for i in part] for part in parts)
