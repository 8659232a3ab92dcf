"""The bundle file format holds still while the code around it changes.

``fixtures/bundle_format1.probunet.zip`` was written by ``probunet sample`` before
:class:`~napari_probunet.review.bundle.Bundle` held its hypotheses as the one
:class:`~napari_probunet.model.hypotheses.Hypotheses` record (main at 06dd487: one synthetic
lesion case, 16x16, two graders, three hypotheses of ``tiny_model(0)``). It must read back as it
was written, and writing what was read must give the same members, byte for byte.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.cli import main
from napari_probunet.model.hypotheses import Hypotheses
from napari_probunet.model.modelfile import save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review import bundle as bundles
from napari_probunet.session import Session

FIXTURE = Path(__file__).parent / "fixtures" / "bundle_format1.probunet.zip"


def members(path: Path) -> list[tuple[str, int, bytes]]:
    """Each member of a ZIP archive, in order: its name, compression and uncompressed bytes."""
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, i.compress_type, zf.read(i)) for i in zf.infolist()]


def raw_content(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest and arrays of a bundle, read without the bundle reader."""
    content = {name: data for name, _, data in members(path)}
    manifest = json.loads(content.pop("manifest.json"))
    arrays = {name.removesuffix(".npy"): np.load(io.BytesIO(data), allow_pickle=False)
              for name, data in content.items()}
    return manifest, arrays


def test_a_bundle_written_before_the_record_reads_back_as_written():
    manifest, arrays = raw_content(FIXTURE)
    b = bundles.read_bundle(FIXTURE)
    assert b.manifest == manifest and b.path == FIXTURE
    assert list(b.arrays()) == list(arrays) == [*bundles.REQUIRED_ARRAYS, "graders"]
    for key, array in b.arrays().items():
        assert array.dtype == arrays[key].dtype, key
        np.testing.assert_array_equal(array, arrays[key], err_msg=key)
    record = b.hypotheses
    assert isinstance(record, Hypotheses)
    np.testing.assert_array_equal(record.labels, arrays["hypotheses"])
    np.testing.assert_array_equal(record.z, arrays["z"])
    np.testing.assert_array_equal(record.uncertainty, arrays["uncertainty"])
    assert record.seed == b.seed == manifest["seed"] == 207691468
    assert record.n == b.n == manifest["n"] == 3
    assert record.image_signature == record.plane_signature == manifest["image_signature"]
    assert b.provenance().seed == manifest["seed"]
    assert b.provenance().image_signature == manifest["image_signature"]


def test_writing_what_was_read_gives_the_same_members_byte_for_byte(tmp_path):
    path = bundles.write_bundle(tmp_path / "again.probunet.zip", bundles.read_bundle(FIXTURE))
    assert members(path) == members(FIXTURE)


def test_probunet_sample_writes_the_same_layout_as_before(tmp_path):
    """The same case sampled now: the manifest's keys in the same order, the same members with
    the same shapes and types, the same image, graders, seed and image signature."""
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0), model)
    study, out = tmp_path / "study", tmp_path / "out"
    assert main(["data", "synth", "lesions", "--n", "1", "--size", "16", "--graders", "2",
                 "--out", str(study)]) == 0
    assert main(["sample", str(study), "--model", str(model), "--out", str(out), "--n", "3"]) == 0
    now = out / FIXTURE.name.replace("bundle_format1", "lesions-s0-00000")
    (old_manifest, old_arrays), (new_manifest, new_arrays) = raw_content(FIXTURE), raw_content(now)
    assert list(new_manifest) == list(old_manifest)
    assert new_manifest["arrays"] == old_manifest["arrays"]
    assert [(name, kind) for name, kind, _ in members(now)] == [
        (name, kind) for name, kind, _ in members(FIXTURE)]
    for key in ("case_id", "name", "n", "seed", "image_signature", "class_names", "graders"):
        assert new_manifest[key] == old_manifest[key], key
    for key in ("image", "graders"):
        np.testing.assert_array_equal(new_arrays[key], old_arrays[key], err_msg=key)


@pytest.fixture(scope="module")
def sampled() -> tuple[Session, np.ndarray, Hypotheses]:
    """A session, the image it holds and the record of four hypotheses of it."""
    session = Session(tiny_model(0), device="cpu")
    image = np.random.default_rng(3).random((24, 20)).astype(np.float32)
    session.set_image(image)
    hyp = session.sample(4, seed=11)
    uncertainty = np.random.default_rng(4).random((24, 20)).astype(np.float32)
    return session, image, Hypotheses(labels=hyp.labels, z=hyp.z, seed=hyp.seed,
                               uncertainty=uncertainty, image_signature=hyp.image_signature,
                               plane_signature=hyp.image_signature)


def test_write_then_read_gives_the_same_bundle(tmp_path, sampled):
    session, image, record = sampled
    mu, sigma = session.prior()
    description = {"case_id": "c/1", "name": "c_1", "source": "c/1.png", "slice_index": None,
                   "model": {"sha256": session.model_sha256, "name": "tiny"},
                   "class_names": ["background", "lesion"], "run_seed": 0}
    written = bundles.Bundle(manifest=dict(description), image=image, hypotheses=record,
                             prior_mu=mu, prior_sigma=sigma)
    path = bundles.write_bundle(tmp_path / "c_1.probunet.zip", written)
    read = bundles.read_bundle(path)
    # the manifest: the format first, the description in its order with the record's n, seed
    # and image signature, then the arrays
    assert list(read.manifest) == ["format", "format_version", *description, "n", "seed",
                                   "image_signature", "arrays"]
    assert read.manifest == written.manifest
    assert (read.n, read.seed) == (4, 11)
    assert read.manifest["image_signature"] == session.image_signature
    assert list(read.arrays()) == list(written.arrays())
    for key, array in written.arrays().items():
        np.testing.assert_array_equal(read.arrays()[key], array, err_msg=key)
    got = read.hypotheses
    assert (got.seed, got.image_signature, got.plane_signature, got.probs) == (
        record.seed, record.image_signature, record.plane_signature, None)
    assert read.graders is None and read.path == path


def test_a_manifest_that_contradicts_the_record_is_refused(tmp_path, sampled):
    session, image, record = sampled
    mu, sigma = session.prior()
    manifest = {"case_id": "c", "name": "c", "model": {}, "class_names": ["bg", "fg"]}
    for key, wrong in (("n", 5), ("seed", 12), ("image_signature", "sha256:0")):
        bundle = bundles.Bundle(manifest={**manifest, key: wrong}, image=image,
                                hypotheses=record, prior_mu=mu, prior_sigma=sigma)
        with pytest.raises(bundles.BundleError, match=f"the manifest says {key} .* but the "
                                                      "hypotheses have"):
            bundles.write_bundle(tmp_path / "c.probunet.zip", bundle)
    assert not (tmp_path / "c.probunet.zip").exists()
