"""Limits in one place: a small hostile file of every kind is refused before it allocates, with
a message that names the limit and how to raise it, and reading it stays under 1 GB of memory
(measured in a child process with ``resource.getrusage``)."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from napari_probunet import limits
from napari_probunet.errors import DataError, LimitError, UserError

#: the most memory a child process may reach while refusing a hostile file
PEAK_RSS_KB = 1024 * 1024  # 1 GB (ru_maxrss is in kilobytes on Linux)
SMALL_FILE = 10 * 2**20  # every hostile file is smaller than 10 MB


# ----------------------------------------------------------------------------- hostile files


def png_declaring(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A valid PNG signature and header that promise ``width`` x ``height`` RGB pixels,
    followed by a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(3 * width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def tiff_declaring(path: Path, side: int = 40000) -> Path:
    """A zlib-compressed float32 TIFF whose tags claim ``side`` x ``side`` pixels."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.float32), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offsets = [tif.pages[0].tags[name].valueoffset for name in ("ImageWidth", "ImageLength")]
        kinds = [tif.pages[0].tags[name].dtype for name in ("ImageWidth", "ImageLength")]
    data = bytearray(path.read_bytes())
    for offset, kind in zip(offsets, kinds):
        fmt = "<H" if int(kind) == 3 else "<I"  # SHORT or LONG
        struct.pack_into(fmt, data, offset, side)
    path.write_bytes(bytes(data))
    return path


def nifti_declaring(path: Path, shape=(4000, 4000, 400)) -> Path:
    """A gzipped NIfTI whose header declares a float32 volume of ``shape`` (25 GB)."""
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + bytes(4096)
    path.write_bytes(gzip.compress(raw))
    return path


def npy_declaring(path: Path, shape=(40000, 40000)) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": shape})
        f.write(bytes(4096))
    return path


def _manifest(shapes: dict[str, tuple[tuple[int, ...], str]]) -> dict:
    return {"format": "napari-probunet-bundle", "format_version": 1, "case_id": "x",
            "name": "x", "n": shapes["hypotheses"][0][0], "seed": 0,
            "model": {"sha256": "0" * 64}, "class_names": ["background", "lesion"],
            "arrays": {k: {"file": f"{k}.npy", "shape": list(s), "dtype": d}
                       for k, (s, d) in shapes.items()}}


def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def bundle_declaring(path: Path, side: int = 16384) -> Path:
    """A bundle of a few kilobytes whose manifest declares a ``side`` x ``side`` image."""
    shapes = {"image": ((side, side), "<f4"), "hypotheses": ((16, side, side), "|u1"),
              "z": ((16, 2), "<f4"), "prior_mu": ((2,), "<f4"), "prior_sigma": ((2,), "<f4"),
              "uncertainty": ((side, side), "<f4")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(_manifest(shapes)))
        for key, (shape, dtype) in shapes.items():
            zf.writestr(f"{key}.npy", _npy_header(shape, dtype) + bytes(1024))
    return path


def bundle_bomb(path: Path, lie: bool = False) -> Path:
    """A bundle of under 10 MB whose hypotheses member inflates to 1 GiB.

    ``lie=False``: the manifest declares (64, 4096, 4096), honestly. ``lie=True``: the manifest
    and the ZIP directory declare a small (1, 64, 64) array but the member holds 1 GiB more,
    so only reading with a cap stops it.
    """
    h = w = 4096 if not lie else 64
    n = 64 if not lie else 1
    shapes = {"image": ((h, w), "<f4"), "hypotheses": ((n, h, w), "|u1"),
              "z": ((n, 2), "<f4"), "prior_mu": ((2,), "<f4"), "prior_sigma": ((2,), "<f4"),
              "uncertainty": ((h, w), "<f4")}
    chunk = bytes(1 << 24)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("manifest.json", json.dumps(_manifest(shapes)))
        for key, (shape, dtype) in shapes.items():
            if key != "hypotheses":
                zf.writestr(f"{key}.npy", _npy_header(shape, dtype)
                            + bytes(limits.array_bytes(shape, np.dtype(dtype).itemsize)))
        with zf.open("hypotheses.npy", "w") as member:
            member.write(_npy_header(shapes["hypotheses"][0], "|u1"))
            for _ in range(64):  # 1 GiB of zeros
                member.write(chunk)
    if lie:  # the central directory now claims the member holds only what the manifest says
        data = bytearray(path.read_bytes())
        name = b"hypotheses.npy"
        at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
        honest = len(_npy_header(shapes["hypotheses"][0], "|u1")) + n * h * w
        struct.pack_into("<I", data, at + 24, honest)
        path.write_bytes(bytes(data))
    return path


# pickles, assembled from opcodes (protocol 2)
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _long(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _dtype(code: str) -> bytes:
    return (_global("numpy", "dtype") + b"X" + struct.pack("<I", len(code)) + code.encode()
            + b"\x89\x88\x87R")  # dtype(code, False, True)


def pickle_bytearray(path: Path) -> Path:
    """203 bytes that ask for a 2 GiB ``bytearray`` and hand it to ``_frombuffer``."""
    size = 2**31
    path.write_bytes(
        b"\x80\x02" + _global("numpy.core.numeric", "_frombuffer")
        + b"(" + _global("builtins", "bytearray") + _long(size) + b"\x85R"
        + _dtype("u1") + _long(size) + b"\x85" + b"X\x01\x00\x00\x00C" + b"tR."
    )
    return path


def pickle_codecs(path: Path) -> Path:
    """A few bytes asking ``_codecs.encode`` for a gigabyte."""
    path.write_bytes(b"\x80\x02" + _global("_codecs", "encode") + _global("builtins", "bytes")
                     + _long(2**30) + b"\x85R" + b"X\x03\x00\x00\x00hex\x86R.")
    return path


def pickle_shared_buffer(path: Path, size: int = 1 << 20, times: int = 1000) -> Path:
    """One 1 MiB buffer, made into 1000 arrays (1000 MiB) by reference."""
    out = bytearray(b"\x80\x02]q\x00(")  # EMPTY_LIST, BINPUT 0, MARK
    out += b"B" + struct.pack("<I", size) + bytes(size) + b"q\x01"  # BINBYTES, BINPUT 1
    out += b"0"  # POP: the buffer stays in the memo
    call = (_global("numpy.core.numeric", "_frombuffer") + b"(h\x01" + _dtype("u1")
            + _long(size) + b"\x85" + b"X\x01\x00\x00\x00C" + b"tR")
    out += call * times + b"e."  # APPENDS, STOP
    path.write_bytes(bytes(out))
    return path


def model_with(path: Path, **config) -> Path:
    """A real (tiny) model file whose configuration is changed to ``config``."""
    from napari_probunet.model.modelfile import save_model
    from napari_probunet.model.testing import tiny_model

    save_model(tiny_model(0), path)
    rewrite_model_header(path, lambda h: _with_config(h, config))
    return path


def _with_config(header: dict, config: dict) -> dict:
    meta = json.loads(header["__metadata__"]["probunet"])
    meta["config"].update(config)
    header["__metadata__"]["probunet"] = json.dumps(meta)
    return header


def rewrite_model_header(path: Path, change) -> Path:
    """Replace a safetensors file's JSON header by ``change(header)`` (the data stays)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = change(json.loads(data[8:8 + n]))
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    return path


def recovery_declaring(path: Path, side: int = 40000) -> Path:
    """A recovery file whose correction declares ``side`` x ``side`` labels."""
    info = io.BytesIO()
    np.save(info, np.array(json.dumps({"roi": [0, 0, side, side]})))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("correction.npy", _npy_header((side, side), "|u1") + bytes(4096))
        zf.writestr("info.npy", info.getvalue())
    return path


# ----------------------------------------------------------------------------- the child


def refuse_in_child(reader: str, path: Path, env: dict | None = None) -> dict:
    """Run ``reader`` (Python code using ``path``) in a fresh interpreter; return what it
    raised and its peak resident memory."""
    code = textwrap.dedent(f"""
        import json, resource, sys
        from pathlib import Path
        path = Path(sys.argv[1])
        try:
            {reader}
            out = {{"error": None, "message": ""}}
        except BaseException as exc:
            out = {{"error": type(exc).__name__, "message": str(exc),
                    "classes": [c.__name__ for c in type(exc).__mro__]}}
        out["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(out))
    """)
    import os

    # through a shell that forks it: a child exec'd straight from this (large) process would
    # inherit this process's peak in its ru_maxrss (Linux keeps it across execve)
    done = subprocess.run(["/bin/sh", "-c", '"$0" "$@"; exit $?', sys.executable, "-c", code,
                           str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOAD_ARRAY = "from napari_probunet.data.readers import load_array; load_array(path)"
READ_BUNDLE = "from napari_probunet.review.bundle import read_bundle; read_bundle(path)"
NAPARI_READER = ("from napari_probunet._reader import get_reader; "
                 "get_reader(str(path))(str(path))")
SAFE_PICKLE = ("from napari_probunet.data.safe_pickle import safe_load_path; "
               "safe_load_path(path)")
LOAD_MODEL = "from napari_probunet.model.modelfile import load_model; load_model(path)"
READ_RECOVERY = ("from napari_probunet.review.recovery import read_recovery_file; "
                 "read_recovery_file(path)")

#: kind -> (file name, maker, reader, error class, limit named in the message)
HOSTILE = {
    "png": ("big.png", png_declaring, LOAD_ARRAY, "DataError", "MAX_IMAGE_PIXELS"),
    "tiff": ("big.tif", tiff_declaring, LOAD_ARRAY, "DataError", "MAX_IMAGE_PIXELS"),
    "nifti": ("big.nii.gz", nifti_declaring, LOAD_ARRAY, "DataError", "MAX_DECODED_BYTES"),
    "nifti-plane": ("plane.nii.gz", lambda p: nifti_declaring(p, (30000, 30000, 1)),
                    LOAD_ARRAY, "DataError", "MAX_IMAGE_PIXELS"),
    "npy": ("big.npy", npy_declaring, LOAD_ARRAY, "DataError", "MAX_IMAGE_PIXELS"),
    "bundle-shape": ("big.probunet.zip", bundle_declaring, READ_BUNDLE, "BundleError",
                     "MAX_IMAGE_PIXELS"),
    "bundle-napari": ("big.probunet.zip", bundle_declaring, NAPARI_READER, "BundleError",
                      "MAX_IMAGE_PIXELS"),
    "bundle-bomb": ("bomb.probunet.zip", bundle_bomb, READ_BUNDLE, "BundleError",
                    "MAX_DECODED_BYTES"),
    "pickle-bytearray": ("bytearray.pkl", pickle_bytearray, SAFE_PICKLE, "DataError",
                         "bytearray"),
    "pickle-codecs": ("codecs.pkl", pickle_codecs, SAFE_PICKLE, "DataError", "bytes(int)"),
    "pickle-shared-buffer": ("shared.pkl", pickle_shared_buffer, SAFE_PICKLE, "DataError",
                             "MAX_DECODED_BYTES"),
    "model-channels": ("wide.safetensors", lambda p: model_with(p, channels=[10**6, 16, 32]),
                       LOAD_MODEL, "ModelFileError", "MAX_MODEL_CHANNELS"),
    "model-layers": ("deep.safetensors", lambda p: model_with(p, convs_per_block=10**6),
                     LOAD_MODEL, "ModelFileError", "MAX_MODEL_LAYERS"),
    "recovery": ("big.npz", recovery_declaring, READ_RECOVERY, "LimitError", "MAX_IMAGE_PIXELS"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_small_hostile_file_is_refused_in_little_memory(kind, tmp_path):
    name, make, reader, error, words = HOSTILE[kind]
    path = make(tmp_path / name)
    assert path.stat().st_size < SMALL_FILE
    result = refuse_in_child(reader, path)
    assert result["error"] is not None, f"{kind}: the file was accepted"
    assert error in result["classes"] and "UserError" in result["classes"], result
    if words.startswith("MAX_"):
        assert "LimitError" in result["classes"], result
    assert words in result["message"], result["message"]
    if words.startswith("MAX_"):  # a limit: named with the way to raise it
        assert f"PROBUNET_{words}=" in result["message"]
    assert "\n" not in result["message"]
    assert result["maxrss_kb"] < PEAK_RSS_KB, f"{kind}: {result['maxrss_kb'] / 1024:.0f} MB"


def test_a_bundle_member_that_inflates_beyond_its_declared_size_is_cut_short(tmp_path):
    path = bundle_bomb(tmp_path / "liar.probunet.zip", lie=True)
    assert path.stat().st_size < SMALL_FILE
    result = refuse_in_child(READ_BUNDLE, path)
    assert result["error"] == "BundleError" and "hypotheses.npy" in result["message"]
    assert result["maxrss_kb"] < PEAK_RSS_KB


def test_a_raised_limit_lets_the_file_through(tmp_path):
    from napari_probunet.data.readers import load_array

    path = tmp_path / "img.npy"
    np.save(path, np.zeros((300, 300), np.uint8))
    assert load_array(path).shape == (300, 300)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBUNET_MAX_IMAGE_PIXELS", "50000")
        with pytest.raises(DataError, match=r"MAX_IMAGE_PIXELS .*PROBUNET_MAX_IMAGE_PIXELS=\d+"):
            load_array(path)
        mp.setenv("PROBUNET_MAX_IMAGE_PIXELS", "90000")
        assert load_array(path).shape == (300, 300)


def test_a_hostile_file_passes_once_its_limit_is_raised(tmp_path):
    """The message's advice works: the declared size is then read (and found truncated)."""
    path = npy_declaring(tmp_path / "big.npy", shape=(6000, 6000))
    result = refuse_in_child(LOAD_ARRAY, path)
    assert "MAX_IMAGE_PIXELS" in result["message"]
    raised = refuse_in_child(LOAD_ARRAY, path, env={"PROBUNET_MAX_IMAGE_PIXELS": "4e7"})
    assert raised["error"] == "DataError" and "MAX_IMAGE_PIXELS" not in raised["message"]
    assert "cannot read" in raised["message"]


@pytest.mark.parametrize("text, expected", [
    ("4096", 4096), ("2_000_000", 2_000_000), ("1e9", 10**9), ("512M", 512 * 2**20),
    ("2G", 2 * 2**30), ("1GiB", 2**30), (" 64k ", 64 * 1024),
])
def test_limits_are_read_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", text)
    assert limits.value("MAX_DECODED_BYTES") == expected


@pytest.mark.parametrize("text", ["lots", "-5", "0", "1e400", "nan"])
def test_a_malformed_limit_setting_is_explained(monkeypatch, text):
    monkeypatch.setenv("PROBUNET_MAX_HEADER_BYTES", text)
    with pytest.raises(UserError, match="PROBUNET_MAX_HEADER_BYTES=.*not a positive number"):
        limits.value("MAX_HEADER_BYTES")


def test_every_limit_is_documented_with_its_variable():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for name in limits.NAMES:
        assert isinstance(limits.default(name), int) and limits.default(name) > 0
        assert f"PROBUNET_{name}" in doc, name
    with pytest.raises(KeyError):
        limits.value("MAX_NONSENSE")


def test_a_damaged_or_oversized_recovery_file_counts_as_none(tmp_path, monkeypatch):
    from napari_probunet.review import recovery

    signature = "sha256:" + "ab" * 20
    path = recovery.recovery_path(signature, tmp_path)
    recovery_declaring(path)
    with pytest.raises(LimitError, match="MAX_IMAGE_PIXELS"):
        recovery.read_recovery_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert recovery.load_recovery(signature, tmp_path) is None
    assert any("PROBUNET_MAX_IMAGE_PIXELS" in str(w.message) for w in caught)
    monkeypatch.setenv("PROBUNET_MAX_IMAGE_PIXELS", str(40000 * 40000))
    assert recovery.load_recovery(signature, tmp_path) is None  # raised: read, found truncated
    assert path.exists()  # left for inspection


def test_model_sizes_are_checked_before_anything_is_allocated(tmp_path):
    from napari_probunet.errors import ModelFileError
    from napari_probunet.model.modelfile import load_model

    wide = model_with(tmp_path / "wide.safetensors", fcomb_channels=10**6)
    with pytest.raises(ModelFileError, match="fcomb_channels .*MAX_MODEL_CHANNELS"):
        load_model(wide)
    big = model_with(tmp_path / "big.safetensors", input_size=10**5)
    with pytest.raises(ModelFileError, match="input_size .*MAX_IMAGE_PIXELS"):
        load_model(big)
    many = model_with(tmp_path / "many.safetensors", channels=[4000] * 12)
    with pytest.raises(ModelFileError, match="MAX_MODEL_PARAMETERS"):
        load_model(many)
