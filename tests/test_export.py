"""Exporting a correction without a GUI: every format round-trips, the record says where the
mask came from, nothing is overwritten unasked, a failed write leaves nothing behind, and the
autosave recovery files come back as they were written.
"""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime

import numpy as np
import pytest

import napari_probunet
from napari_probunet._writer import write_labels
from napari_probunet.data.readers import load_array
from napari_probunet.errors import UserError
from napari_probunet.review import export, recovery
from napari_probunet.review.provenance import Provenance

ROI = (8, 12, 16, 20)
PLANE = (40, 50)


@pytest.fixture
def correction():
    """A hypothesis (the source) and the same map with 7 pixels edited by hand."""
    rng = np.random.default_rng(0)
    source = (rng.random((ROI[2], ROI[3])) < 0.4).astype(np.uint8)
    edited = source.copy()
    edited[0, :7] = 1 - edited[0, :7]
    return edited, source


def make_record(edited, source):
    return export.correction_record(
        edited, source_labels=source, choice_source="hypothesis", index=2,
        z=np.array([0.25, -1.5], np.float32), seed=5, n_samples=16, roi=ROI, plane_shape=PLANE,
        image_signature="sha256:" + "a" * 64, plane_signature="sha256:" + "b" * 64,
        image_layer="lesion", scale=[0.7, 0.7], translate=[0.0, 0.0],
        model_sha256="c" * 64, model_name="default.safetensors",
        class_names=["background", "lesion"])


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".png", ".npy", ".nii", ".nii.gz"])
def test_every_format_round_trips(tmp_path, correction, suffix):
    edited, source = correction
    mask = export.paste_into_plane(edited, ROI, PLANE)
    path, record_file = export.export_correction(mask, tmp_path / f"mask{suffix}",
                                                 make_record(edited, source), scale=[0.7, 0.7])
    assert record_file == tmp_path / f"mask{suffix}.json"
    back = load_array(path, labels=True)
    if suffix == ".png":  # binary masks as 0/255, visible in any viewer
        assert set(np.unique(back)) <= {0, 255}
        back = (back > 0).astype(np.uint8)
    np.testing.assert_array_equal(back, mask)
    record = json.loads(record_file.read_text())
    assert record["mask"]["file"] == f"mask{suffix}" and record["mask"]["shape"] == list(PLANE)
    assert record["mask"]["extent"] == "image plane"
    assert (record["mask"].get("png_foreground") == 255) == (suffix == ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, record_file.name])


def test_the_record_says_where_the_mask_came_from(tmp_path, correction):
    edited, source = correction
    record = make_record(edited, source)
    assert record["pixels_changed_by_hand"] == 7
    assert record["choice"] == {"source": "hypothesis", "hypothesis": 3, "index": 2, "seed": 5,
                                "n_samples": 16, "z": [0.25, -1.5]}
    assert record["roi"] == {"row": 8, "col": 12, "height": 16, "width": 20}
    assert record["model"] == {"file": "default.safetensors", "sha256": "c" * 64}
    assert record["image"]["signature"].startswith("sha256:")
    assert record["labels"] == {"0": "background", "1": "lesion"}
    versions = record["versions"]
    assert versions["napari_probunet"] == napari_probunet.__version__
    assert versions["torch"] and versions["napari"] and versions["numpy"] == np.__version__
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    json.dumps(record)  # JSON-able as it is


def test_nothing_is_overwritten_unasked(tmp_path, correction):
    edited, source = correction
    target = tmp_path / "mask.npy"
    target.write_bytes(b"keep me")
    with pytest.raises(export.ExportExistsError, match="already exist"):
        export.export_correction(edited, target, make_record(edited, source))
    assert target.read_bytes() == b"keep me"
    (tmp_path / "other.tif.json").write_text("{}")  # the record alone counts too
    with pytest.raises(export.ExportExistsError):
        export.export_correction(edited, tmp_path / "other.tif", make_record(edited, source))
    export.export_correction(edited, target, make_record(edited, source), overwrite=True)
    np.testing.assert_array_equal(np.load(target), edited)


def test_a_failed_write_says_so_and_leaves_nothing(tmp_path, correction, monkeypatch):
    edited, source = correction
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: refuse the way a read-only folder does
        real = __import__("tempfile").mkstemp
        calls = []

        def second_fails(*args, **kwargs):  # the mask is written, then its record fails
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr("tempfile.mkstemp", second_fails)
        with pytest.raises(UserError, match="the disk is full") as info:
            export.export_correction(edited, folder / "mask.tif", make_record(edited, source))
        monkeypatch.setattr("tempfile.mkstemp", lambda *a, **k: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, "Permission denied")))
    else:
        folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="read-only") as info:
            export.export_correction(edited, folder / "mask.tif", make_record(edited, source))
    finally:
        folder.chmod(0o700)
    assert "Nothing was written" in str(info.value)
    assert list(folder.iterdir()) == []


def test_bad_targets_and_masks_are_explained(tmp_path, correction):
    edited, source = correction
    record = make_record(edited, source)
    with pytest.raises(UserError, match="choose a file ending in"):
        export.export_correction(edited, tmp_path / "mask.jpg", record)
    with pytest.raises(UserError, match="does not exist"):
        export.export_correction(edited, tmp_path / "missing" / "mask.tif", record)
    with pytest.raises(UserError, match="must hold integers"):
        export.export_correction(edited.astype(np.float32), tmp_path / "m.tif", record)
    with pytest.raises(UserError, match="labels 0..255"):
        export.export_correction(edited.astype(np.uint16) * 300, tmp_path / "m.png", record)
    with pytest.raises(UserError, match="outside the image"):
        export.paste_into_plane(edited, (30, 40, 16, 20), PLANE)
    assert list(tmp_path.iterdir()) == []


def test_writer_records_what_the_layer_metadata_knows(tmp_path, correction):
    edited, source = correction
    meta = {"kind": "correction", "source": "explorer", "index": None, "z": [1.0, 2.0],
            "roi": list(ROI), "plane_shape": list(PLANE), "image_layer": "lesion",
            "image_signature": "sha256:" + "d" * 64, "model_sha256": "e" * 64,
            "model_name": "m.safetensors", "source_labels": source}
    written = write_labels(str(tmp_path / "c.tif"), edited[None], {"name": "lesion correction",
                                                                    "metadata": meta})
    assert written == [str(tmp_path / "c.tif"), str(tmp_path / "c.tif.json")]
    full = load_array(written[0], labels=True)
    np.testing.assert_array_equal(full, export.paste_into_plane(edited, ROI, PLANE))
    record = json.loads((tmp_path / "c.tif.json").read_text())
    assert record["choice"] == {"source": "explorer", "z": [1.0, 2.0]}
    assert record["pixels_changed_by_hand"] == 7 and record["layer"] == "lesion correction"
    prov = Provenance.from_metadata(meta)  # what the writer read: the layer's typed record
    assert prov.is_correction and prov.choice_source == "explorer" and not prov.from_hypothesis
    assert prov.region == ROI and prov.pixels_edited(edited) == 7
    assert {k: v for k, v in prov.to_metadata().items() if k in meta} == meta

    # any other Labels layer: written as it is, with a record of what is known
    other = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_labels(str(tmp_path / "plain.npy"), other, {"name": "cells", "metadata": {}})
    np.testing.assert_array_equal(np.load(tmp_path / "plain.npy"), other)
    record = json.loads((tmp_path / "plain.npy.json").read_text())
    assert record["layer"] == "cells" and record["mask"]["extent"] == "layer"
    assert record["pixels_changed_by_hand"] is None


def test_recovery_files_round_trip(tmp_path, correction):
    edited, source = correction
    signature = "sha256:" + "f" * 64
    assert recovery.load_recovery(signature, tmp_path) is None
    path = recovery.save_recovery(signature, edited, {"index": 2, "roi": list(ROI)},
                                source_labels=source, folder=tmp_path)
    assert path.parent == tmp_path and path.suffix == ".npz"
    back, back_source, info = recovery.load_recovery(signature, tmp_path)
    np.testing.assert_array_equal(back, edited)
    np.testing.assert_array_equal(back_source, source)
    assert info["index"] == 2 and info["plane_signature"] == signature and "saved" in info
    restored = Provenance.from_recovery(info, "lesion", back_source)
    assert restored.is_correction and restored.index == 2 and restored.region == ROI
    assert restored.plane_signature == signature and "saved" not in restored.to_metadata()
    assert restored.recovery_info().keys() == restored.to_metadata().keys() - {"source_labels"}
    path.write_bytes(b"damaged")  # a damaged file counts as none and stays for inspection
    assert recovery.load_recovery(signature, tmp_path) is None and path.exists()
    recovery.discard_recovery(signature, tmp_path)
    assert not path.exists()
    recovery.discard_recovery(signature, tmp_path)  # no error when already gone
    with pytest.raises(ValueError):
        recovery.recovery_path("../../etc/passwd", tmp_path)


def test_recovery_folder_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_PROBUNET_RECOVERY_DIR", str(tmp_path))
    assert recovery.recovery_dir() == tmp_path
    monkeypatch.delenv("NAPARI_PROBUNET_RECOVERY_DIR")
    assert recovery.recovery_dir().parts[-2:] == ("napari-probunet", "recovery")


def test_a_concurrent_export_of_the_same_name_is_never_replaced(tmp_path, correction,
                                                                monkeypatch):
    """Two clinicians (or two napari windows) export the same name: the one that finishes
    second is told the name is taken; the first one's mask and record stay as written."""
    edited, source = correction
    target = tmp_path / "mask.npy"
    theirs = np.full_like(edited, 7)
    real_write = export.write_mask_file
    calls = []

    def the_other_export_finishes_meanwhile(mask, path, suffix, scale=None):
        calls.append(path)
        if len(calls) == 1:  # our long write is under way; the other export commits first
            export.export_correction(theirs, target, {"by": "the other export"})
        return real_write(mask, path, suffix, scale=scale)

    monkeypatch.setattr(export, "write_mask_file", the_other_export_finishes_meanwhile)
    with pytest.raises(export.ExportExistsError, match="mask.npy already exist"):
        export.export_correction(edited, target, make_record(edited, source))
    np.testing.assert_array_equal(np.load(target), theirs)
    assert json.loads(export.record_path(target).read_text())["by"] == "the other export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.npy", "mask.npy.json"]


def test_a_record_that_appears_meanwhile_takes_the_new_mask_back(tmp_path, correction,
                                                                 monkeypatch):
    edited, source = correction
    target = tmp_path / "mask.tif"
    real_write = export.write_mask_file

    def a_record_appears(mask, path, suffix, scale=None):
        export.record_path(target).write_text('{"by": "someone else"}')
        return real_write(mask, path, suffix, scale=scale)

    monkeypatch.setattr(export, "write_mask_file", a_record_appears)
    with pytest.raises(export.ExportExistsError, match="mask.tif.json already exist"):
        export.export_correction(edited, target, make_record(edited, source))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.tif.json"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_record_that_cannot_be_committed_leaves_nothing_new(tmp_path, correction, monkeypatch,
                                                              overwrite):
    """The mask is committed, then its record fails: "Nothing was written" must be true, so the
    new mask is removed again (and with overwrite the previous mask and record are kept)."""
    edited, source = correction
    target = tmp_path / "mask.tif"
    if overwrite:
        export.export_correction(np.zeros_like(edited), target, {"old": True})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    commit = "replace" if overwrite else "link"
    real = getattr(os, commit)

    def record_fails(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, commit, record_fails)
    with pytest.raises(UserError, match="the disk is full") as info:
        export.export_correction(edited, target, make_record(edited, source), overwrite=overwrite)
    assert "Nothing was written" in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_without_hard_links_an_exclusive_create_still_never_clobbers(tmp_path, correction,
                                                                     monkeypatch):
    """FAT drives and some network shares have no hard links: O_EXCL does the same job."""
    edited, source = correction

    def no_hard_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    path, record_file = export.export_correction(edited, tmp_path / "mask.npy",
                                                 make_record(edited, source))
    np.testing.assert_array_equal(np.load(path), edited)
    assert json.loads(record_file.read_text())["mask"]["file"] == "mask.npy"
    real_write = export.write_mask_file

    def the_other_export_finishes_meanwhile(mask, p, suffix, scale=None):
        (tmp_path / "b.npy").write_bytes(b"theirs")
        return real_write(mask, p, suffix, scale=scale)

    monkeypatch.setattr(export, "write_mask_file", the_other_export_finishes_meanwhile)
    with pytest.raises(export.ExportExistsError):
        export.export_correction(edited, tmp_path / "b.npy", make_record(edited, source))
    assert (tmp_path / "b.npy").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "mask.npy", "mask.npy.json"]


def test_the_temporary_files_are_on_disk_before_the_commit(tmp_path, correction, monkeypatch):
    edited, source = correction
    events = []
    real_fsync, real_link = os.fsync, os.link
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "link", lambda a, b: (events.append("link"), real_link(a, b))[1])
    export.export_correction(edited, tmp_path / "mask.png", make_record(edited, source))
    # mask and record flushed (then the journal), then committed
    assert events[:2] == ["fsync", "fsync"] and "link" in events[2:]


def test_stale_temporary_files_of_a_killed_export_are_cleaned_up(tmp_path, correction):
    edited, source = correction
    old = datetime.now().timestamp() - 2 * 3600
    stale = [".mask.tif.k2j3h4_x.tmp.tif", ".mask.tif.json.abcd1234.tmp",
             ".scan.nii.gz.0a1b2c3d.tmp.nii.gz"]
    kept = [".DS_Store", ".notes.txt.abcd1234.tmp", ".cache.abcd1234.tmp", "visible.tmp.tif"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    young = ".other.png.zz9_8yx7.tmp.png"  # perhaps another export under way: left alone
    (tmp_path / young).write_bytes(b"x")
    export.export_correction(edited, tmp_path / "new.npy", make_record(edited, source))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*kept, young, "new.npy", "new.npy.json"])


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_exports_get_the_ordinary_mode_of_a_new_file(tmp_path, correction, umask):
    edited, source = correction
    before = os.umask(umask)
    try:
        files = export.export_correction(edited, tmp_path / "mask.tif",
                                         make_record(edited, source))
    finally:
        os.umask(before)
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


@pytest.fixture
def recovery_file(tmp_path, correction):
    edited, source = correction
    signature = "sha256:" + "f" * 64
    path = recovery.save_recovery(signature, edited, {"index": 2, "roi": list(ROI)},
                                source_labels=source, folder=tmp_path)
    return signature, path, path.read_bytes()


@pytest.mark.parametrize("damage", ["empty", "truncated", "cut_before_the_end", "bit_flipped",
                                    "not_labels"])
def test_a_damaged_recovery_file_counts_as_none(tmp_path, recovery_file, damage):
    """What a crash or a bad disk leaves must not break restore: load_recovery says None."""
    signature, path, good = recovery_file
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "cut_before_the_end":
        path.write_bytes(good[:-10])
    elif damage == "bit_flipped":
        data = bytearray(good)
        data[good.index(b"\x93NUMPY") + 140] ^= 0x10  # in the correction's pixels
        path.write_bytes(bytes(data))
    else:
        with open(path, "wb") as f:
            np.savez(f, correction=np.zeros((2, 3, 4)), info=np.array("[1, 2]"))
    assert recovery.load_recovery(signature, tmp_path) is None
    assert path.exists()  # left for inspection


def test_no_truncation_or_bit_flip_of_a_recovery_file_raises(tmp_path, recovery_file,
                                                             correction):
    signature, path, good = recovery_file
    edited, _ = correction
    damaged = [good[:n] for n in range(0, len(good), 5)]
    for k in range(0, len(good), 3):
        data = bytearray(good)
        data[k] ^= 1 << (k % 8)
        damaged.append(bytes(data))
    for data in damaged:
        path.write_bytes(data)
        found = recovery.load_recovery(signature, tmp_path)  # never raises
        if found is not None:  # a flip in a field the reader does not check
            np.testing.assert_array_equal(found[0], edited)
