"""A nodule in a whole scan: timings of the click, and the Nodule (3D) widget's screenshot.

Without a display (the core, as ``probunet sample --click`` and the widget's worker run it)::

    .venv/bin/python benchmarks/scan_nodule.py

times, at one torch thread, on the real LIDC-IDRI-0001 series (133 slices of 512x512) with the
bundled ``lidc`` model: opening the series (``read_dicom_series``), opening the scan folder with
the four radiologists' reading file, and from the click to the 16 (and 4) 3D hypotheses of its
~30 mm nodule (``sample_nodule``: every slice of the nodule and one beyond each end encoded and
decoded; the first hypothesis is ready when all are). Medians over ``--repeats`` (a new seed
each time); prints one JSON object. With a display (``xvfb-run``)::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/scan_nodule.py \\
        --screenshot docs/images/nodule-widget.png

it also opens the scan folder in napari with the review and Nodule (3D) widgets docked,
clicks on the nodule through the widget and saves a screenshot of the window.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-scans" / \
    "LIDC-IDRI-0001"
CLICK = (90, 365, 317)  # on the nodule, near its middle slice


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return ""
    keep = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in keep if f" {f}" in flags)


def time_core(repeats: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from napari_probunet.data.lidc_scan import read_scan_folder
    from napari_probunet.data.volumes import read_dicom_series
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.nodule import NoduleRequest, sample_nodule
    from napari_probunet.session import Session

    opens, scans = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        vol = read_dicom_series(SCAN / "ct")
        opens.append(time.perf_counter() - t)
        t = time.perf_counter()
        read_scan_folder(SCAN)
        scans.append(time.perf_counter() - t)
    session = Session(load_model("lidc"), device="cpu")
    out = {"open_series_s": statistics.median(opens), "open_scan_folder_s": statistics.median(scans)}
    for n in (4, 16):
        times, slices = [], 0
        for seed in range(repeats):
            t = time.perf_counter()
            hyp = sample_nodule(session, NoduleRequest(vol.data, vol.spacing, CLICK, n=n,
                                                       seed=seed))
            times.append(time.perf_counter() - t)
            slices = len(hyp.slices)
        out[f"click_to_{n}_hypotheses_s"] = statistics.median(times)
        out[f"nodule_slices_{n}"] = slices
    return out


def screenshot(path: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_probunet.gui.nodule.widget import NoduleWidget
    from napari_probunet.gui.review.widget import ReviewWidget
    from napari_probunet.model.testing import wait_idle

    class _Bot:  # qtbot's waitUntil, without pytest
        @staticmethod
        def waitUntil(cond, timeout=60_000):  # noqa: N802 (pytest-qt's name)
            end = time.time() + timeout / 1000
            while not cond():
                QApplication.processEvents()
                if time.time() > end:
                    raise TimeoutError("the widget stayed busy")
                time.sleep(0.02)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1040)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review, name="Probabilistic U-Net", area="right")
    wait_idle(_Bot, review)
    viewer.open(str(SCAN), plugin="napari-probunet")
    widget = NoduleWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Nodule (3D)", area="right")
    assert widget.find_nodule(CLICK)
    wait_idle(_Bot, widget, timeout=120_000)
    widget.gallery.setCurrentRow(1)
    viewer.camera.center = (0, 365 * 0.703125, 317 * 0.703125)
    viewer.camera.zoom = 8.0
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(path, canvas_only=False)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshot", metavar="PNG")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
        return
    result = {"date": _dt.date.today().isoformat(), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "cpu_flags": cpu_flags(),
              "threads": 1, **time_core(args.repeats)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
