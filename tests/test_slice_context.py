"""Neighbouring slices as input channels (data/context.py, ModelConfig.slice_context): which
slices are neighbours, what stands in for a missing one, the training's neighbour dropout, a
one-slice donor starting a 2.5D model, and `probunet evaluate --interior / --neighbours`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_lidc_slices import write_layout

from napari_probunet.data.context import (
    SliceContext,
    drop_neighbours,
    interior,
    neighbour_table,
    volume_context,
    with_slice_context,
)
from napari_probunet.data.lidc_slices import read_lidc_slices
from napari_probunet.model.config import ModelConfig
from napari_probunet.model.testing import tiny_model


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBUNET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def slices(tmp_path):
    """2 patients x 2 nodules x 4 slices; slice 2 of LIDC-IDRI-0002/nodule-1 removed (a gap)."""
    root = write_layout(tmp_path / "lidc", patients=("0001", "0002"), slices=4, size=16)
    gap = root / "LIDC-IDRI-0002" / "nodule-1"
    for png in gap.rglob("slice-2.png"):
        png.unlink()
    return read_lidc_slices(root, cache=False)


def _position(cases, case_id: str) -> int:
    return cases.case_ids.index(case_id)


def test_the_neighbours_are_the_nodules_slices_above_and_below(slices):
    table = neighbour_table(slices, 1)
    at = {cid: i for i, cid in enumerate(slices.case_ids)}
    p = "LIDC-IDRI-0001/nodule-0/slice-"
    assert list(table[at[p + "1"]]) == [at[p + "0"], at[p + "1"], at[p + "2"]]
    assert list(table[at[p + "0"]]) == [at[p + "0"], at[p + "0"], at[p + "1"]]  # the first
    assert list(table[at[p + "3"]]) == [at[p + "2"], at[p + "3"], at[p + "3"]]  # the last
    q = "LIDC-IDRI-0002/nodule-1/slice-"  # slice 2 is missing: 1 and 3 are not neighbours
    assert list(table[at[q + "1"]]) == [at[q + "0"], at[q + "1"], at[q + "1"]]
    assert list(table[at[q + "3"]]) == [at[q + "3"], at[q + "3"], at[q + "3"]]
    # two each side: beyond a missing one the nearest toward the middle stands in
    two = neighbour_table(slices, 2)
    assert list(two[at[p + "1"]]) == [at[p + "0"], at[p + "0"], at[p + "1"], at[p + "2"],
                                      at[p + "3"]]
    inner = [slices.case_ids[i] for i in interior(slices, 1)]
    assert sorted(inner) == sorted(f"LIDC-IDRI-000{a}/nodule-{k}/slice-{s}"
                                   for a, k, s in [(1, 0, 1), (1, 0, 2), (1, 1, 1), (1, 1, 2),
                                                   (2, 0, 1), (2, 0, 2)])


def test_the_cases_carry_their_neighbours_as_channels(slices):
    wide = with_slice_context(slices, 1)
    assert isinstance(wide, SliceContext) and len(wide) == len(slices)
    p = "LIDC-IDRI-0001/nodule-0/slice-"
    i = _position(slices, p + "1")
    case = wide[i]
    assert case.image.shape == (16, 16, 3) and case.case_id == p + "1"
    for channel, name in enumerate(("0", "1", "2")):
        np.testing.assert_array_equal(case.image[..., channel],
                                      slices[_position(slices, p + name)].image)
    np.testing.assert_array_equal(case.masks, slices[i].masks)
    first = wide[_position(slices, p + "0")].image
    np.testing.assert_array_equal(first[..., 0], first[..., 1])  # no slice above: itself
    alone = SliceContext(slices, 1, neighbours="none")[i].image
    assert all(np.array_equal(alone[..., c], slices[i].image) for c in range(3))
    # a subset (what a split gives) still finds neighbours in the whole set
    part = wide.subset([i])
    np.testing.assert_array_equal(part[0].image, case.image)
    assert part.group_ids == ["LIDC-IDRI-0001"] and part.ids_of("slice") == [p + "1"]
    assert with_slice_context(slices, 0) is slices
    with pytest.raises(ValueError, match="neighbours must be one of"):
        SliceContext(slices, 1, neighbours="both")


def test_a_volume_slice_with_its_neighbours_repeats_at_the_ends():
    volume = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    mid = volume_context(volume, 1, 1)
    assert mid.shape == (2, 2, 3)
    for c, k in enumerate((0, 1, 2)):
        np.testing.assert_array_equal(mid[..., c], volume[k])
    end = volume_context(volume, 3, 1)
    np.testing.assert_array_equal(end[..., 2], volume[3])


def test_the_training_drops_one_sides_neighbours_at_random():
    image = np.stack([np.full((2, 2), v, np.float32) for v in (1, 2, 3)], axis=-1)
    rng = np.random.default_rng(0)
    assert drop_neighbours(image, 1, 0.0, rng) is image
    assert (drop_neighbours(image, 1, 1.0, rng) == 2).all()
    kinds = set()
    for _ in range(200):
        out = drop_neighbours(image, 1, 0.5, rng)
        kinds.add((out[0, 0, 0], out[0, 0, 2]))
    assert kinds == {(1, 3), (2, 3), (1, 2), (2, 2)}
    np.testing.assert_array_equal(image[0, 0], [1, 2, 3])  # the case's own image untouched


def test_the_model_setting_asks_for_the_right_channels():
    assert ModelConfig(in_channels=3, slice_context=1).slice_context == 1
    with pytest.raises(ValueError, match="slice_context = 1 needs in_channels = 3"):
        ModelConfig(in_channels=1, slice_context=1)
    assert ModelConfig.from_dict(ModelConfig().to_dict()).slice_context == 0


def test_a_one_slice_donor_starts_a_25d_model_as_itself(tmp_path):
    import torch

    from napari_probunet.model.modelfile import save_model
    from napari_probunet.training.donor import init_weights

    donor = tiny_model(seed=3)
    path = tmp_path / "donor.safetensors"
    save_model(donor, path, {"recipe": "tests"})
    wide = tiny_model(seed=4, in_channels=3, slice_context=1)
    record = init_weights(wide, str(path), verbose=False)
    assert record["sha256"]
    x = torch.rand(2, 1, 32, 32)
    neighbours = torch.cat([torch.rand(2, 1, 32, 32), x, torch.rand(2, 1, 32, 32)], dim=1)
    y = (torch.rand(2, 32, 32) > 0.5).long()
    with torch.no_grad():  # the neighbours' weights start at zero: step 0 is the donor
        a, b = donor.encode(x), wide.encode(neighbours)
        torch.testing.assert_close(a.features, b.features)
        torch.testing.assert_close(a.prior_mu, b.prior_mu)
        torch.testing.assert_close(donor.posterior_params(x, y), wide.posterior_params(
            neighbours, y))
    other = tiny_model(seed=4, channels=(8, 16))
    from napari_probunet.errors import UserError
    with pytest.raises(UserError, match="architecture differs"):
        init_weights(other, str(path), verbose=False)


def test_a_training_batch_holds_the_neighbours(slices):
    from napari_probunet.training.batches import BatchSampler

    config = tiny_model(in_channels=3, slice_context=1).config
    sampler = BatchSampler(with_slice_context(slices, 1), config, batch_size=4, seed=0,
                           augment=False, context_dropout=0.0)
    x, y = sampler()
    assert tuple(x.shape) == (4, 3, 16, 16) and tuple(y.shape) == (4, 16, 16)
    assert any(not np.allclose(x[i, 0].numpy(), x[i, 1].numpy()) for i in range(4))


def test_probunet_evaluate_interior_and_without_neighbours(slices, tmp_path, capsys):
    from napari_probunet.cli.main import main
    from napari_probunet.model.modelfile import save_model

    path = tmp_path / "wide.safetensors"
    save_model(tiny_model(seed=1, in_channels=3, slice_context=1, input_size=16), path,
               {"recipe": "tests"})
    data = str(slices.source)
    outs = {}
    for flags in ([], ["--interior"], ["--neighbours", "none"]):
        out = tmp_path / f"r{len(outs)}.json"
        assert main(["evaluate", "--model", str(path), "--data", data, "--samples", "4",
                     "--quiet", "--out", str(out), *flags]) == 0
        outs[" ".join(flags)] = json.loads(out.read_text())
    assert outs[""]["n_images"] == len(slices)
    assert outs["--interior"]["n_images"] == 6 and "(interior)" in outs["--interior"]["data"]
    assert outs["--neighbours none"]["ged4"] != outs[""]["ged4"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path), "--data", data, "--nodules",
                 "--interior"]) != 0
    assert "--interior keeps some slices of each nodule" in capsys.readouterr().err


def test_a_single_slice_given_to_a_25d_model_is_said():
    from napari_probunet.review.domain import check_image

    config = tiny_model(in_channels=3, slice_context=1).config
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    found = check_image(config, image).warnings
    assert any("neighbouring slice(s) on each side" in w and "--neighbours none" in w
               for w in found)
    stacked = volume_context(np.stack([image] * 3), 1, 1)
    assert not any("neighbouring" in w for w in check_image(config, stacked).warnings)
    assert not any("neighbouring" in w for w in check_image(tiny_model().config, image).warnings)


def test_folding_the_neighbours_gives_the_model_on_a_repeated_slice():
    import torch

    from napari_probunet.errors import UserError
    from napari_probunet.training.donor import fold_neighbours

    wide = tiny_model(seed=5, in_channels=3, slice_context=1, latent_distribution="mixture",
                      mixture_weights="unet")
    folded = fold_neighbours(wide)
    assert folded.config.in_channels == 1 and folded.config.slice_context == 0
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        a, b = wide.encode(x.repeat(1, 3, 1, 1)), folded.encode(x)
        torch.testing.assert_close(a.features, b.features, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.mixture[0], b.mixture[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="nothing to fold"):
        fold_neighbours(folded)
