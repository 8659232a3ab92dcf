"""Fuzzing the readers of untrusted files with hypothesis: a model file's header, a bundle's
manifest and members, the restricted unpickler's opcode stream and a recovery file. Whatever
the bytes, the only outcomes allowed are a valid object or the project's own error class
(:class:`napari_probunet.errors.UserError`) with a message: never another exception, a crash
or a hang.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_probunet.data.safe_pickle import safe_load
from napari_probunet.errors import UserError
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review import bundle as bundles
from napari_probunet.review import recovery

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: any JSON value, with the awkward ones a hostile file would use
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2**31, 2**63, 10**20, 1e20, 1.5, -0.0, "", "abc", "<f4", "|O"])
    | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=10,
)


def _accepted_or_refused(read, *args):
    """``read(*args)``: its value, or None when it raised a UserError with a message."""
    try:
        return read(*args)
    except UserError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


# ----------------------------------------------------------------------------- model files


@pytest.fixture(scope="module")
def model_bytes(folder) -> bytes:
    path = folder / "good.safetensors"
    save_model(tiny_model(0), path)
    return path.read_bytes()


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _mutate_header(header: dict, where: str, value) -> object:
    header = json.loads(json.dumps(header))
    meta = json.loads(header["__metadata__"]["probunet"])
    tensor = sorted(k for k in header if k != "__metadata__")[0]
    if where == "header":
        return value
    if where == "tensor":
        header[tensor] = value
    elif where in ("dtype", "shape", "data_offsets"):
        header[tensor][where] = value
    elif where == "metadata":
        header["__metadata__"] = value
    elif where == "description":
        header["__metadata__"]["probunet"] = json.dumps(value)
    elif where in ("format_version", "config", "provenance"):
        meta[where] = value
        header["__metadata__"]["probunet"] = json.dumps(meta)
    else:  # a configuration field
        meta["config"][where] = value
        header["__metadata__"]["probunet"] = json.dumps(meta)
    return header


HEADER_PLACES = ["header", "tensor", "dtype", "shape", "data_offsets", "metadata", "description",
                 "format_version", "config", "provenance", "channels", "latent_dim",
                 "num_classes", "class_names", "input_size", "convs_per_block", "fcomb_layers",
                 "fcomb_channels", "in_channels", "preprocessing", "logsigma_bounds", "domain"]


@FUZZ
@given(where=st.sampled_from(HEADER_PLACES), value=json_values)
def test_fuzzed_model_headers_load_or_are_refused(model_bytes, folder, where, value):
    header, body = _split(model_bytes)
    path = folder / "fuzzed.safetensors"
    path.write_bytes(_join(_mutate_header(header, where, value), body))
    model = _accepted_or_refused(load_model, path)
    if model is not None:
        assert model.metadata["format_version"] == 1


@FUZZ
@given(st.data())
def test_fuzzed_model_bytes_load_or_are_refused(model_bytes, folder, data):
    raw = bytearray(model_bytes)
    n = struct.unpack("<Q", raw[:8])[0]
    for _ in range(data.draw(st.integers(1, 4))):
        # flip bytes mostly in the header and the framing, where a reader has to decide
        at = data.draw(st.integers(0, min(len(raw) - 1, 8 + n + 64)))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(raw)))
    path = folder / "flipped.safetensors"
    path.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    _accepted_or_refused(load_model, path)


# ----------------------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def bundle_members(folder) -> dict[str, bytes]:
    h, w, n, d = 12, 10, 3, 2
    rng = np.random.default_rng(0)
    bundle = bundles.Bundle.from_arrays(
        {"case_id": "case", "name": "case", "n": n, "seed": 7,
         "model": {"sha256": "0" * 64, "name": "tiny"},
         "class_names": ["background", "lesion"], "source": "case.png",
         "image_signature": "sha256:" + "1" * 40},
        {"image": rng.random((h, w), dtype=np.float32),
         "hypotheses": rng.integers(0, 2, (n, h, w), dtype=np.uint8),
         "z": rng.standard_normal((n, d)).astype(np.float32),
         "prior_mu": np.zeros(d, np.float32), "prior_sigma": np.ones(d, np.float32),
         "uncertainty": rng.random((h, w), dtype=np.float32),
         "graders": rng.integers(0, 2, (2, h, w), dtype=np.uint8)})
    path = bundles.write_bundle(folder / "good.probunet.zip", bundle)
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


MEMBERS = ["image", "hypotheses", "z", "prior_mu", "prior_sigma", "uncertainty", "graders"]
MANIFEST_KEYS = ["format", "format_version", "case_id", "name", "n", "seed", "model",
                 "class_names", "arrays", "source", "slice_index", "slice_axis",
                 "image_signature"]


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


npy_members = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda shape, dtype: _npy(np.zeros(shape, dtype)),
              st.lists(st.integers(0, 6), max_size=3).map(tuple),
              st.sampled_from(["u1", "<f4", ">f8", "<i8", "?", "<U3", "<c8"])),
)


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def _read_both(path: Path):
    """The bundle through the library and through napari's reader: they must agree."""
    from napari_probunet._reader import read_bundles

    got = _accepted_or_refused(bundles.read_bundle, path)
    layers = _accepted_or_refused(read_bundles, str(path))
    assert (got is None) == (layers is None)
    if got is not None:
        assert got.hypotheses.n == got.manifest["n"]


@pytest.mark.parametrize("change, words", [
    ({"n": "abc"}, "n must be a positive integer"),
    ({"seed": None}, "seed must be an integer"),
    ({"class_names": 5}, "class_names must be a list of strings"),
    ({"case_id": ["a"]}, "case_id must be a non-empty string"),
    ({"image_signature": 7}, "image_signature must be a string or null"),
    ({"arrays": {"image": {"file": "image.npy", "shape": [1e20, 5], "dtype": "<f4"}}},
     r"shape \[1e\+20, 5\]; expected a list of sizes"),
    ({"arrays": {"image": {"file": "image.npy", "shape": [10**20, 5], "dtype": "<f4"}}},
     "MAX_IMAGE_PIXELS"),
], ids=["n-text", "seed-null", "class-names-int", "case-id-list", "signature-int",
        "shape-float", "shape-huge"])
def test_the_reported_manifests_are_refused_clearly(bundle_members, folder, change, words):
    """The manifests of issue #15 that ended in a raw traceback, also in napari's reader."""
    from napari_probunet._reader import get_reader

    manifest = json.loads(bundle_members["manifest.json"])
    if "arrays" in change:
        manifest["arrays"].update(change["arrays"])
    else:
        manifest.update(change)
    path = _write_zip(folder / "reported.probunet.zip",
                      {**bundle_members, "manifest.json": json.dumps(manifest).encode()})
    for read in (bundles.read_bundle, get_reader(str(path))):
        with pytest.raises(bundles.BundleError, match=words) as info:
            read(str(path))
        assert "\n" not in str(info.value)


@FUZZ
@given(key=st.sampled_from(MANIFEST_KEYS), value=json_values,
       spec_key=st.sampled_from(MEMBERS), spec=json_values, entry=st.booleans())
def test_fuzzed_manifests_read_or_are_refused(bundle_members, folder, key, value, spec_key,
                                              spec, entry):
    manifest = json.loads(bundle_members["manifest.json"])
    if entry:  # one array's entry ({"file", "shape", "dtype"}) or a part of it
        target = manifest["arrays"].setdefault(spec_key, {})
        if isinstance(spec, dict) or not target:
            manifest["arrays"][spec_key] = spec
        else:
            target[key if key in ("shape", "dtype") else "shape"] = spec
    else:
        manifest[key] = value
    members = {**bundle_members, "manifest.json": json.dumps(manifest).encode()}
    _read_both(_write_zip(folder / "manifest.probunet.zip", members))


@FUZZ
@given(name=st.sampled_from(MEMBERS + ["manifest"]), content=npy_members, drop=st.booleans())
def test_fuzzed_bundle_members_read_or_are_refused(bundle_members, folder, name, content, drop):
    members = dict(bundle_members)
    member = f"{name}.json" if name == "manifest" else f"{name}.npy"
    if drop:
        members.pop(member, None)
    else:
        members[member] = content
    _read_both(_write_zip(folder / "member.probunet.zip", members))


@FUZZ
@given(st.data())
def test_fuzzed_bundle_bytes_read_or_are_refused(bundle_members, folder, data):
    raw = bytearray((folder / "good.probunet.zip").read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = folder / "flipped.probunet.zip"
    path.write_bytes(bytes(raw))
    _read_both(path)


# ----------------------------------------------------------------------------- the unpickler

#: opcodes with their arguments, as bytes (protocol 0-5), plus the globals a hostile pickle
#: would reach for
_GLOBALS = [("builtins", n) for n in ("bytes", "bytearray", "str", "list", "dict", "set", "int",
                                       "complex", "eval", "getattr")] + [
    ("_codecs", "encode"), ("numpy", "dtype"), ("numpy", "ndarray"), ("os", "system"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("copyreg", "_reconstructor")]


def _op_global(module_name) -> bytes:
    module, name = module_name
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


opcodes = st.one_of(
    st.sampled_from([b"(", b"t", b")", b"l", b"]", b"d", b"}", b"a", b"e", b"s", b"u", b"R",
                     b"b", b"0", b"2", b"1", b"N", b"\x88", b"\x89", b"\x85", b"\x86", b"\x87",
                     b"\x94", b"\x8f", b"\x90", b"\x91", b"\x92", b"\x81", b"\x93", b"\x97",
                     b"\x98", b"o", b"i", b"Q", b"P", b".", b"\x80\x02", b"\x80\x05"]),
    st.sampled_from(_GLOBALS).map(_op_global),
    st.builds(lambda v: b"J" + struct.pack("<i", v), st.integers(-(2**31), 2**31 - 1)),
    st.builds(lambda v: b"K" + bytes([v]), st.integers(0, 255)),
    st.builds(lambda v: b"\x8a" + bytes([len(v)]) + v, st.binary(max_size=9)),
    st.builds(lambda v: b"X" + struct.pack("<I", len(v)) + v,
              st.sampled_from([b"<f4", b"u1", b"|O", b"C", b"F", b"latin1", b"hex", b"zlib",
                               b"ab"])),
    st.builds(lambda v: b"C" + bytes([len(v)]) + v, st.binary(max_size=16)),
    st.builds(lambda n: b"B" + struct.pack("<I", n), st.sampled_from([0, 4, 2**31, 2**32 - 1])),
    st.builds(lambda n: b"\x8e" + struct.pack("<Q", n), st.sampled_from([8, 2**40, 2**63])),
    st.builds(lambda n: b"\x95" + struct.pack("<Q", n), st.sampled_from([0, 16, 2**62])),
    st.builds(lambda i: b"h" + bytes([i]), st.integers(0, 3)),
    st.builds(lambda i: b"q" + bytes([i]), st.integers(0, 3)),
)


@FUZZ
@given(st.lists(opcodes, max_size=40).map(b"".join))
def test_fuzzed_opcode_streams_load_or_are_refused(stream):
    value = _accepted_or_refused(safe_load, io.BytesIO(stream + b"."), "<fuzz>")
    del value


@FUZZ
@given(protocol=st.integers(2, 5), data=st.data())
def test_fuzzed_real_pickles_load_or_are_refused(protocol, data):
    obj = {"image": np.arange(12, dtype=np.float32).reshape(3, 4), "masks": [np.eye(3, dtype=bool)],
           "id": ("case", 1, 2.5, b"raw", {1, 2}), "scalar": np.float64(3.0)}
    raw = bytearray(pickle.dumps(obj, protocol=protocol))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[at:at + data.draw(st.integers(1, 8))]
    _accepted_or_refused(safe_load, io.BytesIO(bytes(raw)), "<fuzz>")


# ----------------------------------------------------------------------------- recovery files

SIGNATURE = "sha256:" + "c0" * 20


@pytest.fixture(scope="module")
def recovery_bytes(folder) -> bytes:
    correction = np.zeros((9, 7), np.uint8)
    correction[2:5, 1:4] = 1
    path = recovery.save_recovery(SIGNATURE, correction, {"roi": [0, 0, 9, 7], "index": 2},
                                source_labels=np.zeros((9, 7), np.uint8), folder=folder / "rec")
    return path.read_bytes()


def _check_recovery(path: Path) -> None:
    got = _accepted_or_refused(recovery.read_recovery_file, path)
    if got is not None:
        correction, source, info = got
        assert correction.ndim == 2 and isinstance(info, dict)
    signature_path = recovery.recovery_path(SIGNATURE, path.parent)
    if signature_path != path:
        signature_path.write_bytes(path.read_bytes())
    offered = recovery.load_recovery(SIGNATURE, path.parent)  # never raises
    assert (offered is None) == (got is None)


@FUZZ
@given(st.data())
def test_fuzzed_recovery_files_are_offered_or_ignored(recovery_bytes, folder, data):
    raw = bytearray(recovery_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(raw)))
    path = folder / "fuzz-rec" / recovery.recovery_path(SIGNATURE, ".").name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    _check_recovery(path)


@FUZZ
@given(member=st.sampled_from(["correction", "source_labels", "info", "extra"]),
       content=npy_members | json_values.map(lambda v: _npy(np.array(json.dumps(v)))))
def test_fuzzed_recovery_members_are_offered_or_ignored(recovery_bytes, folder, member, content):
    with zipfile.ZipFile(io.BytesIO(recovery_bytes)) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[f"{member}.npy"] = content
    path = folder / "fuzz-members" / recovery.recovery_path(SIGNATURE, ".").name
    path.parent.mkdir(exist_ok=True)
    _check_recovery(_write_zip(path, members))
