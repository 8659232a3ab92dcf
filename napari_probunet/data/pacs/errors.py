"""What can go wrong between this computer and a PACS, each said so that the user can act.

Every class is a :class:`~napari_probunet.errors.UserError`: the command line prints it on one
line (exit 2), the PACS dock shows it as a napari notification. No message ever holds a
password or a token (:mod:`.settings` keeps them out, :func:`.client.redact` is the last net).
"""

from __future__ import annotations

from napari_probunet.errors import UserError


class PacsError(UserError):
    """A DICOMweb request that failed; the message names the server and what to check."""


class PacsSettingsError(PacsError):
    """Connection settings that cannot work (bad URL, missing environment variable, ...)."""


class PacsUnreachableError(PacsError):
    """No answer from the server within the timeout (down, wrong port, network, VPN)."""


class PacsTlsError(PacsError):
    """The server's TLS certificate could not be verified (or the TLS handshake failed)."""


class PacsAuthError(PacsError):
    """401 (credentials refused or missing) or 403 (signed in, but not allowed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class PacsNotFoundError(PacsError):
    """404: the study, series or instance is not on the server (or the URL is not DICOMweb's)."""


class PacsStoreError(PacsError):
    """A STOW-RS store that the server refused or that did not reach it; the local file stays."""


class SeriesIncompleteError(PacsError):
    """A series whose instances on the server are not all there; nothing is kept of it."""


class TransferCancelled(PacsError):
    """The user cancelled a retrieve; what was downloaded of it is removed."""
