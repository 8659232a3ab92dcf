"""Peak memory of every reader on hostile inputs under 10 MB: under 1 GB (issue #30).

Each input is built here, as large as the default limits let it declare (or larger, to be
refused), and read in a child process whose peak resident memory (``VmHWM``) is measured:
the LIDC-IDRI slices as a folder and as a zip, napari's case reader on a nodule folder, a DICOM
series, a gzip-compressed NIfTI of zeros, a bundle of many hypotheses and a model file. The
child either reads the input or refuses it with the project's error class; anything else, or a
peak of 1 GB or more, fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_reader_faults import bundle_with, lidc_members, write_nifti_gz  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="the peak is read from Linux's /proc/self/status")
GIB = 1 << 30
SMALL = 10 << 20


def peak(reader: str, path: Path, tmp_path: Path) -> dict:
    """Run ``reader`` (Python source of an expression of ``path``) in a child; its outcome
    (``ok`` or ``refused`` with the message) and its peak resident memory in bytes."""
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from napari_probunet.errors import UserError
        path = Path({str(path)!r})
        try:
            {reader}
            outcome = {{"outcome": "ok"}}
        except UserError as exc:
            outcome = {{"outcome": "refused", "message": str(exc)}}
        # VmHWM: this program's own peak (ru_maxrss would carry the forking parent's over)
        status = Path("/proc/self/status").read_text()
        outcome["peak"] = int(status.split("VmHWM:")[1].split()[0]) * 1024
        print(json.dumps(outcome))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROBUNET_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("PROBUNET_MAX_")}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def checked(result: dict, path: Path, expect: str) -> None:
    assert size_of(path) < SMALL, f"{path} is {size_of(path):,} bytes, not a small input"
    print(f"\n{path.name}: {result['outcome']}, peak {result['peak'] / 2**20:.0f} MiB, input {size_of(path) / 2**20:.2f} MiB")
    assert result["outcome"] == expect, result
    assert result["peak"] < GIB, f"peak {result['peak'] / GIB:.2f} GiB reading {path.name}"


# 20 slices of 4096 x 4096 with 4 radiologists decode to 503 MB: just under the limit
@pytest.mark.parametrize("slices, expect", [(20, "ok"), (60, "refused")])
def test_lidc_slices_folder_and_zip(tmp_path, slices, expect):
    members = lidc_members(slices, 4096)
    folder = tmp_path / "set"
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    read = "from napari_probunet.data.lidc_slices import read_lidc_slices; " \
           "read_lidc_slices(path, cache=False)"
    checked(peak(read, folder, tmp_path), folder, expect)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    checked(peak(read, archive, tmp_path), archive, expect)


@pytest.mark.parametrize("slices, expect", [(3, "ok"), (20, "refused")])
def test_napaaris_case_reader_on_a_nodule_folder(tmp_path, slices, expect):
    folder = tmp_path / "set"
    for name, data in lidc_members(slices, 4096).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    nodule = folder / "LIDC-IDRI-0001" / "nodule-0"
    read = "from napari_probunet.data.case_stack import read_case_stack; read_case_stack(path)"
    checked(peak(read, nodule, tmp_path), nodule, expect)


def test_a_dicom_series(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_volumes import write_series

    write_series(tmp_path / "ct", n=16, order=range(16), size=512)
    read = "from napari_probunet.data.volumes import read_dicom_series; read_dicom_series(path)"
    checked(peak(read, tmp_path / "ct", tmp_path), tmp_path / "ct", "ok")


@pytest.mark.parametrize("shape, slope, expect", [
    ((512, 512, 1000), 1.0, "ok"),  # 524 MB of int16: just under the limit
    ((512, 512, 250), 2.0, "ok"),  # scaled: 524 MB as float64
    ((512, 512, 1200), 1.0, "refused"),
])
def test_a_compressed_nifti_of_zeros(tmp_path, shape, slope, expect):
    path = write_nifti_gz(tmp_path / "bomb.nii.gz", shape, scl_slope=slope, scl_inter=0.0)
    read = "from napari_probunet.data.nifti import read_nifti_volume; read_nifti_volume(path)"
    checked(peak(read, path, tmp_path), path, expect)


def test_a_bundle_of_many_hypotheses(tmp_path):
    path = bundle_with(tmp_path / "many.probunet.zip", n=1000, side=512)
    read = "from napari_probunet.review.bundle import read_bundle; read_bundle(path)"
    checked(peak(read, path, tmp_path), path, "ok")


def test_a_model_file(tmp_path):
    from napari_probunet.model.modelfile import save_model
    from napari_probunet.model.testing import tiny_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0), path)
    read = "from napari_probunet.model.modelfile import load_model; load_model(path)"
    checked(peak(read, path, tmp_path), path, "ok")
