"""The LIDC-IDRI-slices reader: folder and zip, ids, patient splits, the decoded cache, and bad
input named clearly (tiny sets written here; the real set where ../shared has it)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_probunet.data import lidc_slices
from napari_probunet.data.lidc_slices import looks_like_lidc_slices, read_lidc_slices
from napari_probunet.data.readers import open_cases
from napari_probunet.data.splits import split_indices
from napari_probunet.data.summary import summarize
from napari_probunet.errors import DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-slices"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBUNET_CACHE_DIR", str(tmp_path / "cache"))


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def write_layout(root: Path, patients=("0001", "0002", "0003", "0004"), nodules=2, slices=3,
                 size=16, raters=4) -> Path:
    """A small LIDC-IDRI-slices tree; rater r marks a square of side 2 + 2r (rater 3 of every
    first slice draws nothing)."""
    rng = np.random.default_rng(0)
    for p in patients:
        for k in range(nodules):
            for i in range(slices):
                base = root / f"LIDC-IDRI-{p}" / f"nodule-{k}"
                image = rng.integers(0, 256, (size, size))
                image[0, 0], image[-1, -1] = 0, 255
                _png(base / "images" / f"slice-{i}.png", image)
                for r in range(raters):
                    mask = np.zeros((size, size), np.uint8)
                    if not (r == 3 and i == 0):
                        mask[4:6 + 2 * r, 4:6 + 2 * r] = 255
                    _png(base / f"mask-{r}" / f"slice-{i}.png", mask)
    return root


def nodule_set(tmp_path: Path, monkeypatch) -> Path:
    """Two patients with two nodules of three 32 x 32 slices each (the tiny test model's size),
    the decoded cache under ``tmp_path``: the set of the 3D evaluation's command-line tests."""
    monkeypatch.setenv("PROBUNET_CACHE_DIR", str(tmp_path / "cache"))
    return write_layout(tmp_path / "slices", patients=("0001", "0002"), nodules=2, slices=3,
                        size=32)


def zip_folder(folder: Path, out: Path, prefix: str = "LIDC-IDRI-slices/") -> Path:
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(folder.rglob("*.png")):
            z.write(f, prefix + f.relative_to(folder).as_posix())
    return out


def test_reads_every_slice_with_its_ids_and_masks(tmp_path):
    root = write_layout(tmp_path / "set")
    data = read_lidc_slices(root)
    assert len(data) == 4 * 2 * 3
    case = data[0]
    assert case.case_id == "LIDC-IDRI-0001/nodule-0/slice-0"
    assert case.group_id == "LIDC-IDRI-0001"
    assert case.ids == {"patient": "LIDC-IDRI-0001", "nodule": "LIDC-IDRI-0001/nodule-0",
                        "slice": "0"}
    assert case.image.dtype == np.float32 and case.image.shape == (16, 16)
    assert case.masks.shape == (4, 16, 16) and case.masks.dtype == np.uint8
    assert [int(m.sum()) for m in case.masks] == [4, 16, 36, 0]  # rater 3 drew nothing here
    assert [int(m.sum()) for m in data[1].masks] == [4, 16, 36, 64]
    assert looks_like_lidc_slices(root)


def test_zip_gives_the_same_cases_as_the_folder(tmp_path):
    root = write_layout(tmp_path / "set")
    archive = zip_folder(root, tmp_path / "LIDC-IDRI-slices.zip")
    from_folder, from_zip = read_lidc_slices(root), open_cases(str(archive))
    assert len(from_zip) == len(from_folder)
    for a, b in zip(from_folder, from_zip):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.masks, b.masks)


def test_split_by_patient_is_reproducible_and_never_shares_a_patient(tmp_path):
    root = write_layout(tmp_path / "set", patients=[f"{i:04d}" for i in range(1, 21)], slices=2)
    spec = f"{root}#part=%s&fractions=0.6,0.2,0.2&seed=3&by=patient"
    parts = {p: open_cases(spec % p) for p in ("train", "val", "test")}
    patients = {p: set(d.group_ids) for p, d in parts.items()}
    assert sum(len(d) for d in parts.values()) == 20 * 2 * 2
    assert not (patients["train"] & patients["test"]) and not (patients["val"] & patients["test"])
    assert not patients["train"] & patients["val"]
    assert [c.case_id for c in open_cases(spec % "test")] == [c.case_id for c in parts["test"]]
    other = open_cases(f"{root}#part=test&fractions=0.6,0.2,0.2&seed=4&by=patient")
    assert set(other.group_ids) != patients["test"]
    # by nodule: a patient's nodules may land on both sides, a nodule's slices never
    data = read_lidc_slices(root)
    nodule_parts = split_indices(data, (0.5, 0.5, 0.0), seed=0, by="nodule")
    nodules = [set(data.ids_of("nodule")[i] for i in part) for part in nodule_parts[:2]]
    assert not nodules[0] & nodules[1]


def test_data_info_reports_patients_nodules_and_slices(tmp_path):
    root = write_layout(tmp_path / "set")
    summary = summarize(open_cases(f"{root}#part=train&fractions=0.5,0.25,0.25&seed=0&by=patient"))
    assert summary["patients"] == 2 and summary["nodules"] == 4 and summary["cases"] == 12


def test_the_decoded_set_is_cached_and_rebuilt_when_the_source_changes(tmp_path, monkeypatch):
    root = write_layout(tmp_path / "set")
    read_lidc_slices(root)
    calls = []
    original = lidc_slices.decode_slices
    monkeypatch.setattr(lidc_slices, "decode_slices", lambda *a: calls.append(1) or original(*a))
    again = read_lidc_slices(root)
    assert calls == [] and len(again) == 24
    assert isinstance(again.stored_images, np.memmap)
    # a changed mask file (new contents, new time stamp) is decoded again
    changed = root / "LIDC-IDRI-0001" / "nodule-0" / "mask-0" / "slice-0.png"
    _png(changed, np.full((16, 16), 255))
    os.utime(changed, ns=(1, 1))
    fresh = read_lidc_slices(root)
    assert calls == [1] and int(fresh[0].masks[0].sum()) == 256


def test_a_missing_mask_skips_that_slice_and_names_it(tmp_path):
    root = write_layout(tmp_path / "set")
    (root / "LIDC-IDRI-0002" / "nodule-1" / "mask-2" / "slice-1.png").unlink()
    with pytest.warns(UserWarning, match=r"skipped 1 slices.*LIDC-IDRI-0002/nodule-1/slice-1: no "
                      r"mask-2/slice-1.png"):
        data = read_lidc_slices(root)
    assert len(data) == 23
    with pytest.raises(DataError, match="mask-2/slice-1.png"):
        read_lidc_slices(root, on_error="raise", cache=False)


def test_a_mask_of_another_size_is_refused_with_both_sizes(tmp_path):
    root = write_layout(tmp_path / "set")
    _png(root / "LIDC-IDRI-0003" / "nodule-0" / "mask-1" / "slice-2.png", np.zeros((8, 16)))
    with pytest.raises(DataError, match=r"LIDC-IDRI-0003/nodule-0/slice-2: mask-1 is 8x16 but the "
                       r"image is 16x16"):
        read_lidc_slices(root, on_error="raise", cache=False)
    with pytest.warns(UserWarning, match="skipped 1 slices"):
        assert len(read_lidc_slices(root)) == 23


def test_grey_level_masks_are_thresholded_and_counted(tmp_path):
    root = write_layout(tmp_path / "set")
    grey = np.zeros((16, 16), np.uint8)
    grey[2:8, 2:8] = 200
    grey[2:8, 8:10] = 90  # below the threshold: background
    grey[0, 0] = 3
    _png(root / "LIDC-IDRI-0001" / "nodule-0" / "mask-0" / "slice-0.png", grey)
    with pytest.warns(UserWarning, match="1 masks held grey levels.*thresholded at > 127"):
        data = read_lidc_slices(root)
    assert int(data[0].masks[0].sum()) == 36


def test_bad_sources_get_clear_messages(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not in the LIDC-IDRI-slices layout"):
        read_lidc_slices(empty)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("case1/image.png", b"not really")
    with pytest.raises(DataError, match="not in the LIDC-IDRI-slices layout"):
        open_cases(str(other))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable zip file"):
        read_lidc_slices(broken)
    with pytest.raises(DataError, match="by: group, patient, nodule or case"):
        open_cases(f"{write_layout(tmp_path / 'set')}#part=test&by=scanner")


def test_a_damaged_cache_is_removed_with_a_way_out(tmp_path):
    root = write_layout(tmp_path / "set")
    read_lidc_slices(root)
    (cache,) = (tmp_path / "cache" / "lidc-slices").iterdir()
    (cache / "images.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="run the command again"):
        read_lidc_slices(root)
    assert len(read_lidc_slices(root)) == 24
    assert json.loads((next((tmp_path / "cache" / "lidc-slices").iterdir())
                       / "index.json").read_text())["n"] == 24


@pytest.mark.skipif(not REAL.is_dir(), reason="the real LIDC-IDRI slices are not beside the project")
def test_real_patients_read_as_the_layout_says(tmp_path):
    import shutil

    sub = tmp_path / "real"
    for patient in ("LIDC-IDRI-0001", "LIDC-IDRI-0002"):
        shutil.copytree(REAL / patient, sub / patient)
    data = read_lidc_slices(sub)
    assert set(data.group_ids) == {"LIDC-IDRI-0001", "LIDC-IDRI-0002"}
    case = data[0]
    assert case.image.shape == (128, 128) and case.masks.shape == (4, 128, 128)
    assert case.image.min() == 0 and case.image.max() == 255


@pytest.mark.skipif(not REAL.is_dir(), reason="the real LIDC-IDRI slices are not beside the project")
def test_the_committed_test_patients_are_the_recipes_test_split(monkeypatch):
    """docs/lidc-test-patients.txt is what the LIDC recipe's split gives (and 15%+ of patients)."""
    from napari_probunet.training.settings import load_recipe

    monkeypatch.delenv("PROBUNET_CACHE_DIR")  # the real set's cache, shared with other runs
    root = Path(__file__).resolve().parents[1]
    _, cfg = load_recipe(root / "napari_probunet" / "recipes" / "lidc.toml")
    fragment = cfg.data.split("#", 1)[1].replace("part=train", "part=test")
    test = open_cases(f"{REAL}#{fragment}")
    listed = (root / "docs" / "lidc-test-patients.txt").read_text().split()
    assert sorted(set(test.group_ids)) == listed
    assert len(listed) >= 0.15 * 681
    train = open_cases(str(REAL) + "#" + cfg.data.split("#", 1)[1])
    assert not set(train.group_ids) & set(listed)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "1M")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("LIDC-IDRI-0001/nodule-0/images/slice-0.png", b"\0" * (8 << 20))
    with pytest.raises(DataError, match="MAX_DECODED_BYTES.*PROBUNET_MAX_DECODED_BYTES="):
        read_lidc_slices(bomb)
