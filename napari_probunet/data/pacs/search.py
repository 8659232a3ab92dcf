"""Searching a PACS (QIDO-RS): which series of which patient, on which date, of which modality.

:func:`search_series` returns :class:`SeriesSummary` rows, what the dock's table and ``probunet
pacs ls`` show: patient, study date, modality, series description and number of instances.
Dates are typed as a radiologist writes them (``2000-01-01``, ``20000101``, a range
``2000-01-01..2000-12-31``, open ``2000-01-01..``); :func:`dicom_date` turns them into DICOM's
``YYYYMMDD[-YYYYMMDD]``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from napari_probunet.data.pacs.client import Pacs
from napari_probunet.data.pacs.errors import PacsSettingsError

#: the attributes asked of the server for each series (beyond what QIDO returns by default)
SERIES_FIELDS = ("PatientID", "PatientName", "StudyDate", "StudyDescription", "StudyInstanceUID",
                 "SeriesDescription", "SeriesNumber", "Modality",
                 "NumberOfSeriesRelatedInstances")
_DATE = r"(\d{4})-?(\d{2})-?(\d{2})"


@dataclass(frozen=True)
class SeriesSummary:
    """One series as the server describes it (strings as stored; ``instances`` may be None
    when the server does not count them)."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    modality: str = ""
    description: str = ""
    series_number: str = ""
    instances: int | None = None
    study_description: str = ""

    @classmethod
    def from_json(cls, item: dict) -> SeriesSummary:
        """A row from QIDO-RS DICOM JSON (tags as 8 hex digits)."""
        count = value(item, "00201209")
        return cls(study_uid=value(item, "0020000D"), series_uid=value(item, "0020000E"),
                   patient_id=value(item, "00100020"), patient_name=value(item, "00100010"),
                   study_date=value(item, "00080020"), modality=value(item, "00080060"),
                   description=value(item, "0008103E"), series_number=value(item, "00200011"),
                   instances=int(count) if str(count).strip().isdigit() else None,
                   study_description=value(item, "00081030"))

    @property
    def date_text(self) -> str:
        """The study date as ``YYYY-MM-DD`` (as stored when it is not a DICOM date)."""
        d = self.study_date
        return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if re.fullmatch(r"\d{8}", d) else d

    @property
    def title(self) -> str:
        """What a list shows as the description: the series', else the study's, else its
        number."""
        return (self.description or self.study_description
                or (f"series {self.series_number}" if self.series_number else "-"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def value(item: dict, tag: str) -> str:
    """The first value of ``tag`` in a DICOM JSON object as text ('' when absent); a person
    name gives its alphabetic form."""
    entry = item.get(tag) or item.get(tag.lower()) or {}
    values = entry.get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):
        return str(first.get("Alphabetic", "") or "")
    return str(first)


def dicom_date(text: str | None) -> str | None:
    """``2000-01-01`` / ``20000101`` -> ``20000101``; ``a..b`` or ``a-b`` -> ``a-b``, either
    end open (``a..``, ``..b``); None or '' -> None. Anything else is refused."""
    if text is None or not str(text).strip():
        return None
    t = str(text).strip()
    m = re.fullmatch(rf"{_DATE}", t)
    if m:
        return "".join(m.groups())
    m = re.fullmatch(rf"(?:{_DATE})?\s*(?:\.\.|-|/)\s*(?:{_DATE})?", t)
    if m and (m[1] or m[4]):
        start = "".join(m.groups()[:3]) if m[1] else ""
        end = "".join(m.groups()[3:]) if m[4] else ""
        return f"{start}-{end}"
    raise PacsSettingsError(f"date {t!r} not understood; give YYYY-MM-DD, or a range "
                            "YYYY-MM-DD..YYYY-MM-DD (either end may be left open)")


def search_series(pacs: Pacs, patient_id: str | None = None, date: str | None = None,
                  modality: str | None = "CT", study_uid: str | None = None,
                  series_uid: str | None = None, limit: int | None = None) -> list[SeriesSummary]:
    """The series on the server matching every filter given (``*`` and ``?`` wildcards in the
    patient id as QIDO allows), sorted by patient, date and series number."""
    filters: dict[str, Any] = {}
    if patient_id:
        filters["PatientID"] = patient_id
    if (when := dicom_date(date)) is not None:
        filters["StudyDate"] = when
    if modality:
        filters["Modality"] = modality.upper()
    if study_uid:
        filters["StudyInstanceUID"] = study_uid
    if series_uid:
        filters["SeriesInstanceUID"] = series_uid
    rows = [SeriesSummary.from_json(item)
            for item in pacs.search_series(filters, SERIES_FIELDS, limit=limit)]
    return sorted(rows, key=lambda r: (r.patient_id, r.study_date, _number(r.series_number),
                                       r.series_uid))


def find_series(pacs: Pacs, series_uid: str) -> SeriesSummary:
    """The one series with this SeriesInstanceUID (any modality), or 404's error."""
    from napari_probunet.data.pacs.errors import PacsNotFoundError

    found = search_series(pacs, modality=None, series_uid=series_uid)
    if not found:
        raise PacsNotFoundError(f"{pacs.url}: no series {series_uid} on the server; check the "
                                "SeriesInstanceUID (probunet pacs ls lists the series).")
    return found[0]


def _number(text: str) -> int:
    return int(text) if str(text).strip().lstrip("-").isdigit() else 1 << 30
