"""Time to open a whole scan folder: the DICOM series and the LIDC reading files.

    .venv/bin/python benchmarks/scan_open.py ../shared/data/lidc-idri-scans/LIDC-IDRI-0001

Measures, in one fresh process (the target in issue #26: opening the 133-slice series <= 3 s):

- ``first_open_s``: the first ``read_scan_folder`` of the process, imports of pydicom, scipy,
  scikit-image and defusedxml included (what a user waits for the first time);
- ``series_s``: ``read_dicom_series`` of ``ct/`` alone (median of ``--repeats``);
- ``scan_s``: ``read_scan_folder`` (series, reading files, grouping; median of ``--repeats``);
- ``reading_files_s``: the reading files alone on the series already read (parse, fill,
  group; median of ``--repeats``).

The files come from the page cache after the first read; the first figure is the cold one for
the imports, not for the disk. Prints one JSON object with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", help="a scan folder: ct/ and annotations/*.xml")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    from napari_probunet.data.lidc_scan import group_nodules, read_scan_folder, reading_files
    from napari_probunet.data.lidc_xml import read_reading_file
    from napari_probunet.data.volumes import read_dicom_series

    scan = read_scan_folder(args.scan)
    first = time.perf_counter() - start
    series, whole, xml = [], [], []
    files, _ = reading_files(Path(args.scan))
    for _ in range(args.repeats):
        t = time.perf_counter()
        volume = read_dicom_series(os.path.join(args.scan, "ct"))
        series.append(time.perf_counter() - t)
        t = time.perf_counter()
        nodules, r = [], 0
        for f in files:
            reading = read_reading_file(f, volume, r)
            nodules, r = nodules + reading.nodules, r + len(reading.radiologists)
        group_nodules(nodules, r, volume.data.shape, volume.spacing)
        xml.append(time.perf_counter() - t)
        t = time.perf_counter()
        read_scan_folder(args.scan)
        whole.append(time.perf_counter() - t)
    s, w = statistics.median(series), statistics.median(whole)
    print(json.dumps({
        "scan": os.path.basename(os.path.normpath(args.scan)),
        "slices": int(scan.volume.data.shape[0]), "reading_files": len(scan.reading_files),
        "radiologists": len(scan.radiologists), "nodules": len(scan.nodules),
        "first_open_s": round(first, 3), "series_s": round(s, 3), "scan_s": round(w, 3),
        "reading_files_s": round(statistics.median(xml), 3), "repeats": args.repeats,
        "cpu": _cpu(), "cores": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()
