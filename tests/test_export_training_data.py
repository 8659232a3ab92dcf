"""Exported corrections carry what they correct (issue #25): the record names the image's file
and a standard sha256 of the corrected region's pixel bytes, and the pixels themselves lie
beside the mask (``<mask>.image.npy``), so an export can become training data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import tifffile

from napari_probunet.review import export
from napari_probunet.review.provenance import Provenance


def _correction(tmp_path, pixels):
    crop = np.zeros((6, 7), np.uint8)
    crop[2:4, 1:5] = 1
    started = crop.copy()
    started[0, 0] = 1
    prov = Provenance(kind="correction", source="hypothesis", index=2, z=[0.5, -1.0], seed=7,
                      n_samples=16, roi=[3, 4, 6, 7], plane_shape=[20, 24], slice_index=[],
                      image_layer="case", image_signature="sha256:x", model_name="m",
                      class_names=["background", "lesion"], source_labels=started,
                      image_file=str(tmp_path / "case.tif"), region_pixels=pixels)
    return crop, prov


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".nii.gz", ".png"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_an_export_reads_back_as_image_mask_and_record(tmp_path, suffix, dtype):
    pixels = (np.arange(42).reshape(6, 7) * 3 - 20).astype(dtype)
    crop, prov = _correction(tmp_path, pixels)
    mask, record = export.layer_mask_and_record(crop, prov.to_metadata(), name="case correction")
    target = tmp_path / f"out{suffix}"
    mask_path, record_path = export.export_correction(mask, target, record)
    saved = json.loads(record_path.read_text())
    image = saved["image"]
    assert image["file"] == str(tmp_path / "case.tif")
    ident = image["pixels"]
    assert ident["file"] == "out" + suffix + ".image.npy"
    assert ident["dtype"] == np.dtype(dtype).str and ident["shape"] == [6, 7]
    assert ident["order"] == "C"
    read = np.load(tmp_path / ident["file"], allow_pickle=False)
    # the documented hash: sha256 of the array's bytes in its own dtype, C order, no header
    assert hashlib.sha256(read.tobytes()).hexdigest() == ident["sha256"]
    assert read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read, pixels)
    roi = saved["roi"]
    if suffix == ".tif":
        full = tifffile.imread(mask_path)
    elif suffix == ".npy":
        full = np.load(mask_path)
    else:
        from napari_probunet.data.readers import load_array

        full = np.asarray(load_array(mask_path))
        if suffix == ".png":
            full = (full > 0).astype(np.uint8)
    region = full[roi["row"]:roi["row"] + roi["height"], roi["col"]:roi["col"] + roi["width"]]
    np.testing.assert_array_equal(region, crop)  # image and mask line up: a training pair
    assert saved["pixels_changed_by_hand"] == 1
    assert export.PIXELS_KEY not in saved


def test_a_correction_without_known_pixels_writes_no_image_file(tmp_path):
    crop, prov = _correction(tmp_path, None)
    mask, record = export.layer_mask_and_record(crop, prov.to_metadata(), name="c")
    export.export_correction(mask, tmp_path / "out.tif", record)
    assert json.loads((tmp_path / "out.tif.json").read_text())["image"]["pixels"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "out.tif.json"]


def test_the_provenance_writes_the_same_record_as_the_keywords(tmp_path):
    crop, prov = _correction(tmp_path, None)
    by_keywords = export.correction_record(
        crop, source_labels=prov.source_labels, choice_source="hypothesis", index=2,
        z=prov.z, seed=7, n_samples=16, roi=prov.roi, plane_shape=prov.plane_shape,
        image_signature="sha256:x", image_layer="case", model_name="m",
        class_names=prov.class_names)
    by_itself = prov.correction_record(crop)
    for record in (by_keywords, by_itself):
        record.pop("created")
    by_itself["image"]["file"] = None
    assert by_itself == by_keywords


def test_the_pixels_never_reach_an_autosave(tmp_path):
    crop, prov = _correction(tmp_path, np.ones((6, 7), np.float32))
    info = prov.recovery_info()
    assert "region_pixels" not in info and "source_labels" not in info
    json.dumps(info)


def test_one_hypotheses_record_for_session_jobs_and_bundles(tmp_path):
    """Session.sample, a review sampling job and a bundle give the same record type, and the
    job's and the bundle's fields are the record's (nothing stored twice)."""
    from napari_probunet.model.hypotheses import Hypotheses
    from napari_probunet.model.testing import tiny_model
    from napari_probunet.review import bundle as bundles
    from napari_probunet.review.jobs import Sampled
    from napari_probunet.session import Session

    session = Session(tiny_model(), device="cpu")
    session.set_image(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    hyp = session.sample(3, seed=4)
    assert isinstance(hyp, Hypotheses) and hyp.image_signature == session.image_signature
    sampled = Sampled(request=None, hypotheses=hyp)
    assert sampled.labels is hyp.labels and sampled.z is hyp.z
    assert not {"labels", "z", "uncertainty"} & set(Sampled.__dataclass_fields__)
    b = bundles.Bundle(manifest={"case_id": "c"}, image=np.zeros((16, 16), np.float32),
                       hypotheses=hyp, prior_mu=np.zeros(2, np.float32),
                       prior_sigma=np.ones(2, np.float32))
    assert b.hypotheses is hyp and b.seed == 4 and b.n == 3
    assert b.arrays()["hypotheses"] is hyp.labels and b.arrays()["z"] is hyp.z
    assert not {"labels", "z", "uncertainty", "seed"} & set(bundles.Bundle.__dataclass_fields__)
