"""Opening prepared bundles in napari: the review layers come back with no model run, and files
that are not (or no longer, or not yet) readable bundles say so clearly, never unpickling."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_probunet._reader import get_reader, read_bundles
from napari_probunet.cli import main
from napari_probunet.model.modelfile import file_sha256, save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review import bundle as bundles
from napari_probunet.review.provenance import Provenance
from napari_probunet.session import image_signature

N = 4


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """Bundles prepared by `probunet sample` for three synthetic multi-rater cases."""
    root = tmp_path_factory.mktemp("prepared")
    model = root / "tiny.safetensors"
    save_model(tiny_model(1), model)
    out = root / "out"
    rc = main(["sample", "synthetic:lesions?n=3&seed=0&size=32", "--model", str(model),
               "--out", str(out), "--n", str(N), "--seed", "4"])
    assert rc == 0
    return out, model


def _bundle(prepared, i: int = 0) -> Path:
    return prepared[0] / f"lesions-s0-{i:05d}.probunet.zip"


def _rewrite(src: Path, dst: Path, manifest_update=None, members=None) -> Path:
    """Copy a bundle with a changed manifest and/or replaced members."""
    with zipfile.ZipFile(src) as zf:
        content = {name: zf.read(name) for name in zf.namelist()}
    manifest = json.loads(content["manifest.json"])
    manifest.update(manifest_update or {})
    content["manifest.json"] = json.dumps(manifest).encode()
    content.update(members or {})
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in content.items():
            zf.writestr(name, data)
    return dst


def test_get_reader_claims_bundles_only(prepared, tmp_path):
    path = _bundle(prepared)
    assert get_reader(str(path)) is read_bundles
    assert get_reader(path) is read_bundles
    assert get_reader([str(path), str(_bundle(prepared, 1))]) is read_bundles
    assert get_reader(str(tmp_path / "scan.png")) is None
    assert get_reader(str(tmp_path / "scan.zip")) is None
    assert get_reader([str(path), str(tmp_path / "scan.png")]) is None
    (tmp_path / "folder.probunet.zip").mkdir()
    assert get_reader(str(tmp_path / "folder.probunet.zip")) is None


def test_a_bundle_opens_as_the_review_widgets_layers(prepared):
    path = _bundle(prepared, 2)
    b = bundles.read_bundle(path)
    layers = get_reader(str(path))(str(path))
    name = "lesions-s0-00002"
    assert [(kw["name"], kind) for _, kw, kind in layers] == (
        [(name, "image"), (f"{name} uncertainty", "image")]
        + [(f"{name} hypothesis {i:02d}", "labels") for i in range(1, N + 1)]
        + [(f"{name} grader {r}", "labels") for r in range(1, 5)]
    )
    image, uncertainty, hyps, graders = layers[0], layers[1], layers[2:2 + N], layers[2 + N:]

    np.testing.assert_array_equal(image[0], b.image)
    assert image[1]["rgb"] is False
    assert uncertainty[1]["colormap"] == "magma"
    np.testing.assert_array_equal(uncertainty[0], b.hypotheses.uncertainty)
    assert [kw["visible"] for _, kw, _ in hyps] == [True] + [False] * (N - 1)
    assert all(kw["visible"] is False for _, kw, _ in graders)

    sha = file_sha256(prepared[1])
    for i, (data, kw, _) in enumerate(hyps):
        np.testing.assert_array_equal(data, b.hypotheses.labels[i])
        meta = kw["metadata"]
        assert meta["kind"] == "hypothesis"
        assert meta["index"] == i
        np.testing.assert_allclose(meta["z"], b.hypotheses.z[i], rtol=1e-6)
        assert meta["seed"] == b.seed and meta["n_samples"] == N
        assert meta["model_sha256"] == sha and meta["model_name"] == "tiny.safetensors"
        assert meta["image_signature"] == image_signature(b.image)
        assert meta["case_id"] == name and meta["bundle_path"] == str(path.absolute())
        np.testing.assert_allclose(meta["prior_mu"], b.prior_mu, rtol=1e-6)
        json.dumps(meta)  # the exporter can write it into its JSON record as it is
        record = Provenance.from_metadata(meta)  # the typed record reads it back unchanged
        assert record.to_metadata() == meta and record.hypothesis_number == i + 1
        assert record.region == (0, 0, 32, 32) and record.signature == meta["plane_signature"]
    assert image[1]["metadata"]["kind"] == "image"
    assert [kw["metadata"]["grader"] for _, kw, _ in graders] == [0, 1, 2, 3]


def test_file_save_on_a_bundle_hypothesis_writes_its_provenance(prepared, tmp_path):
    from napari_probunet.review.export import layer_mask_and_record

    path = _bundle(prepared)
    b = bundles.read_bundle(path)
    data, kw, _ = read_bundles(str(path))[2 + 2]  # hypothesis 03
    mask, record = layer_mask_and_record(data, kw["metadata"], name=kw["name"])
    np.testing.assert_array_equal(mask, b.hypotheses.labels[2])
    assert record["model"] == {"file": "tiny.safetensors", "sha256": file_sha256(prepared[1])}
    assert record["image"]["signature"] == b.manifest["image_signature"]
    assert record["choice"]["index"] == 2 and record["choice"]["hypothesis"] == 3
    assert record["choice"]["seed"] == b.seed and record["choice"]["n_samples"] == N
    np.testing.assert_allclose(record["choice"]["z"], b.hypotheses.z[2], rtol=1e-6)
    assert record["roi"] == {"row": 0, "col": 0, "height": 32, "width": 32}


def test_viewer_open_with_the_plugin(prepared, make_napari_viewer):
    viewer = make_napari_viewer()
    path = _bundle(prepared, 1)
    viewer.open(str(path), plugin="napari-probunet")
    name = "lesions-s0-00001"
    assert viewer.layers[0].name == name
    assert viewer.layers[f"{name} hypothesis 01"].visible
    assert not viewer.layers[f"{name} hypothesis 02"].visible
    assert type(viewer.layers[f"{name} hypothesis 03"]).__name__ == "Labels"
    assert viewer.layers[f"{name} uncertainty"].colormap.name == "magma"

    found = bundles.collect_layers(viewer.layers, viewer.layers[name].metadata["image_signature"])
    assert found.image is viewer.layers[name]
    assert [la.metadata["index"] for la in found.hypotheses] == list(range(N))
    assert len(found.graders) == 4 and found.uncertainty is not None
    assert found.metadata["seed"] == bundles.read_bundle(path).seed


def test_files_that_are_not_readable_bundles_say_why(prepared, tmp_path):
    good = _bundle(prepared)

    def fails(path: Path, match: str):
        with pytest.raises(bundles.BundleError, match=match):
            read_bundles(str(path))

    (tmp_path / "text.probunet.zip").write_text("hello")
    fails(tmp_path / "text.probunet.zip", "not a complete ZIP archive")
    cut = tmp_path / "cut.probunet.zip"
    cut.write_bytes(good.read_bytes()[:-200])
    fails(cut, "not a complete ZIP archive .*; it may be truncated: rerun 'probunet sample'")
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("hypotheses.npy")
    data[info.header_offset + 30 + len(info.filename) + 12] ^= 0xFF  # inside the member
    flipped = tmp_path / "flip.probunet.zip"
    flipped.write_bytes(bytes(data))
    fails(flipped, "hypotheses.npy cannot be read .*the bundle is damaged")
    fails(tmp_path / "gone.probunet.zip", "no such file")

    with zipfile.ZipFile(tmp_path / "other.probunet.zip", "w") as zf:
        zf.writestr("image.npy", b"")
    fails(tmp_path / "other.probunet.zip", "not a napari-probunet hypothesis bundle")
    fails(_rewrite(good, tmp_path / "fmt.probunet.zip", {"format": "something-else"}),
          "not a napari-probunet hypothesis bundle")
    fails(_rewrite(good, tmp_path / "new.probunet.zip", {"format_version": 99}),
          "uses bundle format 99, newer than this napari-probunet reads .1.; upgrade")
    fails(_rewrite(good, tmp_path / "n.probunet.zip", {"n": 7}), "n=7 but it holds 4")

    # a member larger than the manifest declares is refused before it is decompressed
    big = io.BytesIO()
    np.save(big, np.zeros((N, 32, 64), np.uint8))
    fails(_rewrite(good, tmp_path / "big.probunet.zip", members={"hypotheses.npy": big.getvalue()}),
          "hypotheses.npy holds .* bytes but the manifest declares")


class _Tripwire:
    """Unpickling this would create a file: the proof that a reader unpickled."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (Path(self.flag),))


def test_object_arrays_are_refused_and_never_unpickled(prepared, tmp_path):
    flag = tmp_path / "unpickled"
    evil = io.BytesIO()
    np.save(evil, np.array([_Tripwire(str(flag))] * 4, dtype=object), allow_pickle=True)
    path = _rewrite(_bundle(prepared), tmp_path / "evil.probunet.zip",
                    members={"z.npy": evil.getvalue()})
    with pytest.raises(bundles.BundleError, match="z.npy"):
        read_bundles(str(path))
    decl = _rewrite(_bundle(prepared), tmp_path / "decl.probunet.zip",
                    {"arrays": {**bundles.read_manifest(_bundle(prepared))["arrays"],
                                "z": {"file": "z.npy", "shape": [4], "dtype": "|O"}}},
                    members={"z.npy": evil.getvalue()})
    with pytest.raises(bundles.BundleError, match="expected plain numbers"):
        read_bundles(str(decl))
    assert not flag.exists()


def test_write_bundle_refuses_inconsistent_arrays(tmp_path):
    h, w = 8, 6
    good = dict(image=np.zeros((h, w), np.float32), hypotheses=np.zeros((3, h, w), np.uint8),
                z=np.zeros((3, 2), np.float32), prior_mu=np.zeros(2, np.float32),
                prior_sigma=np.ones(2, np.float32), uncertainty=np.zeros((h, w), np.float32))
    manifest = {"case_id": "c", "name": "c", "n": 3, "seed": 1, "model": {"sha256": "x"},
                "class_names": ["background", "lesion"]}
    path = bundles.write_bundle(tmp_path / "c.probunet.zip",
                                bundles.Bundle.from_arrays(dict(manifest), good))
    assert bundles.read_bundle(path).manifest["arrays"]["z"] == {
        "file": "z.npy", "shape": [3, 2], "dtype": "<f4"}
    for key, bad in (("image", np.zeros((h + 1, w), np.float32)),
                     ("hypotheses", np.zeros((3, h, w), np.int64)),
                     ("z", np.zeros((2, 2), np.float32)),
                     ("prior_sigma", np.ones(3, np.float32)),
                     ("uncertainty", np.zeros((w, h), np.float32))):
        with pytest.raises(bundles.BundleError, match=key):
            bundles.write_bundle(tmp_path / "bad.probunet.zip",
                                 bundles.Bundle.from_arrays(dict(manifest), {**good, key: bad}))
    assert not (tmp_path / "bad.probunet.zip").exists()


# ----------------------------------------------------------------------------- NIfTI


def test_napari_opens_the_nifti_it_exported_and_ct_volumes(make_napari_viewer, tmp_path):
    """The review's NIfTI export opens again in napari (as Labels, as saved); a foreign NIfTI
    volume opens as an Image in napari's axis order with its voxel spacing."""
    import nibabel

    from napari_probunet import _reader
    from napari_probunet.review import export

    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 5:30] = 1
    record = export.correction_record(
        mask, source_labels=mask, choice_source="hypothesis", index=0, z=np.zeros(2),
        seed=1, n_samples=4, roi=(0, 0, 40, 50), plane_shape=(40, 50),
        image_signature="sha256:" + "a" * 64, plane_signature="sha256:" + "a" * 64,
        image_layer="ct", scale=[0.7, 0.8], translate=[0.0, 0.0], model_sha256="c" * 64,
        model_name="lidc.safetensors", class_names=["background", "lesion"])
    path, _ = export.export_correction(mask, tmp_path / "corr.nii.gz", record, scale=[0.7, 0.8])
    assert _reader.get_nifti_reader(str(path)) is not None
    assert _reader.get_nifti_reader(str(tmp_path / "x.tif")) is None
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-probunet")
    assert type(layer).__name__ == "Labels" and layer.name == "corr"
    np.testing.assert_array_equal(layer.data, mask)
    np.testing.assert_allclose(layer.scale, [0.7, 0.8], rtol=1e-6)
    assert layer.metadata["record"]["mask"]["shape"] == [40, 50]

    volume = np.random.default_rng(0).normal(-600, 300, (30, 20, 6)).astype(np.int16)  # x, y, z
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nibabel.save(nibabel.Nifti1Image(volume, affine), str(tmp_path / "scan.nii"))
    (ct,) = viewer.open(str(tmp_path / "scan.nii"), plugin="napari-probunet")
    assert type(ct).__name__ == "Image" and ct.data.shape == (6, 20, 30)
    np.testing.assert_array_equal(ct.data, volume.transpose(2, 1, 0))
    np.testing.assert_allclose(ct.scale, [2.5, 0.7, 0.7], rtol=1e-6)


def test_a_broken_or_oversized_nifti_is_refused_clearly(tmp_path, monkeypatch):
    from napari_probunet import _reader
    from napari_probunet.errors import DataError

    broken = tmp_path / "cut.nii"
    broken.write_bytes(b"\x5c\x01\x00\x00" + b"\0" * 100)
    with pytest.raises(DataError, match="cannot read this NIfTI file"):
        _reader.read_nifti(str(broken))
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)),
                 str(tmp_path / "big.nii.gz"))
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "64K")
    with pytest.raises(DataError, match="MAX_DECODED_BYTES"):
        _reader.read_nifti(str(tmp_path / "big.nii.gz"))


# ----------------------------------------------------------------------------- multi-rater cases


def test_a_multi_rater_case_opens_with_each_radiologist_in_their_colour(make_napari_viewer,
                                                                        tmp_path):
    from test_lidc_slices import write_layout

    from napari_probunet._reader import get_case_reader
    from napari_probunet.data.readers import write_multirater_folder
    from napari_probunet.data.synthetic import SyntheticDataset

    cases = list(SyntheticDataset("lesions", 1, seed=4, size=32))
    folder = write_multirater_folder(cases, tmp_path / "data") / "0"
    if not folder.is_dir():
        folder = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    assert get_case_reader(str(folder)) is not None
    assert get_case_reader(str(tmp_path)) is None  # a folder of cases is not one case
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="napari-probunet")
    assert [type(la).__name__ for la in layers] == ["Image"] + ["Labels"] * 4
    colours = {tuple(la.colormap.color_dict[1]) for la in layers[1:]}
    assert len(colours) == 4
    for r, la in enumerate(layers[1:]):
        np.testing.assert_array_equal(la.data, cases[0].masks[r])
        assert la.metadata == {"kind": "grader", "grader": r + 1, "source_path": str(folder)}
    # an LIDC-IDRI nodule folder opens as the stack of its slices
    root = write_layout(tmp_path / "lidc", patients=("0007",), nodules=1, slices=3)
    nodule = root / "LIDC-IDRI-0007" / "nodule-0"
    layers = viewer.open(str(nodule), plugin="napari-probunet")
    assert layers[0].data.shape == (3, 16, 16)
    assert layers[4].name.startswith("radiologist 4") and layers[4].data.shape == (3, 16, 16)
    assert layers[4].data[0].sum() == 0 and layers[4].data[1].sum() > 0  # rater 4, slice 0: nothing
