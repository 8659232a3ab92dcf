"""The PACS dock's forms: where the server is and how to sign in, what to search, what it found.

Plain Qt forms with no network in them: :class:`ConnectionPanel` turns its fields into a
:class:`~napari_probunet.data.pacs.settings.PacsSettings` (the secret's *variable name* only,
never a secret), :class:`SearchPanel` into search filters, :class:`SeriesTable` shows
:class:`~napari_probunet.data.pacs.search.SeriesSummary` rows. The dock
(:mod:`napari_probunet.gui.pacs.widget`) runs the requests on its worker.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLineEdit,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from napari_probunet.data.pacs.search import SeriesSummary
from napari_probunet.data.pacs.settings import DEFAULT_TIMEOUT, PacsSettings

#: the sign-in choices as the form shows them -> PacsSettings.auth
AUTH_CHOICES = {"No sign-in": "none", "User and password (HTTP basic)": "basic",
                "Bearer token": "token"}


class ConnectionPanel(QWidget):
    """URL, sign-in, CA bundle and timeout of the DICOMweb server."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.url = QLineEdit(placeholderText="https://pacs.example.org/dicom-web")
        self.url.setToolTip("The server's DICOMweb root (Orthanc: http://host:8042/dicom-web)")
        self.auth = QComboBox()
        self.auth.addItems(list(AUTH_CHOICES))
        self.user = QLineEdit(placeholderText="user name")
        self.secret_env = QLineEdit(placeholderText="PACS_PASSWORD")
        self.secret_env.setToolTip("The NAME of the environment variable that holds the "
                                   "password or token (never the secret itself)")
        self.ca_bundle = QLineEdit(placeholderText="(system certificate authorities)")
        self.ca_bundle.setToolTip("A PEM file of the hospital's certificate authority, from IT")
        self.timeout = QDoubleSpinBox(minimum=0.5, maximum=600.0, value=DEFAULT_TIMEOUT,
                                      suffix=" s", decimals=1)
        form.addRow("Server", self.url)
        form.addRow("Sign-in", self.auth)
        form.addRow("User", self.user)
        form.addRow("Secret from $", self.secret_env)
        form.addRow("CA bundle", self.ca_bundle)
        form.addRow("Timeout", self.timeout)
        self.auth.currentTextChanged.connect(self._auth_changed)
        self._auth_changed(self.auth.currentText())

    def _auth_changed(self, text: str) -> None:
        kind = AUTH_CHOICES[text]
        self.user.setEnabled(kind == "basic")
        self.secret_env.setEnabled(kind != "none")
        self.secret_env.setPlaceholderText("PACS_TOKEN" if kind == "token" else "PACS_PASSWORD")

    def set_auth(self, kind: str) -> None:
        self.auth.setCurrentText(next(k for k, v in AUTH_CHOICES.items() if v == kind))

    def settings(self) -> PacsSettings:
        """The fields as settings (:class:`PacsSettingsError` for ones that cannot work)."""
        kind = AUTH_CHOICES[self.auth.currentText()]
        return PacsSettings(url=self.url.text(), auth=kind,
                            user=self.user.text().strip() or None if kind == "basic" else None,
                            secret_env=self.secret_env.text().strip() or None
                            if kind != "none" else None,
                            ca_bundle=self.ca_bundle.text().strip() or None,
                            timeout=float(self.timeout.value()))


class SearchPanel(QWidget):
    """Patient id, study date (or range) and modality."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.patient = QLineEdit(placeholderText="PatientID, * and ? allowed")
        self.date = QLineEdit(placeholderText="YYYY-MM-DD or A..B")
        self.modality = QComboBox()
        self.modality.addItems(["CT", "SEG", "any"])
        form.addRow("Patient", self.patient)
        form.addRow("Date", self.date)
        form.addRow("Modality", self.modality)

    def filters(self) -> dict:
        modality = self.modality.currentText()
        return {"patient_id": self.patient.text().strip() or None,
                "date": self.date.text().strip() or None,
                "modality": None if modality == "any" else modality}


class SeriesTable(QTableWidget):
    """The series found: patient, date, modality, description, number of instances."""

    COLUMNS = ("Patient", "Date", "Mod.", "Description", "Files")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.setMinimumHeight(140)
        self.rows: list[SeriesSummary] = []

    def show_rows(self, rows: list[SeriesSummary]) -> None:
        self.rows = list(rows)
        self.setRowCount(len(rows))
        for i, r in enumerate(rows):
            files = "?" if r.instances is None else str(r.instances)
            cells = (r.patient_id or r.patient_name, r.date_text, r.modality, r.title, files)
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"series {r.series_uid}\nstudy {r.study_uid}")
                if j == 4:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                self.setItem(i, j, item)
        if rows:
            self.selectRow(0)

    def selected(self) -> SeriesSummary | None:
        index = self.currentRow()
        return self.rows[index] if 0 <= index < len(self.rows) else None
