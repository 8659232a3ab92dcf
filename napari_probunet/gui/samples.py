"""Sample images for File → Open Sample: real CT slices of lung nodules and synthetic lesions,
each with its graders' masks.

**Real CT** (``lidc_nodule``, ``lidc_nodule_2of4``, ``lidc_nodule_1of4``): three 128x128 axial
CT crops of the LIDC-IDRI set (CC BY 3.0: Armato III et al., Medical Physics 38(2), 2011) with
the masks of its 4 radiologists, stored in ``samples/lidc_test_slices.npz``. They are slices of
the bundled LIDC model's *test* patients (the model never saw them) and were picked by the
radiologists' masks alone (``benchmarks/make_lidc_samples.py``): 4, 2 and 1 of the 4
radiologists marked the nodule.

**Synthetic**:

Every sample is one image layer plus the masks of its four graders as hidden Labels layers
(``grader 1`` ... ``grader 4``), so the latent-space explorer has real annotations to place.
Their ``metadata["kind"]`` is ``"grader"``: the plugin's widgets draw such layers as outlines
(:func:`napari_probunet.gui.dock.outline_graders`; napari's Labels take no ``contour`` when
they are made, so a layer data tuple cannot ask for it).
The images come from the package's fixed ``lesions`` recipe
(:func:`napari_probunet.data.synthetic.make_case`); the cases were picked by eye for a clearly
visible lesion on which the graders disagree. The image metadata carries the known truth (the
recipe's mode probabilities), for teaching and checking.

Only NumPy, SciPy (and napari's colormap class) are imported here: opening a sample never
loads torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_probunet.data.synthetic import make_case
from napari_probunet.gui.palette import (  # noqa: F401 (one_colour_colormap: re-exported)
    RADIOLOGIST_COLOURS,
    one_colour_colormap,
    radiologist_colormap,
)

#: (seed, index) of the cases shown: a visible halo that two graders include and one does not
LESION_CASE = (0, 33)
#: a faint halo (contrast 0.08): the graders split between core only and core + halo
FAINT_CASE = (7, 24)
#: the lesion pasted into the 256x256 slice
LARGE_CASE = (0, 36)
#: where the 64x64 lesion crop sits in the 256x256 slice (top-left corner, rows/cols):
#: in the right lung (image left), well away from the centre, so the click ROI matters
LARGE_OFFSET = (60, 40)
LARGE_SIZE = 256

#: display range of the lesions recipe's intensities (about 0 to 1.3)
CONTRAST = (0.0, 1.3)


def _case_layers(image: np.ndarray, masks: np.ndarray, name: str, truth, source: str) -> list:
    meta = {
        "source": source,
        "truth": {
            "mode_probabilities": dict(zip(truth.names, (float(p) for p in truth.probs))),
            **(truth.params or {}),
        },
    }
    layers = [(image, {"name": name, "colormap": "gray", "contrast_limits": CONTRAST,
                       "metadata": meta}, "image")]
    for r, mask in enumerate(masks):
        layers.append((mask.astype(np.uint8), {
            "name": f"grader {r + 1}",
            "visible": False,
            "opacity": 0.9,
            "colormap": radiologist_colormap(r),
            "metadata": {"kind": "grader", "grader": r + 1, "source": source},
        }, "labels"))
    return layers


#: the real CT samples: key -> (index in lidc_test_slices.npz, layer name)
LIDC_SAMPLES = {"lidc_nodule": (0, "CT nodule 4of4"),
                "lidc_nodule_2of4": (1, "CT nodule 2of4"),
                "lidc_nodule_1of4": (2, "CT nodule 1of4")}
LIDC_FILE = Path(__file__).resolve().parents[1] / "samples" / "lidc_test_slices.npz"
#: the radiologists' outline colours (the one palette: :mod:`napari_probunet.gui.palette`)
RATER_COLOURS = RADIOLOGIST_COLOURS


def _lidc_layers(key: str) -> list:
    index, name = LIDC_SAMPLES[key]
    with np.load(LIDC_FILE) as z:
        image, masks, case_id = z["images"][index], z["masks"][index], str(z["ids"][index])
    source = f"LIDC-IDRI slices (CC BY 3.0), {case_id}"
    meta = {"source": source, "modality": "CT",
            "intensity": "8-bit, each crop's own range stretched to 0..255",
            "note": "a test patient of the bundled LIDC model: never used in training"}
    layers = [(image, {"name": name, "colormap": "gray", "contrast_limits": (0, 255),
                       "metadata": meta}, "image")]
    for r, mask in enumerate(masks):
        layers.append((mask.astype(np.uint8), {
            "name": f"radiologist {r + 1}" + ("" if mask.any() else " (drew nothing)"),
            "visible": False,
            "opacity": 0.9,
            "colormap": radiologist_colormap(r),
            "metadata": {"kind": "grader", "grader": r + 1, "source": source},
        }, "labels"))
    return layers


def sample_lidc_nodule() -> list:
    """A real 128x128 CT crop of a lung nodule outlined by all 4 radiologists, who disagree."""
    return _lidc_layers("lidc_nodule")


def sample_lidc_nodule_2of4() -> list:
    """A real CT crop of a nodule that only 2 of the 4 radiologists marked."""
    return _lidc_layers("lidc_nodule_2of4")


def sample_lidc_nodule_1of4() -> list:
    """A real CT crop of a nodule that only 1 of the 4 radiologists marked."""
    return _lidc_layers("lidc_nodule_1of4")


def sample_lesion() -> list:
    """A 64x64 synthetic lung lesion with a visible halo on which the graders disagree."""
    case = make_case("lesions", *LESION_CASE, size=64)
    return _case_layers(case.image, case.masks, "lesion", case.truth, case.source)


def sample_lesion_faint() -> list:
    """A 64x64 synthetic lesion whose ground-glass halo is barely visible."""
    case = make_case("lesions", *FAINT_CASE, size=64)
    return _case_layers(case.image, case.masks, "lesion (faint halo)", case.truth, case.source)


def ct_slice(size: int = LARGE_SIZE, seed: int = 0) -> np.ndarray:
    """A lesion-free, CT-like chest slice in the recipe's intensity scale (float32).

    Air outside the body at 0, soft tissue about 0.55, a bright vertebra, and two lungs whose
    parenchyma matches the synthetic crops (about 0.03-0.09 with a smooth texture and vessels).
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(np.float32)
    u = size / 256.0

    def ellipse(cy, cx, ry, rx):
        return ((y - cy * u) / (ry * u)) ** 2 + ((x - cx * u) / (rx * u)) ** 2 < 1.0

    body = ellipse(128, 128, 100, 122)
    lungs = ellipse(118, 74, 72, 46) | ellipse(118, 182, 72, 46)
    spine = ellipse(206, 128, 16, 16)

    tissue = 0.55 + 0.04 * gaussian_filter(rng.standard_normal((size, size)), 3 * u) * 3
    lung = 0.06 + 0.025 * gaussian_filter(rng.standard_normal((size, size)), 2.5 * u) * 3
    # a few vessels in the lungs
    vessels = np.zeros((size, size), np.float32)
    for _ in range(10):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4) * size
        bend = rng.uniform(-1.5, 1.5) / size
        along = (x - size / 2) * np.cos(angle) + (y - size / 2) * np.sin(angle)
        across = -(x - size / 2) * np.sin(angle) + (y - size / 2) * np.cos(angle)
        dist = np.abs(across - offset - bend * along**2)
        np.maximum(vessels, rng.uniform(0.15, 0.35) * np.exp(-((dist / (1.2 * u)) ** 2)),
                   out=vessels)
    image = np.where(body, tissue, 0.0).astype(np.float32)
    image = np.where(lungs, lung + vessels, image)
    image = np.where(spine, 1.2, image)
    image = gaussian_filter(image, 0.7 * u)  # soft organ borders (partial volume)
    image += 0.015 * rng.standard_normal((size, size))
    return np.maximum(image, 0.0).astype(np.float32)


def sample_lesion_large() -> list:
    """A 256x256 CT-like slice with a lesion in one lung, off-centre (use the click ROI)."""
    case = make_case("lesions", *LARGE_CASE, size=64)
    image = ct_slice()
    r0, c0 = LARGE_OFFSET
    crop = np.s_[r0:r0 + 64, c0:c0 + 64]
    # feathered paste: the crop's own parenchyma fades into the slice's around the lesion
    yy, xx = np.mgrid[:64, :64]
    rho = np.hypot(yy - 31.5, xx - 31.5)
    alpha = np.clip((26.0 - rho) / 7.0, 0.0, 1.0).astype(np.float32)
    image[crop] = alpha * case.image + (1.0 - alpha) * image[crop]
    masks = np.zeros((len(case.masks), LARGE_SIZE, LARGE_SIZE), np.uint8)
    masks[(slice(None), *crop)] = case.masks
    layers = _case_layers(image, masks, "CT slice", case.truth, case.source)
    layers[0][1]["metadata"]["lesion_offset"] = list(LARGE_OFFSET)
    return layers
