"""`probunet sample`: a study prepared overnight, one bundle per image or slice, reviewed later.

Each test drives the command line the way a team would: sample a folder (images of every type
and a NIfTI volume), rerun it after an interruption, feed it broken files and a broken model,
and split it over two processes with torchrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_probunet.cli import main
from napari_probunet.cli import sample as sample_cli
from napari_probunet.data import SyntheticDataset, write_multirater_folder
from napari_probunet.model.modelfile import file_sha256, load_model, save_model
from napari_probunet.model.testing import tiny_model, two_mode_case
from napari_probunet.review import batch, batch_plan
from napari_probunet.review import bundle as bundles
from napari_probunet.review.seeds import seed_for_case_id
from napari_probunet.session import Session, pixel_disagreement

N = 5


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(tiny_model(0), path)
    return path


def _lesion(size: tuple[int, int], shift: float = 0.0) -> np.ndarray:
    image, _ = two_mode_case(max(size))
    return np.clip(image[: size[0], : size[1]] + shift, 0, 1).astype(np.float32)


def _volume() -> np.ndarray:
    """(x, y, z) = (32, 28, 3): three axial slices of growing contrast."""
    return np.stack([_lesion((32, 28)) * (k + 1) / 3 for k in range(3)], axis=-1)


@pytest.fixture
def study(tmp_path) -> Path:
    """A folder of images of every supported type, and a NIfTI volume: 4 images + 3 slices."""
    root = tmp_path / "study"
    (root / "ct").mkdir(parents=True)
    Image.fromarray((_lesion((32, 32)) * 255).astype(np.uint8)).save(root / "a.png")
    np.save(root / "b.npy", _lesion((40, 32), 0.05))
    tifffile.imwrite(root / "c.tif", _lesion((32, 36), -0.05))
    rgb = np.stack([_lesion((32, 32))] * 2 + [_lesion((32, 32), 0.1)], axis=-1)
    Image.fromarray((rgb * 255).astype(np.uint8)).save(root / "rgb.png")
    nibabel.save(nibabel.Nifti1Image(_volume(), np.eye(4)), root / "ct" / "vol.nii.gz")
    (root / "notes.txt").write_text("not an image\n")  # ignored inside a folder
    return root


def sample(capsys, *args) -> tuple[int, str, str]:
    rc = main(["sample", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    return bundles.read_bundle(path).arrays()


STUDY_IDS = {"a", "b", "c", "rgb", "ct/vol_z000", "ct/vol_z001", "ct/vol_z002"}


def test_a_folder_becomes_one_valid_bundle_per_image_and_slice(study, model_file, tmp_path,
                                                               capsys):
    out = tmp_path / "out"
    rc, stdout, stderr = sample(capsys, study, "--model", model_file, "--out", out, "--n", N)
    assert rc == 0, stdout + stderr
    assert "7 done, 0 skipped, 0 failed of 7" in stdout
    assert "case/s" in stderr  # the progress bar, with its rate and ETA, went to stderr
    names = sorted(p.name for p in out.glob("*.probunet.zip"))
    assert names == sorted(f"{batch_plan.safe_name(i)}.probunet.zip" for i in STUDY_IDS)
    summary = summary_of(out)
    assert summary["counts"] == {"done": 7, "skipped": 0, "failed": 0, "total": 7}
    assert {c["case_id"] for c in summary["cases"]} == STUDY_IDS
    assert summary["model"]["sha256"] == file_sha256(model_file)

    # every bundle holds exactly what a session makes of its image with the case's seed
    session = Session(load_model(model_file), device="cpu")
    for path in out.glob("*.probunet.zip"):
        b = bundles.read_bundle(path)
        m = b.manifest
        assert m["format"] == "napari-probunet-bundle" and m["format_version"] == 1
        # a slice of a volume takes the volume's seed (one draw per hypothesis, shared by the
        # slices: review.seeds.STACK_SEED_RULE); a 2D image its own
        assert m["seed"] == seed_for_case_id(0, m["stack_id"] or m["case_id"])
        assert m["run_seed"] == 0
        assert m["n"] == N and m["class_names"] == ["background", "lesion"]
        assert m["model"]["sha256"] == file_sha256(model_file)
        assert m["model"]["name"] == "tiny.safetensors"
        assert {"napari_probunet", "torch", "numpy", "python"} <= set(m["versions"])
        assert m["created"].endswith("+00:00")
        session.set_image(b.image)
        assert m["image_signature"] == session.image_signature
        hyp = session.sample(N, seed=b.seed)
        np.testing.assert_array_equal(b.hypotheses.labels, hyp.labels)
        np.testing.assert_allclose(b.hypotheses.z, hyp.z, rtol=1e-6)
        mu, sigma = session.prior()
        np.testing.assert_allclose(b.prior_mu, mu, rtol=1e-6)
        np.testing.assert_allclose(b.prior_sigma, sigma, rtol=1e-6)
        np.testing.assert_array_equal(b.hypotheses.uncertainty,
                                      pixel_disagreement(b.hypotheses.labels, 2))
        assert b.graders is None
        assert b.hypotheses.labels.shape[1:] == b.image.shape[:2]

    # images keep their shape; the RGB one stays RGB; NIfTI slices are vol[:, :, k].T
    assert bundles.read_bundle(out / "b.probunet.zip").image.shape == (40, 32)
    assert bundles.read_bundle(out / "rgb.probunet.zip").image.shape == (32, 32, 3)
    volume = _volume()
    for k in range(3):
        b = bundles.read_bundle(out / f"ct_vol_z{k:03d}.probunet.zip")
        # as napari shows the volume (the file's axes reversed), the same pixels as the review
        np.testing.assert_array_equal(b.image, volume[:, :, k].T.astype(np.float32))
        assert (b.manifest["slice_index"], b.manifest["slice_axis"]) == (k, 2)
        assert b.manifest["source"].endswith("vol.nii.gz")
        assert b.manifest["stack_id"] == "ct/vol" and "volume's seed" in b.manifest["seed_rule"]
        assert b.seed == seed_for_case_id(0, "ct/vol")
        assert b.manifest["stack_id"] == "ct/vol" and "volume's seed" in b.manifest["seed_rule"]
        assert b.seed == seed_for_case_id(0, "ct/vol")


def test_a_seed_reproduces_the_bundles_and_another_seed_changes_them(study, model_file,
                                                                     tmp_path, capsys):
    for out, seed in (("one", 0), ("two", 0), ("three", 7)):
        assert sample(capsys, study / "a.png", "--model", model_file, "--out", tmp_path / out,
                      "--n", N, "--seed", seed)[0] == 0
    one, two, three = (arrays_of(tmp_path / d / "a.probunet.zip") for d in ("one", "two", "three"))
    for key in one:
        np.testing.assert_array_equal(one[key], two[key])
    assert not np.array_equal(one["z"], three["z"])
    np.testing.assert_array_equal(one["image"], three["image"])
    # the documented rule, and ids that differ get different seeds
    digest = hashlib.sha256(b"7:a").digest()
    assert seed_for_case_id(7, "a") == int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    assert len({seed_for_case_id(0, f"case{i}") for i in range(100)}) == 100
    assert all(0 <= seed_for_case_id(s, "x") < 2**31 for s in range(20))


def test_nifti_slices_follow_the_affine_and_the_slices_option(model_file, tmp_path, capsys):
    volume = _volume().transpose(2, 0, 1)  # (3, 32, 28): the first voxel axis runs foot-head
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "sag.nii")
    out = tmp_path / "out"
    rc, stdout, _ = sample(capsys, tmp_path / "sag.nii", "--model", model_file, "--out", out,
                           "--n", 2, "--slices", "0,2")
    assert rc == 0, stdout
    assert sorted(p.name for p in out.glob("*.zip")) == ["sag_z000.probunet.zip",
                                                        "sag_z002.probunet.zip"]
    b = bundles.read_bundle(out / "sag_z002.probunet.zip")
    assert b.manifest["slice_axis"] == 0
    np.testing.assert_array_equal(b.image, volume[2].T.astype(np.float32))  # as napari shows it

    rc, stdout, _ = sample(capsys, tmp_path / "sag.nii", "--model", model_file, "--out", out,
                           "--n", 2, "--slices", "1-4")
    assert rc == 1
    assert "slice(s) 3-4 requested but the volume has 3 slices along axis 0" in stdout
    assert (out / "sag_z001.probunet.zip").exists()

    assert sample_cli.parse_slices("all") is None
    assert sample_cli.parse_slices("3, 1,5-7") == (1, 3, 5, 6, 7)
    for bad in ("x", "3-1", "-2"):
        with pytest.raises(Exception, match="slice"):
            sample_cli.parse_slices(bad)


def test_a_list_file_names_images_relative_to_itself(study, model_file, tmp_path, capsys):
    listing = tmp_path / "lists" / "today.txt"
    listing.parent.mkdir()
    listing.write_text(f"# today's cases\n../study/a.png\n\n{study / 'c.tif'}\n"
                       f"{study / 'ct' / 'vol.nii.gz'}\n")
    out = tmp_path / "out"
    rc, stdout, _ = sample(capsys, listing, "--model", model_file, "--out", out, "--n", 2,
                           "--slices", "1")
    assert rc == 0, stdout
    # ids are the paths relative to the deepest folder holding all listed files
    assert {c["case_id"] for c in summary_of(out)["cases"]} == {"a", "c", "ct/vol_z001"}


def test_multi_rater_folders_and_synthetic_specs_keep_the_graders(model_file, tmp_path, capsys):
    cases = SyntheticDataset("lesions", n=2, seed=3, size=32)
    write_multirater_folder(cases, tmp_path / "raters")
    out = tmp_path / "out"
    rc, stdout, _ = sample(capsys, tmp_path / "raters", "synthetic:lesions?n=3&seed=1&size=32",
                           "--model", model_file, "--out", out, "--n", 3)
    assert rc == 0, stdout
    ids = {c["case_id"] for c in summary_of(out)["cases"]}
    assert ids == {"lesions-s3-00000", "lesions-s3-00001",
                   "lesions-s1-00000", "lesions-s1-00001", "lesions-s1-00002"}
    b = bundles.read_bundle(out / "lesions-s1-00002.probunet.zip")
    truth = SyntheticDataset("lesions", n=3, seed=1, size=32)[2]
    np.testing.assert_array_equal(b.graders, truth.masks)
    np.testing.assert_array_equal(b.image, truth.image)
    assert b.manifest["graders"] == 4


def test_a_rerun_skips_finished_cases_and_redoes_damaged_ones(study, model_file, tmp_path,
                                                              capsys):
    out = tmp_path / "out"
    args = (study, "--model", model_file, "--out", out, "--n", N)
    assert sample(capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.probunet.zip")}
    good = arrays_of(out / "b.probunet.zip")

    # an interrupted copy, a deleted bundle and a temporary file left by a killed run
    data = (out / "b.probunet.zip").read_bytes()
    (out / "b.probunet.zip").write_bytes(data[: len(data) // 2])
    (out / "c.probunet.zip").unlink()
    (out / ".a.probunet.zip.tmp999").write_bytes(b"partial")
    rc, stdout, _ = sample(capsys, *args)
    assert rc == 0, stdout
    summary = summary_of(out)
    assert summary["counts"] == {"done": 2, "skipped": 5, "failed": 0, "total": 7}
    status = {c["case_id"]: c for c in summary["cases"]}
    assert status["b"]["status"] == "done" and "damaged" in status["b"]["reason"]
    assert status["c"]["status"] == "done" and status["a"]["status"] == "skipped"
    for key, value in arrays_of(out / "b.probunet.zip").items():
        np.testing.assert_array_equal(value, good[key])
    assert (out / "a.probunet.zip").read_bytes() == before["a.probunet.zip"]

    # other settings never silently replace finished work ...
    rc, stdout, _ = sample(capsys, *args[:-1], N + 1)
    assert rc == 1
    assert "already exists from different settings: n 5 (now 6)" in stdout
    assert "--overwrite" in stdout
    assert (out / "a.probunet.zip").read_bytes() == before["a.probunet.zip"]
    # ... unless asked to
    rc, stdout, _ = sample(capsys, *args[:-1], N + 1, "--overwrite")
    assert rc == 0 and "7 done" in stdout
    assert bundles.read_bundle(out / "a.probunet.zip").n == N + 1
    assert not list(out.glob(".*tmp*"))


def test_failing_cases_are_reported_and_the_others_finish(study, model_file, tmp_path, capsys):
    (study / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    np.save(study / "stack4d.npy", np.zeros((2, 3, 16, 16), np.float32))
    nan = _lesion((32, 32))
    nan[3, 4] = np.nan
    np.save(study / "nan.npy", nan)
    out = tmp_path / "out"
    rc, stdout, stderr = sample(capsys, study, tmp_path / "missing.png", "--model", model_file,
                                "--out", out, "--n", 2)
    assert rc == 1
    summary = summary_of(out)
    assert summary["counts"] == {"done": 7, "skipped": 0, "failed": 4, "total": 11}
    reasons = {f["case_id"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == {"broken", "stack4d", "nan", str(tmp_path / "missing.png")}
    assert "cannot read this .png file" in reasons["broken"]
    assert "expected a 2-D image" in reasons["stack4d"]
    assert "NaN" in reasons["nan"]
    assert "no such file or folder" in reasons[str(tmp_path / "missing.png")]
    for case_id in ("broken", "stack4d", "nan"):
        assert f"FAILED {case_id}:" in stdout  # the final list
        assert f"FAILED {case_id}:" in stderr  # and as it happened
        assert not (out / f"{case_id}.probunet.zip").exists()
    assert len(list(out.glob("*.probunet.zip"))) == 7


def test_a_file_name_that_is_not_utf8_does_not_abort_the_batch(model_file, tmp_path, capsys):
    """A name with the byte 0xff (a Latin-1 scan copied from an old PACS export) is sampled with
    a seed from its own bytes; a broken one is reported readably; the rest finish."""
    study = tmp_path / "study"
    study.mkdir()
    np.save(study / "ok.npy", _lesion((32, 32)))
    try:
        with open(os.fsencode(study) + b"/scan\xff.npy", "wb") as f:
            np.save(f, _lesion((32, 32), 0.05))
        with open(os.fsencode(study) + b"/broken\xff.png", "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n truncated")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / "out"
    rc, stdout, stderr = sample(capsys, study, "--model", model_file, "--out", out, "--n", 2)
    assert rc == 1  # the broken image, nothing else
    assert "Traceback" not in stderr and "UnicodeEncodeError" not in stdout + stderr
    summary = summary_of(out)
    assert summary["counts"] == {"done": 2, "skipped": 0, "failed": 1, "total": 3}
    assert (out / "ok.probunet.zip").exists()
    scan = [c for c in summary["cases"] if c["case_id"] == os.fsdecode(b"scan\xff")]
    assert scan and scan[0]["status"] == "done"
    digest = hashlib.sha256(b"0:scan\xff").digest()
    assert scan[0]["seed"] == int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    m = bundles.read_bundle(out / scan[0]["bundle"]).manifest
    assert m["case_id"] == os.fsdecode(b"scan\xff") and m["seed"] == scan[0]["seed"]
    assert "FAILED broken\\xff:" in stdout and "FAILED broken\\xff:" in stderr
    # a rerun recognises the finished bundles
    rc, stdout, _ = sample(capsys, study, "--model", model_file, "--out", out, "--n", 2)
    assert summary_of(out)["counts"]["skipped"] == 2


def test_an_interrupted_write_leaves_the_previous_bundle_intact(study, model_file, tmp_path,
                                                                capsys, monkeypatch):
    out = tmp_path / "out"
    assert sample(capsys, study / "a.png", "--model", model_file, "--out", out, "--n", N)[0] == 0
    path = out / "a.probunet.zip"
    before = path.read_bytes()
    b = bundles.read_bundle(path)
    real, calls = bundles.npy_bytes, []

    def dies_on_the_third_array(array):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of the archive
        return real(array)

    monkeypatch.setattr(bundles, "npy_bytes", dies_on_the_third_array)
    with pytest.raises(KeyboardInterrupt):
        bundles.write_bundle(path, b)
    assert path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["a.probunet.zip", "summary.json"]


def test_a_model_that_cannot_open_stops_the_run_with_exit_code_2(study, model_file, tmp_path,
                                                                  capsys):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 5)
    out = tmp_path / "out"
    rc, _, err = sample(capsys, study, "--model", bad, "--out", out)
    assert rc == 2
    assert "probunet sample: error: model.safetensors is empty or truncated" in err
    assert "Traceback" not in err
    assert not out.exists()

    rc, _, err = sample(capsys, study, "--model", tmp_path / "nope.safetensors", "--out", out)
    assert rc == 2 and "model file not found" in err

    (tmp_path / "afile").write_text("")
    rc, _, err = sample(capsys, study, "--model", model_file, "--out", tmp_path / "afile")
    assert rc == 2 and "is a file; give a folder" in err

    rc, _, err = sample(capsys, study, "--model", bad, "--out", out, "--n", 0)
    assert rc == 2 and "--n must be at least 1" in err


def test_case_ids_are_unique_and_file_safe(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        np.save(tmp_path / sub / "scan.npy", np.zeros((8, 8), np.float32))
    plan = batch_plan.plan_cases([str(tmp_path / "x"), str(tmp_path / "y"),
                             str(tmp_path / "x" / "scan.npy")])
    assert [(it.case_id, it.name) for it in plan.items] == [
        ("scan", "scan"), ("scan-2", "scan-2"), ("scan-3", "scan-3")]
    assert batch_plan.safe_name("training/0 (copy)") == "training_0_copy"
    assert batch_plan.safe_name("../..") == "case"
    (tmp_path / "empty").mkdir()
    plan = batch_plan.plan_cases([str(tmp_path / "empty"), "synthetic:lesionz"])
    assert not plan.items
    assert "no images found" in plan.failures[0]["reason"]
    assert "did you mean 'lesions'" in plan.failures[1]["reason"]


def test_threads_follow_the_idle_cores(monkeypatch):
    import torch

    assert batch.choose_threads(3) == 3 and batch.choose_threads(0) is None
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (40.0, 40.0, 40.0))
    assert batch.choose_threads("auto") == 1  # a busy machine: one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    idle = batch.choose_threads("auto")
    assert idle == min(torch.get_num_threads(), len(os.sched_getaffinity(0)))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's choice stands
    assert batch.choose_threads("auto") is None
    for bad in ("-1", "many"):
        with pytest.raises(Exception, match="--threads"):
            sample_cli.threads_arg(bad)


def test_torchrun_splits_the_cases_between_two_processes(study, model_file, tmp_path, capsys):
    (study / "broken.png").write_bytes(b"not a png")
    spec = "synthetic:lesions?n=5&seed=2&size=32"
    out, single = tmp_path / "out", tmp_path / "single"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    # --standalone: the launcher binds its rendezvous store to a free port itself and keeps it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_probunet.cli", "sample",
           str(study), spec, "--model", str(model_file), "--out", str(out), "-n", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    log = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode != 0, log  # one case failed
    assert proc.stdout.count("probunet sample: 12 done, 0 skipped, 1 failed of 13") == 1, log

    summary = summary_of(out)
    assert summary["world_size"] == 2 and summary["problems"] == [], log
    ids = [c["case_id"] for c in summary["cases"]]
    assert len(ids) == len(set(ids)) == 13  # each case exactly once
    planned = batch_plan.plan_cases([str(study), spec]).items
    assert sorted(ids) == sorted(it.case_id for it in planned)
    ranks = {c["case_id"]: c["rank"] for c in summary["cases"]}
    for i, it in enumerate(planned):  # rank r took items[r::2] of the sorted plan
        assert ranks[it.case_id] == i % 2
    assert [f["case_id"] for f in summary["failures"]] == ["broken"]
    assert len(list(out.glob("*.probunet.zip"))) == 12

    # the split changes nothing in the results
    rc, _, _ = sample(capsys, study, spec, "--model", model_file, "--out", single, "-n", 3)
    assert rc == 1
    for path in single.glob("*.probunet.zip"):
        for key, value in arrays_of(path).items():
            np.testing.assert_array_equal(value, arrays_of(out / path.name)[key])
    with zipfile.ZipFile(out / "a.probunet.zip") as zf:
        assert zf.namelist()[0] == "manifest.json"
