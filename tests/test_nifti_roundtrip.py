"""NIfTI round-trip: a correction of one slice of a scan (a NIfTI volume or a DICOM series)
exports as the whole scan's label map with the scan's affine, lands on the right voxels of
the original, and napari opens it again over the scan.

The voxels of each source scan hold their own unique value, so "the right voxels" is checked
without this package's geometry: the exported file's labelled voxels are taken to millimetres
by the file's own affine, back into the source by the source's (or, for DICOM, by the
positions and orientation written into the slices), and the values found there must be
exactly the image values under the painted pixels of the layer the clinician saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

nibabel = pytest.importorskip("nibabel")

from napari_probunet import _reader  # noqa: E402
from napari_probunet.review import export  # noqa: E402
from napari_probunet.review.provenance import Provenance  # noqa: E402
from napari_probunet.review.volume_export import volume_source  # noqa: E402

SIZE = (32, 28, 5)  # the file's x, y, z: the layer is (5, 28, 32)
SLICE = 3
ROI = (6, 9, 12, 10)  # row, col, height, width in the plane


def oblique_affine() -> np.ndarray:
    """Voxel -> RAS mm: rotated 30 degrees about z, x flipped, 0.7 x 0.8 x 2.5 mm, shifted."""
    t = np.deg2rad(30)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.7, 0.8, 2.5])
    affine[:3, 3] = [91.5, -120.25, 33.0]
    return affine


def unique_volume(shape=SIZE) -> np.ndarray:
    """Each voxel's value is its own: x + 100 y + 10000 z (exact in float32)."""
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (x + 100 * y + 10000 * z).astype(np.float32)


def write_source(path: Path, qform_code: int = 1, sform_code: int = 2) -> Path:
    img = nibabel.Nifti1Image(unique_volume(), oblique_affine())
    img.set_qform(oblique_affine(), code=qform_code)
    img.set_sform(oblique_affine(), code=sform_code)
    nibabel.save(img, str(path))
    return path


def painted_crop() -> np.ndarray:
    """A correction of ``ROI``'s size: a blob and one stray pixel of class 2 in a corner."""
    h, w = ROI[2:]
    rr, cc = np.mgrid[0:h, 0:w]
    crop = (((rr - 5) ** 2 + (cc - 4) ** 2) <= 12).astype(np.uint8)
    crop[h - 1, w - 1] = 2
    return crop


def widget_record(image_meta: dict, layer_data: np.ndarray, crop: np.ndarray, scale,
                  k: int = SLICE, roi=ROI) -> dict:
    """The correction layer's metadata as the review widget builds it
    (``gui/review/correction.py``: ``Correction._record``)."""
    return Provenance(
        kind="correction", source="hypothesis", index=2, z=[0.1, -0.2], seed=0, n_samples=4,
        roi=list(roi), image_layer="chest", slice_index=(k,),
        plane_shape=list(layer_data.shape[-2:]), image_signature="sha256:x",
        plane_signature="sha256:y", model_sha256="abc", model_name="m.safetensors",
        class_names=["background", "lesion", "other"], scale=[float(s) for s in scale[-2:]],
        translate=[0.0, 0.0], source_labels=np.zeros_like(crop),
        volume=export.volume_source(image_meta),
    ).to_metadata()


def export_via_widget_path(meta: dict, crop: np.ndarray, target: Path):
    """What the Export… button does with the correction layer (its data, its metadata)."""
    mask, record = export.layer_mask_and_record(crop[None], meta, name="chest correction")
    return export.export_correction(mask, target, record, scale=meta["scale"])


def export_a_read_source(tmp_path: Path, source: str, target: str) -> SimpleNamespace:
    """Write the oblique source, open it with the package's reader, paint the crop on its
    slice and export the correction to ``target``, as the widget would."""
    src = write_source(tmp_path / source)
    ((data, kwargs, kind),) = _reader.read_nifti(str(src))
    crop = painted_crop()
    meta = widget_record(kwargs["metadata"], data, crop, kwargs["scale"])
    out, rec = export_via_widget_path(meta, crop, tmp_path / target)
    return SimpleNamespace(src=src, data=data, kwargs=kwargs, kind=kind, crop=crop, meta=meta,
                           out=out, rec=rec)


def source_values_under_labels(out: Path, src_affine, src_data: np.ndarray,
                               label: int | None = None) -> np.ndarray:
    """The source's values at the exported file's labelled voxels (through both affines)."""
    img = nibabel.load(str(out))
    lab = np.asarray(img.dataobj)
    idx = np.argwhere(lab == label if label is not None else lab > 0)
    world = img.affine @ np.c_[idx, np.ones(len(idx))].T
    vox = np.linalg.solve(np.asarray(src_affine, float), world)[:3].T
    np.testing.assert_allclose(vox, np.round(vox), atol=1e-3)  # on the source's voxel grid
    return np.sort(src_data[tuple(np.round(vox).astype(int).T)])


def layer_values_under_crop(layer_data, crop, k=SLICE, roi=ROI, label=None) -> np.ndarray:
    r0, c0, h, w = roi
    plane = layer_data[k, r0:r0 + h, c0:c0 + w]
    return np.sort(plane[crop == label] if label is not None else plane[crop > 0])


# ----------------------------------------------------------------------------- NIfTI source


def test_a_slice_correction_exports_as_the_whole_volume_on_the_right_voxels(tmp_path):
    e = export_a_read_source(tmp_path, "chest.nii.gz", "fix.nii.gz")
    src, data, crop, out, rec_path = e.src, e.data, e.crop, e.out, e.rec
    assert e.kind == "image" and data.shape == (5, 28, 32)

    img = nibabel.load(str(out))
    assert img.shape == SIZE  # the source's shape, in the file's axis order
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
    np.testing.assert_allclose(img.get_qform(), oblique_affine(), atol=1e-4)
    np.testing.assert_allclose(img.get_sform(), oblique_affine(), atol=1e-5)
    # the source's own codes (qform scanner, sform aligned), label dtype as for a plane
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
    assert img.get_data_dtype() == np.uint8
    lab = np.asarray(img.dataobj)
    # every other slice (the file's z) is empty; the slice holds exactly the painted pixels
    assert not lab[:, :, [z for z in range(SIZE[2]) if z != SLICE]].any()
    assert np.count_nonzero(lab) == np.count_nonzero(crop)
    assert np.count_nonzero(lab == 2) == 1
    # the right voxels: through both affines, the source values under the labels are the
    # image values the clinician saw under the painted pixels
    src_data = np.asarray(nibabel.load(str(src)).dataobj)
    for label in (1, 2):
        np.testing.assert_array_equal(
            source_values_under_labels(out, oblique_affine(), src_data, label),
            layer_values_under_crop(data, crop, label=label))

    record = json.loads(rec_path.read_text())
    vol = record["volume"]
    assert vol["placed"] is True and vol["extent"] == "whole scan"
    assert vol["slice_index"] == [SLICE] and vol["axes"] == [2, 1, 0]
    assert vol["slice_axes_in_file"] == [2]
    assert vol["source"]["path"] == str(src) and vol["source"]["format"] == "nifti"
    r0, c0, h, w = ROI
    assert vol["box_in_file"] == [[c0, c0 + w], [r0, r0 + h], [SLICE, SLICE + 1]]
    centre = oblique_affine() @ [c0 + (w - 1) / 2, r0 + (h - 1) / 2, SLICE, 1]
    np.testing.assert_allclose(vol["roi_centre_ras_mm"], centre[:3], atol=1e-3)
    np.testing.assert_allclose(vol["affine"], oblique_affine())
    assert vol["codes"] == {"qform": 1, "sform": 2}
    assert record["mask"]["shape"] == list(SIZE) and record["mask"]["extent"] == "whole scan"
    assert record["mask"]["dtype"] == "uint8"
    # the existing keys say what they always said
    assert record["image"]["slice_index"] == [SLICE]
    assert record["image"]["plane_shape"] == [28, 32]
    assert record["roi"] == {"row": r0, "col": c0, "height": h, "width": w}
    assert record["choice"]["hypothesis"] == 3 and record["foreground_pixels"] == np.count_nonzero(crop)


def test_the_package_reader_reopens_the_export_over_the_source(tmp_path):
    e = export_a_read_source(tmp_path, "chest.nii", "fix.nii")
    data, kwargs, crop, out = e.data, e.kwargs, e.crop, e.out
    ((labels, lkw, kind),) = _reader.read_nifti(str(out))
    assert kind == "labels" and labels.shape == data.shape  # the image layer's axes
    np.testing.assert_allclose(lkw["scale"], kwargs["scale"], rtol=1e-6)
    expected = np.zeros(data.shape, np.uint8)
    r0, c0, h, w = ROI
    expected[SLICE, r0:r0 + h, c0:c0 + w] = crop
    np.testing.assert_array_equal(labels, expected)
    assert lkw["metadata"]["record"]["volume"]["placed"] is True
    # saved again (napari's File > Save): the same file, still aligned
    again = tmp_path / "again.nii.gz"
    from napari_probunet._writer import write_labels

    write_labels(str(again), labels, {"name": "fix", "metadata": lkw["metadata"],
                                      "scale": lkw["scale"]})
    img = nibabel.load(str(again))
    assert img.shape == SIZE
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(nibabel.load(out).dataobj))


def test_napari_opens_the_export_aligned_with_the_scan(make_napari_viewer, tmp_path):
    src = write_source(tmp_path / "chest.nii.gz")
    crop = painted_crop()
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(src), plugin="napari-probunet")
    meta = widget_record(image.metadata, image.data, crop, image.scale)
    out, _ = export_via_widget_path(meta, crop, tmp_path / "fix.nii.gz")
    (labels,) = viewer.open(str(out), plugin="napari-probunet")
    assert type(labels).__name__ == "Labels" and labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale, rtol=1e-6)
    np.testing.assert_allclose(labels.translate, image.translate)
    np.testing.assert_allclose(labels.affine.affine_matrix, image.affine.affine_matrix)
    r0, c0, h, w = ROI
    for i, j in np.argwhere(crop > 0):
        voxel = (SLICE, r0 + i, c0 + j)
        np.testing.assert_allclose(labels.data_to_world(voxel), image.data_to_world(voxel))
        assert labels.data[voxel] == crop[i, j]
    assert int(np.count_nonzero(labels.data)) == int(np.count_nonzero(crop))


def test_napari_finds_the_plugin_for_nifti_without_being_told(make_napari_viewer, tmp_path):
    """napari's own reader claims ``*.nii.gz`` too but has no backend for it: once the plugin
    is activated (npe2 runs the manifest's ``on_activate``), it is napari's reader for NIfTI
    in File > Open and drag and drop (``plugin=None``: the preferences), unless the user chose
    another. (``viewer.open(path)`` in a script means napari's builtins, whatever the
    preferences: pass ``plugin="napari-probunet"`` there.)"""
    import npe2
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    src = write_source(tmp_path / "chest.nii.gz")
    viewer = make_napari_viewer()  # napari's settings reset: no preference
    settings = get_settings()
    assert "*.nii.gz" not in settings.plugins.extension2reader
    with pytest.raises(MultipleReaderError):  # what happened before: napari cannot choose
        viewer.open(str(src), plugin=None)
    manifest = npe2.PluginManager.instance().get_manifest("napari-probunet")
    assert manifest.on_activate == "napari_probunet._reader:on_activate"
    _reader.on_activate(None)  # what npe2 does on the plugin's first use
    prefs = settings.plugins.extension2reader
    assert prefs["*.nii.gz"] == prefs["*.nii"] == "napari-probunet"
    (image,) = viewer.open(str(src), plugin=None)
    assert type(image).__name__ == "Image" and image.metadata["source"]["format"] == "nifti"
    # the Qt File > Open path (no dialog: the preference decides)
    viewer.window._qt_viewer._qt_open([str(src)], stack=False)
    assert [la.name for la in viewer.layers] == ["chest", "chest [1]"]
    # a choice the user made stays
    settings.plugins.extension2reader = {"*.nii": "other-plugin"}
    assert _reader.prefer_for_nifti() == ["*.nii.gz"]
    assert settings.plugins.extension2reader["*.nii"] == "other-plugin"


# ----------------------------------------------------------------------------- DICOM source


def test_a_dicom_series_correction_exports_on_the_series_voxels(make_napari_viewer, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rows, cols, n, gap, pixel = 28, 32, 5, 2.5, (0.7, 0.8)
    t = np.deg2rad(20)  # oblique: the rows tilted about x
    iop = np.array([1.0, 0.0, 0.0, 0.0, np.cos(t), np.sin(t)])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([-100.0, -120.0, 30.0])
    series = generate_uid()
    folder = tmp_path / "ct"
    folder.mkdir()
    stored = {}
    for i, k in enumerate((2, 0, 4, 1, 3)):  # written out of order
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, "1.2.3"
        ds.SeriesDescription, ds.InstanceNumber = "Chest", k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * gap * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing, ds.SliceThickness = list(pixel), gap
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        r, c = np.mgrid[0:rows, 0:cols]
        stored[k] = (1000 * k + 32 * r + c).astype(np.uint16)  # unique per voxel
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"IM{i}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(folder / "IM0.dcm").InstanceNumber == 3

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(folder), plugin="napari-probunet")
    assert image.data.shape == (n, rows, cols)
    crop = painted_crop()
    meta = widget_record(image.metadata, image.data, crop, image.scale)
    out, rec_path = export_via_widget_path(meta, crop, tmp_path / "ct_fix.nii.gz")
    source = image.metadata["source"]
    img = nibabel.load(str(out))
    assert list(img.shape) == source["shape"] == [cols, rows, n]
    np.testing.assert_allclose(img.affine, source["affine"], atol=1e-4)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)  # scanner
    lab = np.asarray(img.dataobj)
    assert not lab[:, :, [z for z in range(n) if z != SLICE]].any()
    # each labelled voxel, in LPS mm by the file's affine, is the DICOM pixel there: position
    # of its slice + column * column spacing * row direction + row * row spacing * col direction
    idx = np.argwhere(lab > 0)
    lps = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine @ np.c_[idx, np.ones(len(idx))].T)[:3].T
    found = []
    for p in lps:
        k = int(np.round((p - origin) @ normal / gap))
        d = p - (origin + k * gap * normal)
        c, r = d @ iop[:3] / pixel[1], d @ iop[3:] / pixel[0]
        assert abs(c - round(c)) < 1e-3 and abs(r - round(r)) < 1e-3 and k == SLICE
        found.append(int(stored[k][int(round(r)), int(round(c))]) - 1024)  # HU
    np.testing.assert_array_equal(np.sort(found), layer_values_under_crop(image.data, crop))
    record = json.loads(rec_path.read_text())
    assert record["volume"]["source"]["format"] == "dicom"
    assert record["volume"]["source"]["path"] == str(folder)
    assert record["volume"]["source"]["series_uid"] == series
    # napari reopens it over the series
    (labels,) = viewer.open(str(out), plugin="napari-probunet")
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale, rtol=1e-5)
    assert np.count_nonzero(labels.data[SLICE]) == np.count_nonzero(crop)


# ----------------------------------------------------------------------------- unchanged


def test_without_a_scan_the_nifti_export_is_the_plane_with_a_scale_affine(tmp_path):
    crop = painted_crop()
    plane = np.zeros((5, 28, 32), np.float32)
    for meta in ({}, {"source": "synthetic lesion (sample)"}):  # no scan: a sample's source
        assert volume_source(meta) is None
        record_meta = widget_record(meta, plane, crop, [1.0, 0.5, 0.25])
        assert "volume" not in record_meta  # the metadata as before
        out, rec = export_via_widget_path(record_meta, crop, tmp_path / f"p{len(meta)}.nii.gz")
        img = nibabel.load(str(out))
        assert img.shape == (28, 32)
        np.testing.assert_allclose(img.affine, np.diag([0.5, 0.25, 1.0, 1.0]))
        record = json.loads(rec.read_text())
        assert "volume" not in record and record["mask"]["extent"] == "image plane"


def test_other_formats_keep_the_plane_and_say_so(tmp_path):
    import tifffile

    e = export_a_read_source(tmp_path, "chest.nii.gz", "fix.tif")
    src, crop, meta, out, rec = e.src, e.crop, e.meta, e.out, e.rec
    assert tifffile.imread(out).shape == (28, 32)
    vol = json.loads(rec.read_text())["volume"]
    assert vol["placed"] is False and "NIfTI" in vol["why"]
    assert vol["source"]["path"] == str(src)
    # a record whose slice does not fit the scan is written as the plane, with the reason
    bad = dict(meta, slice_index=[9])
    out, rec = export_via_widget_path(bad, crop, tmp_path / "bad.nii.gz")
    assert nibabel.load(str(out)).shape == (28, 32)
    vol = json.loads(rec.read_text())["volume"]
    assert vol["placed"] is False and "does not fit" in vol["why"]


# ----------------------------------------------------------------------------- the widget


def test_the_review_widget_exports_a_scan_slice_in_place(review, qtbot, tmp_path):
    from napari_probunet.model.testing import wait_idle

    viewer, widget = review
    src = write_source(tmp_path / "chest.nii.gz")
    (image,) = viewer.open(str(src), plugin="napari-probunet")
    viewer.layers.selection.active = image
    widget.roi_tool.image_combo.setCurrentText(image.name)
    viewer.dims.set_current_step(0, SLICE)
    widget.sampler.n_spin.setValue(4)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    widget.controller.use_as_best_fit()
    correction = viewer.layers[f"{image.name} correction"]
    assert correction.metadata["volume"]["path"] == str(src)
    correction.paint((0, 5, 5), 1, refresh=True)  # at least one painted pixel
    crop = np.asarray(correction.data).reshape(correction.data.shape[-2:]).copy()
    roi = tuple(correction.metadata["roi"])
    target = tmp_path / "chest_fix.nii.gz"
    widget.correction.ask_save_path = lambda default: str(target)
    assert widget.correction.export() == target
    img = nibabel.load(str(target))
    assert img.shape == SIZE
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
    src_data = np.asarray(nibabel.load(str(src)).dataobj)
    np.testing.assert_array_equal(
        source_values_under_labels(target, oblique_affine(), src_data),
        layer_values_under_crop(image.data, crop, roi=roi))
    record = json.loads((tmp_path / "chest_fix.nii.gz.json").read_text())
    assert record["volume"]["slice_index"] == [SLICE] and record["volume"]["placed"]
