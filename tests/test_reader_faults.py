"""Issue #30's reader faults, each with the hostile file built here: small files that declare
gigabytes, names with absurd numbers, damaged caches and headers, odd files where data should
be, and data specs that used to end in a raw error or a silent wrong answer."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_probunet import limits
from napari_probunet.data.case_stack import read_case_stack
from napari_probunet.data.lidc_slices import read_lidc_slices
from napari_probunet.data.nifti import read_nifti_volume
from napari_probunet.data.readers import open_cases, read_case_folder
from napari_probunet.data.splits import parse_split
from napari_probunet.data.volumes import read_dicom_series
from napari_probunet.errors import DataError, LimitError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from test_volumes import write_series  # noqa: E402


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBUNET_CACHE_DIR", str(tmp_path / "cache"))


def png_bytes(side: int, value: int = 0) -> bytes:
    """A grey PNG of ``side`` x ``side`` pixels (a constant compresses to a few kB)."""
    import io

    out = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def lidc_members(slices: int, side: int, raters: int = 4, nodule: str = "nodule-0",
                 patient: str = "LIDC-IDRI-0001") -> dict[str, bytes]:
    image, mask = png_bytes(side, 100), png_bytes(side, 0)
    members = {}
    for i in range(slices):
        members[f"{patient}/{nodule}/images/slice-{i}.png"] = image
        for r in range(raters):
            members[f"{patient}/{nodule}/mask-{r}/slice-{i}.png"] = mask
    return members


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, data in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ----------------------------------------------------------------------------- LIDC slices


def test_the_lidc_reader_uses_the_image_pixel_limit_not_its_own(tmp_path, monkeypatch):
    path = write_zip(tmp_path / "set.zip", lidc_members(2, 1200))
    monkeypatch.setenv("PROBUNET_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(LimitError, match="MAX_IMAGE_PIXELS"):
        read_lidc_slices(path, on_error="raise")
    monkeypatch.setenv("PROBUNET_MAX_IMAGE_PIXELS", "2000000")  # raised: it reads
    assert len(read_lidc_slices(path, cache=False)) == 2


def test_a_small_zip_declaring_gigabytes_is_refused_before_decoding(tmp_path, monkeypatch):
    """60 slices of 4096 x 4096 (3 GB decoded, issue #30) in a zip of about 1 MB; here the
    same declared in a scaled-down set against a lowered limit, so the test stays quick."""
    path = write_zip(tmp_path / "set.zip", lidc_members(30, 1024))
    assert path.stat().st_size < 10 << 20
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "8M")
    with pytest.raises(LimitError, match=r"30 slices of 1024x1024 .*MAX_DECODED_BYTES"):
        read_lidc_slices(path)
    assert not (tmp_path / "cache" / "lidc-slices").exists() or not any(
        (tmp_path / "cache" / "lidc-slices").iterdir())  # nothing decoded, nothing cached


def test_a_mask_folder_with_an_absurd_radiologist_number_is_refused(tmp_path):
    members = lidc_members(2, 16)
    members["LIDC-IDRI-0001/nodule-0/mask-99999999999/slice-0.png"] = png_bytes(16)
    with pytest.warns(UserWarning, match="radiologist number of 11 digits"):
        data = read_lidc_slices(write_zip(tmp_path / "a.zip", members), cache=False)
    assert data.notes["n_raters"] == 4
    members = lidc_members(2, 16)
    members["LIDC-IDRI-0001/nodule-0/mask-5000/slice-0.png"] = png_bytes(16)
    with pytest.raises(LimitError, match="MAX_RATERS"):
        read_lidc_slices(write_zip(tmp_path / "b.zip", members), cache=False)


def test_a_slice_number_of_5000_digits_is_named_not_a_raw_error(tmp_path):
    members = lidc_members(2, 16)
    members[f"LIDC-IDRI-0001/nodule-0/images/slice-{'7' * 5000}.png"] = png_bytes(16)
    with pytest.warns(UserWarning, match="radiologist number of 5000 digits"):
        assert len(read_lidc_slices(write_zip(tmp_path / "a.zip", members), cache=False)) == 2
    with pytest.raises(DataError, match="5000 digits"):
        read_lidc_slices(write_zip(tmp_path / "a.zip", members), on_error="raise")


def test_napaaris_case_reader_checks_a_nodule_folder_before_decoding(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "set", lidc_members(6, 512))
    nodule = root / "LIDC-IDRI-0001" / "nodule-0"
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "4M")  # the float32 stack alone is 6M
    with pytest.raises(LimitError, match="6 slices of 512x512 .*MAX_DECODED_BYTES"):
        read_case_stack(nodule)
    monkeypatch.delenv("PROBUNET_MAX_DECODED_BYTES")
    case = read_case_stack(nodule)
    assert case.image.shape == (6, 512, 512) and case.image.dtype == np.float32
    assert case.masks.shape == (4, 6, 512, 512) and case.masks.dtype == np.uint8
    assert float(case.image.max()) == 100.0


@pytest.mark.parametrize("damage", ["{}", '{"ids": 3, "width": "x"}', "[1, 2]", "not json"])
def test_a_damaged_cache_index_is_removed_with_a_message(tmp_path, damage):
    root = write_folder(tmp_path / "set", lidc_members(3, 16))
    assert len(read_lidc_slices(root)) == 3
    (cache,) = (tmp_path / "cache" / "lidc-slices").iterdir()
    (cache / "index.json").write_text(damage)
    with pytest.raises(DataError, match="cache was damaged .* removed; run the command again"):
        read_lidc_slices(root)
    assert not cache.exists()
    assert len(read_lidc_slices(root)) == 3  # rebuilt


def test_a_killed_cache_build_is_cleaned_up_by_the_next_read(tmp_path):
    root = write_folder(tmp_path / "set", lidc_members(3, 16))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    caches = tmp_path / "cache" / "lidc-slices"
    abandoned = caches / f".{'ab' * 12}.{pid}.tmp"
    abandoned.mkdir(parents=True)
    (abandoned / "images.npy").write_bytes(bytes(1 << 20))
    alive = caches / f".{'cd' * 12}.{os.getppid()}.tmp"  # a build still running: kept
    alive.mkdir()
    read_lidc_slices(root)
    assert not abandoned.exists() and alive.exists()


def test_a_fifo_where_a_mask_should_be_is_named_not_waited_on(tmp_path):
    root = write_folder(tmp_path / "set", lidc_members(2, 16))
    fifo = root / "LIDC-IDRI-0001" / "nodule-0" / "mask-1" / "slice-1.png"
    fifo.unlink()
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="slice-1.png: not a regular file"):
        read_lidc_slices(root, on_error="raise", cache=False)
    case = tmp_path / "case"
    case.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(case / "image.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(case / "mask_0.png")
    os.mkfifo(case / "mask_1.png")
    with pytest.raises(DataError, match="mask_1.png: not a regular file"):
        read_case_folder(case)
    # the command line answers at once (it used to wait forever on the pipe)
    run = subprocess.run([sys.executable, "-m", "napari_probunet.cli", "data", "info", str(case)],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert run.returncode == 2 and "not a regular file" in run.stderr


def test_case_json_ids_must_be_text(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(case / "image.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(case / "mask_0.png")
    (case / "case.json").write_text(json.dumps({"case_id": {"a": 1}}))
    with pytest.raises(DataError, match="case_id is dict"):
        read_case_folder(case)
    (case / "case.json").write_text(json.dumps({"case_id": "c1", "group_id": [1]}))
    with pytest.raises(DataError, match="group_id is list"):
        read_case_folder(case)
    (case / "case.json").write_text(json.dumps({"case_id": "c1", "group_id": 7}))
    assert read_case_folder(case).group_id == "7"


# ----------------------------------------------------------------------------- data specs


@pytest.mark.parametrize("fragment, message", [
    ("part=test&part=train", "part given more than once"),
    ("part=test&seed=-1", "seed must be a whole number from 0"),
    ("part=test&seed=" + "9" * 40, "seed must be a whole number"),
])
def test_bad_split_specs_are_named(fragment, message):
    with pytest.raises(DataError, match=message):
        parse_split(fragment)


def test_a_split_that_leaves_the_chosen_part_empty_says_so(tmp_path):
    with pytest.raises(DataError, match="the 'val' part of this split is empty .*5 cases"):
        open_cases("synthetic:lesions?n=5&size=16#part=val&fractions=1,0,0")


# ----------------------------------------------------------------------------- DICOM


def _poke(path: Path, tag: bytes, vr: bytes, old: bytes, new: bytes) -> None:
    """Replace the value of one explicit-VR element in a file's bytes (pydicom refuses to
    write text into a number field, a hostile writer does not)."""
    head = tag + vr + len(old).to_bytes(2, "little")
    data = path.read_bytes()
    assert data.count(head + old) == 1, (tag, old)
    path.write_bytes(data.replace(head + old, head + new))


def test_dicom_headers_with_text_in_number_fields_still_read(tmp_path):
    """String NumberOfFrames, InstanceNumber and SliceThickness were a ValueError in napari's
    reader (issue #30); they are taken as missing."""
    import pydicom

    write_series(tmp_path / "s", n=4)
    for f in sorted((tmp_path / "s").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.NumberOfFrames, ds.InstanceNumber, ds.SliceThickness = 1, 42, "2.5"
        del ds.ImagePositionPatient  # so that InstanceNumber and SliceThickness are used
        ds.save_as(f)
        _poke(f, b"\x28\x00\x08\x00", b"IS", b"1 ", b"on")
        _poke(f, b"\x20\x00\x13\x00", b"IS", b"42", b"xx")
        _poke(f, b"\x18\x00\x50\x00", b"DS", b"2.5 ", b"thin")
    volume = read_dicom_series(tmp_path / "s")
    assert volume.data.shape == (4, 32, 32)
    assert volume.spacing[0] == 1.0  # no usable thickness: 1 mm, as without one


@pytest.mark.parametrize("slope, intercept", [(1e39, 0.0), (1.0, -1e39), (3e25, 0.0)])
def test_a_rescale_beyond_what_a_volume_holds_is_refused(tmp_path, slope, intercept):
    write_series(tmp_path / "s", n=2, slope=slope, intercept=intercept)
    with pytest.raises(DataError, match="RescaleSlope .* header is damaged"):
        read_dicom_series(tmp_path / "s")


# ----------------------------------------------------------------------------- NIfTI


def write_nifti_gz(path: Path, shape, declared_bytes: int | None = None, **header) -> Path:
    """A ``.nii.gz`` of zeros, written as a stream (the array never in memory); with
    ``declared_bytes`` the stream holds only that many voxel bytes."""
    import nibabel

    hdr = nibabel.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.diag([0.7, 0.7, 2.5, 1.0]), code=1)
    hdr.set_sform(np.diag([0.7, 0.7, 2.5, 1.0]), code=1)
    for key, value in header.items():
        hdr[key] = value
    hdr["vox_offset"] = 352
    total = int(np.prod(shape)) * 2 if declared_bytes is None else declared_bytes
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock + b"\0" * 4)
        chunk = bytes(1 << 22)
        while total > 0:
            f.write(chunk[:total])
            total -= len(chunk)
    return path


def test_a_truncated_nifti_stream_is_refused_by_name(tmp_path):
    path = write_nifti_gz(tmp_path / "short.nii.gz", (64, 64, 40), declared_bytes=100_000)
    with pytest.raises(DataError, match="stream ends after 100,000 of the 327,680 bytes"):
        read_nifti_volume(path)


def nifti_with(path: Path, **fields) -> Path:
    """A small ``.nii`` whose header fields are then set to ``fields`` as stored bytes
    (nibabel would recompute them from a finite affine on saving)."""
    import nibabel

    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), path)
    header = nibabel.load(path).header
    for key, value in fields.items():
        header[key] = value
    raw = bytearray(path.read_bytes())
    raw[:348] = header.binaryblock
    path.write_bytes(bytes(raw))
    return path


def test_a_nifti_with_nan_spacing_or_affine_opens_with_a_note(tmp_path):
    volume = read_nifti_volume(nifti_with(tmp_path / "nan_pixdim.nii",
                                          pixdim=[1, np.nan, 0.7, 2.5, 1, 1, 1, 1]))
    assert np.all(np.isfinite(volume.spacing)) and volume.spacing[-1] == 1.0
    assert any("pixdim[1] = nan" in n for n in volume.notes)
    volume = read_nifti_volume(nifti_with(tmp_path / "nan_affine.nii", qform_code=0,
                                          sform_code=1, srow_x=[np.nan, 0, 0, 0]))
    assert np.all(np.isfinite(volume.affine)) and np.all(np.isfinite(volume.file_affine))
    assert any("affine holds NaN" in n for n in volume.notes)
    json.dumps(volume.source(), allow_nan=False)  # the record the export keeps is valid JSON


# ----------------------------------------------------------------------------- bundles


def bundle_with(path: Path, n: int, graders: int = 0, side: int = 4) -> Path:
    """A bundle of a few kilobytes declaring ``n`` hypotheses and ``graders`` masks."""
    from test_limits import _manifest, _npy_header

    shapes = {"image": ((side, side), "<f4"), "hypotheses": ((n, side, side), "|u1"),
              "z": ((n, 2), "<f4"), "prior_mu": ((2,), "<f4"), "prior_sigma": ((2,), "<f4"),
              "uncertainty": ((side, side), "<f4")}
    if graders:
        shapes["graders"] = ((graders, side, side), "|u1")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(_manifest(shapes)))
        for key, (shape, dtype) in shapes.items():
            zf.writestr(f"{key}.npy", _npy_header(shape, dtype) + bytes(
                limits.array_bytes(shape, np.dtype(dtype).itemsize)))
    return path


def test_bundles_with_too_many_hypotheses_or_graders_are_refused_before_reading(tmp_path,
                                                                                 monkeypatch):
    """20,000 hypotheses in 1.5 MB took 6.4 GB in napari (issue #30): each is a layer."""
    from napari_probunet.review import bundle as bundles

    many = bundle_with(tmp_path / "many.probunet.zip", n=20_000)
    with pytest.raises(LimitError, match="number of hypotheses .*MAX_HYPOTHESES"):
        bundles.read_bundle(many)
    raters = bundle_with(tmp_path / "raters.probunet.zip", n=4, graders=5_000)
    with pytest.raises(LimitError, match="number of graders .*MAX_RATERS"):
        bundles.read_bundle(raters)
    assert bundles.read_bundle(bundle_with(tmp_path / "fine.probunet.zip", n=16,
                                           graders=4)).n == 16
    monkeypatch.setenv("PROBUNET_MAX_RATERS", "oops")
    with pytest.raises(UserError, match="PROBUNET_MAX_RATERS='oops' is not a positive number"):
        bundles.read_bundle(raters)


# ----------------------------------------------------------------------------- limits


@pytest.mark.parametrize("name", ["MAX_RATERS", "MAX_HYPOTHESES"])
def test_the_new_count_limits_are_settable_and_malformed_settings_refused(name, monkeypatch):
    assert limits.value(name) == limits.default(name)
    monkeypatch.setenv(f"PROBUNET_{name}", "12")
    assert limits.value(name) == 12
    for bad in ("-3", "0", "many", "nan"):
        monkeypatch.setenv(f"PROBUNET_{name}", bad)
        with pytest.raises(UserError, match="not a positive number"):
            limits.value(name)


# ----------------------------------------------------------------------------- domain records


def test_a_domain_reference_of_the_wrong_width_warns_instead_of_failing(tmp_path):
    from napari_probunet.model.testing import tiny_model
    from napari_probunet.review.domain import FEATURES, check_image

    config = tiny_model(0).config
    width = len(FEATURES)
    config.domain = {"description": "toy", "feature_mean": [0.0] * width,
                     "feature_scale": [1.0] * width, "reference": [[0.0] * (width - 3)] * 20,
                     "threshold": 1.0}
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    check = check_image(config, image)
    assert any("domain record is damaged" in w and f"not {width} features" in w
               for w in check.warnings)
    good = {**config.domain, "reference": [[0.0] * width] * 20}
    for damage in ({"threshold": float("nan")}, {"k": 0}, {"feature_scale": [0.0] * width}):
        config.domain = {**good, **damage}
        assert any("not a usable number" in w for w in check_image(config, image).warnings), \
            damage


def test_measuring_a_domain_on_too_few_images_is_a_named_error(tmp_path, capsys):
    from napari_probunet import cli
    from napari_probunet.model.modelfile import save_model
    from napari_probunet.model.testing import tiny_model

    path = tmp_path / "m.safetensors"
    save_model(tiny_model(0), path)
    code = cli.main(["domain", str(path), "--data", "synthetic:lesions?n=5&size=32",
                     "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "at least 20 training images" in err and "internal" not in err
