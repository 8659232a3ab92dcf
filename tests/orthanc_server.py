"""A real DICOMweb server for the PACS tests: Debian's Orthanc with its DICOMweb plugin.

Not a test module (no ``test_`` prefix): ``tests/test_pacs.py`` and ``tests/test_pacs_gui.py``
import the fixtures from here. Each server is the ``Orthanc`` binary started by the test on
127.0.0.1 with a free HTTP port, a free DICOM port, a temporary storage folder and a generated
JSON configuration, never the system service; it is stopped when the fixture ends.

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (the Makefile's
``SYSTEM_PACKAGES``); without them the tests that need a server are skipped with the command
that installs them.
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import socket
import socketserver
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
#: where Debian's orthanc-dicomweb puts the plugin (``dpkg -L orthanc-dicomweb``)
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                     "/usr/lib/orthanc/libOrthancDicomWeb.so")
LIDC = Path("/work/shared/data/lidc-idri-scans/LIDC-IDRI-0001")
if not LIDC.is_dir():  # the repository's own copy of the shared data, wherever it is checked out
    LIDC = Path(__file__).resolve().parents[2] / "shared/data/lidc-idri-scans/LIDC-IDRI-0001"
CT_FOLDER = LIDC / "ct"
THIRD_PARTY_SEG = LIDC / "annotations" / "LIDC-IDRI-0001_Combined_SEG.dcm"
SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
STUDY_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
USER, PASSWORD = "radiologist", "s3cret-Pa55word-xyz"


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plugin_path() -> str | None:
    return next((p for p in PLUGIN_CANDIDATES if Path(p).is_file()), None)


def require_orthanc() -> None:
    """Skip (saying how to install them) when Orthanc or its DICOMweb plugin is missing."""
    if not Path(ORTHANC).is_file() or plugin_path() is None:
        pytest.skip("Orthanc with DICOMweb is not installed: apt-get install -y orthanc "
                    "orthanc-dicomweb (or make setup)")
    if not CT_FOLDER.is_dir():
        pytest.skip(f"the LIDC-IDRI-0001 series is not at {CT_FOLDER}")


@dataclass
class OrthancServer:
    """One running Orthanc: its URLs, its folder and the process."""

    http_port: int
    dicom_port: int
    folder: Path
    process: subprocess.Popen
    auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    # -- Orthanc's own REST API (set-up and fault injection, not the code under test) ----------
    def request(self, method: str, path: str, data: bytes | None = None,
                content_type: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.auth:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def upload(self, paths) -> list[str]:
        """POST each DICOM file to ``/instances``; the Orthanc ids of the instances."""
        return [self.request("POST", "/instances", Path(p).read_bytes(),
                             "application/dicom")["ID"] for p in paths]

    def upload_ct(self) -> list[str]:
        return self.upload(sorted(CT_FOLDER.glob("*.dcm")))

    def find_instance(self, sop_uid: str) -> str:
        """The Orthanc id of the instance with this SOPInstanceUID."""
        found = self.request("POST", "/tools/lookup", sop_uid.encode())
        return next(f["ID"] for f in found if f["Type"] == "Instance")

    def delete_instance(self, sop_uid: str) -> None:
        self.request("DELETE", f"/instances/{self.find_instance(sop_uid)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(folder: Path, auth: tuple[str, str] | None = None,
                  refuse_stores: bool = False) -> OrthancServer:
    """Start Orthanc in ``folder`` (storage, index, config, log) and wait until it answers."""
    require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "probunet-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "PROBUNETTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth is not None,
        "RegisteredUsers": {auth[0]: auth[1]} if auth else {},
        "HttpTimeout": 60,
        "HttpThreadsCount": 16,
        "StorageCompression": False,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "Plugins": [plugin_path()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "Host": "127.0.0.1", "Ssl": False},
    }
    if refuse_stores:
        config["LuaScripts"] = [str(_write_refuse_lua(folder))]
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=folder, start_new_session=True)
    server = OrthancServer(http_port, dicom_port, folder, process, auth)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            log.close()
            raise RuntimeError(f"Orthanc exited ({process.returncode}): "
                               f"{(folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            server.request("GET", "/system")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("Orthanc did not answer within 30 s") from None
            time.sleep(0.1)


def _write_refuse_lua(folder: Path) -> Path:
    """A Lua script that makes Orthanc answer 403 to every STOW-RS store (a failing store:
    signed in, but not allowed to store); the test's own uploads (``/instances``) still go."""
    script = folder / "refuse.lua"
    script.write_text(
        "function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)\n"
        "  if method == 'POST' and string.find(uri, '/dicom-web/', 1, true) == 1 then\n"
        "    return false\n  end\n  return true\nend\n")
    return script


# ----------------------------------------------------------------------------- a slow network


class SlowProxy(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Forwards to Orthanc; instances trickle back, 16 kB every ``delay`` seconds."""

    daemon_threads = True


def slow_handler(target: str, delay: float, missing: str | None = None):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if missing and f"/instances/{missing}" in self.path:  # listed, but not sent
                self.send_error(404, "Not Found")
                return
            req = urllib.request.Request(target + self.path, headers={
                k: v for k, v in self.headers.items() if k.lower() not in ("host",)})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    body, status, headers = r.read(), r.status, r.getheaders()
            except urllib.error.HTTPError as e:
                body, status, headers = e.read(), e.code, e.headers.items()
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            slow = "/instances/" in self.path
            try:
                for i in range(0, len(body), 16384):
                    self.wfile.write(body[i:i + 16384])
                    if slow:
                        time.sleep(delay)
            except OSError:
                pass

    return Handler


def start_proxy(target: str, delay: float, missing: str | None = None) -> SlowProxy:
    """A :class:`SlowProxy` to ``target`` on a free port, serving in a daemon thread; it answers
    404 for the instance ``missing`` (a SOPInstanceUID), as if it was deleted after the listing."""
    import threading

    proxy = SlowProxy(("127.0.0.1", 0), slow_handler(target, delay, missing))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy
