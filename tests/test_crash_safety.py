"""Crash safety, shown: a process killed with SIGKILL in the middle of an export, an autosave, a
model save or a checkpoint save leaves the previous file intact; the next start (or the next
save into that folder) removes what it left behind; and recovery still offers the last
autosave. Two ``probunet sample`` runs into one folder never delete each other's files.

Each child process patches the call that commits its file (``os.replace``, ``os.link``) or
flushes it (``os.fsync``) so that it stops right there and says so; the test then kills it.
No test sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_probunet.model.modelfile import file_sha256, load_model, save_model
from napari_probunet.model.testing import tiny_model
from napari_probunet.review import export, recovery

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and fork: POSIX")

SIGNATURE = "sha256:" + "5e" * 20


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _pausing_child(pause_at: str, body: str, ready: Path) -> str:
    """A child script that stops for good at its first call of ``pause_at`` (``"os.replace"``,
    ``"os.link"``, ``"os.fsync"``) after writing ``ready``, having run ``body`` up to there."""
    return textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        import numpy as np

        def pause(*args, **kwargs):
            Path({str(ready)!r}).write_text(str(os.getpid()))
            while True:
                time.sleep(60)

        {pause_at} = pause
    """) + textwrap.dedent(body)


def kill_when_paused(script: str, ready: Path, timeout: float = 180.0) -> None:
    """Run ``script`` in a child process, wait until it reaches its pause, then SIGKILL it."""
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not ready.exists():
            if child.poll() is not None:
                raise AssertionError(f"the child ended ({child.returncode}) before its pause: "
                                     f"{child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the child never reached its pause")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def _record(mask) -> dict:
    return export.correction_record(mask, choice_source="hypothesis", index=0, seed=1)


@pytest.mark.parametrize("overwrite, pause_at", [(True, "os.replace"), (True, "os.fsync"),
                                                 (False, "os.link")],
                         ids=["overwrite-at-commit", "overwrite-mid-write", "new-at-commit"])
def test_an_export_killed_midway_leaves_the_old_files_and_is_cleaned_up(tmp_path, overwrite,
                                                                          pause_at):
    old = np.zeros((16, 20), np.uint8)
    old[2:5, 3:9] = 1
    target = tmp_path / "case.tif"
    if overwrite:
        export.export_correction(old, target, _record(old))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ready = tmp_path.parent / f"{tmp_path.name}.ready"
    kill_when_paused(_pausing_child(pause_at, f"""
        from napari_probunet.review import export
        new = np.full((16, 20), 2, np.uint8)
        export.export_correction(new, {str(target)!r},
                                 export.correction_record(new, choice_source="hypothesis"),
                                 overwrite={overwrite})
    """, ready), ready)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.startswith(".")}
    assert after == before  # the old mask and record (or nothing) exactly as they were
    assert _hidden(tmp_path)  # the killed export's temporary files ...
    export.export_correction(old, tmp_path / "other.npy", _record(old))
    assert _hidden(tmp_path) == []  # ... are gone after the next export into the folder


@pytest.mark.parametrize("pause_at", ["os.replace", "os.fsync"])
def test_an_autosave_killed_midway_keeps_the_last_autosave(tmp_path, pause_at):
    folder = tmp_path / "recovery"
    last = np.zeros((8, 8), np.uint8)
    last[1:3, 1:3] = 1
    recovery.save_recovery(SIGNATURE, last, {"roi": [0, 0, 8, 8], "n": 1}, folder=folder)
    ready = tmp_path / "ready"
    kill_when_paused(_pausing_child(pause_at, f"""
        from napari_probunet.review import recovery
        newer = np.ones((8, 8), np.uint8)
        recovery.save_recovery({SIGNATURE!r}, newer, {{"roi": [0, 0, 8, 8], "n": 2}},
                             folder={str(folder)!r})
    """, ready), ready)
    assert _hidden(folder)  # what the killed autosave was writing
    correction, source, info = recovery.load_recovery(SIGNATURE, folder)  # the next start
    np.testing.assert_array_equal(correction, last)
    assert source is None and info["n"] == 1
    assert _hidden(folder) == []  # ... and the next start cleaned up


def test_a_model_save_killed_midway_keeps_the_old_model(tmp_path):
    path = tmp_path / "model.safetensors"
    sha = save_model(tiny_model(0), path, {"version": 1})
    ready = tmp_path.parent / f"{tmp_path.name}.ready"
    kill_when_paused(_pausing_child("os.replace", f"""
        from napari_probunet.model.testing import tiny_model
        from napari_probunet.model.modelfile import save_model
        save_model(tiny_model(1), {str(path)!r}, {{"version": 2}})
    """, ready), ready)
    assert file_sha256(path) == sha
    assert load_model(path).metadata["provenance"] == {"version": 1}
    assert _hidden(tmp_path)
    save_model(tiny_model(2), path, {"version": 3})  # the next save cleans up
    assert _hidden(tmp_path) == [] and load_model(path).metadata["provenance"]["version"] == 3


def test_a_checkpoint_save_killed_midway_keeps_the_old_checkpoint(tmp_path):
    import torch

    from napari_probunet.model.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    model = tiny_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {"step": 3, "best": 0.5, "history": [], "numpy_rng": [
        np.random.default_rng(0).bit_generator.state]}
    save_checkpoint(path, model, optimizer, state)
    before = path.read_bytes()
    ready = tmp_path.parent / f"{tmp_path.name}.ready"
    kill_when_paused(_pausing_child("os.replace", f"""
        import torch
        from napari_probunet.model.testing import tiny_model
        from napari_probunet.model.checkpoint import save_checkpoint
        model = tiny_model(1)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        save_checkpoint({str(path)!r}, model, optimizer,
                        {{"step": 6, "best": 0.1, "history": [], "numpy_rng": []}})
    """, ready), ready)
    assert path.read_bytes() == before and _hidden(tmp_path)
    resumed = tiny_model(5)
    assert load_checkpoint(path, resumed, torch.optim.Adam(resumed.parameters()))["step"] == 3
    assert _hidden(tmp_path) == []  # the resume (the next start) cleaned up
    for k, v in model.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("drop", ["state", "param_groups", "optim_scalars", "step", "history",
                                  "numpy_rng", "rng.torch", "model.fcomb.logits.weight"])
def test_an_incomplete_checkpoint_is_refused_and_changes_nothing(tmp_path, drop):
    """A training checkpoint missing any key a resume reads is a clear error, and the model,
    the optimizer and the random state are left as they were."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_probunet.errors import ModelFileError
    from napari_probunet.model.checkpoint import KEY, load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    model = tiny_model(0)
    save_checkpoint(path, model, torch.optim.Adam(model.parameters()), {
        "step": 3, "best": 0.5, "history": [], "numpy_rng": []})
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()[KEY])
    tensors = load_file(str(path))
    if drop in header:
        del header[drop]
    elif drop in header["state"]:
        del header["state"][drop]
    else:
        del tensors[drop]
    save_file(tensors, str(path), metadata={KEY: json.dumps(header)})
    resumed = tiny_model(7)
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(ModelFileError, match="--no-resume"):
        load_checkpoint(path, resumed, torch.optim.Adam(resumed.parameters()))
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), rng)


def test_exports_the_issue_found_unwritable_are_written_or_refused_clearly(tmp_path):
    """A uint64 mask (a napari Labels layer's type) to NIfTI is stored in a portable type; a
    file name with a NUL character is refused; neither leaves anything behind."""
    import nibabel

    from napari_probunet.errors import UserError

    mask = np.zeros((6, 5), np.uint64)
    mask[1:3, 2:4] = 3
    path, record = export.export_correction(mask, tmp_path / "m.nii.gz", _record(mask))
    back = np.asarray(nibabel.load(path).dataobj)
    np.testing.assert_array_equal(back, mask)
    assert json.loads(record.read_text())["mask"]["dtype"] == str(back.dtype) == "uint8"
    huge = np.full((4, 4), 2**40, np.int64)
    with pytest.raises(UserError, match="NIfTI holds labels"):
        export.export_correction(huge, tmp_path / "h.nii", _record(huge))
    with pytest.raises(UserError, match="NUL character"):
        export.export_correction(mask, str(tmp_path / "bad\0name.tif"), _record(mask))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nii.gz", "m.nii.gz.json"]


# ----------------------------------------------------------------------------- two runs, one --out


def test_two_sample_runs_into_one_folder_never_delete_each_others_files(tmp_path):
    """Run A stops just before committing its first bundle; run B then does the whole job in
    the same folder (cleaning up as it starts); A goes on. Both succeed, and the summary agrees
    with the exit codes (before, B deleted A's temporary file and A reported healthy cases
    FAILED while summary.json said 0 failed)."""
    from napari_probunet.review import bundle as bundles

    model = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0), model)
    out = tmp_path / "out"
    spec = "synthetic:lesions?n=4&seed=0&size=32"
    argv = ["sample", spec, "--model", str(model), "--out", str(out), "--n", "3",
            "--threads", "1"]
    ready, go = tmp_path / "a.ready", tmp_path / "a.go"
    script_a = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from napari_probunet import cli
        from napari_probunet import files
        commit = files.commit_replace
        calls = []

        def paused_once(tmp, target):
            if not calls and str(target).endswith(".probunet.zip"):
                calls.append(target)
                Path({str(ready)!r} + ".part").write_text(str(tmp))
                Path({str(ready)!r} + ".part").rename({str(ready)!r})  # whole, or not there
                while not Path({str(go)!r}).exists():
                    time.sleep(0.02)
            return commit(tmp, target)

        files.commit_replace = paused_once
        sys.exit(cli.main({argv!r}))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    a = subprocess.Popen([sys.executable, "-c", script_a], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert a.poll() is None, a.communicate()
            assert time.monotonic() < deadline, "run A never reached its first commit"
            time.sleep(0.02)
        paused = Path(ready.read_text())
        assert paused.exists() and paused.parent == out  # A's temporary bundle, waiting
        b = subprocess.run([sys.executable, "-m", "napari_probunet.cli", *argv], env=env,
                           capture_output=True, text=True, timeout=300)
        assert paused.exists()  # B cleaned up as it started, but left A's file alone
        go.write_text("go")
        a_out, a_err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    summary_b = b.stdout
    assert b.returncode == 0, (b.stdout, b.stderr)
    assert a.returncode == 0, (a_out, a_err)
    assert "FAILED" not in a_err + b.stderr and "0 failed" in a_out and "0 failed" in summary_b
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 0 and summary["counts"]["total"] == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"lesions-s0-{i:05d}.probunet.zip" for i in range(4)] + ["summary.json"])
    for p in out.glob("*.probunet.zip"):
        assert bundles.read_bundle(p).n == 3


def test_a_killed_sample_run_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    model = tmp_path / "tiny.safetensors"
    save_model(tiny_model(0), model)
    out = tmp_path / "out"
    argv = ["sample", "synthetic:lesions?n=2&seed=0&size=32", "--model", str(model),
            "--out", str(out), "--n", "2", "--threads", "1"]
    ready = tmp_path / "ready"
    kill_when_paused(_pausing_child("os.replace", f"""
        from napari_probunet import cli
        cli.main({argv!r})
    """, ready), ready)
    assert any(".probunet.zip.~" in name for name in _hidden(out))
    from napari_probunet import cli

    assert cli.main(argv) == 0
    assert _hidden(out) == []
    assert json.loads((out / "summary.json").read_text())["counts"]["failed"] == 0
