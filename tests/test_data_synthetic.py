"""Synthetic multi-rater data: deterministic, random-access, and its graders really are drawn
from the stated per-image distribution (the calibration test bed must itself be calibrated)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_probunet.data import CLASS_NAMES, KINDS, SyntheticDataset, make_case
from napari_probunet.data.synthetic import FLIP_PROBS, lesion_mode_probs, parse_synthetic_spec
from napari_probunet.errors import DataError


def _same(a, b) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.masks, b.masks)
        and np.array_equal(a.truth.modes, b.truth.modes)
        and np.array_equal(a.truth.probs, b.truth.probs)
        and np.array_equal(a.grader_modes, b.grader_modes)
    )


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_same_case_and_random_access(kind):
    assert _same(make_case(kind, 3, 7), make_case(kind, 3, 7))
    dataset = SyntheticDataset(kind, 10, seed=3)
    backwards = [dataset[i] for i in reversed(range(10))][::-1]
    assert _same(backwards[7], make_case(kind, 3, 7))
    assert _same(dataset[-1], dataset[9])
    assert len(dataset[2:5]) == 3
    assert not np.array_equal(make_case(kind, 3, 7).image, make_case(kind, 4, 7).image)
    assert not np.array_equal(make_case(kind, 3, 7).image, make_case(kind, 3, 8).image)
    with pytest.raises(IndexError):
        dataset[10]


@pytest.mark.parametrize("kind", KINDS)
def test_more_graders_extend_and_size_keeps_the_truth(kind):
    four, eight = make_case(kind, 1, 5, graders=4), make_case(kind, 1, 5, graders=8)
    assert np.array_equal(eight.grader_modes[:4], four.grader_modes)
    big = make_case(kind, 1, 5, size=128)
    assert np.allclose(big.truth.probs, four.truth.probs)
    assert np.array_equal(big.grader_modes, four.grader_modes)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes_dtypes_and_intensity_scale(kind, size):
    case = make_case(kind, 0, 2, size=size, graders=3)
    assert case.image.shape == (size, size) and case.image.dtype == np.float32
    assert case.masks.shape == (3, size, size) and case.masks.dtype == np.uint8
    assert case.truth.modes.shape[1:] == (size, size)
    assert np.isclose(case.truth.probs.sum(), 1.0)
    assert np.array_equal(case.masks, case.truth.modes[case.grader_modes])
    assert 0.0 <= case.image.min() and case.image.max() < 1.35
    assert set(np.unique(case.masks)) <= set(range(len(CLASS_NAMES[kind])))


def test_make_case_is_fast_enough_for_on_the_fly_training():
    for kind in KINDS:
        make_case(kind, 0, 0, size=128)
        start = time.perf_counter()
        for i in range(20):
            make_case(kind, 0, i, size=128)
        per_case = (time.perf_counter() - start) / 20
        assert per_case < 0.025, f"{kind}: {per_case * 1e3:.1f} ms per 128x128 case"


# ----------------------------------------------------------------------------- lesions


def test_lesion_modes_core_halo_nothing():
    ious = []
    for i in range(60):
        case = make_case("lesions", 0, i)
        core, halo, nothing = case.truth.modes.astype(bool)
        assert case.truth.names == ["core", "core+halo", "nothing"]
        assert core.any() and not nothing.any()
        assert np.all(halo[core]), "the halo mode must contain the core"
        ious.append(core.sum() / halo.sum())
        ring = halo & ~core
        assert case.image[core].mean() > case.image[ring].mean(), "core brighter than halo"
        assert case.image[~halo].mean() < 0.25, "dark lung background"
        k, c = case.truth.params["k"], case.truth.params["c"]
        assert 0.6 <= k <= 1.0 and 0.0 <= c <= 0.5
        assert np.allclose(case.truth.probs, lesion_mode_probs(k, c))
    assert max(ious) < 0.6, "core only and core+halo must differ clearly"


def test_lesion_recipe_formula():
    p_a, p_b, p_c = lesion_mode_probs(0.6, 0.5)
    assert np.isclose(p_c, 0.3) and np.isclose(p_b, 0.7 * 0.9) and np.isclose(p_a, 1 - 0.63 - 0.3)
    p_a, p_b, p_c = lesion_mode_probs(1.0, 0.0)
    assert np.isclose(p_c, 0.1) and np.isclose(p_b, 0.09) and np.isclose(p_a, 0.81)


@pytest.fixture(scope="module")
def lesion_draws():
    """2000 lesion cases (small images): per-case true probs and the 4 graders' modes."""
    cases = SyntheticDataset("lesions", 2000, seed=11, size=16)
    probs = np.empty((2000, 3))
    modes = np.empty((2000, 4), np.int64)
    for i, case in enumerate(cases):
        probs[i], modes[i] = case.truth.probs, case.grader_modes
    return probs, modes


def test_lesion_dataset_wide_mode_probabilities(lesion_draws):
    probs, _ = lesion_draws
    mean = probs.mean(0)
    # exact expectations of the recipe: E[p(C)] = 0.2, E[p(B)] = 0.8 * (0.1 + 1.6 * 0.25) = 0.4
    assert np.allclose(mean, [0.4, 0.4, 0.2], atol=0.015), mean
    # SPEC.md quotes "about A 0.37, B 0.42, C 0.20"
    assert np.allclose(mean, [0.37, 0.42, 0.20], atol=0.04), mean


def test_lesion_grader_frequencies_match_per_image_probabilities(lesion_draws):
    probs, modes = lesion_draws
    for m in range(3):
        hits = (modes == m).astype(float)  # (cases, graders)
        # overall: frequency vs mean probability, binomial standard error per draw
        se = np.sqrt((probs[:, m] * (1 - probs[:, m])).sum() * 4) / hits.size
        assert abs(hits.mean() - probs[:, m].mean()) < 4 * se + 1e-3
        # per image: the graders follow each image's own probability (binned by it)
        edges = np.quantile(probs[:, m], [0, 1 / 3, 2 / 3, 1])
        for lo, hi in zip(edges[:-1], edges[1:]):
            sel = (probs[:, m] >= lo) & (probs[:, m] <= hi)
            p = probs[sel, m]
            se = np.sqrt((p * (1 - p)).sum() * 4) / (sel.sum() * 4)
            assert abs(hits[sel].mean() - p.mean()) < 4 * se + 1e-3, (m, lo, hi)


# ----------------------------------------------------------------------------- flips


def test_flip_truth_has_32_modes_with_product_probabilities():
    case = make_case("flips", 0, 0)
    t = case.truth
    assert t.modes.shape[0] == 32 and len(t.names) == 32 and np.isclose(t.probs.sum(), 1)
    assert np.allclose(t.flip_probs, np.array([8, 7, 6, 5, 4]) / 17)
    assert t.flip_classes == [(1, 6), (2, 7), (3, 8), (4, 9), (5, 10)]
    base = t.modes[0]
    assert set(np.unique(base)) == set(range(6)), "every class present as whole objects"
    for m, name in enumerate(t.names):
        bits = [ch == "1" for ch in name]
        expected = np.prod([p if b else 1 - p for p, b in zip(t.flip_probs, bits)])
        assert np.isclose(t.probs[m], expected)
        for j, (orig, flipped) in enumerate(t.flip_classes):
            where = base == orig
            assert np.all(t.modes[m][where] == (flipped if bits[j] else orig))
    assert len({mode.tobytes() for mode in t.modes}) == 32
    assert CLASS_NAMES["flips"][6] == "sidewalk 2" and len(CLASS_NAMES["flips"]) == 11


def test_flip_rates_and_mode_frequencies_match_truth():
    cases = SyntheticDataset("flips", 1000, seed=5, size=16)
    modes = np.concatenate([case.grader_modes for case in cases])
    bits = (modes[:, None] >> np.arange(4, -1, -1)) & 1
    for j, p in enumerate(FLIP_PROBS):
        se = np.sqrt(p * (1 - p) / len(modes))
        assert abs(bits[:, j].mean() - p) < 4 * se
    probs = make_case("flips", 5, 0, size=16).truth.probs
    freq = np.bincount(modes, minlength=32) / len(modes)
    assert np.all(np.abs(freq - probs) < 4.5 * np.sqrt(probs * (1 - probs) / len(modes)))


def test_flip_image_does_not_reveal_the_flip():
    # one grader per case: the mean intensity of class-1 pixels must not differ between
    # the cases where that grader flipped class 1 and those where it did not
    means, flipped = [], []
    for case in SyntheticDataset("flips", 400, seed=2, size=32, graders=1):
        base = case.truth.modes[0]
        means.append(case.image[base == 1].mean())
        flipped.append(case.masks[0][base == 1][0] == 6)
    means, flipped = np.array(means), np.array(flipped)
    diff = means[flipped].mean() - means[~flipped].mean()
    se = means.std() * np.sqrt(1 / flipped.sum() + 1 / (~flipped).sum())
    assert abs(diff) < 4 * se


# ----------------------------------------------------------------------------- specs


def test_parse_synthetic_spec():
    assert parse_synthetic_spec("synthetic:lesions?n=200&seed=3&size=64&graders=4") == {
        "kind": "lesions", "n": 200, "seed": 3, "size": 64, "graders": 4}
    assert parse_synthetic_spec("synthetic:flips") == {
        "kind": "flips", "n": 100, "seed": 0, "size": 64, "graders": 4}
    dataset = SyntheticDataset(**parse_synthetic_spec("synthetic:flips?n=7&size=32"))
    assert len(dataset) == 7 and dataset[0].image.shape == (32, 32)
    assert parse_synthetic_spec(dataset.spec)["n"] == 7


@pytest.mark.parametrize(
    "spec, words",
    [
        ("synthetic:lesion?n=3", ["'lesion'", "did you mean 'lesions'"]),
        ("synthetic:lesions?n=3&sed=2", ["'sed'", "did you mean 'seed'"]),
        ("synthetic:lesions?n=abc", ["n='abc'", "whole number"]),
        ("synthetic:lesions?n=0", ["n must be"]),
        ("synthetic:lesions?size=8", ["size must be"]),
        ("synthetic:lesions?n", ["cannot parse"]),
        ("lesions", ["not a synthetic spec"]),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(DataError) as info:
        parse_synthetic_spec(spec)
    for word in words:
        assert word in str(info.value)
