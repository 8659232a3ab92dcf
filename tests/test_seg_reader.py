"""napari opens a DICOM SEG over its CT: one layer per segment, named by its label, voxel for
voxel over the CT (the third-party SEG of LIDC-IDRI-0001 and one we write); the package's
DICOM series reader does not take a SEG file; a SEG whose CT is nowhere says where it looked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

SCAN = Path("/work/shared/data/lidc-idri-scans/LIDC-IDRI-0001")
CT = SCAN / "ct"
THIRD_PARTY = SCAN / "annotations" / "LIDC-IDRI-0001_Combined_SEG.dcm"

pytestmark = pytest.mark.skipif(not CT.is_dir(), reason="the LIDC-IDRI-0001 scan is not here")


def test_the_series_reader_leaves_a_seg_file_to_the_seg_reader():
    import npe2

    from napari_probunet._reader import get_dicom_reader
    from napari_probunet._seg_reader import get_seg_reader, read_seg_file

    assert get_dicom_reader(str(THIRD_PARTY)) is None
    assert get_seg_reader(str(THIRD_PARTY)) is read_seg_file
    assert get_seg_reader(str(CT / "1-001.dcm")) is None
    assert get_dicom_reader(str(CT / "1-001.dcm")) is not None
    manager = npe2.PluginManager.instance()
    manager.discover()
    ours = [r.command for r in manager.iter_compatible_readers(
        [str(THIRD_PARTY)]) if r.plugin_name == "napari-probunet"]
    assert sorted(ours) == ["napari-probunet.read_dicom", "napari-probunet.read_seg"]


def _world(layer, index) -> np.ndarray:
    return np.asarray(layer.data_to_world(np.asarray(index, float)))


def test_the_third_party_seg_opens_over_its_ct_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(THIRD_PARTY), plugin="napari-probunet")
    assert len(layers) == 18  # the CT, then the 17 segments
    ct, segments = layers[0], layers[1:]
    assert ct.data.shape == (133, 512, 512) and ct.metadata["source"]["format"] == "dicom"
    assert [s.name for s in segments][:3] == ["ann1_nod_1", "ann1_small_2", "ann1_small_3"]
    assert all(s._type_string == "labels" for s in segments)
    from napari_probunet.data.dicom_seg import read_seg

    expected = read_seg(THIRD_PARTY, CT)
    for layer, segment in zip(segments, expected.segments):
        np.testing.assert_allclose(layer.scale, ct.scale)
        # voxel (0, 0, 0) of the segment's box is the CT's voxel at the box's offset
        np.testing.assert_allclose(_world(layer, (0, 0, 0)), _world(ct, segment.offset))
        assert np.array_equal(layer.data, segment.crop)
    nodule = segments[0]
    inside = np.argwhere(nodule.data > 0) + np.asarray(expected.segments[0].offset)
    hu = ct.data[tuple(inside.T)]
    assert np.median(hu) > -300  # the outline sits on the nodule's soft tissue

    again = viewer.open(str(THIRD_PARTY), plugin="napari-probunet")
    assert len(again) == 17  # the CT is open already: the segments go over it


def test_our_seg_beside_its_ct_opens_aligned(make_napari_viewer, tmp_path):
    from napari_probunet.data.dicom_seg import write_seg
    from napari_probunet.data.volumes import read_dicom_series

    case = tmp_path / "case"
    (case / "ct").mkdir(parents=True)
    for f in CT.glob("*.dcm"):
        os.symlink(f, case / "ct" / f.name)
    (case / "seg").mkdir()
    volume = read_dicom_series(case / "ct")
    mask = np.zeros(volume.data.shape, np.uint8)
    mask[86:90, 350:370, 305:330] = 1
    path = write_seg(mask, case / "ct", case / "seg" / "nodule.seg.dcm",
                     algorithm_name="m", algorithm_version="1")
    viewer = make_napari_viewer()
    ct, layer = viewer.open(str(path), plugin="napari-probunet")
    assert layer.name == "nodule"
    assert np.array_equal(layer.data, mask[86:90, 350:370, 305:330])
    np.testing.assert_allclose(_world(layer, (0, 0, 0)), _world(ct, (86, 350, 305)))


def test_a_seg_without_its_ct_says_where_it_looked(make_napari_viewer, tmp_path):
    from napari_probunet.errors import DataError

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(THIRD_PARTY, alone / "seg.dcm")
    from napari_probunet._seg_reader import read_seg_file

    with pytest.raises(DataError) as caught:
        read_seg_file(str(alone / "seg.dcm"))
    message = str(caught.value)
    assert "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192" in message
    assert str(alone) in message and "Open Folder" in message


def test_file_save_of_a_correction_writes_a_seg_over_its_series(make_napari_viewer,
                                                                 tmp_path):
    """napari's File > Save of a correction of a CT slice as ``.seg.dcm``: the writer
    contribution picks the export, which writes the SEG and its record."""
    from napari_probunet.data.dicom_seg import read_seg
    from napari_probunet.data.volumes import read_dicom_series
    from napari_probunet.review.provenance import Provenance

    volume = read_dicom_series(CT)
    crop = np.zeros((64, 64), np.uint8)
    crop[20:40, 18:44] = 1
    meta = Provenance(kind="correction", source="hypothesis", index=0, seed=3, n_samples=8,
                      roi=[330, 286, 64, 64], plane_shape=[512, 512], slice_index=[88],
                      model_name="lidc.safetensors", model_sha256="cd" * 32,
                      source_labels=crop.copy(), volume=volume.source()).to_metadata()
    viewer = make_napari_viewer()
    viewer.add_labels(crop, name="correction", metadata=meta)
    target = tmp_path / "correction.seg.dcm"
    viewer.layers.save(str(target), plugin="napari-probunet")
    assert Path(f"{target}.json").is_file()
    mask = read_seg(target, volume).segments[0].mask
    assert np.array_equal(mask[88, 330:394, 286:350], crop) and mask.sum() == crop.sum()


def test_a_fractional_seg_opens_as_an_image_of_frequencies(make_napari_viewer, tmp_path):
    from napari_probunet.data.dicom_seg import write_frequency_seg

    (tmp_path / "ct").mkdir()
    for f in CT.glob("*.dcm"):
        os.symlink(f, tmp_path / "ct" / f.name)
    hypotheses = np.zeros((4, 512, 512), np.uint8)
    for i in range(4):
        hypotheses[i, 350:370, 300 + 3 * i:330] = 1
    path = write_frequency_seg(hypotheses, tmp_path / "ct", tmp_path / "frequency.seg.dcm",
                               slice_index=88, algorithm_name="m", algorithm_version="1")
    viewer = make_napari_viewer()
    ct, layer = viewer.open(str(path), plugin="napari-probunet")
    assert layer._type_string == "image" and layer.name == "nodule frequency"
    assert layer.data.dtype == np.float32
    assert set(np.unique(layer.data)) == {0.25, 0.5, 0.75, 1.0}
    np.testing.assert_allclose(_world(layer, (0, 0, 0)), _world(ct, (88, 350, 300)))
