"""The screenshots of docs/pacs.md, taken from a real session against a real Orthanc:

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/pacs_screenshots.py \\
        --out docs/images

1. ``pacs-series.png``: the PACS dock connected to a local Orthanc, the series found for the
   patient LIDC-IDRI-0001, the CT retrieved and opened (slice 89, the nodule's).
2. ``pacs-seg-over-ct.png``: a hypothesis of the bundled LIDC model on that slice stored on the
   server as a DICOM SEG with the dock's *Store SEG* button, the server searched for SEGs (the
   table), the SEG retrieved from the server and opened over the CT with the package's SEG
   reader, zoomed on the nodule.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from orthanc_server import start_orthanc  # noqa: E402


def wait(app, widget, seconds: float = 60.0) -> None:
    """Let the dock's worker finish, the GUI thread turning (a script, not the product)."""
    t0 = time.monotonic()
    while widget.jobs.busy and time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description="docs/pacs.md screenshots")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    import os

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_probunet.data.pacs.retrieve import retrieve_series
    from napari_probunet.gui.pacs.widget import PacsWidget
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.session import Session

    tmp = Path(tempfile.mkdtemp())
    os.environ["NAPARI_PROBUNET_PACS_CACHE"] = str(tmp / "cache")
    server = start_orthanc(tmp / "orthanc")
    try:
        server.upload_ct()
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1000)
        dock = PacsWidget(viewer)
        dock.export_folder = tmp / "exports"
        viewer.window.add_dock_widget(dock, name="PACS (DICOMweb)", area="right")
        app = QApplication.instance()
        dock.connection.url.setText(server.dicomweb_url)
        dock.connect_button.click()
        wait(app, dock)
        dock.search_panel.patient.setText("LIDC-IDRI-0001")
        dock.search_panel.date.setText("2000-01-01..2000-12-31")
        dock.search_button.click()
        wait(app, dock)
        dock.retrieve_button.click()
        wait(app, dock)
        ct = viewer.layers[0]
        viewer.dims.set_point(0, 89 * ct.scale[0])
        viewer.reset_view()
        wait(app, dock)
        args.out.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.out / "pacs-series.png"), canvas_only=False)

        z, top, left = 89, 300, 252
        session = Session(load_model("lidc", device="cpu"), device="cpu")
        session.set_image(ct.data[z, top:top + 128, left:left + 128].astype(np.float32))
        hyps = session.sample(8, seed=0).labels
        best = int(np.argmax(hyps.reshape(8, -1).sum(1)))
        mask = np.zeros(ct.data.shape, np.uint8)
        mask[z, top:top + 128, left:left + 128] = hyps[best] != 0
        viewer.add_labels(mask, name=f"nodule (hypothesis {best + 1} of 8)", scale=ct.scale)
        dock.labels_combo.setCurrentText(f"nodule (hypothesis {best + 1} of 8)")
        dock.store_button.click()
        wait(app, dock)
        print(dock.status.text())
        viewer.layers.remove(viewer.layers[-1])
        dock.search_panel.modality.setCurrentText("SEG")
        dock.search_button.click()
        wait(app, dock)
        seg_row = dock.table.rows[0]
        fetched = retrieve_series(dock.pacs, seg_row.series_uid)
        viewer.open(str(fetched.files[0]), plugin="napari-probunet")
        wait(app, dock)
        viewer.camera.center = (viewer.camera.center[0], (top + 64) * ct.scale[1],
                                (left + 64) * ct.scale[2])
        viewer.camera.zoom = viewer.camera.zoom * 2
        for _ in range(3):  # the notification's toast fades
            time.sleep(2)
            wait(app, dock)
        viewer.screenshot(str(args.out / "pacs-seg-over-ct.png"), canvas_only=False)
        print("layers:", [layer.name for layer in viewer.layers])
        dock.pacs.close()
        viewer.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
