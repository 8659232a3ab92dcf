"""A PACS over DICOMweb: search, retrieve a series into a local cache, store a SEG back.

GUI-free (no Qt, no napari): the command line (``probunet pacs``), ``probunet sample
dicomweb:...`` and the PACS dock all use it.

- :mod:`.settings`: :class:`PacsSettings`, where the server is and how to sign in (none, HTTP
  basic, a bearer token), the secret read from an environment variable whose *name* is given;
  TLS verified by default, a CA bundle for a hospital's own certificate authority.
- :mod:`.client`: :class:`Pacs`, the connection (dicomweb-client on a requests session), every
  failure turned into an :class:`.errors.PacsError` that says what to check.
- :mod:`.search`: :class:`SeriesSummary` rows of a QIDO-RS search (patient, date, modality).
- :mod:`.cache`: the local cache, one folder per SeriesInstanceUID, committed atomically.
- :mod:`.retrieve`: a series instance by instance (WADO-RS) with progress and cancel, checked
  complete against the server's listing.
- :mod:`.store`: DICOM files (a SEG) stored back (STOW-RS).
- :mod:`.spec`: the ``dicomweb:<url>?series=<uid>`` input of ``probunet sample``.

``docs/pacs.md`` is the user's page.
"""

from napari_probunet.data.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsNotFoundError,
    PacsSettingsError,
    PacsStoreError,
    PacsTlsError,
    PacsUnreachableError,
    SeriesIncompleteError,
    TransferCancelled,
)
from napari_probunet.data.pacs.settings import PacsSettings

__all__ = ["PacsAuthError", "PacsError", "PacsNotFoundError", "PacsSettings",
           "PacsSettingsError", "PacsStoreError", "PacsTlsError", "PacsUnreachableError",
           "SeriesIncompleteError", "TransferCancelled"]
