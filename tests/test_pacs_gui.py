"""The PACS dock driven as a radiologist would, against a real Orthanc (tests/orthanc_server.py):
connect, search, retrieve and open the CT (progress, then from the cache the second time),
paint a nodule, store it as a DICOM SEG, find the SEG on the server; a store to a server that
went down keeps the local SEG and says so; a server that is down never blocks the GUI.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from orthanc_server import free_port, start_orthanc, start_proxy

from napari_probunet.data.pacs.search import search_series

pytestmark = pytest.mark.usefixtures("isolated_settings")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-gui"))
    server.upload_ct()
    yield server
    server.stop()


@pytest.fixture
def dock(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_probunet.gui.pacs.widget import PacsWidget

    monkeypatch.setenv("NAPARI_PROBUNET_PACS_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer()
    widget = PacsWidget(viewer)
    widget.export_folder = tmp_path / "exports"
    viewer.window.add_dock_widget(widget, name="PACS (DICOMweb)")
    yield widget
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=20000)
    if widget.pacs is not None:
        widget.pacs.close()


def _connect(dock, qtbot, url: str) -> None:
    dock.connection.url.setText(url)
    dock.connect_button.click()
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=20000)


def test_connect_search_retrieve_open_paint_store(dock, qtbot, orthanc):
    _connect(dock, qtbot, orthanc.dicomweb_url)
    assert dock.pacs is not None and "Connected" in dock.status.text()
    dock.search_panel.patient.setText("LIDC-IDRI-0001")
    dock.search_panel.date.setText("2000-01-01")
    dock.search_button.click()
    qtbot.waitUntil(lambda: dock.table.rowCount() == 1, timeout=20000)
    assert dock.table.item(0, 0).text() == "LIDC-IDRI-0001"
    assert dock.table.item(0, 1).text() == "2000-01-01"
    assert dock.table.item(0, 4).text() == "133"

    dock.retrieve_button.click()
    assert dock.jobs.running("retrieve")  # the GUI thread is free while it runs
    qtbot.waitUntil(lambda: len(dock.viewer.layers) == 1, timeout=60000)
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=20000)
    image = dock.viewer.layers[0]
    assert image.data.shape == (133, 512, 512) and image.metadata["units"] == "HU"
    assert dock.progress.value() == 133 and "retrieved" in dock.status.text()
    dock.retrieve_button.click()  # a second open: from the cache
    qtbot.waitUntil(lambda: len(dock.viewer.layers) == 2, timeout=60000)
    assert "from the cache" in dock.status.text()

    mask = np.zeros(image.data.shape, np.uint8)
    mask[85:88, 300:320, 340:360] = 1
    dock.viewer.add_labels(mask, name="nodule", scale=image.scale)
    assert dock.labels_combo.currentText() == "nodule"
    dock.store_button.click()
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=60000)
    assert "SEG stored" in dock.status.text(), dock.status.text()
    assert dock.last_seg.is_file() and dock.last_seg.with_name(
        dock.last_seg.name + ".json").is_file()
    segs = search_series(dock.pacs, patient_id="LIDC-IDRI-0001", modality="SEG")
    assert len(segs) >= 1

    from napari_probunet.data.dicom_seg_read import read_seg
    from napari_probunet.data.pacs.retrieve import retrieve_series

    fetched = retrieve_series(dock.pacs, segs[-1].series_uid)
    back = read_seg(fetched.files[0], dock.viewer.layers[0].metadata["source_path"])
    np.testing.assert_array_equal(back.masks()["nodule"], mask)


def test_a_failed_store_keeps_the_seg_and_tells_the_user(dock, qtbot, tmp_path):
    server = start_orthanc(tmp_path / "orthanc-short-lived")
    try:
        server.upload_ct()
        _connect(dock, qtbot, server.dicomweb_url)
        dock.search_button.click()
        qtbot.waitUntil(lambda: dock.table.rowCount() == 1, timeout=20000)
        dock.retrieve_button.click()
        qtbot.waitUntil(lambda: len(dock.viewer.layers) == 1, timeout=60000)
        qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=20000)
    finally:
        server.stop()  # the server goes down after the series was opened
    mask = np.zeros(dock.viewer.layers[0].data.shape, np.uint8)
    mask[60, 200:210, 200:210] = 1
    dock.viewer.add_labels(mask, name="correction")
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    dock.store_button.click()
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=30000)
    text = dock.status.text()
    assert "written to" in text and "not stored" in text and "cannot reach" in text, text
    told = [str(n.message) for n in notification_manager.records[start:]]
    assert any("not stored" in m and str(dock.last_seg) in m for m in told), told
    assert dock.last_seg.is_file() and str(dock.last_seg) in text
    import pydicom

    assert pydicom.dcmread(dock.last_seg).Modality == "SEG"


def test_a_slow_retrieve_shows_progress_and_cancels_within_a_second(dock, qtbot, orthanc):
    proxy = start_proxy(orthanc.url, delay=0.2)  # each instance trickles in over ~7 s
    try:
        _connect(dock, qtbot, f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web")
        dock.search_button.click()
        qtbot.waitUntil(lambda: dock.table.rowCount() == 1, timeout=20000)
        dock.retrieve_button.click()
        qtbot.waitUntil(lambda: dock.cancel_button.isEnabled(), timeout=5000)
        qtbot.wait(1500)
        assert dock.jobs.running("retrieve") and dock.progress.maximum() == 133
        t0 = time.monotonic()
        dock.cancel_button.click()
        qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=5000)
        assert time.monotonic() - t0 < 1.0
        assert "cancelled" in dock.status.text() and len(dock.viewer.layers) == 0
        assert dock.retrieve_button.isEnabled() and not dock.cancel_button.isEnabled()
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_server_that_is_down_never_blocks_the_gui(dock, qtbot):
    dock.connection.timeout.setValue(1.0)
    dock.connection.url.setText(f"http://127.0.0.1:{free_port()}/dicom-web")
    t0 = time.monotonic()
    dock.connect_button.click()
    assert time.monotonic() - t0 < 0.5  # the click returns at once; the request is elsewhere
    qtbot.waitUntil(lambda: not dock.jobs.busy, timeout=5000)
    assert dock.pacs is None and "cannot reach" in dock.status.text()
    assert not dock.search_button.isEnabled()


def test_the_dock_is_a_widget_of_the_manifest():
    import yaml

    from napari_probunet._widget import PacsWidget  # noqa: F401 - importable

    root = Path(__file__).resolve().parents[1]
    manifest = yaml.safe_load((root / "napari.yaml").read_text())
    names = [w["display_name"] for w in manifest["contributions"]["widgets"]]
    assert "PACS (DICOMweb)" in names
