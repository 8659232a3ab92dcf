"""A whole CT scan folder opened in napari: the CT in HU with its spacing, one outline layer
per radiologist in their own colour, and a scan whose reading file is bad still opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_probunet import _scan_reader
from napari_probunet._scan_reader import RADIOLOGIST_COLOURS, get_scan_reader

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-idri-scans" / \
    "LIDC-IDRI-0001"
pytestmark = pytest.mark.skipif(not SCAN.is_dir(), reason="../shared/data/lidc-idri-scans absent")


def _linked_scan(tmp_path: Path, xml: dict[str, str | bytes]) -> Path:
    folder = tmp_path / "LIDC-IDRI-0001"
    (folder / "annotations").mkdir(parents=True)
    (folder / "ct").symlink_to(SCAN / "ct", target_is_directory=True)
    for name, text in xml.items():
        data = text if isinstance(text, bytes) else text.encode()
        (folder / "annotations" / name).write_bytes(data)
    return folder


def test_the_scan_folder_goes_to_the_scan_reader_and_the_series_folder_to_dicom(tmp_path):
    from napari_probunet._reader import get_dicom_reader

    assert get_scan_reader(str(SCAN)) is _scan_reader.read_scan
    assert get_scan_reader(str(SCAN / "ct")) is None
    assert get_scan_reader(str(SCAN / "ct" / "1-001.dcm")) is None
    assert get_scan_reader([str(SCAN), str(SCAN)]) is None
    assert get_dicom_reader(str(SCAN / "ct")) is not None  # the plain series, as before
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    ours = [r.command for r in pm.iter_compatible_readers([str(SCAN)])
            if r.plugin_name == "napari-probunet"]
    assert ours[0] == "napari-probunet.read_scan"  # tried before the DICOM reader
    assert "napari-probunet.read_scan" not in [
        r.command for r in pm.iter_compatible_readers([str(SCAN / "ct" / "1-001.dcm")])]


def test_opening_lidc_idri_0001_gives_the_ct_and_four_outlined_radiologists(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open(str(SCAN), plugin="napari-probunet")
    names = [layer.name for layer in layers]
    assert names == ["LIDC-IDRI-0001"] + [f"LIDC-IDRI-0001 radiologist {r}" for r in range(1, 5)] \
        + ["LIDC-IDRI-0001 marks"]
    image, *radiologists, marks = layers
    spacing = (2.5, 0.703125, 0.703125)
    assert np.allclose(image.scale, spacing) and image.data.shape == (133, 512, 512)
    assert image.data.min() < -1000 and tuple(image.contrast_limits) == (-1350.0, 150.0)
    assert image.metadata["nodules"][0]["radiologists"] == [1, 2, 3, 4]
    seen = set()
    for r, layer in enumerate(radiologists):
        assert np.allclose(layer.scale, spacing) and layer.data.shape == image.data.shape
        assert layer.contour == 2  # drawn as an outline, 2 px wide on a 512x512 plane
        colour = layer.colormap.map(np.array([1]))[0][:3]
        expected = np.array([int(RADIOLOGIST_COLOURS[r][i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert np.allclose(colour, expected, atol=0.01)
        seen.add(tuple(np.round(colour, 2)))
        meta = layer.metadata
        assert meta["kind"] == "grader" and meta["grader"] == r + 1
        assert meta["radiologist"] == f"radiologist {r + 1}" and meta["servicing_radiologist_id"]
        (nodule,) = meta["nodules"]
        assert nodule["nodule"] == 1 and len(nodule["slices"]) in (7, 8, 9)
        assert sorted(np.flatnonzero(layer.data.any(axis=(1, 2)))) == nodule["slices"]
        assert 28 < nodule["longest_diameter_mm"] < 38
    assert len(seen) == 4
    assert not any(np.allclose(c, (0, 1, 1), atol=0.2) for c in seen)  # no cyan
    assert len(marks.data) == 22 and set(marks.features["kind"]) == {"small nodule", "non-nodule"}
    assert np.allclose(marks.scale, spacing)


def test_a_scan_with_a_bad_reading_file_still_opens_with_a_warning(make_napari_viewer, tmp_path):
    real = (SCAN / "annotations" / "069.xml").read_bytes()
    folder = _linked_scan(tmp_path, {"069.xml": real,
                                     "other.xml": real.replace(b"179049373636438705059720603192",
                                                               b"1")})
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-probunet")
    assert [layer.name for layer in layers][1:5] == [
        f"LIDC-IDRI-0001 radiologist {r}" for r in range(1, 5)]
    (note,) = [n for n in layers[0].metadata["notes"] if "other.xml" in n]
    assert "describes another series" in note


def test_a_scan_without_reading_files_opens_the_ct_alone(make_napari_viewer, tmp_path):
    folder = _linked_scan(tmp_path, {})
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-probunet")
    assert [layer.name for layer in layers] == ["LIDC-IDRI-0001"]
    assert layers[0].metadata["nodules"] == []
