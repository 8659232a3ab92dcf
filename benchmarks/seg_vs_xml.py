"""Agreement of a DICOM SEG with the radiologists' LIDC-IDRI reading files of its series.

    python benchmarks/seg_vs_xml.py ../shared/data/lidc-idri-scans/LIDC-IDRI-0001 \
        annotations/LIDC-IDRI-0001_Combined_SEG.dcm

Prints a Markdown table: each segment of the SEG, the radiologist's outline it overlaps most
(Dice, outlines filled with their outline pixels, and without them) or, overlapping none, the
nearest point a radiologist marked (small nodule or non-nodule) and its distance in voxels.
(napari_probunet.data.seg_agreement; docs/dicom-seg.md holds the table of LIDC-IDRI-0001.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", help="a scan folder: ct/ and annotations/*.xml")
    parser.add_argument("seg", help="the SEG file, relative to the scan folder or absolute")
    args = parser.parse_args()

    from napari_probunet.data.dicom_seg import read_seg
    from napari_probunet.data.lidc_xml import read_reading_file
    from napari_probunet.data.seg_agreement import match_segments

    scan = Path(args.scan)
    from napari_probunet.data.volumes import read_dicom_series

    volume = read_dicom_series(scan / "ct")
    seg = read_seg(scan / args.seg, volume)
    rows = {}
    for include in (True, False):
        nodules, points, first = [], [], 0
        for xml in sorted((scan / "annotations").glob("*.xml")):
            reading = read_reading_file(xml, volume, first, include_outline=include)
            nodules += reading.nodules
            points += reading.points
            first += len(reading.radiologists)
        rows[include] = match_segments(seg, nodules, points, radiologist_in_label)
    print("| segment | voxels | radiologist | matches | Dice (outline in) | Dice (outline "
          "out) | next best Dice | distance (voxels) |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in zip(rows[True], rows[False]):
        who = "-" if a.radiologist is None else str(a.radiologist + 1)
        cells = [a.label, str(a.voxels), who, a.matched, _f(a.dice), _f(b.dice),
                 _f(a.runner_up_dice), _f(a.distance_voxels)]
        print("| " + " | ".join(cells) + " |")


def radiologist_in_label(label: str) -> int | None:
    """The radiologist (0-based) a label such as ``ann3_small_12`` names (this SEG maker's
    naming), else None."""
    m = re.match(r"ann(\d+)_", label)
    return int(m[1]) - 1 if m else None


def _f(value) -> str:
    return "-" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    main()
