"""Model sanity beyond NaN (issue #30): a model whose hypotheses would all be identical is
reported as broken by ``probunet info`` (exit 2), refused by ``probunet sample`` and by the
review widget's model loading. The broken model files are built here from real models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_probunet.cli.main import main
from napari_probunet.errors import ModelFileError
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.model.sanity import diversity_problem
from napari_probunet.model.testing import tiny_model
from napari_probunet.review.jobs import model_job
from napari_probunet.session import Session


@pytest.fixture(scope="module")
def saturated_mixture(tmp_path_factory):
    """The bundled LIDC mixture model with a weight-head bias of 1e11 (below the 1e12 refusal
    of absurd weights): 16 identical hypotheses on any image."""
    model = load_model("lidc")
    with torch.no_grad():
        model.prior.weight_head.out.bias[0] = 1e11
    path = tmp_path_factory.mktemp("broken") / "saturated.safetensors"
    save_model(model, path, {"recipe": "tests: saturated weight head"})
    return path


@pytest.fixture(scope="module")
def blind_decoder(tmp_path_factory):
    """An untrained tiny model whose fcomb ignores z (its z weights zero)."""
    model = tiny_model()
    with torch.no_grad():
        model.fcomb.split_first_layer()[1].zero_()
    path = tmp_path_factory.mktemp("broken") / "blind.safetensors"
    save_model(model, path)
    return path


def test_the_saturated_mixture_really_gives_identical_hypotheses(saturated_mixture):
    session = Session(load_model(saturated_mixture), device="cpu")
    yy, xx = np.mgrid[:64, :64]
    session.set_image(np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 49, 60.0, -700.0))
    labels = session.sample(16, seed=0).labels
    assert all(np.array_equal(labels[0], h) for h in labels)  # what the user would see


@pytest.mark.parametrize("name", ["lidc", "lesions"])
def test_the_bundled_models_pass(name, capsys):
    assert diversity_problem(load_model(name)) is None
    assert main(["info", name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "finite"


def test_a_deterministic_unet_is_not_called_broken():
    assert diversity_problem(tiny_model(deterministic=True)) is None


@pytest.mark.parametrize("which, reason", [("saturated_mixture", "saturated"),
                                           ("blind_decoder", "ignores the latent")])
def test_info_reports_a_model_without_diversity_as_broken(which, reason, request, capsys):
    path = request.getfixturevalue(which)
    assert main(["info", str(path)]) == 2
    out = capsys.readouterr().out
    assert "BROKEN" in out and reason in out
    assert main(["info", str(path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["weights"].startswith("BROKEN")


def test_info_exits_2_on_a_model_with_nan_weights(tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.fcomb.logits.bias[0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_model(model, path)  # saving does not check: a diverged training writes such files
    assert main(["info", str(path)]) == 2
    assert "BROKEN" in capsys.readouterr().out


def test_sample_refuses_a_model_without_diversity(saturated_mixture, tmp_path, capsys):
    image = tmp_path / "case.npy"
    np.save(image, np.zeros((32, 32), np.float32))
    out = tmp_path / "out"
    assert main(["sample", str(image), "--model", str(saturated_mixture), "--out", str(out),
                 "--n", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "saturated" in err and "open another model" in err
    assert not out.exists()  # refused before anything was written


def test_the_review_refuses_it_when_loading(blind_decoder):
    with pytest.raises(ModelFileError, match="ignores the latent"):
        model_job(str(blind_decoder), "cpu")
