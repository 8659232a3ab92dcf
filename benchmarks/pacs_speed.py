"""How fast a series comes from a PACS: retrieve the 133-slice LIDC-IDRI-0001 CT from a local
Orthanc (DICOMweb) into an empty cache, open it from the cache, and retrieve it again (a cache
hit: nothing downloaded). Targets (issue #27): retrieve <= 5 s, open from the cache <= 3 s.

    python benchmarks/pacs_speed.py [--repeats 3]

Starts its own Orthanc on free ports (tests/orthanc_server.py; Debian packages orthanc and
orthanc-dicomweb) and stops it after. Prints one line per measure (median of the repeats) and
the CPU's AVX-512 flags, since the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orthanc_server import SERIES_UID, start_orthanc  # noqa: E402

from napari_probunet.data.pacs import PacsSettings  # noqa: E402
from napari_probunet.data.pacs.cache import SeriesCache  # noqa: E402
from napari_probunet.data.pacs.client import Pacs  # noqa: E402
from napari_probunet.data.pacs.retrieve import retrieve_series  # noqa: E402
from napari_probunet.data.volumes import read_dicom_series  # noqa: E402


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = sorted(set(re.findall(r"avx512[a-z_0-9]*", text)))
    return " ".join(flags) or "no avx512"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"retrieve": [], "open from cache": [], "cache hit": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_orthanc(Path(tmp) / "orthanc")
        try:
            server.upload_ct()
            pacs = Pacs(PacsSettings(server.dicomweb_url))
            for k in range(args.repeats):
                cache = SeriesCache(Path(tmp) / f"cache{k}")
                t0 = time.perf_counter()
                cached = retrieve_series(pacs, SERIES_UID, cache=cache)
                times["retrieve"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                volume = read_dicom_series(cached.folder)
                times["open from cache"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert retrieve_series(pacs, SERIES_UID, cache=cache).from_cache
                times["cache hit"].append(time.perf_counter() - t0)
            pacs.close()
        finally:
            server.stop()
    mb = sum(i["bytes"] for i in cached.manifest["instances"]) / 1e6
    print(f"series: {len(cached.files)} instances, {mb:.0f} MB, volume {volume.data.shape}")
    for name, values in times.items():
        print(f"{name:<16} median {statistics.median(values):.2f} s  "
              f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})")
    print(f"cpu flags: {cpu_flags()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
