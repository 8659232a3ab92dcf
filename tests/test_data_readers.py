"""Reading multi-rater data from disk: every layout and file type, the real LIDC crops, the
LIDC pickle (and a malicious one), bad input with clear errors, splits, and the synth CLI."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.cli import main
from napari_probunet.data import (
    Case,
    SyntheticDataset,
    make_case,
    open_cases,
    read_deepmind_lidc,
    read_lidc_pickle,
    read_multirater_folder,
    split_cases,
    split_indices,
    write_multirater_folder,
)
from napari_probunet.errors import DataError

LIDC_CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lidc-crops"


# ----------------------------------------------------------------------------- fixture writers


def _save(path: Path, array: np.ndarray, quality: int = 95) -> None:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if suffix == ".npy":
        np.save(path, array)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, array)
    elif suffix in (".nii", ".nii.gz"):
        import nibabel

        nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)
    else:
        from PIL import Image

        Image.fromarray(array).save(path, **({"quality": quality} if suffix == ".jpg" else {}))


def _blocky_case(seed: int, size: int = 32, graders: int = 3, classes: int = 1):
    """An 8-bit image and ``graders`` label maps made of blocks (survive JPEG exactly)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes + 1, (graders, size // 8, size // 8)).astype(np.uint8)
    masks = np.kron(coarse, np.ones((8, 8), np.uint8))
    image = (40 + 50 * masks[0] + rng.integers(0, 20, (size, size))).astype(np.uint8)
    return image, masks


# ----------------------------------------------------------------------------- generic folder


@pytest.mark.parametrize(
    "image_name, mask_names",
    [
        ("image_1.png", ["label0_.png", "label1_.png", "label2_.png"]),
        ("image.jpg", ["label0_.jpg", "label1_.jpg", "label2_.jpg"]),
        ("img_3.tif", ["mask_0.tif", "mask_1.tif", "mask_2.tif"]),
        ("scan.npy", ["scan_l0.npy", "scan_l1.npy", "scan_l2.npy"]),
        ("ct_image.nii.gz", ["seg1.nii.gz", "seg2.nii.gz", "seg10.nii.gz"]),
        ("slice.nii", ["grader1.nii", "rater2.nii", "rater3.nii"]),
    ],
)
def test_generic_folder_in_every_format(tmp_path, image_name, mask_names):
    expected = []
    for c in range(3):
        image, masks = _blocky_case(c)
        folder = tmp_path / f"case{c}"
        folder.mkdir()
        _save(folder / image_name, image)
        for name, mask in zip(mask_names, masks):
            _save(folder / name, mask * 255 if name.endswith((".png", ".jpg")) else mask)
        expected.append((image, masks))
    cases = read_multirater_folder(tmp_path)
    assert [c.case_id for c in cases] == ["case0", "case1", "case2"]
    for case, (image, masks) in zip(cases, expected):
        assert case.image.dtype == np.float32 and case.masks.dtype == np.uint8
        assert case.masks.shape == (3, 32, 32) and case.group_id is None
        assert np.array_equal(case.masks, masks)  # in natural order, JPEG thresholded
        if image_name.endswith(".jpg"):
            assert np.abs(case.image - image).max() < 12  # lossy, raw 0..255 values kept
        else:
            assert np.array_equal(case.image, image.astype(np.float32))


def test_multiclass_label_maps_and_case_json(tmp_path):
    image, masks = _blocky_case(0, classes=4)
    folder = tmp_path / "a"
    folder.mkdir()
    _save(folder / "image.npy", image.astype(np.float32) / 255)
    for r, mask in enumerate(masks):
        _save(folder / f"label{r}.png", mask)
    (folder / "case.json").write_text(json.dumps({"case_id": "A-1", "group_id": "patient7"}))
    (case,) = read_multirater_folder(tmp_path)
    assert np.array_equal(case.masks, masks) and case.masks.max() == 4
    assert case.case_id == "A-1" and case.group_id == "patient7"


def test_a_folder_that_is_itself_one_case(tmp_path):
    image, masks = _blocky_case(1)
    _save(tmp_path / "image.png", image)
    _save(tmp_path / "mask.png", masks[0] * 255)
    (case,) = open_cases(tmp_path)
    assert case.n_graders == 1 and case.case_id == tmp_path.name


def test_grey_rgb_images_become_grey_and_colour_stays(tmp_path):
    image, masks = _blocky_case(2)
    for name, arr in (("g", np.stack([image] * 3, -1)), ("c", np.stack([image, image // 2,
                                                                         image], -1))):
        (tmp_path / name).mkdir()
        _save(tmp_path / name / "image.png", arr)
        _save(tmp_path / name / "label0.png", masks[0] * 255)
    c, g = read_multirater_folder(tmp_path)
    assert g.image.shape == (32, 32) and c.image.shape == (32, 32, 3)


@pytest.mark.skipif(not LIDC_CROPS.is_dir(), reason="../shared/data/lidc-crops not present")
def test_real_lidc_crops_load_as_they_are():
    cases = open_cases(LIDC_CROPS)
    assert len(cases) == 19
    for case in cases:
        assert case.image.shape == (128, 128) and case.image.dtype == np.float32
        assert 100 < case.image.max() <= 255  # raw JPEG values, not normalised
        assert case.masks.shape == (4, 128, 128)
        assert set(np.unique(case.masks)) <= {0, 1}
        assert case.group_id is None
    empty = [(~c.masks.reshape(4, -1).any(1)).sum() for c in cases]
    assert any(0 < e < 4 for e in empty), "some graders drew nothing where others did"
    assert max(c.masks.sum(axis=(1, 2)).max() for c in cases) < 400


# ----------------------------------------------------------------------------- DeepMind LIDC


def _deepmind_tree(root: Path, parallel_gt: bool) -> dict[str, str]:
    expected = {}
    for split, patients in (("train", ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]),
                            ("val", ["LIDC-IDRI-0003"])):
        for p, patient in enumerate(patients):
            for z in ("-105.5", "12.0"):
                for crop in (0, 1):
                    image, masks = _blocky_case(p * 7 + crop)
                    base = f"z-{z}_c{crop}"
                    img_dir = root / split / ("images" if parallel_gt else "") / patient
                    gt_dir = root / split / ("gt" if parallel_gt else "") / patient
                    img_dir.mkdir(parents=True, exist_ok=True)
                    gt_dir.mkdir(parents=True, exist_ok=True)
                    _save(img_dir / f"{base}.png", image)
                    for k, mask in enumerate(masks):
                        _save(gt_dir / f"{base}_l{k}.png", mask * 255)
                    expected[f"{split}/{patient}/{base}"] = patient
    return expected


@pytest.mark.parametrize("parallel_gt", [True, False])
def test_deepmind_layout(tmp_path, parallel_gt):
    expected = _deepmind_tree(tmp_path, parallel_gt)
    cases = read_deepmind_lidc(tmp_path)
    assert {c.case_id: c.group_id for c in cases} == expected
    assert all(c.masks.shape == (3, 32, 32) and c.masks.max() == 1 for c in cases)
    assert len(open_cases(tmp_path)) == len(expected)  # detected automatically
    parts = split_cases(cases, (0.5, 0.5), seed=1)
    groups = [{c.group_id for c in part} for part in parts]
    assert not groups[0] & groups[1], "a patient never lands in two splits"


def test_deepmind_image_without_masks_is_skipped_with_a_warning(tmp_path):
    _deepmind_tree(tmp_path, parallel_gt=True)
    image, _ = _blocky_case(0)
    _save(tmp_path / "train" / "images" / "LIDC-IDRI-0001" / "z-1.0_c0.png", image)
    with pytest.warns(UserWarning, match=r"skipped 1 of 13 .*z-1\.0_c0\.png: the case has no mask"):
        cases = read_deepmind_lidc(tmp_path)
    assert len(cases) == 12


# ----------------------------------------------------------------------------- LIDC pickle


def _knegt_pickle(path: Path, protocol: int = 4) -> dict:
    rng = np.random.default_rng(0)
    data = {}
    for i in range(5):
        image = rng.random((32, 32)).astype(np.float32)
        masks = [(rng.random((32, 32)) > 0.7).astype(np.uint8) for _ in range(4)]
        data[f"LIDC-IDRI-000{i // 2}_slice{i}"] = {
            "image": image, "masks": masks, "series_uid": f"1.3.6.1.{i // 2}",
            "pixel_spacing": np.float64(0.7),
        }
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return data


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_lidc_pickle_loads(tmp_path, protocol):
    data = _knegt_pickle(tmp_path / "data_lidc.pickle", protocol)
    cases = read_lidc_pickle(tmp_path / "data_lidc.pickle")
    assert [c.case_id for c in cases] == list(data)
    for case, entry in zip(cases, data.values()):
        assert np.array_equal(case.image, entry["image"])
        assert np.array_equal(case.masks, np.stack(entry["masks"]))
        assert case.group_id == entry["series_uid"]
    assert len(open_cases(tmp_path / "data_lidc.pickle")) == 5
    assert len(open_cases(tmp_path)) == 5  # a folder of pickles, as Knegt's loader reads


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Custom:
    pass


@pytest.mark.parametrize("payload, refused", [
    ("system", "system"),
    ("eval", "builtins.eval"),
    ("custom", "_Custom"),
])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, payload, refused):
    marker = tmp_path / "pwned"
    if payload == "system":
        obj = {"a": {"image": np.zeros((4, 4)), "masks": [_Exploit(f"touch {marker}")]}}
    elif payload == "eval":
        class _Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w')",))
        obj = {"a": _Eval()}
    else:
        obj = {"a": _Custom()}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(DataError, match=f"evil.pkl: refused to load the pickle.*{refused}"):
        read_lidc_pickle(path)
    assert not marker.exists()


def test_numpy_object_buffer_trick_is_refused(tmp_path):
    class _Raw:  # numpy.ndarray(shape, object, buffer) would read pointers from bytes
        def __reduce__(self):
            return (np.ndarray, ((1,), np.dtype("O"), b"\x01" * 8))
    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"a": _Raw()}))
    with pytest.raises(DataError, match="numpy.ndarray"):
        read_lidc_pickle(tmp_path / "x.pkl")


def test_broken_pickles_give_clear_errors(tmp_path):
    _knegt_pickle(tmp_path / "good.pkl")
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "good.pkl").read_bytes()[:500])
    with pytest.raises(DataError, match="cut.pkl: not a readable pickle"):
        read_lidc_pickle(tmp_path / "cut.pkl")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(DataError, match="empty.pkl: the file is empty"):
        read_lidc_pickle(tmp_path / "empty.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="expected a dict of cases"):
        read_lidc_pickle(tmp_path / "list.pkl")


# ----------------------------------------------------------------------------- bad input


def _case_folder(root: Path, name: str, image=None, masks=None, mask_suffix=".png") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    image_default, masks_default = _blocky_case(0)
    _save(folder / "image.png", image_default if image is None else image)
    for r, mask in enumerate(masks_default * 255 if masks is None else masks):
        _save(folder / f"label{r}{mask_suffix}", mask)
    return folder


@pytest.mark.parametrize("problem, words", [
    ("size", ["label0.png: the mask is 16x16 but the image", "is 32x32"]),
    ("grey_levels", ["label0.tif: the mask is not binary or class-valued", "1000"]),
    ("fractions", ["label0.npy: the mask holds fractional values", "Threshold"]),
    ("empty_file", ["label0.png: the file is empty"]),
    ("garbage", ["label0.png: cannot read this .png file"]),
    ("no_mask", ["the case has no mask"]),
    ("colour_mask", ["label0.png: the mask is a colour image"]),
])
def test_bad_input_names_file_and_problem(tmp_path, problem, words):
    root = tmp_path / "data"
    if problem == "size":
        folder = _case_folder(root, "c", masks=[np.zeros((16, 16), np.uint8)])
    elif problem == "grey_levels":
        folder = _case_folder(root, "c", masks=[np.arange(1024, dtype=np.uint16).reshape(32, 32)
                                                 % 1001], mask_suffix=".tif")
    elif problem == "fractions":
        folder = _case_folder(root, "c", masks=[np.full((32, 32), 0.25, np.float32)],
                              mask_suffix=".npy")
    elif problem == "empty_file":
        folder = _case_folder(root, "c")
        (folder / "label0.png").write_bytes(b"")
    elif problem == "garbage":
        folder = _case_folder(root, "c")
        (folder / "label0.png").write_bytes(b"not a png at all" * 10)
    elif problem == "no_mask":
        folder = _case_folder(root, "c", masks=[])
    else:
        mask = np.zeros((32, 32, 3), np.uint8)
        mask[..., 0] = 255
        folder = _case_folder(root, "c", masks=[mask])
    with pytest.raises(DataError) as info:
        read_multirater_folder(root, on_error="raise")
    message = str(info.value)
    assert str(folder) in message
    for word in words:
        assert word in message


def test_a_few_broken_cases_are_skipped_with_a_count(tmp_path):
    for i in range(5):
        _case_folder(tmp_path, f"ok{i}")
    (tmp_path / "ok1" / "label2.png").write_bytes(b"")
    _case_folder(tmp_path, "small", masks=[np.zeros((8, 8), np.uint8)])
    with pytest.warns(UserWarning, match=r"skipped 2 of 6 case folders.*file is empty"):
        cases = read_multirater_folder(tmp_path)
    assert [c.case_id for c in cases] == ["ok0", "ok2", "ok3", "ok4"]


def test_all_broken_is_an_error_not_an_empty_list(tmp_path):
    _case_folder(tmp_path, "a", masks=[])
    with pytest.raises(DataError, match="none of the 1 case folders could be read"):
        read_multirater_folder(tmp_path)
    nothing = tmp_path.parent / f"{tmp_path.name}-nothing"
    nothing.mkdir()
    (nothing / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no case folders found"):
        read_multirater_folder(nothing)


def test_open_cases_explains_unknown_sources(tmp_path):
    with pytest.raises(DataError, match="no such file or folder.*synthetic:lesions"):
        open_cases("lesions")
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(DataError, match="not a dataset"):
        open_cases(tmp_path / "x.png")
    assert isinstance(open_cases("synthetic:flips?n=3"), SyntheticDataset)


def test_case_checks_mask_shape_and_values():
    with pytest.raises(DataError, match="every mask must have the image's size"):
        Case(np.zeros((8, 8)), np.zeros((1, 4, 4)), "x")
    with pytest.raises(DataError, match="not class labels"):
        Case(np.zeros((4, 4)), np.full((1, 4, 4), 300), "x")
    assert Case(np.zeros((4, 4)), np.ones((4, 4), bool), "x").masks.shape == (1, 4, 4)


# ----------------------------------------------------------------------------- splits


def test_splits_are_deterministic_grouped_and_complete():
    cases = [Case(np.zeros((4, 4)), np.zeros((1, 4, 4)), f"c{i}",
                  group_id=None if i % 5 == 0 else f"p{i // 3}") for i in range(60)]
    parts = split_cases(cases, (0.8, 0.1, 0.1), seed=4)
    assert parts == split_cases(cases, (0.8, 0.1, 0.1), seed=4)
    ids = [[c.case_id for c in p] for p in parts]
    assert sorted(sum(ids, [])) == sorted(c.case_id for c in cases)
    groups = [{c.group_id for c in p if c.group_id} for p in parts]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert 44 <= len(parts[0]) <= 52 and all(3 <= len(p) <= 10 for p in parts[1:])
    assert split_cases(cases, (0.8, 0.1, 0.1), seed=5) != parts
    with pytest.raises(DataError, match="sum to 1"):
        split_cases(cases, (0.8, 0.3))


def test_split_indices_of_a_synthetic_set_generates_nothing():
    dataset = SyntheticDataset("lesions", 1000)
    train, val, test = split_indices(dataset, seed=0)
    assert len(train) == 800 and len(val) == 100 and len(test) == 100


# ----------------------------------------------------------------------------- writing and CLI


@pytest.mark.parametrize("kind", ["lesions", "flips"])
def test_synth_cli_round_trip(tmp_path, kind, capsys):
    out = tmp_path / "set"
    argv = ["data", "synth", kind, "--n", "6", "--seed", "3", "--size", "32", "--out", str(out)]
    assert main(argv) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["recipe"] == kind and meta["seed"] == 3 and meta["recipe_version"] >= 1
    cases = read_multirater_folder(out)
    for case, original in zip(cases, SyntheticDataset(kind, 6, seed=3, size=32)):
        assert case.case_id == original.case_id
        assert np.array_equal(case.image, original.image) and case.image.dtype == np.float32
        assert np.array_equal(case.masks, original.masks)
        assert np.array_equal(case.truth.modes, original.truth.modes)
        assert np.array_equal(case.truth.probs, original.truth.probs)
        assert case.truth.names == original.truth.names
        assert np.array_equal(case.grader_modes, original.grader_modes)
        assert case.truth.flip_classes == original.truth.flip_classes
        assert case.truth.params == original.truth.params
    # refuses to write into it again, but --overwrite replaces it (no stale cases left)
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([*argv[:4], "2", *argv[5:], "--overwrite"]) == 0
    assert len(read_multirater_folder(out)) == 2
    # info reads it back with per-mode statistics
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 2 and "modes" in summary


def test_overwrite_never_deletes_foreign_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(DataError, match="not empty"):
        write_multirater_folder([make_case("lesions", 0, 0)], out)
    with pytest.raises(DataError, match="thesis.docx"):
        write_multirater_folder([make_case("lesions", 0, 0)], out, overwrite=True)
    assert (out / "thesis.docx").read_text() == "precious"


def test_info_on_a_synthetic_spec(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["data", "info", "synthetic:lesions?n=40&size=16"]) == 0
    text = capsys.readouterr().out
    assert "40 cases" in text and "core+halo" in text and "empty grader masks" in text


def test_split_suffix_selects_disjoint_deterministic_parts():
    spec = "synthetic:lesions?n=30&seed=4&size=32"
    parts = [open_cases(f"{spec}#part={p}&fractions=0.6,0.2,0.2&seed=3") for p in ("train", "val", "test")]
    ids = [[c.case_id for c in part] for part in parts]
    assert [len(i) for i in ids] == [18, 6, 6]
    assert not (set(ids[0]) & set(ids[1])) and not (set(ids[1]) & set(ids[2]))
    again = open_cases(f"{spec}#part=val&fractions=0.6,0.2,0.2&seed=3")
    assert [c.case_id for c in again] == ids[1]
    with pytest.raises(DataError, match="part=train"):
        open_cases(f"{spec}#part=holdout")


def _build_on_global(module: str, name: str, state: bytes) -> bytes:
    """A protocol-2 pickle: push the global ``module.name``, then BUILD it with ``state``."""
    return b"\x80\x02" + f"c{module}\n{name}\n".encode() + state + b"b."


def _slot_state(key: str) -> bytes:
    """``(None, {key: int})``: BUILD's "slot state", applied with setattr."""
    return b"N}" + b"X" + len(key).to_bytes(4, "little") + key.encode() + b"cbuiltins\nint\ns\x86"


@pytest.mark.parametrize("module, name", [
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("builtins", "dict"),
])
@pytest.mark.parametrize("state", ["slot __init__", "slot __defaults__", "dict state"])
def test_build_cannot_change_the_unpicklers_own_stand_ins(tmp_path, module, name, state):
    """A pickle that BUILDs a global (``setattr(stand_in, '__init__', int)``) is refused and
    changes nothing: a legitimate pickle loaded afterwards in the same process still loads."""
    from napari_probunet.data.safe_pickle import safe_load_path

    if state == "dict state":
        raw = b"}X\x01\x00\x00\x00xK\x01s"  # {'x': 1}: BUILD writes it into __dict__
    else:
        raw = _slot_state(state.split()[1])
    (tmp_path / "evil.pkl").write_bytes(_build_on_global(module, name, raw))
    with pytest.raises(DataError, match="evil.pkl: (refused to load the pickle|not a readable)"):
        safe_load_path(tmp_path / "evil.pkl")
    legit = {"x": np.float64(0.7), "n": np.int16(3), "a": np.arange(6).reshape(2, 3)}
    for protocol in (2, 4, 5):
        (tmp_path / "good.pkl").write_bytes(pickle.dumps(legit, protocol=protocol))
        back = safe_load_path(tmp_path / "good.pkl")
        assert back["x"] == 0.7 and back["n"] == 3 and back["n"].dtype == np.int16
        np.testing.assert_array_equal(back["a"], legit["a"])


def test_build_on_an_object_the_stand_ins_made_is_refused(tmp_path):
    from napari_probunet.data.safe_pickle import safe_load_path

    scalar = pickle.dumps(np.float64(0.5), protocol=2)[:-1]  # without the final STOP
    (tmp_path / "x.pkl").write_bytes(scalar + _slot_state("__class__") + b"b.")
    with pytest.raises(DataError, match="applies state .BUILD. to a numpy scalar"):
        safe_load_path(tmp_path / "x.pkl")
    (tmp_path / "t.pkl").write_bytes(b"\x80\x02cbuiltins\nint\n.")  # a builtin type as a value
    assert safe_load_path(tmp_path / "t.pkl") is int


def test_a_truth_file_that_would_inflate_too_far_is_refused(tmp_path, monkeypatch):
    from napari_probunet.data.readers import read_case_folder

    folder = tmp_path / "case"
    folder.mkdir()
    np.save(folder / "image.npy", np.zeros((8, 8), np.float32))
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "mask_0.png")
    np.savez_compressed(folder / "truth.npz", modes=np.zeros((4096, 8, 8), np.uint8),
                        probs=np.ones(4096) / 4096, names=np.array(["m"] * 4096))
    monkeypatch.setenv("PROBUNET_MAX_DECODED_BYTES", "64K")
    with pytest.raises(DataError, match="truth file.*MAX_DECODED_BYTES"):
        read_case_folder(folder)
