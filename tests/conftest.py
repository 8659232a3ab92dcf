"""Shared fixtures: small real models (seeded), trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a 2-core machine beside other work, two threads thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def two_mode_model():
    """A tiny model overfitted to ``two_mode_case()`` (core vs core + halo)."""
    from napari_probunet._testing import train_two_mode_model

    return train_two_mode_model()


@pytest.fixture(scope="session")
def two_mode_model_file(two_mode_model, tmp_path_factory) -> Path:
    from napari_probunet.modelfile import save_model

    path = tmp_path_factory.mktemp("models") / "two_mode.safetensors"
    save_model(two_mode_model, path, {"recipe": "tests: two_mode_case"})
    return path


@pytest.fixture
def tiny():
    """An untrained, seeded tiny model."""
    from napari_probunet._testing import tiny_model

    return tiny_model(seed=0)
