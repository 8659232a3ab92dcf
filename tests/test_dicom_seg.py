"""DICOM SEG out and in, over the real LIDC-IDRI-0001 series (133 CT slices): written with
highdicom, read back by highdicom and by our reader to the same mask, valid for dciodvfy;
the third-party SEG of that patient opens aligned with the CT; a SEG of another series is
refused; hypotheses as segments and their frequency as a FRACTIONAL SEG round-trip; the
review's export writes ``<name>.seg.dcm`` with its record; napari opens a SEG over its CT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.data import dicom_seg
from napari_probunet.data.volumes import read_dicom_series, read_series_headers
from napari_probunet.errors import DataError, LimitError, UserError

SCAN = Path("/work/shared/data/lidc-idri-scans/LIDC-IDRI-0001")
CT = SCAN / "ct"
THIRD_PARTY = SCAN / "annotations" / "LIDC-IDRI-0001_Combined_SEG.dcm"
SERIES_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"
MODEL = {"algorithm_name": "lidc_mixture.safetensors", "algorithm_version": "sha256:0123abcd"}

pytestmark = pytest.mark.skipif(not CT.is_dir(), reason="the LIDC-IDRI-0001 scan is not here")


@pytest.fixture(scope="module")
def volume():
    return read_dicom_series(CT)


@pytest.fixture(scope="module")
def headers():
    return read_series_headers(CT)


def nodule(shape, centre=(88, 362, 318), radius=(3, 14, 12)) -> np.ndarray:
    """An ellipsoid of ones in a zero volume of ``shape`` (slices, rows, cols)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1
    return inside.astype(np.uint8)


def highdicom_masks(path: Path, headers, segments) -> np.ndarray:
    """highdicom's own reading: (slices, rows, cols, segments) in the headers' order."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(h.SOPInstanceUID) for h in headers],
        segment_numbers=list(segments), rescale_fractional=True,
        assert_missing_frames_are_empty=True)


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy is missing: apt-get install dicom3tools (Makefile SYSTEM_PACKAGES)"
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


# ----------------------------------------------------------------------------- writing


def test_a_nodule_written_as_seg_reads_back_the_same_by_highdicom_and_by_us(
        tmp_path, volume, headers):
    import pydicom

    mask = nodule(volume.data.shape)
    path = dicom_seg.write_seg(mask, CT, tmp_path / "nodule.seg.dcm", segment_label="nodule",
                               algorithm_parameters={"seed": "7"}, **MODEL)
    ours = dicom_seg.read_seg(path, volume)
    assert [s.label for s in ours.segments] == ["nodule"]
    assert np.array_equal(ours.segments[0].mask, mask)
    theirs = highdicom_masks(path, headers, [1])[..., 0]
    assert np.array_equal(theirs, mask)

    ds = pydicom.dcmread(path)
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    assert int(ds.NumberOfFrames) == len(slices) == 7  # only the frames with the nodule
    named = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
             for f in ds.PerFrameFunctionalGroupsSequence]
    assert sorted(named) == sorted(headers[k].SOPInstanceUID for k in slices)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "nodule"
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
    assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
        "SCT", "27925004", "Nodule")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "lidc_mixture.safetensors"
    assert algorithm.AlgorithmVersion == "sha256:0123abcd"
    assert ds.Manufacturer == "napari-probunet" and ds.SoftwareVersions
    assert ds.Modality == "SEG" and ds.SeriesInstanceUID != SERIES_UID


def test_a_2d_mask_on_one_slice_is_one_frame_of_that_slice(tmp_path, volume, headers):
    import pydicom

    plane = nodule(volume.data.shape)[88]
    path = dicom_seg.write_seg(plane, CT, tmp_path / "slice.seg.dcm", slice_index=88, **MODEL)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 1
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    assert (frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            == headers[88].SOPInstanceUID)
    mask = dicom_seg.read_seg(path, CT).segments[0].mask
    assert np.array_equal(mask[88], plane) and mask.sum() == plane.sum()


def test_an_empty_mask_is_one_empty_frame(tmp_path, volume):
    empty = np.zeros(volume.data.shape[1:], np.uint8)
    path = dicom_seg.write_seg(empty, CT, tmp_path / "none.seg.dcm", slice_index=40, **MODEL)
    seg = dicom_seg.read_seg(path, volume)
    assert seg.segments[0].voxels == 0 and seg.segments[0].frames == 1


def test_a_mask_that_does_not_fit_the_series_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not fit the series"):
        dicom_seg.write_seg(np.ones((10, 512, 512)), CT, tmp_path / "x.seg.dcm", **MODEL)
    with pytest.raises(DataError, match="outside the series"):
        dicom_seg.write_seg(np.ones((512, 512)), CT, tmp_path / "x.seg.dcm", slice_index=200,
                            **MODEL)
    assert not (tmp_path / "x.seg.dcm").exists()


def test_an_existing_file_is_not_replaced_silently(tmp_path, volume):
    target = tmp_path / "n.seg.dcm"
    target.write_bytes(b"keep me")
    with pytest.raises(DataError, match="already exists"):
        dicom_seg.write_seg(nodule(volume.data.shape), CT, target, **MODEL)
    assert target.read_bytes() == b"keep me"
    dicom_seg.write_seg(nodule(volume.data.shape), CT, target, overwrite=True, **MODEL)
    assert dicom_seg.is_seg_file(target)
    assert [p.name for p in tmp_path.iterdir()] == ["n.seg.dcm"]  # no temporaries left


def test_hypotheses_as_segments_and_their_frequency_as_a_fractional_seg(
        tmp_path, volume, headers):
    import pydicom

    base = nodule(volume.data.shape)[88]
    hypotheses = np.stack([base, np.roll(base, 3, axis=1), base * 0, np.roll(base, -4, 0)])
    path = dicom_seg.write_hypotheses_seg(hypotheses, CT, tmp_path / "h.seg.dcm",
                                          slice_index=88, **MODEL)
    seg = dicom_seg.read_seg(path, volume)
    assert [s.label for s in seg.segments] == [f"hypothesis 0{i}" for i in range(1, 5)]
    for s, h in zip(seg.segments, hypotheses):
        assert np.array_equal(s.mask[88], h) and s.mask.sum() == h.sum()
    theirs = highdicom_masks(path, headers, [1, 2, 4])
    assert np.array_equal(np.moveaxis(theirs[88], -1, 0), hypotheses[[0, 1, 3]])
    assert pydicom.dcmread(path, stop_before_pixels=True).SegmentsOverlap == "YES"

    path = dicom_seg.write_frequency_seg(hypotheses, CT, tmp_path / "f.seg.dcm",
                                         slice_index=88, **MODEL)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.SegmentationType == "FRACTIONAL"
    assert ds.SegmentationFractionalType == "PROBABILITY"
    assert int(ds.MaximumFractionalValue) == 4  # a stored value counts hypotheses
    fraction = dicom_seg.read_seg(path, volume)
    assert fraction.fractional and fraction.segments[0].crop.dtype == np.float32
    expected = np.count_nonzero(hypotheses, axis=0) / 4
    assert np.array_equal(fraction.segments[0].mask[88], expected.astype(np.float32))
    assert set(np.unique(expected)) >= {0.25, 0.5, 0.75}
    assert np.allclose(highdicom_masks(path, headers, [1])[88, ..., 0], expected)


def test_dciodvfy_finds_no_error_in_what_we_write(tmp_path, volume):
    mask = nodule(volume.data.shape)
    hypotheses = np.stack([mask[88], np.roll(mask[88], 5, axis=0)])
    written = [
        dicom_seg.write_seg(mask, CT, tmp_path / "a.seg.dcm", **MODEL),
        dicom_seg.write_hypotheses_seg(hypotheses, CT, tmp_path / "b.seg.dcm",
                                       slice_index=88, **MODEL),
        dicom_seg.write_frequency_seg(hypotheses, CT, tmp_path / "c.seg.dcm",
                                      slice_index=88, **MODEL),
    ]
    for path in written:
        assert dciodvfy_errors(path) == [], path.name
    broken = tmp_path / "broken.dcm"  # the check can fail: a SEG without its segments
    import pydicom

    ds = pydicom.dcmread(written[0])
    del ds.SegmentSequence
    ds.save_as(broken)
    assert dciodvfy_errors(broken)


# ----------------------------------------------------------------------------- reading


def test_the_third_party_seg_opens_aligned_with_the_ct(volume, headers):
    seg = dicom_seg.read_seg(THIRD_PARTY, volume)
    assert len(seg.segments) == 17 and sum(s.frames for s in seg.segments) == 45
    assert seg.series_uid == SERIES_UID
    theirs = highdicom_masks(THIRD_PARTY, headers, range(1, 18))
    for i, s in enumerate(seg.segments):
        assert np.array_equal(s.mask, theirs[..., i]), s.label
    outlined = [s for s in seg.segments if "_nod_" in s.label]
    assert [s.label for s in outlined] == ["ann1_nod_1", "ann2_nod_6", "ann3_nod_8",
                                           "ann4_nod_17"]
    for s in outlined:  # on the nodule: soft tissue inside, lung air around it
        inside = volume.data[s.mask.astype(bool)]
        assert np.median(inside) > -300, s.label
        shifted = np.roll(s.mask, 30, axis=2).astype(bool)
        assert np.median(volume.data[shifted]) < -500, s.label


def test_frames_without_references_are_placed_by_their_position(tmp_path, volume):
    import pydicom

    mask = nodule(volume.data.shape)
    path = dicom_seg.write_seg(mask, CT, tmp_path / "n.seg.dcm", **MODEL)
    ds = pydicom.dcmread(path)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    ds.save_as(tmp_path / "by_position.dcm")
    again = dicom_seg.read_seg(tmp_path / "by_position.dcm", volume)
    assert np.array_equal(again.segments[0].mask, mask)
    for frame in ds.PerFrameFunctionalGroupsSequence:  # half a slice off: on no slice
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        frame.PlanePositionSequence[0].ImagePositionPatient = [*position[:2],
                                                               position[2] + 1.25]
    ds.save_as(tmp_path / "off_grid.dcm")
    with pytest.raises(DataError, match="on no slice of the series"):
        dicom_seg.read_seg(tmp_path / "off_grid.dcm", volume)


def test_a_seg_of_another_series_is_refused_naming_both(tmp_path, volume):
    import pydicom

    other = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    ds = pydicom.dcmread(THIRD_PARTY)
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = other
    ds.save_as(tmp_path / "other.dcm")
    with pytest.raises(DataError) as caught:
        dicom_seg.read_seg(tmp_path / "other.dcm", volume)
    message = str(caught.value)
    assert other in message and SERIES_UID in message and "Open the SEG with" in message


def test_sizes_are_checked_before_decoding(monkeypatch, volume):
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "1000")
    with pytest.raises(LimitError, match="45 frames of 512x512, 17 segments"):
        dicom_seg.read_seg(THIRD_PARTY, volume)


def test_a_ct_slice_is_not_a_seg():
    assert not dicom_seg.is_seg_file(CT / "1-001.dcm")
    assert dicom_seg.is_seg_file(THIRD_PARTY)
    with pytest.raises(DataError, match="not a DICOM Segmentation"):
        dicom_seg.read_seg(CT / "1-001.dcm", CT)


def test_a_series_folder_with_its_seg_beside_it_still_opens(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for f in sorted(CT.glob("*.dcm"))[:5]:
        os.symlink(f, folder / f.name)
    shutil.copy(THIRD_PARTY, folder / "seg.dcm")
    volume = read_dicom_series(folder)
    assert volume.data.shape[0] == 5 and any("SEG" in n for n in volume.notes)


def test_find_series_looks_beside_the_seg_and_in_ct(tmp_path):
    case = tmp_path / "case"
    (case / "ct").mkdir(parents=True)
    (case / "annotations").mkdir()
    for f in CT.glob("*.dcm"):
        os.symlink(f, case / "ct" / f.name)
    seg = case / "annotations" / "seg.dcm"
    shutil.copy(THIRD_PARTY, seg)
    found, searched = dicom_seg.find_series(seg)
    assert len(found) == 133 and {f.parent for f in found} == {case / "ct"}
    assert searched[-1] == case / "ct"
    shutil.copy(THIRD_PARTY, case / "ct" / "zz_seg.dcm")  # beside the slices, same folder
    found, searched = dicom_seg.find_series(case / "ct" / "zz_seg.dcm")
    assert len(found) == 133 and searched == [case / "ct"]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(THIRD_PARTY, alone / "seg.dcm")
    found, searched = dicom_seg.find_series(alone / "seg.dcm")
    assert found == [] and alone in searched


# ----------------------------------------------------------------------------- export


def _correction_record(volume, k=88):
    from napari_probunet.review.export import correction_record

    crop = nodule(volume.data.shape)[k, 330:394, 286:350]
    record = correction_record(
        crop, source_labels=np.zeros_like(crop), choice_source="hypothesis", index=2,
        seed=7, n_samples=16, roi=(330, 286, 64, 64), plane_shape=(512, 512),
        slice_index=(k,), model_sha256="ab" * 32, model_name="lidc_mixture.safetensors",
        volume=volume.source())
    return crop, record


def test_export_writes_a_seg_and_its_record_without_overwriting(tmp_path, volume):
    from napari_probunet.review.export import (
        ExportExistsError,
        export_correction,
        paste_into_plane,
    )

    crop, record = _correction_record(volume)
    plane = paste_into_plane(crop, (330, 286, 64, 64), (512, 512))
    target = tmp_path / "case_correction.seg.dcm"
    written, record_file = export_correction(plane, target, record)
    assert (written, record_file) == (target, tmp_path / "case_correction.seg.dcm.json")
    saved = json.loads(record_file.read_text())
    assert saved["mask"]["format"] == "seg.dcm" and saved["mask"]["frames"] == 1
    assert saved["mask"]["shape"] == [133, 512, 512] and saved["volume"]["slice_index"] == [88]
    assert saved["seg"]["referenced_series_uid"] == SERIES_UID
    assert saved["seg"]["algorithm"]["version"] == "sha256:" + "ab" * 8
    assert saved["choice"]["hypothesis"] == 3 and saved["model"]["sha256"] == "ab" * 32
    seg = dicom_seg.read_seg(target, volume)
    assert seg.sop_instance_uid == saved["seg"]["sop_instance_uid"]
    assert np.array_equal(seg.segments[0].mask[88], plane) and seg.segments[0].voxels == \
        plane.sum()

    before = target.read_bytes()
    with pytest.raises(ExportExistsError):
        export_correction(plane, target, record)
    assert target.read_bytes() == before
    export_correction(plane * 0, target, record, overwrite=True)
    assert dicom_seg.read_seg(target, volume).segments[0].voxels == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name, record_file.name]


def test_export_of_an_image_not_from_a_dicom_series_is_refused_before_writing(tmp_path):
    from napari_probunet.review.export import correction_record, export_correction

    mask = np.zeros((64, 64), np.uint8)
    with pytest.raises(UserError, match="not opened from a DICOM series"):
        export_correction(mask, tmp_path / "x.seg.dcm", correction_record(mask))
    assert list(tmp_path.iterdir()) == []


def test_a_seg_in_memory_reads_as_from_its_file(volume):
    """What a PACS client retrieves (a pydicom Dataset) reads without a file."""
    import pydicom

    from_file = dicom_seg.read_seg(THIRD_PARTY, volume)
    in_memory = dicom_seg.read_seg(pydicom.dcmread(THIRD_PARTY), volume)
    assert [s.label for s in in_memory.segments] == [s.label for s in from_file.segments]
    assert all(np.array_equal(a.crop, b.crop) and a.offset == b.offset
               for a, b in zip(in_memory.segments, from_file.segments))


def test_a_seg_whose_frames_do_not_match_its_description_is_refused(tmp_path, volume):
    import pydicom

    ds = pydicom.dcmread(THIRD_PARTY)
    del ds.PerFrameFunctionalGroupsSequence[-1]
    ds.save_as(tmp_path / "damaged.dcm")
    with pytest.raises(DataError, match="declares 45 frames but describes 44"):
        dicom_seg.read_seg(tmp_path / "damaged.dcm", volume)
    ds = pydicom.dcmread(THIRD_PARTY)
    ds.NumberOfFrames = 4_000_000  # a small file declaring a huge SEG: refused unread
    ds.save_as(tmp_path / "huge.dcm")
    with pytest.raises(LimitError, match="MAX_DECODED_BYTES"):
        dicom_seg.read_seg(tmp_path / "huge.dcm", volume)
