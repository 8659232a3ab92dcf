"""Where a DICOMweb server is and how to sign in to it, without ever holding a secret in sight.

A :class:`PacsSettings` names the server's DICOMweb root (``https://pacs.example.org/dicom-web``),
the way to sign in (``none``, ``basic`` with a user name, or a bearer ``token``), the *name* of
the environment variable that holds the password or the token (never the secret itself: it is
read from the environment at the moment a connection is made, see :func:`read_secret`), the TLS
policy (verified by default; a CA bundle for a hospital's own certificate authority) and the
timeout in seconds. Its ``repr``, :meth:`PacsSettings.describe` and :meth:`PacsSettings.record`
(what a cache manifest or a provenance record keeps) name the variable, never its value.

A URL with a user name or password in it (``https://alice:pw@host/...``) is refused: such a URL
ends up in shell histories and logs; the user goes in ``user``, the password in a variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from napari_probunet.data.pacs.errors import PacsSettingsError

AUTH_KINDS = ("none", "basic", "token")
#: seconds to wait for the server to connect and for each answer (the issue's default)
DEFAULT_TIMEOUT = 5.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class PacsSettings:
    """How to reach one DICOMweb server.

    Args:
        url: the DICOMweb root, ``http(s)://host[:port]/path`` (Orthanc: ``.../dicom-web``).
        auth: ``"none"``, ``"basic"`` (HTTP basic: ``user`` and the password in ``secret_env``)
            or ``"token"`` (``Authorization: Bearer`` with the token in ``secret_env``).
        user: the user name for basic authentication.
        secret_env: the NAME of the environment variable holding the password or token.
        ca_bundle: a PEM file of the certificate authorities to trust (a hospital's own CA);
            ``None`` trusts the system's (certifi's) authorities.
        verify_tls: ``False`` turns certificate checks off (only for a test server; said so
            in :meth:`describe`).
        timeout: seconds to wait for a connection and for each answer (default 5).
    """

    url: str
    auth: str = "none"
    user: str | None = None
    secret_env: str | None = None
    ca_bundle: str | None = None
    verify_tls: bool = True
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _clean_url(self.url))
        auth = str(self.auth or "none").strip().lower()
        object.__setattr__(self, "auth", auth)
        if auth not in AUTH_KINDS:
            raise PacsSettingsError(f"unknown authentication {self.auth!r}; choose one of "
                                    f"{', '.join(AUTH_KINDS)}")
        if auth == "basic" and not self.user:
            raise PacsSettingsError("basic authentication needs a user name (--user) and the "
                                    "name of the variable that holds the password "
                                    "(--password-env)")
        if auth != "none":
            what = "--password-env" if auth == "basic" else "--token-env"
            if not self.secret_env:
                raise PacsSettingsError(
                    f"{auth} authentication needs the NAME of an environment variable that "
                    f"holds the {'password' if auth == 'basic' else 'token'} ({what} NAME); "
                    "the secret itself is never given on the command line")
            if not _ENV_NAME.match(self.secret_env):
                raise PacsSettingsError(
                    f"{what} takes the name of an environment variable (letters, digits, _), "
                    "not the secret itself; e.g. export PACS_TOKEN=... then "
                    f"{what} PACS_TOKEN")
        if not (isinstance(self.timeout, (int, float)) and 0 < float(self.timeout) <= 600):
            raise PacsSettingsError(f"timeout must be between 0 and 600 seconds, got "
                                    f"{self.timeout!r}")
        if self.ca_bundle is not None:
            path = Path(self.ca_bundle).expanduser()
            if not path.is_file():
                raise PacsSettingsError(f"CA bundle {path}: no such file; give the PEM file "
                                        "of the hospital's certificate authority (ask IT)")
            object.__setattr__(self, "ca_bundle", str(path))

    @property
    def secure(self) -> bool:
        """Whether the connection is HTTPS."""
        return self.url.lower().startswith("https://")

    def tls_verify(self) -> bool | str:
        """What ``requests`` takes as ``verify``: the CA bundle, True, or False."""
        if not self.verify_tls:
            return False
        return self.ca_bundle or True

    def describe(self) -> str:
        """One line for the user: the server, how it signs in and how TLS is checked."""
        how = {"none": "no authentication",
               "basic": f"basic authentication as {self.user}, password from ${self.secret_env}",
               "token": f"bearer token from ${self.secret_env}"}[self.auth]
        if not self.secure:
            tls = "no TLS"
        elif not self.verify_tls:
            tls = "TLS NOT verified"
        else:
            tls = f"TLS verified{' with ' + self.ca_bundle if self.ca_bundle else ''}"
        return f"{self.url} ({how}, {tls}, timeout {self.timeout:g} s)"

    def record(self) -> dict:
        """What a manifest or provenance record keeps of the server: no secret, its name only."""
        return {"url": self.url, "auth": self.auth, "user": self.user,
                "secret_env": self.secret_env, "ca_bundle": self.ca_bundle,
                "verify_tls": self.verify_tls}

    def __repr__(self) -> str:
        return f"PacsSettings({self.describe()})"


def read_secret(settings: PacsSettings) -> str | None:
    """The password or token from the environment variable the settings name (None without
    authentication). Missing or empty is a :class:`PacsSettingsError` naming the variable."""
    if settings.auth == "none":
        return None
    value = os.environ.get(settings.secret_env or "", "")
    if not value:
        what = "password" if settings.auth == "basic" else "token"
        raise PacsSettingsError(
            f"the environment variable {settings.secret_env} (which should hold the {what} for "
            f"{settings.url}) is not set or empty; set it in the shell or the launcher that "
            f"starts this program, e.g. read -s {settings.secret_env}; export "
            f"{settings.secret_env}")
    return value


def _clean_url(url: str) -> str:
    """The DICOMweb root without a trailing slash; refuse what cannot work or leaks a secret."""
    text = str(url or "").strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PacsSettingsError(f"{_without_userinfo(text)!r} is not a DICOMweb URL; give "
                                "http(s)://host[:port]/path, e.g. "
                                "https://pacs.example.org/dicom-web")
    if parts.username is not None or parts.password is not None:
        raise PacsSettingsError(
            f"the URL {_without_userinfo(text)!r} holds a user name or password; leave them "
            "out of the URL (it ends up in histories and logs): give the user with --user and "
            "the password in an environment variable named by --password-env")
    if parts.query or parts.fragment:
        raise PacsSettingsError(f"the DICOMweb URL {text!r} has a query or fragment; give the "
                                "root only, e.g. https://pacs.example.org/dicom-web")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise PacsSettingsError(f"{text!r}: the port is not a number") from None
    return urlunsplit((parts.scheme.lower(), parts.netloc, parts.path.rstrip("/"), "", ""))


def _without_userinfo(text: str) -> str:
    """``text`` with anything between ``//`` and ``@`` replaced (for messages)."""
    return re.sub(r"//[^/@]*@", "//***@", text)
