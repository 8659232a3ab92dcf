"""One error policy for the command line, over a table of bad inputs and broken environments.

Every row runs one subcommand in-process (``cli.main``) and checks what the user sees: exit
code 2, exactly one line ``probunet <cmd>: error: ...`` that says what is wrong, no traceback,
and nothing left behind (no new folder, no temporary file, no changed input). A bug (any other
exception) is exit 1 with one line asking for a report, and a traceback only with
``PROBUNET_DEBUG=1``.
"""

from __future__ import annotations

import builtins
import errno
import json
import math
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

# hostile files shared with tests/test_limits.py (pytest puts tests/ on sys.path)
from test_limits import (
    model_with,
    pickle_bytearray,
    rewrite_model_header,
    tiff_declaring,
)

from napari_probunet import cli
from napari_probunet.cli.main import COMMANDS
from napari_probunet.model.modelfile import save_model
from napari_probunet.model.testing import tiny_model

RECIPE = """
[model]
channels = [4, 8]
convs_per_block = 1
latent_dim = 2
fcomb_channels = 8
input_size = 32

[train]
data = "synthetic:lesions?n=20&seed=1&size=32"
steps = 4
batch_size = 2
amp = "none"
channels_last = false
log_every = 2
val_every = 4
checkpoint_every = 2
threads = 1
"""


def _meta(header: dict) -> dict:
    return json.loads(header["__metadata__"]["probunet"])


def _set_meta(header: dict, meta) -> dict:
    header["__metadata__"]["probunet"] = json.dumps(meta)
    return header


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


#: broken model files: name -> change of a good file's header
MODEL_HEADERS = {
    "list": lambda h: [h],
    "int-entry": lambda h: {**h, _first_tensor(h): 7},
    "metadata-list": lambda h: {**h, "__metadata__": [1, 2]},
    "offsets-strings": lambda h: {**h, _first_tensor(h): {
        **h[_first_tensor(h)], "data_offsets": [str(o) for o in h[_first_tensor(h)]["data_offsets"]]}},
    "config-string": lambda h: _set_meta(h, {**_meta(h), "config": "abc"}),
    "description-list": lambda h: _set_meta(h, [1, 2, 3]),
    "version-99": lambda h: _set_meta(h, {**_meta(h), "format_version": 99}),
    "no-description": lambda h: {**h, "__metadata__": {}},
}


@pytest.fixture(scope="module")
def a(tmp_path_factory) -> Path:
    """The inputs: a good tiny model, broken model files, data, recipes, checkpoints."""
    root = tmp_path_factory.mktemp("assets")
    good = root / "model.safetensors"
    save_model(tiny_model(0), good)
    for name, change in MODEL_HEADERS.items():
        rewrite_model_header(Path(shutil.copy(good, root / f"{name}.safetensors")), change)
    model_with(root / "channels.safetensors", channels=[10**6, 16, 32])
    nan = tiny_model(0)
    with torch.no_grad():
        next(nan.parameters()).fill_(math.nan)
    save_model(nan, root / "nan.safetensors")
    data = good.read_bytes()
    (root / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "notjson.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}" + bytes(8))
    (root / "empty.safetensors").write_bytes(b"")
    (root / "checkpoint.pt").write_bytes(b"\x80\x04\x95" + bytes(20))
    (root / "folder.safetensors").mkdir()
    (root / "a-file").write_text("not a folder")
    (root / "recipe.toml").write_text(RECIPE)
    (root / "bad.toml").write_text("[model\nchannels = ")
    hostile = root / "hostile" / "case1"
    hostile.mkdir(parents=True)
    tiff_declaring(hostile / "image.tif")
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(hostile / "mask.png")
    pickle_bytearray(root / "evil.pkl")
    # training checkpoints: one without its training state's keys, one that is no checkpoint
    from safetensors.torch import save_file

    save_file({"rng.torch": torch.get_rng_state()}, str(root / "missing-keys.safetensors"),
              metadata={"probunet_checkpoint": json.dumps({"state": {"step": 2},
                                                           "param_groups": []})})
    (root / "garbage.safetensors").write_bytes(b"garbage" * 100)
    return root


def _checkpoint_run(name: str):
    def prepare(a: Path, w: Path) -> None:
        (w / "run").mkdir()
        shutil.copy(a / name, w / "run" / "checkpoint.safetensors")
    return prepare


def _deny_reading(monkeypatch, a: Path, w: Path) -> None:
    """The model file cannot be read (root reads anything, so ``open`` refuses it here)."""
    real = builtins.open
    target = str(a / "model.safetensors")

    def refusing(file, *args, **kwargs):
        if str(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing)


def _io_error(monkeypatch, a, w) -> None:
    from napari_probunet.model import modelfile

    def broken(path):
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(modelfile, "file_sha256", broken)


def _out_of_memory(monkeypatch, a, w) -> None:
    from napari_probunet.model import modelfile

    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(modelfile, "_read_header", exhausted)


def _no_space_for_folder(monkeypatch, a, w) -> None:
    real = Path.mkdir

    def full(self, *args, **kwargs):
        if self == w / "out":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full)


M = "{a}/model.safetensors"
SYNTH = "synthetic:lesions?n=2&size=32"

#: (id, arguments, expected message (regex), setup(monkeypatch, a, w) or None,
#:  prepare(a, w) or None)
ROWS = [
    # probunet info: model files that are missing, unreadable or malformed
    ("info-missing", ["info", "{a}/nope.safetensors"], r"model file not found", None, None),
    ("info-folder", ["info", "{a}/folder.safetensors"], r"is a folder", None, None),
    ("info-empty", ["info", "{a}/empty.safetensors"], r"empty or truncated", None, None),
    ("info-pickle", ["info", "{a}/checkpoint.pt"], r"pickled PyTorch checkpoint", None, None),
    ("info-header-list", ["info", "{a}/list.safetensors"], r"header is a JSON list", None, None),
    ("info-tensor-int", ["info", "{a}/int-entry.safetensors"], r"entry for tensor", None, None),
    ("info-metadata-list", ["info", "{a}/metadata-list.safetensors"], r"__metadata__ must be",
     None, None),
    ("info-offsets-strings", ["info", "{a}/offsets-strings.safetensors"], r"entry for tensor",
     None, None),
    ("info-config-string", ["info", "{a}/config-string.safetensors"], r"'config' is a JSON str",
     None, None),
    ("info-description-list", ["info", "{a}/description-list.safetensors"],
     r"description is a JSON list", None, None),
    ("info-not-json", ["info", "{a}/notjson.safetensors"], r"header is not JSON", None, None),
    ("info-truncated", ["info", "{a}/truncated.safetensors"], r"truncated", None, None),
    ("info-newer", ["info", "{a}/version-99.safetensors"], r"format 99, newer", None, None),
    ("info-not-ours", ["info", "{a}/no-description.safetensors"], r"not a napari-probunet model",
     None, None),
    ("info-permission", ["info", M], r"Permission denied", _deny_reading, None),
    ("info-io-error", ["info", M], r"Input/output error", _io_error, None),
    ("info-out-of-memory", ["info", M], r"not enough memory", _out_of_memory, None),
    # probunet sample
    ("sample-wide-model", ["sample", SYNTH, "--model", "{a}/channels.safetensors", "--out",
                           "{w}/out"], r"MAX_MODEL_CHANNELS .*PROBUNET_MAX_MODEL_CHANNELS=",
     None, None),
    ("sample-config-string", ["sample", SYNTH, "--model", "{a}/config-string.safetensors",
                              "--out", "{w}/out"], r"'config' is a JSON str", None, None),
    ("sample-nan-model", ["sample", SYNTH, "--model", "{a}/nan.safetensors", "--out",
                          "{w}/out"], r"NaN or infinite", None, None),
    ("sample-no-permission", ["sample", SYNTH, "--model", M, "--out", "{w}/out"],
     r"Permission denied", _deny_reading, None),
    ("sample-missing-model", ["sample", SYNTH, "--model", "{a}/nope", "--out", "{w}/out"],
     r"model file not found", None, None),
    ("sample-n-zero", ["sample", SYNTH, "--model", M, "--out", "{w}/out", "--n", "0"],
     r"--n must be at least 1", None, None),
    ("sample-n-text", ["sample", SYNTH, "--model", M, "--out", "{w}/out", "--n", "abc"],
     r"invalid int value: 'abc'", None, None),
    ("sample-slices", ["sample", SYNTH, "--model", M, "--out", "{w}/out", "--slices", "5-2"],
     r"invalid slice range", None, None),
    ("sample-threads", ["sample", SYNTH, "--model", M, "--out", "{w}/out", "--threads", "-1"],
     r"--threads takes", None, None),
    ("sample-out-file", ["sample", SYNTH, "--model", M, "--out", "{a}/a-file"], r"is a file",
     None, None),
    ("sample-huge-synthetic", ["sample", "synthetic:lesions?n=1&size=100000", "--model", M,
                               "--out", "{w}/out"], r"size=100000 .*MAX_IMAGE_PIXELS", None, None),
    ("sample-bad-limit", ["sample", SYNTH, "--model", M, "--out", "{w}/out"],
     r"PROBUNET_MAX_IMAGE_PIXELS='lots' is not a positive number",
     lambda mp, a, w: mp.setenv("PROBUNET_MAX_IMAGE_PIXELS", "lots"), None),
    ("sample-disk-full", ["sample", SYNTH, "--model", M, "--out", "{w}/out", "--n", "2"],
     r"cannot write to the output folder .*No space left on device", _no_space_for_folder, None),
    # probunet data
    ("synth-huge", ["data", "synth", "lesions", "--size", "100000", "--out", "{w}/synth"],
     r"--size .*MAX_IMAGE_PIXELS .*PROBUNET_MAX_IMAGE_PIXELS=", None, None),
    ("synth-n-zero", ["data", "synth", "lesions", "--n", "0", "--out", "{w}/synth"],
     r"n must be an integer >= 1", None, None),
    ("synth-tiny", ["data", "synth", "lesions", "--size", "8", "--out", "{w}/synth"],
     r"size must be an integer >= 16", None, None),
    ("synth-out-file", ["data", "synth", "lesions", "--out", "{a}/a-file"], r"not a folder",
     None, None),
    ("synth-kind", ["data", "synth", "blobs", "--out", "{w}/synth"], r"invalid choice: 'blobs'",
     None, None),
    ("data-info-missing", ["data", "info", "{a}/nothing"], r"no such file or folder", None,
     None),
    ("data-info-kind", ["data", "info", "synthetic:nope"], r"unknown synthetic kind", None,
     None),
    ("data-info-huge", ["data", "info", "synthetic:lesions?n=1&size=100000"],
     r"MAX_IMAGE_PIXELS", None, None),
    ("data-info-hostile-tiff", ["data", "info", "{a}/hostile"],
     r"MAX_IMAGE_PIXELS|could not be read|no .*cases", None, None),
    ("data-info-hostile-pickle", ["data", "info", "{a}/evil.pkl"],
     r"refused to load the pickle", None, None),
    ("data-info-split", ["data", "info", "synthetic:lesions#part=nope"], r"bad split", None,
     None),
    # probunet evaluate / assess
    ("evaluate-huge", ["evaluate", "--model", M, "--data", "synthetic:lesions?n=1&size=100000"],
     r"MAX_IMAGE_PIXELS", None, None),
    ("evaluate-missing-data", ["evaluate", "--model", M, "--data", "{a}/nothing"],
     r"no such file or folder", None, None),
    ("evaluate-out-under-file", ["evaluate", "--model", M, "--data", SYNTH, "--out",
                                 "{a}/a-file/result.json"], r"is a file, not a folder", None,
     None),
    ("evaluate-out-folder", ["evaluate", "--model", M, "--data", SYNTH, "--out", "{a}"],
     r"is a folder", None, None),
    ("evaluate-bins", ["evaluate", "--model", M, "--data", SYNTH, "--bins", "0"],
     r"--bins must be at least 1", None, None),
    ("evaluate-clicks", ["evaluate", "--model", M, "--data", SYNTH, "--clicks", "0"],
     r"--clicks must be at least 1", None, None),
    ("evaluate-clicks-pool", ["evaluate", "--model", M, "--data", SYNTH, "--clicks", "2",
                              "--pool", "3"], r"--pool must be at least 16", None, None),
    ("evaluate-clicks-nodules", ["evaluate", "--model", M, "--data", SYNTH, "--clicks", "2",
                                 "--nodules"], r"3D figures need data with nodule ids", None,
     None),
    ("evaluate-nodules-slices", ["evaluate", "--model", M, "--data", SYNTH, "--nodules",
                                 "--slices", "3"], r"for 3D figures draw nodules with "
     r"--nodule-count", None, None),
    ("evaluate-nodule-count-2d", ["evaluate", "--model", M, "--data", SYNTH, "--clicks", "2",
                                  "--nodule-count", "3"], r"--nodule-count is for 3D figures",
     None, None),
    ("evaluate-bad-model", ["evaluate", "--model", "{a}/list.safetensors", "--data", SYNTH],
     r"header is a JSON list", None, None),
    ("assess-missing-data", ["assess", "--model", M, "--data", "{a}/nothing"],
     r"no such file or folder", None, None),
    ("assess-quantile", ["assess", "--model", M, "--data", SYNTH, "--quantile", "2"],
     r"--quantile must be", None, None),
    ("assess-out-folder", ["assess", "--model", M, "--data", SYNTH, "--out", "{a}"],
     r"is a folder", None, None),
    # probunet train
    ("train-missing-recipe", ["train", "--config", "{a}/nope.toml", "--out", "{w}/run"],
     r"recipe file not found", None, None),
    ("train-bad-recipe", ["train", "--config", "{a}/bad.toml", "--out", "{w}/run"],
     r"toml|TOML|recipe", None, None),
    ("train-checkpoint-missing-keys", ["train", "--config", "{a}/recipe.toml", "--out",
                                       "{w}/run", "--quiet"],
     r"not a complete training checkpoint .*lacks", None, _checkpoint_run("missing-keys.safetensors")),
    ("train-checkpoint-garbage", ["train", "--config", "{a}/recipe.toml", "--out", "{w}/run",
                                  "--quiet"], r"cannot read training checkpoint", None,
     _checkpoint_run("garbage.safetensors")),
    # probunet domain / bench / no such command
    ("domain-missing-model", ["domain", "{a}/nope", "--data", SYNTH, "--out", "{w}/m/x.safetensors"],
     r"model file not found", None, None),
    ("domain-max-images", ["domain", M, "--data", SYNTH, "--out", "{w}/m/x.safetensors",
                           "--max-images", "0"], r"--max-images must be at least 1", None, None),
    ("bench-device", ["bench", "--device", "nonsense", "--repeats", "1", "--skip-training",
                      "--skip-ged"], r"unknown device 'nonsense'", None, None),
    ("bench-repeats", ["bench", "--repeats", "0"], r"--repeats must be at least 1", None, None),
    ("bench-threads", ["bench", "--threads", "-1"], r"--threads must be at least 0", None, None),
    ("unknown-command", ["nope"], r"invalid choice: 'nope'", None, None),
    # probunet pacs: a server that is down, settings that cannot work (nothing listens on 9)
    ("pacs-server-down", ["pacs", "ls", "http://127.0.0.1:9/dicom-web", "--timeout", "2"],
     r"cannot reach http://127.0.0.1:9/dicom-web \(connection refused", None, None),
    ("pacs-url-with-password", ["pacs", "ls", "http://alice:pw0rd@127.0.0.1:9/dicom-web"],
     r"holds a user name or password(?!.*pw0rd)", None, None),
    ("pacs-token-unset", ["pacs", "get", "http://127.0.0.1:9/dicom-web", "1.2.3",
                          "--token-env", "PROBUNET_TEST_NO_SUCH_TOKEN"],
     r"PROBUNET_TEST_NO_SUCH_TOKEN .* is not set", None, None),
    ("pacs-bad-date", ["pacs", "ls", "http://127.0.0.1:9/dicom-web", "--date", "yesterday"],
     r"date 'yesterday' not understood", None, None),
    ("pacs-put-not-dicom", ["pacs", "put", "http://127.0.0.1:9/dicom-web", M],
     r"not a readable DICOM file", None, None),
    ("pacs-no-action", ["pacs"], r"required: ACTION", None, None),
]


def _tree(*folders: Path) -> dict[str, float]:
    """Every file and folder under ``folders`` (hidden ones included) with its mtime."""
    out = {}
    for folder in folders:
        for p in folder.rglob("*"):
            out[str(p)] = p.stat().st_mtime if p.is_file() else 0.0
    return out


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_table_is_big_enough():
    assert len(ROWS) >= 40
    assert len({r[0] for r in ROWS}) == len(ROWS)
    assert {r[1][0] for r in ROWS} >= set(COMMANDS)  # every subcommand is tried


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_a_bad_input_gives_one_line_exit_2_and_leaves_nothing(row, a, tmp_path, capsys,
                                                               monkeypatch):
    _, argv, message, setup, prepare = row
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    if prepare is not None:
        prepare(a, w)
    before = _tree(a, w)
    argv = [arg.format(a=a, w=w) for arg in argv]
    if setup is not None:
        setup(monkeypatch, a, w)
    code, out, err = _run(argv, capsys)
    monkeypatch.undo()
    assert code == 2, (code, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = argv[0] if argv[0] in COMMANDS else ""
    assert re.match(rf"^probunet{' ' + command if command else ''}( \w+)?: error: ", lines[0]), \
        lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in out + err
    assert _tree(a, w) == before  # no new folder, no temporary file, no changed input


def test_a_bug_is_exit_1_with_a_hint_and_a_traceback_only_on_request(a, capsys, monkeypatch):
    from napari_probunet.model import modelfile

    def bug(*args, **kwargs):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(modelfile, "_read_header", bug)
    code, out, err = _run(["info", str(a / "model.safetensors")], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probunet info: internal error (TypeError")
    assert "this is a bug" in lines[0] and "report" in lines[0] and "PROBUNET_DEBUG=1" in lines[0]
    assert "Traceback" not in err
    monkeypatch.setenv("PROBUNET_DEBUG", "1")
    code, out, err = _run(["info", str(a / "model.safetensors")], capsys)
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("probunet info: internal error")


def test_a_failed_synth_leaves_no_folder_but_a_good_one_writes(a, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "synth"
    code, _, err = _run(["data", "synth", "lesions", "--size", "100000", "--out", str(out)],
                        capsys)
    assert code == 2 and not (tmp_path / "deep").exists()
    code, _, err = _run(["data", "synth", "lesions", "--n", "2", "--size", "16", "--out",
                         str(out)], capsys)
    assert code == 0 and (out / "dataset.json").exists()


def test_a_disk_that_fills_up_while_sampling_is_exit_2_and_leaves_no_temporary(a, tmp_path,
                                                                                capsys,
                                                                                monkeypatch):
    """Each case that cannot be written is reported; the summary cannot be written either:
    exit 2, the last line says why, and no temporary file or empty folder stays."""
    monkeypatch.setattr("napari_probunet.files.commit_replace", lambda tmp, target: _full(target))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "out"
    code, _, err = _run(["sample", SYNTH, "--model", str(a / "model.safetensors"), "--out",
                         str(out), "--n", "2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[-1].startswith("probunet sample: error: No space left on device")
    assert all(line.startswith("FAILED ") for line in lines[:-1]) and len(lines) == 3
    assert not out.exists()


def _full(target):
    raise OSError(errno.ENOSPC, "No space left on device", str(target))
