"""``dicomweb:<url>?series=<uid>``: a series on a server as an input of ``probunet sample``.

The spec is the DICOMweb root followed by a query that names the series and, when the server
wants it, how to sign in (never the secret, only the NAME of its environment variable)::

    dicomweb:http://127.0.0.1:8042/dicom-web?series=1.3.6...192
    dicomweb:https://pacs.example.org/dicom-web?series=1.2.3&study=1.2&token-env=PACS_TOKEN
    dicomweb:https://pacs.example.org/dicom-web?series=1.2.3&user=alice&password-env=PACS_PW
    dicomweb:https://pacs.example.org/dicom-web?series=1.2.3&ca-bundle=/etc/hospital-ca.pem

Keys: ``series`` (required), ``study``, ``user`` + ``password-env`` (basic), ``token-env``
(bearer), ``ca-bundle``, ``timeout`` (seconds). :func:`resolve_inputs` retrieves each such
series into the cache (:mod:`.retrieve`) and gives its cache folder in its place, a DICOM
series folder that the sampler cuts into axial slices.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit, urlunsplit

from napari_probunet.data.pacs.cache import SeriesCache, check_uid
from napari_probunet.data.pacs.errors import PacsSettingsError
from napari_probunet.data.pacs.settings import DEFAULT_TIMEOUT, PacsSettings

PREFIX = "dicomweb:"
_KEYS = {"series", "study", "user", "password-env", "token-env", "ca-bundle", "timeout"}


@dataclass(frozen=True)
class SeriesSpec:
    """A parsed ``dicomweb:`` input: the server's settings and the series."""

    settings: PacsSettings
    series_uid: str
    study_uid: str | None = None


def is_dicomweb_spec(text: str) -> bool:
    return str(text).strip().lower().startswith(PREFIX)


def parse_spec(text: str) -> SeriesSpec:
    """The :class:`SeriesSpec` of a ``dicomweb:`` input (see the module docstring)."""
    body = str(text).strip()[len(PREFIX):]
    parts = urlsplit(body)
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _KEYS)
    if unknown:
        raise PacsSettingsError(f"{PREFIX} input: unknown key(s) {', '.join(unknown)}; use "
                                f"{', '.join(sorted(_KEYS))}")
    one = {k: v[-1] for k, v in query.items()}
    if not one.get("series"):
        raise PacsSettingsError(f"{PREFIX} input {urlunsplit(parts[:3] + ('', ''))!r} names no "
                                "series; add ?series=<SeriesInstanceUID> (probunet pacs ls "
                                "lists them)")
    if one.get("token-env"):
        auth, secret = "token", one["token-env"]
    elif one.get("user") or one.get("password-env"):
        auth, secret = "basic", one.get("password-env")
    else:
        auth, secret = "none", None
    try:
        timeout = float(one.get("timeout") or DEFAULT_TIMEOUT)
    except ValueError:
        raise PacsSettingsError(f"{PREFIX} input: timeout={one['timeout']!r} is not a number "
                                "of seconds") from None
    settings = PacsSettings(url=urlunsplit(parts[:3] + ("", "")), auth=auth,
                            user=one.get("user") or None, secret_env=secret,
                            ca_bundle=one.get("ca-bundle") or None, timeout=timeout)
    study = one.get("study") or None
    return SeriesSpec(settings, check_uid(one["series"]),
                      check_uid(study, "StudyInstanceUID") if study else None)


def resolve_inputs(inputs: Sequence[str], cache: SeriesCache | None = None,
                   report: Callable[[str], None] | None = None,
                   cancel: threading.Event | None = None) -> list[str]:
    """``inputs`` with each ``dicomweb:`` spec replaced by its series' cache folder (retrieved
    now, or found complete in the cache); other inputs unchanged. ``report`` gets one line per
    series."""
    from napari_probunet.data.pacs.client import Pacs
    from napari_probunet.data.pacs.retrieve import retrieve_series

    out = []
    for text in inputs:
        if not is_dicomweb_spec(text):
            out.append(text)
            continue
        spec = parse_spec(text)
        with Pacs(spec.settings) as pacs:
            cached = retrieve_series(pacs, spec.series_uid, spec.study_uid, cache=cache,
                                     cancel=cancel)
        if report is not None:
            how = ("server unreachable, from the cache" if cached.offline else
                   "from the cache" if cached.from_cache else "retrieved")
            report(f"series {spec.series_uid} from {spec.settings.url}: {how}, "
                   f"{len(cached.files)} instances in {cached.folder}")
        out.append(str(cached.folder))
    return out
