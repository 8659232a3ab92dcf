"""The third-party SEG of LIDC-IDRI-0001 against the radiologists' reading file (069.xml): each
outlined nodule segment is its radiologist's outline (Dice per radiologist), and its "small"
segments are the radiologists' non-nodule points, not their small nodules."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

SCAN = Path("/work/shared/data/lidc-idri-scans/LIDC-IDRI-0001")
THIRD_PARTY = SCAN / "annotations" / "LIDC-IDRI-0001_Combined_SEG.dcm"

pytestmark = pytest.mark.skipif(not THIRD_PARTY.is_file(), reason="LIDC-IDRI-0001 not here")


def _named(label: str) -> int | None:
    m = re.match(r"ann(\d+)_", label)
    return int(m[1]) - 1 if m else None


@pytest.fixture(scope="module")
def matched():
    from napari_probunet.data.dicom_seg import read_seg
    from napari_probunet.data.lidc_xml import read_reading_file
    from napari_probunet.data.seg_agreement import match_segments
    from napari_probunet.data.volumes import read_dicom_series

    volume = read_dicom_series(SCAN / "ct")
    seg = read_seg(THIRD_PARTY, volume)
    out = {}
    for include in (True, False):
        reading = read_reading_file(SCAN / "annotations" / "069.xml", volume,
                                    include_outline=include)
        out[include] = (match_segments(seg, reading.nodules, reading.points, _named), reading)
    return out


def test_dice_per_radiologist_of_the_outlined_nodule(matched):
    with_outline, _ = matched[True]
    without_outline, _ = matched[False]
    outlined = [m for m in with_outline if "_nod_" in m.label]
    assert [(m.label, m.radiologist) for m in outlined] == [
        ("ann1_nod_1", 0), ("ann2_nod_6", 1), ("ann3_nod_8", 2), ("ann4_nod_17", 3)]
    for m in outlined:  # each segment is its own radiologist's outline, filled
        assert m.dice >= 0.99, m
        assert m.runner_up_dice < 0.95  # and clearly not another radiologist's
    for m in without_outline:  # the outline pixels left out: still high
        if "_nod_" in m.label:
            assert 0.9 <= m.dice < 0.99, m


def test_the_small_segments_are_non_nodule_points(matched):
    rows, reading = matched[True]
    small = [m for m in rows if "_small_" in m.label]
    assert len(small) == 13
    assert all(m.matched.startswith("non-nodule") and m.distance_voxels <= 1 for m in small)
    assert all(m.radiologist == _named(m.label) for m in small)
    # the reading file's small nodules (< 3 mm) have no segment of their own
    from napari_probunet.data.dicom_seg import read_seg

    seg = read_seg(THIRD_PARTY, SCAN / "ct")
    union = np.zeros(seg.segments[0].shape, bool)
    for s in seg.segments:
        union |= s.mask != 0
    small_nodules = [p for p in reading.points if p.kind == "small nodule"]
    assert small_nodules and not any(union[p.voxel] for p in small_nodules)
