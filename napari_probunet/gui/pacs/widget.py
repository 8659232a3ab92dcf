"""The PACS dock: connect to a DICOMweb server, search, retrieve a series, open it, store a SEG.

Every request runs on the dock's own background worker (a
:class:`~napari_probunet.gui.review.runner.JobRunner` with a lock of its own: the network never
waits for the model, nor the model for the network), never on the GUI thread:

- *Connect*: one small search, to say at once whether the server, the sign-in and TLS work;
- *Search*: QIDO-RS with the patient, date and modality; the series fill the table;
- *Retrieve and open*: :func:`~napari_probunet.data.pacs.retrieve.iter_retrieve` a step at a
  time (the progress bar moves; *Cancel* sets its cancel event, which it obeys within a tenth
  of a second), then the series is read from the cache (the project's DICOM reader) and shown
  as an image layer in Hounsfield units, with its scan record for exports;
- *Store SEG*: the chosen Labels layer exported as a DICOM SEG in the export folder (kept
  whatever happens next), then stored on the server; a failure is a napari notification that
  names the file that stays.

Errors are :class:`~napari_probunet.errors.UserError` messages shown in the status line and as
napari notifications; none holds a secret.
"""

from __future__ import annotations

import threading
from pathlib import Path

from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_probunet.errors import UserError
from napari_probunet.gui.dock import on_docked, scrolling_content
from napari_probunet.gui.pacs.panels import ConnectionPanel, SearchPanel, SeriesTable
from napari_probunet.gui.review.runner import JobRunner
from napari_probunet.gui.worker import returning


class PacsWidget(QWidget):
    """Connect, search, retrieve and open, store a SEG (see the module docstring)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.pacs = None  # the open connection (data.pacs.client.Pacs)
        self.series_source: dict | None = None  # the scan record of the series opened last
        self.export_folder: Path | None = None  # None: review.pacs_store.export_folder()
        self.last_seg: Path | None = None  # the SEG written by the last Store, stored or not
        self._cancel = threading.Event()
        self.jobs = JobRunner(threading.Lock(), self)
        self._build()

    # ------------------------------------------------------------------------- layout
    def _build(self) -> None:
        layout = QVBoxLayout(scrolling_content(self, min_width=320))
        self.connection = ConnectionPanel(self)
        self.connect_button = QPushButton("Connect")
        self.search_panel = SearchPanel(self)
        self.search_button = QPushButton("Search")
        self.table = SeriesTable(self)
        self.retrieve_button = QPushButton("Retrieve and open")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.labels_combo = QComboBox()
        self.store_button = QPushButton("Store SEG on the server")
        self.status = QLabel("Not connected.")
        self.status.setWordWrap(True)
        for w in (self.connection, self.connect_button, self.search_panel, self.search_button,
                  self.table):
            layout.addWidget(w)
        row = QHBoxLayout()
        row.addWidget(self.retrieve_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        store = QHBoxLayout()
        store.addWidget(QLabel("Labels"))
        store.addWidget(self.labels_combo, 1)
        layout.addLayout(store)
        layout.addWidget(self.store_button)
        layout.addWidget(self.status)
        self.connect_button.clicked.connect(self.connect_server)
        self.search_button.clicked.connect(self.search)
        self.retrieve_button.clicked.connect(self.retrieve)
        self.cancel_button.clicked.connect(self.cancel)
        self.store_button.clicked.connect(self.store)
        self.viewer.layers.events.inserted.connect(self._refresh_labels)
        self.viewer.layers.events.removed.connect(self._refresh_labels)
        self._refresh_labels()
        self._enable()
        on_docked(self.viewer, self)  # a short dock title, the canvas fitted again

    def _enable(self) -> None:
        busy = self.jobs.busy
        connected = self.pacs is not None
        self.connect_button.setEnabled(not busy)
        self.search_button.setEnabled(connected and not busy)
        self.retrieve_button.setEnabled(connected and not busy)
        self.cancel_button.setEnabled(self.jobs.running("retrieve"))
        self.store_button.setEnabled(connected and not busy and self.labels_combo.count() > 0)

    def _refresh_labels(self, *_) -> None:
        current = self.labels_combo.currentText()
        self.labels_combo.clear()
        names = [layer.name for layer in self.viewer.layers if layer._type_string == "labels"]
        self.labels_combo.addItems(names)
        if current in names:
            self.labels_combo.setCurrentText(current)
        self._enable()

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error, show_info

        from napari_probunet.data.pacs.errors import TransferCancelled

        if isinstance(exc, TransferCancelled):
            self._say(str(exc))
            show_info(str(exc))
            return

        message = str(exc) if isinstance(exc, UserError) else (
            f"internal error ({type(exc).__name__}: {exc}); please report it")
        self._say(message)
        show_error(message)

    def _start(self, kind: str, job, returned, yielded=None, aborted=None) -> None:
        self.jobs.start(kind, job, returned=returned, errored=self._failed,
                        finished=self._enable, yielded=yielded, aborted=aborted)
        self._enable()

    # ------------------------------------------------------------------------- actions
    def connect_server(self) -> None:
        """Check the server with these settings, off the GUI thread."""
        from napari_probunet.data.pacs.client import Pacs

        try:
            settings = self.connection.settings()
        except UserError as exc:
            self._failed(exc)
            return
        if self.pacs is not None:
            self.pacs.close()
            self.pacs = None

        def connect():
            pacs = Pacs(settings)
            try:
                pacs.check()
            except Exception:
                pacs.close()
                raise
            return pacs

        self._say(f"Connecting to {settings.describe()} ...")
        self._start("connect", returning(connect), self._connected)

    def _connected(self, pacs) -> None:
        self.pacs = pacs
        self._say(f"Connected: {pacs.settings.describe()}")

    def search(self) -> None:
        from napari_probunet.data.pacs.search import search_series

        pacs, filters = self.pacs, self.search_panel.filters()
        self._say("Searching ...")
        self._start("search", returning(lambda: search_series(pacs, **filters)), self._found)

    def _found(self, rows) -> None:
        self.table.show_rows(rows)
        self._say(f"{len(rows)} series found on {self.pacs.url}.")

    def retrieve(self) -> None:
        """Retrieve the selected series (or find it in the cache), then open it."""
        from napari_probunet.data.pacs.retrieve import iter_retrieve

        row = self.table.selected()
        if row is None:
            self._failed(UserError("choose a series in the table first (Search lists them)"))
            return
        self._cancel = threading.Event()
        self.progress.setRange(0, max(1, row.instances or 1))
        self.progress.setValue(0)
        self._say(f"Retrieving series {row.description or row.series_uid} ...")
        job = _retrieve_and_read(iter_retrieve(self.pacs, row.series_uid, row.study_uid,
                                               cancel=self._cancel))
        self._start("retrieve", job, self._opened, yielded=self._progressed,
                    aborted=lambda: self._say("Retrieve cancelled; nothing was kept."))

    def cancel(self) -> None:
        """Stop the retrieve within a fraction of a second; its partial download is removed."""
        self._cancel.set()
        self._say("Cancelling ...")

    def _progressed(self, step) -> None:
        self.progress.setRange(0, max(1, step.total))
        self.progress.setValue(step.done)
        self.progress.setFormat(f"%v of %m instances ({step.bytes / 1e6:.0f} MB)"
                                if not step.from_cache else "%m instances, from the cache")

    def _opened(self, result) -> None:
        cached, volume = result
        kwargs = _image_kwargs(volume)
        if not volume.info.get("series_description"):  # else the folder: the series UID
            m = cached.manifest
            kwargs["name"] = " ".join(x for x in (m.get("patient_id"), m.get("modality"),
                                                  _date(m.get("study_date", ""))) if x)
        layer = self.viewer.add_image(volume.data, **kwargs)
        self.series_source = volume.source()
        how = ("server unreachable: from the cache, unchecked" if cached.offline else
               "from the cache" if cached.from_cache else "retrieved")
        self._say(f"Opened {layer.name!r} ({how}: {len(cached.files)} instances, "
                  f"{' x '.join(map(str, volume.data.shape))}) from {cached.folder}")

    def store(self) -> None:
        """Export the chosen Labels layer as a DICOM SEG (kept locally), then store it."""
        from napari_probunet.review.pacs_store import export_folder, export_seg_for_pacs, store_seg

        name = self.labels_combo.currentText()
        if name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        data, meta, source = layer.data.copy(), dict(layer.metadata), self.series_source
        folder, pacs = self.export_folder or export_folder(), self.pacs

        def export_and_store():
            seg = export_seg_for_pacs(data, meta, name, source, folder)
            try:
                return seg, store_seg(pacs, seg), None
            except UserError as exc:
                return seg, None, exc

        self._say(f"Writing and storing a SEG of {name!r} ...")
        self._start("store", returning(export_and_store), self._stored)

    def _stored(self, result) -> None:
        from napari.utils.notifications import show_info, show_warning

        seg, stored, error = result
        self.last_seg = seg
        if error is not None:
            message = f"The SEG was written to {seg} but not stored: {error}"
            self._say(message)
            show_warning(message)
            return
        message = (f"SEG stored on {stored.server} (series {stored.series_uids[0]}); the "
                   f"local copy is {seg}")
        self._say(message)
        show_info(message)


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _retrieve_and_read(retrieving):
    """The retrieve's steps, then the series read from the cache: ``(cached, volume)``."""
    from napari_probunet.data.volumes import read_dicom_series

    cached = yield from retrieving
    return cached, read_dicom_series(cached.folder)


def _image_kwargs(volume) -> dict:
    """The image layer of a series as the project's DICOM reader makes it (HU, spacing, the
    lung window for CT, the scan record in ``metadata["source"]``)."""
    from napari_probunet.data.volumes import LUNG_WINDOW, window_limits

    meta = {"kind": "image", "source_path": volume.path, "source": volume.source(),
            "units": volume.units}
    kwargs = {"name": volume.name, "scale": list(volume.spacing), "colormap": "gray",
              "metadata": meta}
    if volume.units == "HU":
        low, high = window_limits(LUNG_WINDOW)
        kwargs["contrast_limits"] = [low, high]
        meta["window"] = {**LUNG_WINDOW, "low": low, "high": high}
    return kwargs
