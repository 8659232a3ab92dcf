"""A PACS over DICOMweb, against a real Orthanc started by the tests (tests/orthanc_server.py).

The round trip a radiologist's day takes: the LIDC-IDRI-0001 CT series (133 files) is on the
PACS; find it, retrieve it into the cache (once), open it, store a SEG back, find the SEG on
the server and retrieve it again. Then each way it can go wrong: the server down, a slow
transfer cancelled, 401 and 403, a series with an instance missing, a store that fails; and
never a secret in a message, a log, a repr or the cache's record.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest
from orthanc_server import (
    CT_FOLDER,
    PASSWORD,
    SERIES_UID,
    STUDY_UID,
    THIRD_PARTY_SEG,
    USER,
    SlowProxy,
    free_port,
    slow_handler,
    start_orthanc,
    start_proxy,
)

from napari_probunet.cli.main import main
from napari_probunet.data.pacs import (
    PacsAuthError,
    PacsNotFoundError,
    PacsSettings,
    PacsSettingsError,
    PacsStoreError,
    PacsUnreachableError,
    SeriesIncompleteError,
    TransferCancelled,
)
from napari_probunet.data.pacs.cache import SeriesCache
from napari_probunet.data.pacs.client import Pacs
from napari_probunet.data.pacs.retrieve import Progress, retrieve_series
from napari_probunet.data.pacs.search import dicom_date, search_series
from napari_probunet.data.pacs.spec import parse_spec
from napari_probunet.data.pacs.store import store_files
from napari_probunet.data.volumes import read_dicom_series
from napari_probunet.errors import UserError

TOKEN = "tok-9f8e7d6c5b4a-SECRET"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A server without authentication holding the LIDC-IDRI-0001 CT series."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    server.upload_ct()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def orthanc_auth(tmp_path_factory):
    """A server with HTTP basic authentication (user radiologist), empty."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), auth=(USER, PASSWORD))
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_PROBUNET_PACS_CACHE", str(tmp_path / "cache"))
    return SeriesCache()


def connect(server, **kw) -> Pacs:
    return Pacs(PacsSettings(server.dicomweb_url, **kw))


# ----------------------------------------------------------------------------- the round trip


def test_find_retrieve_open_store_find_retrieve(orthanc, cache, tmp_path):
    pacs = connect(orthanc)
    found = search_series(pacs, patient_id="LIDC-IDRI-0001", date="2000-01-01", modality="CT")
    assert [r.series_uid for r in found] == [SERIES_UID]
    assert found[0].instances == 133 and found[0].study_uid == STUDY_UID
    assert search_series(pacs, patient_id="LIDC-IDRI-0001", date="2001-01-01..") == []
    assert search_series(pacs, patient_id="LIDC-IDRI-0001", modality="MR") == []

    steps: list[Progress] = []
    cached = retrieve_series(pacs, SERIES_UID, progress=steps.append)
    assert not cached.from_cache and len(cached.files) == 133
    assert steps[-1].done == steps[-1].total == 133 and steps[-1].bytes > 60e6
    assert cached.folder.parent == cache.root and cached.folder.name == SERIES_UID
    volume = read_dicom_series(cached.folder)
    original = read_dicom_series(CT_FOLDER)
    assert volume.data.shape == (133, 512, 512)
    np.testing.assert_array_equal(volume.data, original.data)
    np.testing.assert_allclose(volume.affine, original.affine)

    # a second open downloads nothing (the cache is checked against the server's listing)
    again = retrieve_series(pacs, SERIES_UID)
    assert again.from_cache and again.folder == cached.folder

    # store a SEG (the third-party SEG of this study), find it, retrieve it, same pixels
    stored = store_files(pacs, [THIRD_PARTY_SEG])
    assert stored.study_uids == [STUDY_UID]
    segs = search_series(pacs, patient_id="LIDC-IDRI-0001", modality="SEG")
    assert [s.series_uid for s in segs] == stored.series_uids
    back = retrieve_series(pacs, segs[0].series_uid)
    import pydicom

    ours, theirs = pydicom.dcmread(back.files[0]), pydicom.dcmread(THIRD_PARTY_SEG)
    assert ours.SOPInstanceUID == theirs.SOPInstanceUID
    np.testing.assert_array_equal(ours.pixel_array, theirs.pixel_array)


def test_the_command_line_lists_gets_and_puts(orthanc, cache, capsys):
    assert main(["pacs", "ls", orthanc.dicomweb_url, "--patient", "LIDC*"]) == 0
    out = capsys.readouterr().out
    assert SERIES_UID in out and "LIDC-IDRI-0001" in out and " 133 " in out
    assert main(["pacs", "ls", orthanc.dicomweb_url, "--json", "--modality", "any"]) == 0
    assert SERIES_UID in capsys.readouterr().out
    assert main(["pacs", "get", orthanc.dicomweb_url, SERIES_UID]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(cache.root / SERIES_UID)
    assert main(["pacs", "get", orthanc.dicomweb_url, SERIES_UID]) == 0
    assert "already in the cache" in capsys.readouterr().err
    assert main(["pacs", "put", orthanc.dicomweb_url, str(THIRD_PARTY_SEG)]) == 0
    assert "1 instance(s) stored" in capsys.readouterr().err


def test_probunet_sample_takes_a_series_on_the_server(orthanc, cache, tmp_path, capsys):
    spec = f"dicomweb:{orthanc.dicomweb_url}?series={SERIES_UID}"
    out = tmp_path / "bundles"
    code = main(["sample", spec, "--out", str(out), "--slices", "60,61", "-n", "2",
                 "--model", "lesions", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "retrieved, 133 instances" in err
    assert sorted(p.name for p in out.glob("*.probunet.zip")) == [
        f"{SERIES_UID}_z060.probunet.zip", f"{SERIES_UID}_z061.probunet.zip"]


def test_dicomweb_specs_and_dates_are_parsed_and_refused_clearly():
    spec = parse_spec("dicomweb:https://pacs.example.org/dicom-web?series=1.2.3&user=alice"
                      "&password-env=PACS_PW&timeout=2.5")
    assert spec.series_uid == "1.2.3" and spec.settings.auth == "basic"
    assert spec.settings.secret_env == "PACS_PW" and spec.settings.timeout == 2.5
    for bad, says in [("dicomweb:http://h/dicom-web", "names no series"),
                      ("dicomweb:http://h/dw?series=../../etc", "not a DICOM UID"),
                      ("dicomweb:http://h/dw?series=1.2&token=abc", "unknown key"),
                      ("dicomweb:ftp://h/dw?series=1.2", "not a DICOMweb URL")]:
        with pytest.raises(PacsSettingsError, match=says):
            parse_spec(bad)
    assert dicom_date("2000-01-31") == "20000131"
    assert dicom_date("2000-01-01..2000-12-31") == "20000101-20001231"
    assert dicom_date("..2000-12-31") == "-20001231"
    with pytest.raises(PacsSettingsError, match="YYYY-MM-DD"):
        dicom_date("last tuesday")


# ----------------------------------------------------------------------------- faults


def test_a_server_that_is_down_is_said_so_within_the_timeout(cache):
    port = free_port()  # nobody listens there
    pacs = Pacs(PacsSettings(f"http://127.0.0.1:{port}/dicom-web", timeout=2))
    t0 = time.monotonic()
    with pytest.raises(PacsUnreachableError, match="connection refused") as caught:
        search_series(pacs)
    assert time.monotonic() - t0 < 2.5
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_a_server_that_never_answers_is_said_so_within_the_timeout(cache):
    with socket.socket() as listener:  # accepts connections (the kernel does) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        pacs = Pacs(PacsSettings(url, timeout=1))
        t0 = time.monotonic()
        with pytest.raises(PacsUnreachableError, match="did not answer within 1 s"):
            retrieve_series(pacs, SERIES_UID)
        assert time.monotonic() - t0 < 2.0


def test_401_and_403_say_which_and_what_to_check(orthanc_auth, cache, monkeypatch):
    with pytest.raises(PacsAuthError, match="401 Unauthorized.*no credentials") as caught:
        search_series(connect(orthanc_auth))
    assert caught.value.status == 401
    monkeypatch.setenv("PACS_PW", "wrong-password-123")
    with pytest.raises(PacsAuthError, match="401.*user name 'radiologist'.*\\$PACS_PW"):
        search_series(connect(orthanc_auth, auth="basic", user=USER, secret_env="PACS_PW"))
    monkeypatch.setenv("PACS_PW", PASSWORD)
    assert search_series(connect(orthanc_auth, auth="basic", user=USER,
                                 secret_env="PACS_PW")) == []


def test_403_forbidden_and_a_refused_store_leave_the_file_intact(tmp_path, cache):
    server = start_orthanc(tmp_path / "orthanc-ro", refuse_stores=True)
    try:
        local = tmp_path / "export" / "nodule.seg.dcm"
        local.parent.mkdir()
        local.write_bytes(THIRD_PARTY_SEG.read_bytes())
        before = local.read_bytes()
        with pytest.raises(PacsStoreError, match="403 Forbidden.*may not do this") as caught:
            store_files(connect(server), [local])
        assert str(local) in str(caught.value) and "unchanged" in str(caught.value)
        assert local.read_bytes() == before
        assert search_series(connect(server), modality=None) == []  # reading is allowed
    finally:
        server.stop()


def test_a_store_to_a_server_that_went_down_keeps_the_export(tmp_path, cache):
    if not THIRD_PARTY_SEG.is_file():
        pytest.skip(f"{THIRD_PARTY_SEG} is absent")
    local = tmp_path / "nodule.seg.dcm"
    local.write_bytes(THIRD_PARTY_SEG.read_bytes())
    pacs = Pacs(PacsSettings(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=1))
    with pytest.raises(PacsStoreError, match="not stored: cannot reach") as caught:
        store_files(pacs, [local])
    assert "probunet pacs put" in str(caught.value)
    assert local.read_bytes() == THIRD_PARTY_SEG.read_bytes()
    with pytest.raises(UserError, match="not a readable DICOM file"):
        bad = tmp_path / "notes.txt"
        bad.write_text("not DICOM")
        store_files(pacs, [bad])


def test_a_series_with_a_missing_instance_is_refused_naming_it(tmp_path, cache):
    server = start_orthanc(tmp_path / "orthanc-gap")
    try:
        server.upload_ct()
        import pydicom

        middle = pydicom.dcmread(CT_FOLDER / "1-067.dcm", stop_before_pixels=True)
        server.delete_instance(str(middle.SOPInstanceUID))
        number = int(middle.InstanceNumber)
        with pytest.raises(SeriesIncompleteError, match=f"instance number\\(s\\) {number} "
                           "missing from 1..133"):
            retrieve_series(connect(server), SERIES_UID)
        assert not (cache.root / SERIES_UID).exists()
        assert not cache.root.exists() or not list(cache.root.iterdir())  # no partial either
        with pytest.raises(PacsNotFoundError, match="no series 1.2.3"):
            retrieve_series(connect(server), "1.2.3")
    finally:
        server.stop()


def test_an_instance_listed_but_not_sent_is_named_and_nothing_kept(orthanc, cache):
    import pydicom

    gone = str(pydicom.dcmread(CT_FOLDER / "1-100.dcm", stop_before_pixels=True).SOPInstanceUID)
    proxy = start_proxy(orthanc.url, delay=0.0, missing=gone)
    try:
        pacs = Pacs(PacsSettings(f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web"))
        with pytest.raises(SeriesIncompleteError, match=f"cannot send 1 of them \\(404\\): "
                           f"instance number \\d+ \\({gone}\\)"):
            retrieve_series(pacs, SERIES_UID)
        assert not (cache.root / SERIES_UID).exists()
        assert not list(cache.root.iterdir())
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_slow_transfer_reports_progress_and_cancels_within_a_second(orthanc, cache):
    proxy = start_proxy(orthanc.url, delay=0.2)
    try:
        pacs = Pacs(PacsSettings(f"http://127.0.0.1:{proxy.server_address[1]}/dicom-web"))
        cancel, steps = threading.Event(), []
        timer = threading.Timer(1.5, cancel.set)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(TransferCancelled, match="cancelled"):
            retrieve_series(pacs, SERIES_UID, progress=steps.append, cancel=cancel)
        assert time.monotonic() - t0 < 1.5 + 1.0  # acted within a second of the cancel
        assert steps and steps[-1].total == 133 and steps[-1].done < 133
        assert len(steps) >= 5  # progress kept coming while each instance trickled in
        time.sleep(0.3)
        assert not (cache.root / SERIES_UID).exists()
        assert not [p for p in cache.root.iterdir() if p.name.endswith(".partial")]
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_cached_series_opens_when_the_server_cannot_be_reached(orthanc, cache):
    retrieve_series(connect(orthanc), SERIES_UID)
    down = Pacs(PacsSettings(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=1))
    cached = retrieve_series(down, SERIES_UID)
    assert cached.from_cache and cached.offline and len(cached.files) == 133
    with pytest.raises(PacsUnreachableError):  # not in the cache: said so
        retrieve_series(down, "1.2.3.4")


def test_a_killed_transfer_never_looks_complete(orthanc, cache):
    partial = cache.begin(SERIES_UID)  # as a transfer leaves it when killed mid-way
    (partial / "1.2.3.dcm").write_bytes(b"half")
    assert cache.cached(SERIES_UID) is None
    cached = retrieve_series(connect(orthanc), SERIES_UID)
    assert len(cached.files) == 133 and not cached.from_cache
    cached.files[5].write_bytes(b"truncated")  # damaged afterwards: no longer counts
    assert cache.cached(SERIES_UID) is None
    assert not retrieve_series(connect(orthanc), SERIES_UID).from_cache


# ----------------------------------------------------------------------------- secrets


def test_no_secret_in_any_message_log_repr_or_record(orthanc_auth, cache, monkeypatch,
                                                     caplog, capsys):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PACS_TOKEN", TOKEN)
    monkeypatch.setenv("PACS_PW", "not-the-" + PASSWORD)
    texts = []
    for kw in ({"auth": "token", "secret_env": "PACS_TOKEN"},
               {"auth": "basic", "user": USER, "secret_env": "PACS_PW"}):
        pacs = connect(orthanc_auth, **kw)
        texts += [repr(pacs), repr(pacs.settings), str(pacs.settings.record())]
        with pytest.raises(PacsAuthError) as caught:
            search_series(pacs)
        texts.append(str(caught.value))
        with pytest.raises(PacsStoreError) as caught:
            store_files(pacs, [THIRD_PARTY_SEG])
        texts.append(str(caught.value))
        down = Pacs(PacsSettings(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=1,
                                 **kw))
        with pytest.raises(PacsUnreachableError) as caught:
            retrieve_series(down, SERIES_UID)
        texts.append(str(caught.value))
    code = main(["pacs", "ls", orthanc_auth.dicomweb_url, "--token-env", "PACS_TOKEN"])
    assert code == 2
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    assert "401" in captured.err and "PACS_TOKEN" in captured.err
    for text in texts:
        assert TOKEN not in text and PASSWORD not in text, text
    with pytest.raises(PacsSettingsError, match="holds a user name or password"):
        PacsSettings(f"http://{USER}:{PASSWORD}@127.0.0.1/dicom-web")
    with pytest.raises(PacsSettingsError) as caught:
        PacsSettings(f"http://{USER}:{PASSWORD}@127.0.0.1/dicom-web")
    assert PASSWORD not in str(caught.value)
    monkeypatch.delenv("PACS_TOKEN")
    with pytest.raises(PacsSettingsError, match="PACS_TOKEN .* is not set"):
        connect(orthanc_auth, auth="token", secret_env="PACS_TOKEN")
    with pytest.raises(PacsSettingsError, match="name of an environment variable"):
        PacsSettings(orthanc_auth.dicomweb_url, auth="token", secret_env=TOKEN + "!")


def _self_signed(folder):
    """A certificate authority and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install -y openssl)")
    run = lambda *a: subprocess.run(["openssl", *a], cwd=folder, check=True,  # noqa: E731
                                    capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=Test Hospital CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_tls_is_verified_and_a_hospital_ca_bundle_is_trusted(orthanc, tmp_path, cache):
    import ssl

    ca, cert, key = _self_signed(tmp_path)
    proxy = SlowProxy(("127.0.0.1", 0), slow_handler(orthanc.url, 0.0))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    proxy.socket = context.wrap_socket(proxy.socket, server_side=True)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{proxy.server_address[1]}/dicom-web"
    try:
        from napari_probunet.data.pacs import PacsTlsError

        with pytest.raises(PacsTlsError, match="certificate verify failed.*--ca-bundle"):
            search_series(Pacs(PacsSettings(url, timeout=3)))
        trusted = Pacs(PacsSettings(url, ca_bundle=str(ca), timeout=3))
        assert "TLS verified with" in repr(trusted)
        assert [r.series_uid for r in search_series(trusted)] == [SERIES_UID]
        with pytest.raises(PacsSettingsError, match="no such file"):
            PacsSettings(url, ca_bundle=str(tmp_path / "missing.pem"))
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_tls_handshake_failure_is_said_so(cache):
    # a plain-HTTP server spoken to over https: the TLS handshake fails
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]

        def answer():
            conn, _ = listener.accept()
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        from napari_probunet.data.pacs import PacsTlsError

        with pytest.raises(PacsTlsError, match="TLS check .* failed.*--ca-bundle"):
            search_series(Pacs(PacsSettings(f"https://127.0.0.1:{port}/dicom-web",
                                            timeout=2)))

def test_sample_export_seg_store_find_retrieve_same_mask(orthanc, cache, tmp_path):
    """The whole day: the CT from the PACS, the LIDC model's hypotheses on the nodule's slice,
    the largest one exported as a DICOM SEG (data/dicom_seg via review/pacs_store), stored,
    found on the server by search, retrieved and read back over the series: the same mask."""
    from napari_probunet.data.dicom_seg_read import read_seg
    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.pacs_store import export_seg_for_pacs, store_seg
    from napari_probunet.session import Session

    pacs = connect(orthanc)
    series = retrieve_series(pacs, search_series(pacs, patient_id="LIDC-IDRI-0001")[0].series_uid)
    volume = read_dicom_series(series.folder)
    z, top, left = 89, 300, 252  # a 128x128 crop around the nodule the four radiologists drew
    session = Session(load_model("lidc", device="cpu"), device="cpu")
    session.set_image(volume.data[z, top:top + 128, left:left + 128].astype(np.float32))
    hypotheses = session.sample(8, seed=0).labels
    best = hypotheses[np.argmax(hypotheses.reshape(8, -1).sum(1))]
    assert best.any(), "the model saw no nodule on the nodule's slice"
    mask = np.zeros(volume.data.shape, np.uint8)
    mask[z, top:top + 128, left:left + 128] = best != 0

    seg_path = export_seg_for_pacs(mask, {}, "nodule", volume.source(), tmp_path / "exports")
    assert seg_path.name.endswith(".seg.dcm") and seg_path.with_name(
        seg_path.name + ".json").is_file()
    stored = store_seg(pacs, seg_path)
    found = search_series(pacs, patient_id="LIDC-IDRI-0001", modality="SEG")
    assert stored.series_uids[0] in [s.series_uid for s in found]
    fetched = retrieve_series(pacs, stored.series_uids[0])
    back = read_seg(fetched.files[0], series.folder)
    assert back.series_uid == SERIES_UID
    np.testing.assert_array_equal(back.masks()["nodule"], mask)
