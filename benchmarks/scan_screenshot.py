"""The screenshot of docs/scans.md: LIDC-IDRI-0001 opened in napari as a scan folder, the four
radiologists' outlines on the nodule's central slice, zoomed so the nodule is visible.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/scan_screenshot.py \\
        ../shared/data/lidc-idri-scans/LIDC-IDRI-0001 docs/images/scan-outlines.png
"""

from __future__ import annotations

import sys
from pathlib import Path

#: how much of the slice the canvas shows around the nodule (mm, the shorter side)
FIELD_MM = 110.0


def main(scan: str, out: str) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-probunet")
    viewer.window.resize(1400, 900)
    layers = viewer.open(scan, plugin="napari-probunet")
    image = layers[0]
    (nodule,) = image.metadata["nodules"][:1]
    z, y, x = nodule["centre_voxel"]
    spacing = image.scale
    viewer.dims.set_point(0, round(z) * spacing[0])
    viewer.layers.selection.active = image
    for _ in range(5):
        QApplication.processEvents()
    viewer.camera.center = (round(z) * spacing[0], y * spacing[1], x * spacing[2])
    canvas = viewer.window._qt_viewer.canvas.size  # (height, width) in screen pixels
    viewer.camera.zoom = min(canvas) / FIELD_MM
    for _ in range(10):
        QApplication.processEvents()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(out, canvas_only=False)
    print(f"slice {round(z)}: {out}")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
