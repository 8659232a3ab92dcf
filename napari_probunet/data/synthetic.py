"""Synthetic multi-rater data with a known ground-truth distribution over segmentations.

Two kinds (``KINDS``), both deterministic in ``(kind, seed, index, size, graders)`` and
random-access (case ``i`` never depends on cases ``< i``), cheap enough to generate on the fly
during training (about 1 ms per 128x128 case):

``lesions`` -- CT-like lung crops, the calibration test bed. A dark textured background
    (about 0.0-0.2) with bright vessel-like tubes, and near the centre a lesion made of a solid
    core ``k ~ U[0.6, 1]`` above the background and a faint ground-glass halo ``c ~ U[0, 0.5]``
    above the background (sometimes a spicule, which no grader includes). The graders choose
    among three modes with the FIXED recipe of SPEC.md::

        A = core only, B = core + halo, C = nothing
        p(C) = 0.1 + 0.2 * (1 - (k - 0.6) / 0.4)
        p(B) = (1 - p(C)) * (0.1 + 1.6 * c)
        p(A) = 1 - p(B) - p(C)

    Intensities lie in about [0, 1.3] and are absolute: the model must map them with a
    fixed linear preprocessing (never per-image normalisation), because the contrasts k and c
    are what set the mode probabilities.

``flips`` -- a street-like scene in the spirit of the paper's Cityscapes experiment:
    background plus five object classes (sidewalk, person, car, vegetation, road), each with
    its own intensity and texture so the image tells the class. Every class flips, all its
    pixels together, to its own second class (``class + 5``) with probability 8/17, 7/17, 6/17,
    5/17 and 4/17 independently: 32 modes. The image never shows whether a flip happens.
    The objects are large on purpose (person, car, the two vegetation blobs together and the
    sidewalk each cover about 9-11% of the image, never less than 7.5%; the road about 23%):
    with a person of 1% of the image (the first version), the evidence of a flip that the
    posterior pools, and the decoder's gain from using it, scaled with the object's area;
    training learnt the flips one at a time, largest first, and no run here learnt the
    person's or the car's flip.

Random streams: per case, one seed sequence ``(seed, kind, index)`` spawns three independent
streams: the scene parameters (drawn in size-free units, so a case keeps its geometry and its
truth at any ``size``), the pixel textures and noise, and the graders (so with ``graders=8``
the first four graders equal those of ``graders=4``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from urllib.parse import parse_qsl

import numpy as np

from napari_probunet.data.case import Case, ModeTruth
from napari_probunet.errors import DataError

#: the synthetic dataset kinds
KINDS = ("lesions", "flips")

#: bumped whenever a generator's output changes; written to dataset.json
RECIPE_VERSION = 1

#: flips: the five flipping classes (paper's Cityscapes experiment) and their flip probabilities
FLIP_CLASS_NAMES = ("sidewalk", "person", "car", "vegetation", "road")
FLIP_PROBS = np.array([8, 7, 6, 5, 4], dtype=np.float64) / 17.0
#: flips: (original class, flipped class) per flipping class
FLIP_CLASSES = [(j + 1, j + 6) for j in range(5)]

#: class names per kind, index = label value
CLASS_NAMES: dict[str, list[str]] = {
    "lesions": ["background", "lesion"],
    "flips": ["background", *FLIP_CLASS_NAMES, *(f"{n} 2" for n in FLIP_CLASS_NAMES)],
}

#: lesions: mode names, in mode-index order
LESION_MODES = ["core", "core+halo", "nothing"]

_KIND_ID = {"lesions": 1, "flips": 2}
_SPEC_KEYS = ("n", "seed", "size", "graders")
_MIN_SIZE = 16


# ----------------------------------------------------------------------------- public API


def lesion_mode_probs(k: float, c: float) -> np.ndarray:
    """The recipe's mode probabilities ``(p(A), p(B), p(C))`` for core contrast ``k`` and
    halo contrast ``c`` (A = core only, B = core + halo, C = nothing)."""
    p_c = 0.1 + 0.2 * (1.0 - (k - 0.6) / 0.4)
    p_b = (1.0 - p_c) * (0.1 + 1.6 * c)
    return np.array([1.0 - p_b - p_c, p_b, p_c], dtype=np.float64)


def make_case(kind: str, seed: int, index: int, size: int = 64, graders: int = 4) -> Case:
    """Generate case ``index`` of the synthetic dataset ``kind`` for ``seed``.

    Returns a :class:`Case` with a ``(size, size)`` float32 image, ``(graders, size, size)``
    uint8 masks, its :class:`ModeTruth` and the mode index each grader drew. Deterministic in
    all arguments; independent of any other index.
    """
    _check_args(kind, 1, seed, size, graders)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise DataError(f"synthetic case index must be an integer >= 0, got {index!r}.")
    streams = np.random.SeedSequence([int(seed), _KIND_ID[kind], int(index)]).spawn(3)
    scene, texture, grader_rng = (np.random.default_rng(s) for s in streams)
    if kind == "lesions":
        image, truth = _lesion_scene(scene, texture, size)
    else:
        image, truth = _flip_scene(scene, texture, size)
    if kind == "flips":
        bits = grader_rng.random((graders, 5)) < FLIP_PROBS
        grader_modes = bits.astype(np.int64) @ (1 << np.arange(4, -1, -1))
    else:
        cdf = np.cumsum(truth.probs)
        grader_modes = np.searchsorted(cdf, grader_rng.random(graders), side="right")
        grader_modes = np.minimum(grader_modes, truth.n_modes - 1).astype(np.int64)
    return Case(
        image=image,
        masks=truth.modes[grader_modes],
        case_id=f"{kind}-s{seed}-{index:05d}",
        group_id=None,
        truth=truth,
        grader_modes=grader_modes,
        source=f"synthetic:{kind}?seed={seed}&size={size}&graders={graders}#{index}",
    )


class SyntheticDataset(Sequence[Case]):
    """``n`` synthetic cases of ``kind``, generated lazily on access.

    ``dataset[i]`` is ``make_case(kind, seed, i, size, graders)``; slices give lists. With
    ``cache=True`` generated cases are kept (memory: about ``(4 + R + M) * size**2`` bytes per
    case, ``M`` = 3 modes for lesions, 32 for flips).
    """

    def __init__(
        self,
        kind: str,
        n: int,
        seed: int = 0,
        size: int = 64,
        graders: int = 4,
        cache: bool = False,
    ) -> None:
        _check_args(kind, n, seed, size, graders)
        self.kind, self.n, self.seed, self.size, self.graders = kind, n, seed, size, graders
        self._cache: dict[int, Case] | None = {} if cache else None

    @property
    def class_names(self) -> list[str]:
        """Names of the label values of this kind."""
        return list(CLASS_NAMES[self.kind])

    @property
    def group_ids(self) -> list[str | None]:
        """Group id per case without generating any (synthetic cases are independent)."""
        return [None] * self.n

    @property
    def spec(self) -> str:
        """The ``synthetic:`` spec string that recreates this dataset."""
        return (
            f"synthetic:{self.kind}?n={self.n}&seed={self.seed}&size={self.size}"
            f"&graders={self.graders}"
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticDataset indices must be integers, not {type(index)}")
        i = int(index) + self.n if index < 0 else int(index)
        if not 0 <= i < self.n:
            raise IndexError(f"case {index} out of range for a dataset of {self.n}")
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        case = make_case(self.kind, self.seed, i, self.size, self.graders)
        if self._cache is not None:
            self._cache[i] = case
        return case

    def __repr__(self) -> str:
        return f"SyntheticDataset({self.spec!r})"


def parse_synthetic_spec(spec: str) -> dict:
    """Parse ``"synthetic:KIND?n=N&seed=S&size=H&graders=R"`` into ``SyntheticDataset`` kwargs.

    Every query key is optional (defaults n=100, seed=0, size=64, graders=4). Returns
    ``{"kind", "n", "seed", "size", "graders"}``. Raises :class:`DataError` naming the typo.
    """
    text = str(spec).strip()
    prefix = "synthetic:"
    if not text.lower().startswith(prefix):
        raise DataError(
            f"{spec!r} is not a synthetic spec; write e.g. 'synthetic:lesions?n=200&seed=3'."
        )
    body = text[len(prefix) :]
    kind, _, query = body.partition("?")
    kind = kind.strip().lower()
    if kind not in KINDS:
        hint = difflib.get_close_matches(kind, KINDS, n=1)
        raise DataError(
            f"unknown synthetic kind {kind!r} in {spec!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else ".")
            + f" Known kinds: {', '.join(KINDS)}."
        )
    out: dict = {"kind": kind, "n": 100, "seed": 0, "size": 64, "graders": 4}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise DataError(
            f"cannot parse the options {query!r} of {spec!r}: write key=value pairs joined "
            "by '&', e.g. 'synthetic:lesions?n=200&seed=3'."
        ) from exc
    for key, value in pairs:
        key = key.strip().lower()
        if key not in _SPEC_KEYS:
            hint = difflib.get_close_matches(key, _SPEC_KEYS, n=1)
            raise DataError(
                f"unknown option {key!r} in {spec!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else ".")
                + f" Known options: {', '.join(_SPEC_KEYS)}."
            )
        try:
            out[key] = int(value)
        except ValueError:
            raise DataError(
                f"option {key}={value!r} in {spec!r} must be a whole number."
            ) from None
    _check_args(out["kind"], out["n"], out["seed"], out["size"], out["graders"])
    return out


# ----------------------------------------------------------------------------- helpers


def _check_args(kind, n, seed, size, graders) -> None:
    if kind not in KINDS:
        raise DataError(f"unknown synthetic kind {kind!r}; known kinds: {', '.join(KINDS)}.")
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("size", size, _MIN_SIZE),
                             ("graders", graders, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"synthetic {name} must be an integer >= {low}, got {value!r}.")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each ``(size, size)`` float32."""
    ax = np.arange(size, dtype=np.float32) + 0.5
    return ax[:, None] + np.zeros((1, size), np.float32), np.zeros((size, 1), np.float32) + ax


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """``(size, size)`` float32 Gaussian-smoothed white noise, scaled to unit std."""
    from scipy import ndimage  # lazy: scipy.ndimage takes ~0.25 s to import

    noise = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _radius(theta: np.ndarray, r0: float, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """A wobbly outline: ``r0 * (1 + sum_j amps[j] * cos((j + 2) * theta + phases[j]))``."""
    wobble = np.zeros_like(theta)
    for j, (a, p) in enumerate(zip(amps, phases)):
        wobble += np.float32(a) * np.cos((j + 2) * theta + np.float32(p))
    return np.float32(r0) * (1.0 + wobble)


# ----------------------------------------------------------------------------- lesions


def _lesion_scene(scene: np.random.Generator, texture: np.random.Generator, size: int):
    """CT-like crop with one lesion. Returns ``(image (H, W) float32, ModeTruth)``."""
    u = size / 64.0  # geometry is drawn for a 64-pixel crop and scaled
    # scene parameters: a fixed number of draws, all in size-free units
    k = scene.uniform(0.6, 1.0)
    c = scene.uniform(0.0, 0.5)
    bg_level = scene.uniform(0.03, 0.09)  # lung parenchyma
    bg_amp = scene.uniform(0.015, 0.035)  # its smooth texture (std)
    noise_sd = scene.uniform(0.008, 0.025)  # pixel noise
    centre = size / 2.0 + scene.uniform(-3.0, 3.0, size=2) * u
    r_core = scene.uniform(4.0, 7.5) * u
    halo_factor = scene.uniform(1.5, 2.0)
    core_amps, core_phases = scene.uniform(0.0, 0.1, 3), scene.uniform(0, 2 * np.pi, 3)
    halo_amps, halo_phases = scene.uniform(0.0, 0.1, 3), scene.uniform(0, 2 * np.pi, 3)
    has_spicule = scene.random() < 0.5
    spic_angle, spic_len, spic_width = (scene.uniform(0, 2 * np.pi), scene.uniform(1.1, 1.6),
                                        scene.uniform(0.5, 0.9) * u)
    n_vessels = int(scene.integers(2, 7))
    v_angle = scene.uniform(0, np.pi, 6)
    v_offset = scene.uniform(-0.45, 0.45, 6) * size
    v_bend = scene.uniform(-0.8, 0.8, 6) / size
    v_width = scene.uniform(0.6, 1.6, 6) * u
    v_amp = scene.uniform(0.2, 0.5, 6)

    y, x = _grid(size)
    dy, dx = y - np.float32(centre[0]), x - np.float32(centre[1])
    rho = np.hypot(dy, dx)
    theta = np.arctan2(dy, dx)
    r_c = _radius(theta, r_core, core_amps, core_phases)
    r_h = r_c * np.float32(halo_factor) * _radius(theta, 1.0, halo_amps, halo_phases)
    core = rho < r_c
    halo = rho < r_h  # contains the core: r_h >= 1.5 * 0.7 * r_c > r_c

    # background: smooth lung texture
    image = np.float32(bg_level) + np.float32(bg_amp) * _smooth_noise(texture, size, 2.5 * u)
    # vessels: curved tubes, fading out before they reach the halo
    ca, sa = np.cos(v_angle).astype(np.float32), np.sin(v_angle).astype(np.float32)
    vessels = np.zeros((size, size), np.float32)
    for i in range(n_vessels):
        along = (x - size / 2) * ca[i] + (y - size / 2) * sa[i]
        across = -(x - size / 2) * sa[i] + (y - size / 2) * ca[i]
        dist = np.abs(across - v_offset[i] - v_bend[i] * along**2)
        tube = np.float32(v_amp[i]) * np.exp(-((dist / np.float32(v_width[i])) ** 2))
        np.maximum(vessels, tube, out=vessels)
    vessels *= np.clip((rho - r_h) / np.float32(2.5 * u), 0.0, 1.0)
    # lesion: soft-edged core (partial volume) over a textured ground-glass halo
    edge = np.float32(0.6 * u)
    core_soft = np.clip((r_c - rho) / edge + 0.5, 0.0, 1.0)
    halo_soft = np.clip((r_h - rho) / edge + 0.5, 0.0, 1.0)
    glass = 1.0 + 0.15 * _smooth_noise(texture, size, 1.0 * u)
    lesion = np.maximum(np.float32(k) * core_soft, np.float32(c) * halo_soft * glass)
    if has_spicule:
        sa_, ca_ = np.float32(np.sin(spic_angle)), np.float32(np.cos(spic_angle))
        along = dx * ca_ + dy * sa_
        across = np.abs(-dx * sa_ + dy * ca_)
        length = np.float32(spic_len) * r_h
        taper = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
        spicule = np.float32(0.6 * k) * taper * np.exp(-((across / np.float32(spic_width)) ** 2))
        lesion = np.maximum(lesion, spicule)
    image = image + vessels + lesion
    image += np.float32(noise_sd) * texture.standard_normal((size, size), dtype=np.float32)
    np.maximum(image, 0.0, out=image)

    modes = np.zeros((3, size, size), np.uint8)
    modes[0] = core
    modes[1] = halo
    truth = ModeTruth(
        modes=modes,
        probs=lesion_mode_probs(k, c),
        names=list(LESION_MODES),
        params={"k": float(k), "c": float(c)},
    )
    return image.astype(np.float32, copy=False), truth


# ----------------------------------------------------------------------------- flips

# class -> (mean intensity, texture amplitude): the image shows the class, never the flip
_FLIP_LOOK = {
    0: (0.45, 0.05),  # background: buildings with window stripes
    1: (0.62, 0.05),  # sidewalk: paving tiles
    2: (0.06, 0.02),  # person: dark
    3: (0.95, 0.03),  # car: bright body, darker windows
    4: (0.78, 0.10),  # vegetation: blotchy
    5: (0.22, 0.02),  # road: dark, fine grain
}


def _flip_modes(base: np.ndarray) -> np.ndarray:
    """All 32 label maps ``(32, H, W)`` of a base map: mode ``m``'s bit ``j`` (from the
    left of ``f"{m:05b}"``) flips class ``j + 1`` to ``j + 6``."""
    lut = np.tile(np.arange(11, dtype=np.uint8), (32, 1))
    for m in range(32):
        for j in range(5):
            if (m >> (4 - j)) & 1:
                lut[m, j + 1] = j + 6
    return lut[:, base]


def _flip_scene(scene: np.random.Generator, texture: np.random.Generator, size: int):
    """Street-like scene with all five flipping classes. Returns ``(image, ModeTruth)``."""
    s = float(size)
    road_top = scene.uniform(0.62, 0.72)
    road_tilt = scene.uniform(-0.08, 0.08)
    walk_top = road_top - scene.uniform(0.09, 0.14)
    tiles = scene.uniform(6, 10)
    # every flipping object covers roughly 7-25% of the image (see the module docstring)
    n_veg = 2
    veg_x = np.array([scene.uniform(0.15, 0.27), scene.uniform(0.73, 0.85)])
    veg_y = scene.uniform(0.18, 0.3, 2)
    veg_r = scene.uniform(0.11, 0.14, 2)
    veg_phase = scene.uniform(0, 2 * np.pi, 2)
    car_w, car_h = scene.uniform(0.38, 0.48), scene.uniform(0.2, 0.24)
    car_x = scene.uniform(0.3, 0.7)
    car_bottom = scene.uniform(0.0, 1.0)
    person_w, person_h = scene.uniform(0.21, 0.25), scene.uniform(0.4, 0.46)
    person_x = scene.uniform(0.4, 0.6)
    person_bottom = scene.uniform(0.0, 1.0)
    bright = scene.uniform(-0.04, 0.04)

    y, x = _grid(size)
    yn, xn = y / s, x / s
    road_line = road_top + road_tilt * (xn - 0.5)
    base = np.zeros((size, size), np.uint8)
    for i in range(n_veg):
        dy, dx = yn - veg_y[i], xn - veg_x[i]
        r = veg_r[i] * (1.0 + 0.18 * np.sin(5 * np.arctan2(dy, dx) + veg_phase[i]))
        base[np.hypot(dy, dx * 0.9) < r] = 4
    base[yn >= walk_top + road_tilt * (xn - 0.5)] = 1
    base[yn >= road_line] = 5
    # car: on the road, fully below the road line (so it never touches the person)
    car_top_min = road_top + abs(road_tilt) * 0.5 + 0.02
    cb = car_top_min + car_h + car_bottom * max(0.97 - car_top_min - car_h, 0.0)
    min_w = 2.0 / s  # at least two pixels for the thin objects at small sizes
    in_car = (np.abs(xn - car_x) < car_w / 2) & (yn < cb) & (yn >= cb - car_h)
    base[in_car] = 3
    # person: stands on the sidewalk, above the road line
    walk_line = walk_top - abs(road_tilt) * 0.5
    pb = walk_line + 0.03 + person_bottom * max(road_top - abs(road_tilt) * 0.5 - walk_line
                                                - 0.03, 0.0)
    pw = max(person_w, min_w)
    py = (yn - (pb - person_h / 2)) / (person_h / 2)
    px = (xn - person_x) / (pw / 2)
    in_person = px**2 + py**4 < 1.0
    base[in_person] = 2
    if not np.all(np.isin(np.arange(6), base)):
        # thin or clipped objects at tiny sizes: make sure every class shows at least one pixel
        for cls, (yy, xx) in ((2, (pb - person_h / 2, person_x)), (3, (cb - car_h / 2, car_x))):
            if not np.any(base == cls):
                base[min(int(yy * s), size - 1), min(int(xx * s), size - 1)] = cls

    # the image: per-class intensity and texture, then global noise
    fine = texture.standard_normal((size, size), dtype=np.float32)
    blotch = _smooth_noise(texture, size, max(s / 40.0, 0.8))
    mean = np.array([v[0] for v in _FLIP_LOOK.values()], np.float32)[base]
    amp = np.array([v[1] for v in _FLIP_LOOK.values()], np.float32)[base]
    pattern = blotch.copy()
    windows = np.sign(np.sin(2 * np.pi * xn * 12)) * (np.sin(2 * np.pi * yn * 9) > 0.3)
    pattern[base == 0] = windows[base == 0]
    pattern[base == 1] = np.sign(np.sin(2 * np.pi * xn * tiles))[base == 1]
    pattern[base == 5] = fine[base == 5]
    car_win = in_car & (yn < cb - car_h * 0.55)
    pattern[base == 3] = np.where(car_win, -8.0, 0.3 * blotch)[base == 3]
    image = mean + amp * pattern + np.float32(bright)
    image += np.float32(0.015) * fine
    np.clip(image, 0.0, None, out=image)

    modes = _flip_modes(base)
    bits = (np.arange(32)[:, None] >> np.arange(4, -1, -1)[None, :]) & 1
    probs = np.prod(np.where(bits == 1, FLIP_PROBS, 1.0 - FLIP_PROBS), axis=1)
    truth = ModeTruth(
        modes=modes,
        probs=probs,
        names=[f"{m:05b}" for m in range(32)],
        flip_probs=FLIP_PROBS.copy(),
        flip_classes=list(FLIP_CLASSES),
    )
    return image.astype(np.float32, copy=False), truth
