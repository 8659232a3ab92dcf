"""CT volumes as radiologists hold them: a DICOM series (pydicom) or a NIfTI volume opens in
Hounsfield units with its spacing, its slices in patient order and its affine kept; what
cannot be read is refused with a message that names the way out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RTStructureSetStorage,
    generate_uid,
)

from napari_probunet import _reader  # noqa: E402
from napari_probunet.data import volumes  # noqa: E402
from napari_probunet.data.volumes import read_dicom_series  # noqa: E402
from napari_probunet.errors import DataError  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # rows run to the feet; the normal is +y (posterior)
PIXEL = (0.7, 0.8)  # mm between rows, between columns
ORIGIN = np.array([-100.0, -120.0, 30.0])
GAP = 2.5
SIZE = 32


def stored_slice(k: int, size: int = SIZE) -> np.ndarray:
    """Slice k's stored values (uint16): distinct per slice and per pixel."""
    rows, cols = np.mgrid[0:size, 0:size]
    return (1000 * k + 20 * rows + cols).astype(np.uint16)


def write_slice(path: Path, k: int, *, series: str, iop=AXIAL, position=None, size=SIZE,
                slope=1.0, intercept=-1024.0, description="Lung 1.0", pixels=True,
                syntax=ExplicitVRLittleEndian, sop=CTImageStorage, preamble=True) -> Path:
    """One slice of a synthetic CT series: slice k lies k * GAP mm along the slice normal."""
    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, "1.2.3.4"
    ds.SeriesDescription, ds.InstanceNumber = description, k + 1
    pos = ORIGIN + k * GAP * normal if position is None else np.asarray(position, float)
    ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
    ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
    ds.PixelSpacing, ds.SliceThickness = list(PIXEL), GAP
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels:
        raw = stored_slice(k, size).tobytes()
        if syntax.is_compressed:
            from pydicom.encaps import encapsulate

            raw = encapsulate([raw])
        ds.PixelData = raw
    ds.save_as(path, enforce_file_format=preamble)
    return path


def write_series(folder: Path, n: int = 4, order=(2, 0, 3, 1), series: str | None = None,
                 suffix: str = ".dcm", **kwargs) -> str:
    """n slices written out of order (file names and write order shuffled); the series uid."""
    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    for i, k in enumerate(order[:n] if len(order) >= n else range(n)):
        write_slice(folder / f"IM{i:04d}{suffix}", k, series=series, **kwargs)
    return series


def expected_hu(n: int = 4, slope=1.0, intercept=-1024.0) -> np.ndarray:
    return np.stack([stored_slice(k).astype(np.float64) * slope + intercept for k in range(n)])


# ----------------------------------------------------------------------------- reading


def test_a_series_written_out_of_order_reads_in_hu_sorted_with_spacing_and_affine(tmp_path):
    write_series(tmp_path / "ct")
    v = read_dicom_series(tmp_path / "ct")
    assert v.data.shape == (4, SIZE, SIZE) and v.data.dtype == np.int16
    np.testing.assert_array_equal(v.data, expected_hu())  # HU, slice k at k * GAP along z
    assert v.data.min() == -1024 and v.units == "HU"
    np.testing.assert_allclose(v.spacing, (GAP, *PIXEL))
    assert v.name == "Lung 1.0" and v.format == "dicom" and v.notes == []
    # voxel (slice, row, column) -> LPS: origin + slice * gap * z + row * 0.7 * y + col * 0.8 * x
    for k, r, c in [(0, 0, 0), (3, 5, 7), (2, 31, 0)]:
        lps = ORIGIN + [c * PIXEL[1], r * PIXEL[0], k * GAP]
        np.testing.assert_allclose(v.lps_affine @ [k, r, c, 1], [*lps, 1], atol=1e-6)
        np.testing.assert_allclose(v.affine @ [k, r, c, 1], [-lps[0], -lps[1], lps[2], 1],
                                   atol=1e-6)
    src = v.source()
    assert src["format"] == "dicom" and src["path"] == str(tmp_path / "ct")
    assert src["shape"] == [SIZE, SIZE, 4] and src["axes"] == [2, 1, 0]
    assert src["layer_shape"] == [4, SIZE, SIZE] and src["frame"] == "RAS"


def test_slices_sort_along_the_normal_of_an_oblique_or_coronal_orientation(tmp_path):
    write_series(tmp_path / "cor", iop=CORONAL, order=(3, 1, 0, 2))
    v = read_dicom_series(tmp_path / "cor")
    np.testing.assert_array_equal(v.data, expected_hu())
    # the normal is +y (LPS): slice k sits k * GAP mm further posterior
    np.testing.assert_allclose(v.lps_affine[:3, 0], [0, GAP, 0], atol=1e-6)
    np.testing.assert_allclose(v.lps_affine[:3, 1], [0, 0, -PIXEL[0]], atol=1e-6)
    np.testing.assert_allclose(v.lps_affine[:3, 2], [PIXEL[1], 0, 0], atol=1e-6)
    # oblique: the rows tilted 30 degrees about x; the positions move along the tilted normal
    t = np.deg2rad(30)
    oblique = (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t)))
    write_series(tmp_path / "obl", iop=oblique, order=(1, 3, 2, 0))
    v = read_dicom_series(tmp_path / "obl")
    np.testing.assert_array_equal(v.data, expected_hu())
    assert v.spacing[0] == pytest.approx(GAP, abs=1e-3)


def test_rescale_slope_and_one_file_of_a_series_and_files_without_a_suffix(tmp_path):
    uid = write_series(tmp_path / "a", slope=0.5, intercept=-1000.0, suffix="")  # IM0000 ...
    assert all(p.suffix == "" for p in (tmp_path / "a").iterdir())
    v = read_dicom_series(tmp_path / "a")
    assert v.data.dtype == np.float32  # a fractional slope: float32, exact for these values
    np.testing.assert_array_equal(v.data, expected_hu(slope=0.5, intercept=-1000.0))
    # one file of a folder with two series: that file's series, the other left out (a note)
    write_series(tmp_path / "a", n=2, order=(0, 1), series=generate_uid(), suffix=".x.dcm",
                 description="Scout")
    one = next(p for p in sorted((tmp_path / "a").iterdir()) if p.suffix == "")
    v = read_dicom_series(one)
    assert v.info["series_uid"] == uid and v.data.shape[0] == 4
    assert any("other series" in n for n in v.notes)
    # values beyond int16 switch to float32, still exact
    write_series(tmp_path / "b", intercept=30000.0)
    v = read_dicom_series(tmp_path / "b")
    assert v.data.dtype == np.float32
    np.testing.assert_array_equal(v.data, expected_hu(intercept=30000.0))


def test_uneven_slices_are_noted_and_a_single_slice_reads(tmp_path):
    series = generate_uid()
    (tmp_path / "gap").mkdir()
    for i, z in enumerate([0.0, 2.5, 5.0, 10.0]):  # one slice missing
        write_slice(tmp_path / "gap" / f"{i}.dcm", i, series=series, position=ORIGIN + [0, 0, z])
    v = read_dicom_series(tmp_path / "gap")
    assert v.spacing[0] == pytest.approx(GAP) and any("unevenly" in n for n in v.notes)
    one = tmp_path / "one"
    one.mkdir()
    write_slice(one / "s.dcm", 0, series=generate_uid())
    v = read_dicom_series(one / "s.dcm")
    assert v.data.shape == (1, SIZE, SIZE) and v.spacing[0] == pytest.approx(GAP)


def test_without_positions_the_slices_keep_their_instance_numbers_and_a_note(tmp_path):
    write_series(tmp_path / "sc", order=(2, 0, 3, 1))
    for f in (tmp_path / "sc").iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.save_as(f)
    v = read_dicom_series(tmp_path / "sc")
    np.testing.assert_array_equal(v.data, expected_hu())  # InstanceNumber = k + 1
    assert any("orientation unknown" in n for n in v.notes)
    # taken as axial: columns along x, rows along y, slices along z (LPS), thickness apart
    np.testing.assert_allclose(v.lps_affine[:3, :3],
                               [[0, 0, PIXEL[1]], [0, PIXEL[0], 0], [GAP, 0, 0]])


def test_the_affine_in_the_source_record_writes_a_nifti_aligned_with_the_series(tmp_path):
    """What an export does with the record: the layer's data transposed by ``axes`` with the
    record's affine is a NIfTI that reopens as the same voxels at the same place."""
    import nibabel

    write_series(tmp_path / "ct", iop=CORONAL)
    v = read_dicom_series(tmp_path / "ct")
    src = v.source()
    out = tmp_path / "ct.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.transpose(v.data, src["axes"]),
                                     np.asarray(src["affine"])), str(out))
    w = volumes.read_nifti_volume(out)
    np.testing.assert_array_equal(w.data, v.data)
    np.testing.assert_allclose(w.affine, v.affine, atol=1e-5)
    np.testing.assert_allclose(w.spacing, v.spacing, atol=1e-5)
    np.testing.assert_allclose(w.source()["affine"], src["affine"], atol=1e-5)
    assert w.source()["shape"] == src["shape"]


# ----------------------------------------------------------------------------- refusals


def test_refusals_name_the_problem_and_the_way_out(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no DICOM files.*choose the folder"):
        read_dicom_series(tmp_path / "empty")

    tree = tmp_path / "patient"
    write_series(tree / "study" / "s1")
    write_series(tree / "s2")
    with pytest.raises(DataError, match="subfolders s2 hold DICOM files: open one"):
        read_dicom_series(tree)

    mixed = tmp_path / "mixed"
    a = write_series(mixed)
    b = write_series(mixed, n=2, order=(0, 1), suffix=".b.dcm", description="Scout")
    with pytest.raises(DataError, match="mixes 2 DICOM series") as err:
        read_dicom_series(mixed)
    assert a in str(err.value) and b in str(err.value) and "own folder" in str(err.value)
    assert "'Scout'" in str(err.value)

    nopix = tmp_path / "nopix"
    uid = write_series(nopix)
    write_slice(nopix / "rtstruct.dcm", 0, series=uid, pixels=False, sop=RTStructureSetStorage)
    with pytest.raises(DataError, match="rtstruct.dcm has no pixel data.*RT Structure Set"):
        read_dicom_series(nopix)

    sizes = tmp_path / "sizes"
    uid = write_series(sizes)
    write_slice(sizes / "odd.dcm", 7, series=uid, size=16)
    with pytest.raises(DataError, match=r"different sizes \(4 of 32x32, 1 of 16x16.*localizer"):
        read_dicom_series(sizes)

    twice = tmp_path / "twice"
    uid = write_series(twice)
    write_slice(twice / "again.dcm", 2, series=uid)
    with pytest.raises(DataError, match="2 slices share a position.*several volumes"):
        read_dicom_series(twice)

    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(DataError, match="junk.dcm: not a DICOM file"):
        read_dicom_series(tmp_path / "junk.dcm")


def test_a_compressed_series_without_its_decoder_names_the_package(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    write_series(tmp_path / "jls", syntax=JPEGLSLossless)
    with pytest.raises(DataError, match=r"compressed as JPEG-LS.*pip install pylibjpeg "
                                        r"pylibjpeg-libjpeg.*dcm2niix"):
        read_dicom_series(tmp_path / "jls")


def test_sizes_are_checked_before_any_pixel_is_decoded(tmp_path, monkeypatch):
    write_series(tmp_path / "ct")
    decoded = []
    real = volumes._pixels
    monkeypatch.setattr(volumes, "_pixels", lambda *a: decoded.append(1) or real(*a))
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "1K")
    with pytest.raises(DataError, match="MAX_DECODED_BYTES"):
        read_dicom_series(tmp_path / "ct")
    monkeypatch.setenv("PROBUNET_MAX_IMAGE_PIXELS", "1000")
    monkeypatch.delenv("PROBUNET_MAX_DECODED_BYTES")
    with pytest.raises(DataError, match="MAX_IMAGE_PIXELS"):
        read_dicom_series(tmp_path / "ct")
    assert decoded == []
    monkeypatch.delenv("PROBUNET_MAX_IMAGE_PIXELS")
    read_dicom_series(tmp_path / "ct")
    assert decoded == [1]


# ----------------------------------------------------------------------------- napari


def test_the_reader_claims_dicom_only_and_leaves_case_folders_alone(tmp_path):
    from test_lidc_slices import write_layout

    from napari_probunet.data.readers import write_multirater_folder
    from napari_probunet.data.synthetic import SyntheticDataset

    write_series(tmp_path / "ct")
    first = sorted((tmp_path / "ct").iterdir())[0]
    assert _reader.get_dicom_reader(str(tmp_path / "ct")) is _reader.read_dicom
    assert _reader.get_dicom_reader(str(first)) is _reader.read_dicom
    assert _reader.get_dicom_reader([str(p) for p in (tmp_path / "ct").iterdir()]) is not None
    assert _reader.get_dicom_reader(str(tmp_path)) is _reader.read_dicom  # explains subfolders
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "a.png").write_bytes(b"\x89PNG")
    assert _reader.get_dicom_reader(str(tmp_path / "png")) is None
    assert _reader.get_dicom_reader(str(tmp_path / "png" / "a.png")) is None
    cases = list(SyntheticDataset("lesions", 1, seed=4, size=32))
    root = write_multirater_folder(cases, tmp_path / "data")
    case = next(p for p in root.iterdir() if p.is_dir())
    write_slice(case / "stray.dcm", 0, series=generate_uid())  # even with a DICOM file in it
    assert _reader.get_case_reader(str(case)) is not None
    assert _reader.get_dicom_reader(str(case)) is None
    nodule = write_layout(tmp_path / "lidc", patients=("0007",), nodules=1, slices=3)
    assert _reader.get_dicom_reader(str(nodule / "LIDC-IDRI-0007" / "nodule-0")) is None


def test_the_reader_gives_one_image_layer_in_hu_with_the_lung_window(tmp_path):
    write_series(tmp_path / "ct")
    ((data, kwargs, kind),) = _reader.read_dicom(str(tmp_path / "ct"))
    assert kind == "image" and kwargs["name"] == "Lung 1.0" and kwargs["colormap"] == "gray"
    np.testing.assert_array_equal(data, expected_hu())  # HU, never re-windowed
    np.testing.assert_allclose(kwargs["scale"], (GAP, *PIXEL))
    assert kwargs["contrast_limits"] == [-1350.0, 150.0]
    meta = kwargs["metadata"]
    assert meta["window"]["name"] == "lung" and meta["window"]["width"] == 1500
    assert meta["window"]["level"] == -600 and meta["units"] == "HU"
    src = meta["source"]
    assert src["format"] == "dicom" and len(src["affine"]) == 4
    np.testing.assert_allclose(src["layer_affine"],
                               read_dicom_series(tmp_path / "ct").affine)
    # no SeriesDescription: the folder names the layer
    write_series(tmp_path / "Thorax", description="")
    ((_, kwargs, _),) = _reader.read_dicom([str(tmp_path / "Thorax")])
    assert kwargs["name"] == "Thorax"


def test_napari_opens_a_series_folder_or_file_with_its_scale(make_napari_viewer, tmp_path):
    from napari_probunet.gui.placement import current_plane

    write_series(tmp_path / "ct")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "ct"), plugin="napari-probunet")
    assert type(layer).__name__ == "Image" and layer.data.shape == (4, SIZE, SIZE)
    np.testing.assert_allclose(layer.scale, (GAP, *PIXEL))
    np.testing.assert_allclose(layer.contrast_limits, (-1350, 150))
    assert layer.colormap.name == "gray" and layer.metadata["source"]["format"] == "dicom"
    # the plane the review hands to the model is the HU data itself
    viewer.dims.set_point(0, 2 * GAP)
    plane = current_plane(layer, viewer)
    assert plane.index == (2,)
    np.testing.assert_array_equal(plane.read(), expected_hu()[2])
    (again,) = viewer.open(str(sorted((tmp_path / "ct").iterdir())[1]),
                           plugin="napari-probunet")
    np.testing.assert_array_equal(again.data, layer.data)


def test_the_lidc_models_preprocessing_needs_no_window_for_hu(tmp_path):
    """The bundled LIDC model stretches each crop's own min..max: the HU crop, the same crop
    in a window, and its 8-bit version are one network input."""
    from napari_probunet.model.config import Preprocessing
    from napari_probunet.model.modelfile import read_metadata

    config = read_metadata(Path(volumes.__file__).parents[1] / "models" / "lidc.safetensors")
    pre = Preprocessing(**config["config"]["preprocessing"])
    write_series(tmp_path / "ct")
    crop = read_dicom_series(tmp_path / "ct").data[2, 4:20, 4:20]
    eight_bit = np.round((crop - crop.min()) / (crop.max() - crop.min()) * 255)
    np.testing.assert_allclose(pre.apply(crop), pre.apply(eight_bit.astype(np.float32)),
                               atol=2e-3)
    np.testing.assert_allclose(pre.apply(crop), pre.apply(crop.astype(np.float32) * 0.5 + 7),
                               atol=1e-5)


# ----------------------------------------------------------------------------- NIfTI


def test_a_nifti_volume_opens_with_its_scale_window_and_affine(make_napari_viewer, tmp_path):
    import nibabel

    rng = np.random.default_rng(0)
    volume = rng.normal(-500, 400, (20, 16, 6)).astype(np.int16)  # x, y, z
    volume[0, 0, 0] = -1024
    affine = np.array([[-0.7, 0, 0, 90.0], [0, -0.8, 0, 110.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])
    path = tmp_path / "chest.nii.gz"
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(path))
    ((data, kwargs, kind),) = _reader.read_nifti(str(path))
    assert kind == "image" and data.shape == (6, 16, 20)
    np.testing.assert_allclose(kwargs["scale"], [2.5, 0.8, 0.7])
    src = kwargs["metadata"]["source"]
    assert src["format"] == "nifti" and src["path"] == str(path)
    assert src["shape"] == [20, 16, 6] and src["axes"] == [2, 1, 0]
    np.testing.assert_allclose(src["affine"], affine)
    # the layer's voxel (z, y, x) is the file's (x, y, z): the same point in the patient
    np.testing.assert_allclose(np.asarray(src["layer_affine"]) @ [5, 3, 2, 1],
                               affine @ [2, 3, 5, 1])
    assert kwargs["contrast_limits"] == [-1350.0, 150.0]
    assert kwargs["metadata"]["window"]["name"] == "lung"
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-probunet")
    assert type(layer).__name__ == "Image" and layer.name == "chest"
    np.testing.assert_allclose(layer.scale, [2.5, 0.8, 0.7], rtol=1e-6)
    np.testing.assert_allclose(layer.metadata["source"]["affine"], affine)
    np.testing.assert_array_equal(layer.data, volume.transpose(2, 1, 0))
    # an MR-like volume (no air at -1000): no CT window, napari's own contrast
    mr = tmp_path / "t1.nii"
    nibabel.save(nibabel.Nifti1Image(rng.uniform(0, 900, (8, 8, 3)).astype(np.float32),
                                     np.eye(4)), str(mr))
    ((_, kwargs, _),) = _reader.read_nifti(str(mr))
    assert "contrast_limits" not in kwargs and "window" not in kwargs["metadata"]
    assert kwargs["metadata"]["source"]["format"] == "nifti"
