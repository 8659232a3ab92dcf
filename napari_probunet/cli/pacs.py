"""``probunet pacs``: a PACS over DICOMweb from the command line (``docs/pacs.md``).

- ``probunet pacs ls URL [--patient ID] [--date D|A..B] [--modality CT|any]``: the series on
  the server, one line each (``--json`` for a machine);
- ``probunet pacs get URL SERIES_UID``: retrieve a series into the local cache (once: a second
  ``get`` finds it there) and print its folder, which ``probunet sample`` and napari open;
- ``probunet pacs put URL FILE...``: store DICOM files (a SEG) on the server.

Sign-in options are the same for the three: ``--user NAME --password-env VAR`` (HTTP basic) or
``--token-env VAR`` (bearer token); the secret is read from the environment variable, never from
the command line. ``--ca-bundle PEM`` trusts a hospital's own certificate authority;
``--timeout`` (default 5 s) bounds every wait. The work is :mod:`napari_probunet.data.pacs`.
"""

from __future__ import annotations

import argparse
import json
import sys

from napari_probunet.data.pacs.settings import AUTH_KINDS, DEFAULT_TIMEOUT, PacsSettings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Search a PACS over DICOMweb, retrieve a series into the local "
                          "cache, store a DICOM SEG back. See docs/pacs.md.")
    sub = parser.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    ls = sub.add_parser("ls", help="list the series on the server (patient, date, modality)")
    _server_arguments(ls)
    ls.add_argument("--patient", help="PatientID (wildcards * and ? allowed)")
    ls.add_argument("--date", help="study date YYYY-MM-DD, or a range A..B (either end open)")
    ls.add_argument("--modality", default="CT", help="modality (default CT); 'any' for all")
    ls.add_argument("--study", help="only the series of this StudyInstanceUID")
    ls.add_argument("--json", action="store_true", help="print the series as JSON")
    get = sub.add_parser("get", help="retrieve a series into the local cache")
    _server_arguments(get)
    get.add_argument("series", help="SeriesInstanceUID (from probunet pacs ls)")
    get.add_argument("--study", help="its StudyInstanceUID (found by a search if left out)")
    get.add_argument("--cache", help="cache folder (default: $NAPARI_PROBUNET_PACS_CACHE or "
                                     "the user cache folder)")
    put = sub.add_parser("put", help="store DICOM files (e.g. a SEG) on the server")
    _server_arguments(put)
    put.add_argument("files", nargs="+", help="DICOM files to store")


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server's DICOMweb root, e.g. "
                                    "https://pacs.example.org/dicom-web")
    parser.add_argument("--auth", choices=AUTH_KINDS, default=None,
                        help="none, basic or token (default: from --user / --token-env)")
    parser.add_argument("--user", help="user name for HTTP basic authentication")
    parser.add_argument("--password-env", metavar="VAR",
                        help="NAME of the environment variable that holds the password")
    parser.add_argument("--token-env", metavar="VAR",
                        help="NAME of the environment variable that holds a bearer token")
    parser.add_argument("--ca-bundle", metavar="PEM",
                        help="certificate authorities to trust (a hospital's own CA, from IT)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the server (default {DEFAULT_TIMEOUT:g})")


def settings_from(args: argparse.Namespace) -> PacsSettings:
    """The :class:`PacsSettings` the options describe."""
    auth = args.auth or ("token" if args.token_env else "basic" if args.user else "none")
    secret = args.token_env if auth == "token" else args.password_env if auth == "basic" else None
    return PacsSettings(url=args.url, auth=auth, user=args.user, secret_env=secret,
                        ca_bundle=args.ca_bundle, timeout=args.timeout)


def run(args: argparse.Namespace) -> int:
    from napari_probunet.data.pacs.client import Pacs

    settings = settings_from(args)
    with Pacs(settings) as pacs:
        return {"ls": _ls, "get": _get, "put": _put}[args.pacs_command](pacs, args)


def _ls(pacs, args: argparse.Namespace) -> int:
    from napari_probunet.data.pacs.search import search_series

    modality = None if str(args.modality).lower() in ("any", "*", "") else args.modality
    rows = search_series(pacs, patient_id=args.patient, date=args.date, modality=modality,
                         study_uid=args.study)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
        return 0
    if not rows:
        print(f"no series on {pacs.url} match", file=sys.stderr)
        return 0
    print(f"{'patient':<16} {'date':<10} {'mod':<4} {'files':>5}  {'description':<28} series")
    for r in rows:
        files = "?" if r.instances is None else str(r.instances)
        print(f"{r.patient_id[:16]:<16} {r.date_text:<10} {r.modality[:4]:<4} {files:>5}  "
              f"{r.title[:28]:<28} {r.series_uid}")
    return 0


def _get(pacs, args: argparse.Namespace) -> int:
    import os

    from tqdm import tqdm

    from napari_probunet.data.pacs.cache import SeriesCache
    from napari_probunet.data.pacs.retrieve import retrieve_series

    cache = SeriesCache(args.cache) if args.cache else SeriesCache()
    bar = tqdm(unit="file", file=sys.stderr, desc="retrieving", dynamic_ncols=True,
               disable=bool(os.environ.get("TQDM_DISABLE")))

    def progress(p) -> None:
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    with bar:
        cached = retrieve_series(pacs, args.series, args.study, cache=cache, progress=progress)
    how = ("the server cannot be reached: the copy in the cache" if cached.offline else
           "already in the cache" if cached.from_cache else "retrieved")
    print(f"probunet pacs get: {how}: {len(cached.files)} instances of series "
          f"{cached.series_uid}", file=sys.stderr)
    print(cached.folder)
    return 0


def _put(pacs, args: argparse.Namespace) -> int:
    from napari_probunet.data.pacs.store import store_files

    result = store_files(pacs, args.files)
    for sop in result.sop_uids:
        print(f"stored {sop}")
    print(f"probunet pacs put: {len(result.sop_uids)} instance(s) stored on {result.server} "
          f"(series {', '.join(result.series_uids)})", file=sys.stderr)
    return 0
