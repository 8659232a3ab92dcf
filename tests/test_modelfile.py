"""Model files: safetensors + JSON, round trips, and files that must be refused."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from napari_probunet import cli
from napari_probunet.errors import ModelFileError
from napari_probunet.model.modelfile import (
    FORMAT_VERSION,
    file_sha256,
    load_model,
    read_metadata,
    save_model,
)
from napari_probunet.model.testing import rewrite_metadata, tiny_model, two_mode_case
from napari_probunet.session import Session


def test_round_trip_reproduces_samples_exactly(two_mode_model, tmp_path):
    path = tmp_path / "m.safetensors"
    sha = save_model(two_mode_model, path, {"recipe": "test", "steps": 300})
    assert sha == file_sha256(path) and len(sha) == 64
    loaded = load_model(path)
    assert loaded.source_sha256 == sha and loaded.source_path == str(path)
    assert loaded.metadata["provenance"]["steps"] == 300
    assert loaded.config == two_mode_model.config
    image, _ = two_mode_case()
    a, b = Session(two_mode_model, "cpu"), Session(loaded, "cpu")
    a.set_image(image)
    b.set_image(image)
    np.testing.assert_array_equal(a.sample(20, seed=5).labels, b.sample(20, seed=5).labels)


def test_metadata_is_readable_without_loading(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    save_model(tiny, path, {"data": "synthetic"})
    meta = read_metadata(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["config"]["latent_dim"] == tiny.config.latent_dim
    assert meta["provenance"] == {"data": "synthetic"}


def test_pickle_checkpoint_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(path)
    zipped = tmp_path / "ckpt.pth"
    torch.save({"w": torch.zeros(2)}, zipped)  # torch's zip format
    with pytest.raises(ModelFileError, match="pickled PyTorch checkpoint"):
        load_model(zipped)
    assert not marker.exists()


def _saved_with_header_length(model, path, mask: int, low: int) -> bytes:
    """Save ``model``, padding its provenance so that the header length ``n`` has
    ``n & mask == low``; return the file's first 8 bytes."""
    def save(pad: int) -> int:
        save_model(model, path, {"note": "x" * pad})
        return struct.unpack("<Q", path.read_bytes()[:8])[0]

    n0 = save(0)
    target = n0 + (low - n0) % (mask + 1)  # the next length with the wanted low bits
    for pad in range(max(0, target - n0 - 24), target - n0 + 24):  # one more byte per "x"
        if save(pad) & mask == low:
            return path.read_bytes()[:8]
    raise AssertionError("no padding gave the wanted header length")


@pytest.mark.parametrize("first_bytes", [b"\x80", b"PK"])
def test_a_model_whose_header_length_starts_like_a_pickle_still_loads(tiny, tmp_path, first_bytes):
    """The header length's first byte(s) can be 0x80 or "PK" by chance (1 file in 256 for 0x80)."""
    path = tmp_path / "m.safetensors"
    low = int.from_bytes(first_bytes, "little")
    mask = 0xFF if len(first_bytes) == 1 else 0xFFFF
    head = _saved_with_header_length(tiny, path, mask, low)
    assert head.startswith(first_bytes)
    loaded = load_model(path)
    for k, v in tiny.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_truncated_and_foreign_files_are_refused(tmp_path, tiny):
    good = tmp_path / "m.safetensors"
    save_model(tiny, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(cut)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty or truncated"):
        load_model(tmp_path / "empty.safetensors")
    (tmp_path / "text.safetensors").write_bytes(b"hello world, not a model at all")
    with pytest.raises(ModelFileError):
        load_model(tmp_path / "text.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="not a napari-probunet model"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")


def test_newer_format_and_wrong_shapes_are_refused(tmp_path, tiny):
    good = tmp_path / "m.safetensors"
    save_model(tiny, good)
    newer = tmp_path / "newer.safetensors"
    rewrite_metadata(good, newer, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError, match="upgrade napari-probunet"):
        load_model(newer)
    wrong = tmp_path / "wrong.safetensors"
    rewrite_metadata(good, wrong, lambda m: m["config"].update(latent_dim=5))
    with pytest.raises(ModelFileError, match="do not match its configuration"):
        load_model(wrong)


def test_probunet_info_command(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path, {"recipe": "unit test"})
    assert cli.main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256"] == file_sha256(path) and info["provenance"]["recipe"] == "unit test"
    assert cli.main(["info", str(path)]) == 0
    assert "prior        one axis-aligned Gaussian" in capsys.readouterr().out
    save_model(tiny_model(latent_distribution="mixture", mixture_components=3,
                          mixture_weights="unet"), path)
    assert cli.main(["info", str(path)]) == 0
    assert "a mixture of 3 Gaussians, weights from a head on the U-Net" in capsys.readouterr().out
    assert cli.main(["info", str(tmp_path / "nope.safetensors")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_cli_version_and_help(capsys):
    from napari_probunet import __version__

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out
    assert cli.main([]) == 0
    assert "evaluate" in capsys.readouterr().out


def test_bundled_models_are_addressed_by_name(tmp_path, monkeypatch, capsys):
    from napari_probunet.model import modelfile

    names = [m.name for m in modelfile.BUNDLED_MODELS]
    assert names == ["lidc", "lesions"]
    assert modelfile.bundled_model("default").name == modelfile.DEFAULT_MODEL_NAME
    for m in modelfile.BUNDLED_MODELS:
        if m.path.exists():
            assert modelfile.resolve_model_path(m.name) == m.path
            assert modelfile.bundled_model_of(m.path) == m
            assert load_model(m.name).source_path == str(m.path)
    assert modelfile.bundled_model_of(tmp_path / "x.safetensors") is None
    with pytest.raises(ModelFileError, match="bundled models: default, lidc, lesions"):
        modelfile.resolve_model_path("lidcc")
    # a missing bundled file is named, with a way out
    monkeypatch.setattr(modelfile, "MODELS_DIR", tmp_path)
    with pytest.raises(ModelFileError, match="bundled model 'lidc' is missing.*reinstall"):
        modelfile.resolve_model_path("lidc")


def test_info_names_the_bundled_model_and_its_domain(capsys):
    from napari_probunet.model import modelfile

    assert cli.main(["info", "lesions"]) == 0
    out = capsys.readouterr().out
    assert "bundled      lesions: Synthetic demo lesion" in out
    lidc = modelfile.bundled_model("lidc")
    if lidc.path.exists():
        assert cli.main(["info", "lidc"]) == 0
        out = capsys.readouterr().out
        assert "Lung nodule, CT (LIDC-IDRI, 4 radiologists)" in out and "modality     CT" in out


@pytest.mark.parametrize("damage", ["nan", "inf", "scaled_1e30"])
def test_non_finite_or_absurd_weights_are_refused_at_load(tmp_path, damage, capsys):
    """A diverged or damaged model runs and answers "background everywhere, all hypotheses
    agree": it must not load at all, and the message names the tensor and the way out."""
    model = tiny_model(0)
    with torch.no_grad():
        if damage == "nan":
            model.prior.to_params.bias[1] = float("nan")
        elif damage == "inf":
            model.fcomb.logits.weight.view(-1)[0] = float("inf")
        else:
            for p in model.parameters():
                p.mul_(1e30)
    path = tmp_path / f"{damage}.safetensors"
    save_model(model, path)
    with pytest.raises(ModelFileError) as exc:
        load_model(path)
    text = str(exc.value)
    expected = {"nan": "'prior.to_params.bias'", "inf": "'fcomb.logits.weight'"}.get(damage)
    assert expected is None or expected in text
    assert "tensor '" in text and "earlier checkpoint" in text
    assert ("NaN or infinite" if damage != "scaled_1e30" else "magnitude") in text
    image = tmp_path / "image.npy"
    np.save(image, two_mode_case()[0])
    assert cli.main(["sample", str(image), "--model", str(path), "--out",
                     str(tmp_path / "out")]) == 2
    assert "tensor '" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_healthy_model_still_loads_after_the_weight_check(tmp_path, tiny):
    path = tmp_path / "m.safetensors"
    save_model(tiny, path)
    assert load_model(path).config == tiny.config
    assert load_model("default").config.latent_dim > 0


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["022", "077"])
def test_saved_model_files_and_checkpoints_get_the_ordinary_mode_of_a_new_file(tmp_path, umask):
    """safetensors writes a private (0600) file; a model saved to share must be readable like
    any other new file of its owner (and a private umask keeps it private)."""
    from napari_probunet.model.checkpoint import save_checkpoint

    model = tiny_model()
    before = os.umask(umask)
    try:
        save_model(model, tmp_path / "model.safetensors")
        save_model(model, tmp_path / "model.safetensors")  # replacing an existing file
        save_checkpoint(tmp_path / "checkpoint.safetensors", model,
                        torch.optim.Adam(model.parameters()), {"step": 0})
    finally:
        os.umask(before)
    for name in ("model.safetensors", "checkpoint.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
