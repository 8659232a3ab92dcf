"""The connection to one DICOMweb server: dicomweb-client on a requests session of our own.

:class:`Pacs` signs in as its :class:`~.settings.PacsSettings` say (the secret read from the
environment when the connection is made, kept only inside the session), verifies TLS unless told
not to, gives every request the settings' timeout and never retries behind the user's back (a
retry loop would turn a 5 s timeout into a minute). Every failure of a request is turned into a
:class:`~.errors.PacsError` by :meth:`Pacs.failure`: unreachable, TLS, 401, 403, 404 or another
status, each with what to check. :func:`redact` removes the secret from any text that might
reach the user, a log or a record (the messages are built not to hold it in the first place).

Thread-safe enough for :mod:`.retrieve`'s few parallel downloads (one requests session with a
connection pool of :data:`POOL_SIZE`).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from napari_probunet.data.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsNotFoundError,
    PacsTlsError,
    PacsUnreachableError,
)
from napari_probunet.data.pacs.settings import PacsSettings, read_secret

log = logging.getLogger("napari_probunet.pacs")
#: connections kept open to the server (parallel downloads of :mod:`.retrieve` included)
POOL_SIZE = 16
T = TypeVar("T")


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each secret (and its HTTP-basic base64 form) replaced by ``***``."""
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, "***")
    return out


class Pacs:
    """An open connection to a DICOMweb server (see the module docstring).

    Args:
        settings: the server and how to sign in.

    Raises:
        PacsSettingsError: the environment variable named for the secret is not set.
    """

    def __init__(self, settings: PacsSettings) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient
        from requests.adapters import HTTPAdapter

        self.settings = settings
        secret = read_secret(settings)
        self._secrets: tuple[str, ...] = ()
        session = _Session()
        session.verify = settings.tls_verify()
        # DICOM pixels barely compress, and a server that gzips each instance spends 15 times
        # longer on it (Orthanc: 70 ms instead of 5 ms per CT slice, measured here)
        session.headers["Accept-Encoding"] = "identity"
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        if settings.auth == "basic":
            session.auth = requests.auth.HTTPBasicAuth(settings.user, secret)
            pair = base64.b64encode(f"{settings.user}:{secret}".encode()).decode()
            self._secrets = (secret, pair)
        elif settings.auth == "token":
            session.headers["Authorization"] = f"Bearer {secret}"
            self._secrets = (secret,)
        timeout = float(settings.timeout)
        self._session = session
        self._client = DICOMwebClient(settings.url, session=session, timeout=(timeout, timeout))
        self._client.set_http_retry_params(retry=False)

    def __repr__(self) -> str:
        return f"Pacs({self.settings.describe()})"

    @property
    def url(self) -> str:
        return self.settings.url

    def close(self) -> None:
        """Close the connections (the object cannot be used afterwards)."""
        self._session.close()

    def __enter__(self) -> Pacs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def redact(self, text: str) -> str:
        """``text`` without this connection's secret (see :func:`redact`)."""
        return redact(text, self._secrets)

    # ------------------------------------------------------------------------- requests
    def call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` with every failure turned into a :class:`PacsError`;
        ``what`` names the request for the message (e.g. ``"search for series"``)."""
        try:
            return fn(*args, **kwargs)
        except PacsError:
            raise
        except Exception as exc:  # noqa: BLE001 - requests, urllib3 and dicomweb-client
            raise self.failure(exc, what) from None

    def search_studies(self, filters: dict[str, Any], fields: Sequence[str] = (),
                       limit: int | None = None) -> list[dict]:
        """QIDO-RS ``/studies``: the DICOM JSON of each matching study."""
        return self.call("the search for studies", self._client.search_for_studies,
                         search_filters=filters, fields=list(fields) or None, limit=limit)

    def search_series(self, filters: dict[str, Any], fields: Sequence[str] = (),
                      limit: int | None = None) -> list[dict]:
        """QIDO-RS ``/series``: the DICOM JSON of each matching series."""
        return self.call("the search for series", self._client.search_for_series,
                         search_filters=filters, fields=list(fields) or None, limit=limit)

    def search_instances(self, study_uid: str | None, series_uid: str | None,
                         filters: dict[str, Any] | None = None,
                         fields: Sequence[str] = ()) -> list[dict]:
        """QIDO-RS ``.../instances``: the DICOM JSON of each instance (every page of them)."""
        return self.call(f"the listing of the instances of series {series_uid}",
                         self._client.search_for_instances, study_instance_uid=study_uid,
                         series_instance_uid=series_uid, search_filters=filters or {},
                         fields=list(fields) or None, get_remaining=True)

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str):
        """WADO-RS: one instance as a pydicom ``Dataset`` (pixel data included)."""
        return self.call(f"the retrieve of instance {sop_uid}", self._client.retrieve_instance,
                         study_uid, series_uid, sop_uid)

    def store_datasets(self, datasets: Sequence):
        """STOW-RS: store pydicom datasets; the server's answer (a ``Dataset``)."""
        return self.call("the store", self._client.store_instances, list(datasets))

    def check(self) -> None:
        """One small request (a study search, limit 1): raises if the server cannot be used."""
        self.search_studies({}, limit=1)

    # ------------------------------------------------------------------------- failures
    def failure(self, exc: BaseException, what: str) -> PacsError:
        """The :class:`PacsError` that says what ``exc`` (from a request) means for the user."""
        import requests

        url, timeout = self.settings.url, self.settings.timeout
        if isinstance(exc, requests.exceptions.SSLError):
            error = PacsTlsError(
                f"{url}: the TLS check of the server failed ({_tls_reason(exc)}) during "
                f"{what}. If the hospital uses its own certificate authority, give its CA "
                "bundle (a PEM file from IT) with --ca-bundle; check that the URL's host name "
                "is the one on the server's certificate. Do not turn verification off on a "
                "hospital network.")
        elif isinstance(exc, (requests.exceptions.ConnectTimeout,
                              requests.exceptions.ReadTimeout)):
            stage = ("did not accept a connection" if isinstance(
                exc, requests.exceptions.ConnectTimeout) else "did not answer")
            error = PacsUnreachableError(
                f"{url} {stage} within {timeout:g} s during {what}; check that the server is "
                "running and reachable from this computer (VPN, firewall), or raise the "
                "timeout (--timeout) for a slow server.")
        elif isinstance(exc, requests.exceptions.ConnectionError):
            error = PacsUnreachableError(
                f"cannot reach {url} ({_connection_reason(exc)}) during {what}; check the URL "
                "and its port, that the server is running, and the network (VPN, proxy).")
        elif isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            error = self._http_failure(exc.response.status_code, exc.response.reason, what)
        else:
            error = PacsError(f"{url}: {what} failed ({type(exc).__name__}: "
                              f"{_short(str(exc))}); the server's answer is not the DICOMweb "
                              "expected: check that the URL is the server's DICOMweb root "
                              "(Orthanc: http://host:8042/dicom-web).")
        error.args = (self.redact(error.args[0]),) + error.args[1:]
        log.info("%s", error.args[0])
        return error

    def _http_failure(self, status: int, reason: str, what: str) -> PacsError:
        url, s = self.settings.url, self.settings
        if status == 401:
            given = {"none": "no credentials were given: the server wants a user and password "
                             "(--auth basic) or a token (--auth token)",
                     "basic": f"check the user name {s.user!r} and the password in "
                              f"${s.secret_env}",
                     "token": f"check the token in ${s.secret_env} (it may have expired)"}
            return PacsAuthError(f"{url} answered 401 Unauthorized to {what}: the server did "
                                 f"not accept the sign-in; {given[s.auth]}.", 401)
        if status == 403:
            who = f"user {s.user!r}" if s.auth == "basic" else "these credentials"
            return PacsAuthError(f"{url} answered 403 Forbidden to {what}: signed in, but "
                                 f"{who} may not do this; ask the PACS administrator for the "
                                 "right (read, or store for a SEG).", 403)
        if status == 404:
            return PacsNotFoundError(f"{url} answered 404 Not Found to {what}: it is not on the "
                                     "server (deleted or moved?), or the URL is not the "
                                     "server's DICOMweb root (Orthanc: .../dicom-web).")
        return PacsError(f"{url} answered {status} {reason or ''} to {what}; "
                         + ("the server has a problem: try again later or ask its "
                            "administrator." if status >= 500 else
                            "the server refused the request."))


def _session_class():
    import requests

    class PacsSession(requests.Session):
        """The connection's requests session, where dicomweb-client's requests are mended:

        - its own ``verify`` (a CA bundle) wins over ``$REQUESTS_CA_BUNDLE``;
        - QIDO's wildcards ``*`` and ``?`` go unencoded in the query (dicomweb-client encodes
          them as ``%2A``/``%3F``; RFC 3986 allows them as they are, and Orthanc 1.10 matches
          ``PatientID=LIDC*`` but not ``PatientID=LIDC%2A``);
        - dicomweb-client's ``Host`` header (the host without its port) is dropped, so that
          requests sends the right one (``host:port``, which a reverse proxy routes by);
        - a GET on a kept-alive connection the server closed while idle is sent once more.
        """

        def request(self, method, url, *args, **kwargs):
            if self.verify is not True and kwargs.get("verify") is None:
                # requests lets $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE override a session's
                # verify (psf/requests#3829): a CA bundle the user gave must win
                kwargs["verify"] = self.verify
            headers = kwargs.get("headers")
            if headers and "Host" in headers:
                kwargs["headers"] = {k: v for k, v in headers.items() if k != "Host"}
            if isinstance(url, str) and "?" in url:
                head, query = url.split("?", 1)
                url = head + "?" + query.replace("%2A", "*").replace("%3F", "?")
            try:
                return super().request(method, url, *args, **kwargs)
            except requests.exceptions.ConnectionError as exc:
                # a kept-alive connection that the server (or a proxy) closed while idle:
                # a GET is sent once more, on a new connection (never a timeout, never a POST)
                text = str(exc)
                if str(method).upper() != "GET" or not (
                        "Connection aborted" in text or "RemoteDisconnected" in text):
                    raise
                return super().request(method, url, *args, **kwargs)

    return PacsSession


def _Session():  # noqa: N802 - a class made on first use (requests is imported lazily)
    return _session_class()()


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _connection_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused: nothing listens on that port"),
                           ("name or service not known", "unknown host name"),
                           ("nodename nor servname", "unknown host name"),
                           ("temporary failure in name resolution", "host name lookup failed"),
                           ("no route to host", "no route to host"),
                           ("network is unreachable", "network unreachable"),
                           ("reset by peer", "the connection was reset"),
                           ("remotedisconnected", "the server closed the connection"),
                           ("aborted", "the connection was aborted")):
        if needle in text:
            return reason
    return "no connection"


def _tls_reason(exc: BaseException) -> str:
    text = str(exc)
    for needle in ("certificate verify failed", "hostname mismatch", "wrong version number",
                   "self-signed certificate", "certificate has expired"):
        if needle in text.lower():
            start = text.lower().index(needle)
            return _short(text[start:].split(")")[0].split("(_ssl")[0], 120)
    return "handshake failed"
