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
from napari_probunet import export
from napari_probunet._writer import write_labels
from napari_probunet.data.readers import load_array
from napari_probunet.errors import UserError

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
        real = export.tempfile.mkstemp
        calls = []

        def second_fails(*args, **kwargs):  # the mask is written, then its record fails
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(export.tempfile, "mkstemp", second_fails)
        with pytest.raises(UserError, match="the disk is full") as info:
            export.export_correction(edited, folder / "mask.tif", make_record(edited, source))
        monkeypatch.setattr(export.tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(
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
    assert export.load_recovery(signature, tmp_path) is None
    path = export.save_recovery(signature, edited, {"index": 2, "roi": list(ROI)},
                                source_labels=source, folder=tmp_path)
    assert path.parent == tmp_path and path.suffix == ".npz"
    back, back_source, info = export.load_recovery(signature, tmp_path)
    np.testing.assert_array_equal(back, edited)
    np.testing.assert_array_equal(back_source, source)
    assert info["index"] == 2 and info["plane_signature"] == signature and "saved" in info
    path.write_bytes(b"damaged")  # a damaged file counts as none and stays for inspection
    assert export.load_recovery(signature, tmp_path) is None and path.exists()
    export.discard_recovery(signature, tmp_path)
    assert not path.exists()
    export.discard_recovery(signature, tmp_path)  # no error when already gone
    with pytest.raises(ValueError):
        export.recovery_path("../../etc/passwd", tmp_path)


def test_recovery_folder_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_PROBUNET_RECOVERY_DIR", str(tmp_path))
    assert export.recovery_dir() == tmp_path
    monkeypatch.delenv("NAPARI_PROBUNET_RECOVERY_DIR")
    assert export.recovery_dir().parts[-2:] == ("napari-probunet", "recovery")
