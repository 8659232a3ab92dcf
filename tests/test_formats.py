"""The format table (napari_probunet/data/formats.py): napari's manifest lists what it says,
every place that knows a suffix asks it, and each format reads back what it writes."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_probunet import _reader
from napari_probunet.data import formats, images, volumes
from napari_probunet.data.images import load_array, load_mask
from napari_probunet.errors import DataError
from napari_probunet.review import batch_plan, export, seg_export, volume_export
from napari_probunet.review import bundle as bundles

PACKAGE = Path(formats.__file__).resolve().parents[1]


def manifest() -> dict:
    return yaml.safe_load((PACKAGE / "napari.yaml").read_text())["contributions"]


def test_the_manifests_reader_patterns_are_the_tables():
    readers = manifest()["readers"]
    assert readers, "napari.yaml lists no readers"
    for reader in readers:
        assert tuple(reader["filename_patterns"]) == formats.napari_patterns(reader["command"]), \
            reader["command"]
    # every format napari should open is listed by the reader the table names
    listed = {r["command"] for r in readers}
    for fmt in formats.FORMATS:
        assert set(fmt.napari_readers) <= listed, fmt.name


def test_the_manifests_writer_extensions_are_the_exported_formats():
    (writer,) = manifest()["writers"]
    assert tuple(writer["filename_extensions"]) == formats.EXPORT_SUFFIXES
    assert export.SUFFIXES == formats.EXPORT_SUFFIXES
    for suffix in formats.EXPORT_SUFFIXES:
        fmt = formats.by_suffix(suffix)
        assert fmt.exported and (fmt.write is not None or fmt is formats.DICOM_SEG)


def test_every_place_that_knows_a_suffix_asks_the_table():
    assert images.SUPPORTED_SUFFIXES == formats.IMAGE_SUFFIXES
    assert batch_plan.IMAGE_SUFFIXES == formats.IMAGE_SUFFIXES
    assert batch_plan.NIFTI_SUFFIXES == formats.NIFTI.suffixes
    assert batch_plan.PICKLE_SUFFIXES == formats.PICKLE.suffixes
    assert volume_export.NIFTI_SUFFIXES == formats.NIFTI.suffixes
    assert _reader.NIFTI_SUFFIXES == formats.NIFTI.suffixes
    assert _reader.NIFTI_PATTERNS == ("*.nii", "*.nii.gz")
    assert volumes.DICOM_SUFFIXES == formats.DICOM.suffixes
    assert seg_export.SEG_SUFFIX == ".seg.dcm"
    assert bundles.SUFFIX == formats.BUNDLE.suffixes[0]


def _suffix_literals(path: Path) -> list[str]:
    """String constants of ``path``'s code (docstrings left out) that are a registered
    suffix."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    known = {s for f in formats.FORMATS for s in f.suffixes} - {".txt", ".zip"}
    # the parts of an f-string name a file this code writes (f"mask_{r}.png"): not a rule
    docstrings |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                   for part in node.values}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and node.value.lower() in known]


@pytest.mark.parametrize("module", ["data/images.py", "data/readers.py", "data/volumes.py",
                                    "review/batch_plan.py", "review/export.py",
                                    "review/seg_export.py", "review/volume_export.py",
                                    "_reader.py", "data/case_stack.py"])
def test_no_reader_or_writer_spells_a_suffix_of_its_own(module):
    assert _suffix_literals(PACKAGE / module) == []


@pytest.mark.parametrize("name, suffix, stem", [
    ("scan.NII.GZ", ".nii.gz", "scan"), ("a.b.nii", ".nii", "a.b"),
    ("nodule.seg.dcm", ".seg.dcm", "nodule"), ("IM0001.dcm", ".dcm", "IM0001"),
    ("case 3.probunet.zip", ".probunet.zip", "case 3"), ("set.zip", ".zip", "set"),
    ("x.tar.gz", ".gz", "x.tar"), ("README", "", "README"),
])
def test_compound_suffixes_count_as_one(name, suffix, stem):
    assert formats.suffix_of(name) == suffix
    assert formats.stem_of(Path("folder") / name) == stem


@pytest.mark.parametrize("fmt", [f for f in formats.FORMATS if f.write is not None],
                         ids=lambda f: f.name)
def test_each_writable_format_reads_back_what_it_writes(tmp_path, fmt):
    mask = np.zeros((12, 9), np.uint8)
    mask[3:7, 2:5] = 1
    for suffix in fmt.suffixes:
        path = tmp_path / f"mask{suffix}"
        fmt.write(mask, path)
        back = load_array(path, labels=True)
        if fmt is formats.NIFTI:
            assert back.shape == mask.shape
        assert np.array_equal(load_mask(path), mask), suffix


def test_a_file_of_no_image_format_is_refused_by_name(tmp_path):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"DICM")
    with pytest.raises(DataError, match="unsupported file type '.dcm'; use one of .*nii.gz"):
        load_array(path)
