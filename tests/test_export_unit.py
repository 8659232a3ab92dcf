"""A mask and its record are one unit (issue #30, item 2): a writer killed at each step of its
commit leaves the old pair or the new pair, never a mix, and no backup is lost; two writers of
one name never interleave. Real exports in child processes, stopped at named steps by
``PROBUNET_EXPORT_FAULT`` (review/export_unit.py); no mocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.review import export
from napari_probunet.review.export_unit import FAULT_VARIABLE, JOURNAL_SUFFIX, STEPS

pytestmark = pytest.mark.skipif(os.name != "posix", reason="flock and fork: POSIX")

CHILD = """
import sys
import numpy as np
from napari_probunet.review import export
target, value, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
mask = np.full((8, 8), value, np.uint8)
pixels = np.full((4, 4), value, np.int16)  # the corrected region's image: a third file
export.export_correction(mask, target, {"writer": value, export.PIXELS_KEY: pixels},
                         overwrite=overwrite)
print("done")
"""


def _export_in_child(target: Path, value: int, overwrite: bool, fault: str | None = None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_VARIABLE, None)
    if fault:
        env[FAULT_VARIABLE] = fault
    return subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(value),
                             "1" if overwrite else "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _pair(target: Path) -> tuple[int | None, int | None]:
    """(the mask's value, the record's writer) of the unit on disk; None where missing. The
    region's pixels, where there are any, must be the same writer's."""
    mask = int(np.load(target)[0, 0]) if target.exists() else None
    record = export.read_record(target)
    pixels = export.pixels_path(target)
    if pixels.exists():
        assert int(np.load(pixels)[0, 0]) == mask
    return mask, (None if record is None else record["writer"])


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("overwrite", [True, False], ids=["overwrite", "new"])
@pytest.mark.parametrize("step", STEPS)
def test_a_writer_killed_at_any_step_leaves_the_old_or_the_new_pair(tmp_path, step, overwrite):
    target = tmp_path / "case.npy"
    if overwrite:
        export.export_correction(np.full((8, 8), 1, np.uint8), target,
                                 {"writer": 1, export.PIXELS_KEY: np.ones((4, 4), np.int16)})
    old = (1, 1) if overwrite else (None, None)
    child = _export_in_child(target, 2, overwrite, fault=f"crash:{step}")
    _, err = child.communicate(timeout=120)
    assert child.returncode == 70, err.decode()[-2000:]
    journal = tmp_path / f".case.npy{JOURNAL_SUFFIX}"
    if journal.exists():  # what the journal names (the old pair's backups) is all still there
        named = json.loads(journal.read_text())
        for member in named["members"]:
            if member["backup"]:
                assert (tmp_path / member["backup"]).exists()
    # the next export into the folder puts the unit back together and cleans up
    export.export_correction(np.zeros((8, 8), np.uint8), tmp_path / "other.npy", {"writer": 0})
    assert _pair(target) in (old, (2, 2))
    if step != "done":  # before the journal was removed
        assert _pair(target) == old
    assert _hidden(tmp_path) == []


def test_the_next_export_of_the_same_name_restores_the_old_pair_first(tmp_path):
    target = tmp_path / "case.npy"
    export.export_correction(np.full((8, 8), 1, np.uint8), target, {"writer": 1})
    child = _export_in_child(target, 2, True, fault="crash:mask")  # between the two commits
    child.communicate(timeout=120)
    assert _pair(target) == (2, 1)  # the mix the journal undoes
    with pytest.raises(export.ExportExistsError):  # refused, but only after the roll-back
        export.export_correction(np.full((8, 8), 3, np.uint8), target, {"writer": 3})
    assert _pair(target) == (1, 1)
    export.export_correction(np.full((8, 8), 3, np.uint8), target, {"writer": 3},
                             overwrite=True)
    assert _pair(target) == (3, 3) and _hidden(tmp_path) == []


def test_two_writers_of_one_name_do_not_interleave(tmp_path):
    target = tmp_path / "case.npy"
    export.export_correction(np.full((8, 8), 1, np.uint8), target, {"writer": 1})
    slow = _export_in_child(target, 2, True, fault="pause:mask:3")  # waits between commits
    journal = tmp_path / f".case.npy{JOURNAL_SUFFIX}"
    deadline = time.monotonic() + 120
    while not journal.exists():  # the slow writer is committing
        assert slow.poll() is None, slow.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fast = _export_in_child(target, 3, True)
    outputs = [p.communicate(timeout=120) for p in (slow, fast)]
    assert [p.returncode for p in (slow, fast)] == [0, 0], [e.decode()[-800:] for _, e in outputs]
    assert _pair(target) == (3, 3)  # the second writer waited for the first's whole pair
    assert _hidden(tmp_path) == []


def test_a_waiting_writer_without_overwrite_is_refused_after_the_first_commits(tmp_path):
    target = tmp_path / "case.npy"
    slow = _export_in_child(target, 2, False, fault="pause:mask:3")
    journal = tmp_path / f".case.npy{JOURNAL_SUFFIX}"
    deadline = time.monotonic() + 120
    while not journal.exists():
        assert slow.poll() is None, slow.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    fast = _export_in_child(target, 3, False)
    _, err = fast.communicate(timeout=120)
    slow.communicate(timeout=120)
    assert slow.returncode == 0 and fast.returncode != 0
    assert b"already exist" in err
    assert _pair(target) == (2, 2)


SEG_CHILD = """
import sys
import numpy as np
from napari_probunet.data.volumes import read_dicom_series
from napari_probunet.review import export
target, k = sys.argv[1], int(sys.argv[2])
volume = read_dicom_series(sys.argv[3])
crop = np.zeros((16, 16), np.uint8)
crop[4:12, 4:12] = 1
record = export.correction_record(crop, choice_source="hypothesis", index=k, seed=k,
                                  n_samples=16, roi=(300, 300, 16, 16), plane_shape=(512, 512),
                                  slice_index=(k,), volume=volume.source())
record[export.PIXELS_KEY] = np.full((16, 16), k, np.int16)
plane = export.paste_into_plane(crop, (300, 300, 16, 16), (512, 512))
export.export_correction(plane, target, record, overwrite=True)
"""
CT = Path("/work/shared/data/lidc-idri-scans/LIDC-IDRI-0001/ct")


@pytest.mark.skipif(not CT.is_dir(), reason="the LIDC-IDRI-0001 scan is not here")
@pytest.mark.parametrize("step", ["mask", "companion", "done"])
def test_a_seg_export_is_the_same_unit(tmp_path, step):
    """A ``.seg.dcm`` export killed between its commits: the next export into the folder puts
    the old SEG, pixels and record back together (or, after ``done``, keeps the new ones)."""
    pytest.importorskip("highdicom")
    target = tmp_path / "case.seg.dcm"

    def run(k: int, fault: str | None = None) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop(FAULT_VARIABLE, None)
        if fault:
            env[FAULT_VARIABLE] = fault
        return subprocess.run([sys.executable, "-c", SEG_CHILD, str(target), str(k), str(CT)],
                              env=env, capture_output=True, timeout=300).returncode

    assert run(40) == 0
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(old) == ["case.seg.dcm", "case.seg.dcm.image.npy", "case.seg.dcm.json"]
    assert run(41, f"crash:{step}") == 70
    export.export_correction(np.zeros((8, 8), np.uint8), tmp_path / "other.npy", {"writer": 0})
    now = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("case.")}
    record = json.loads(now["case.seg.dcm.json"])
    pixels = np.load(tmp_path / "case.seg.dcm.image.npy")
    expected = 41 if step == "done" else 40
    assert record["choice"]["index"] == expected and int(pixels[0, 0]) == expected
    if step != "done":
        assert now == old  # the old unit, byte for byte
    assert record["seg"]["sop_instance_uid"] in now["case.seg.dcm"].decode("latin-1")
    assert _hidden(tmp_path) == []
