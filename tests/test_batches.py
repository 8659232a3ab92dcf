"""The training batches: one grader's mask per case (the paper's recipe) or every grader's."""

import numpy as np
import pytest

from napari_probunet.data.case import Case
from napari_probunet.errors import UserError
from napari_probunet.model.testing import tiny_config
from napari_probunet.training.batches import BatchSampler
from napari_probunet.training.settings import TrainConfig, check_settings


def _cases(n=5, graders=4, size=32):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        image = rng.normal(size=(size, size)).astype(np.float32) + i
        # grader g draws a square of side 4 + 2g: the masks of one case all differ
        masks = np.zeros((graders, size, size), np.uint8)
        for g in range(graders):
            masks[g, 8:12 + 2 * g, 8:12 + 2 * g] = 1
        cases.append(Case(image=image, masks=masks, case_id=f"c{i}"))
    return cases


def test_one_mask_per_case_by_default():
    x, y = BatchSampler(_cases(), tiny_config(input_size=32), 6, seed=0, augment=False)()
    assert tuple(x.shape) == (6, 1, 32, 32) and tuple(y.shape) == (6, 32, 32)
    # six draws from five cases: the images are those of the cases, not repeats of one case
    assert len({float(v) for v in x.mean(dim=(1, 2, 3))}) >= 2


@pytest.mark.parametrize("augment", [False, True])
def test_all_masks_gives_every_grader_of_each_case_on_one_image(augment):
    sampler = BatchSampler(_cases(), tiny_config(input_size=32), 8, seed=3, augment=augment,
                           all_masks=True)
    x, y = sampler()
    assert tuple(x.shape) == (8, 1, 32, 32)
    for case in range(2):
        block = slice(4 * case, 4 * case + 4)
        # one image, repeated once per grader, augmented once for all four masks
        assert all(np.array_equal(x[4 * case].numpy(), xi.numpy()) for xi in x[block])
        areas = sorted(int(m.sum()) for m in y[block])
        assert len(set(areas)) == 4, areas  # four different graders, none repeated


def test_all_masks_refuses_a_batch_that_splits_a_case():
    sampler = BatchSampler(_cases(), tiny_config(input_size=32), 6, seed=0, augment=False,
                           all_masks=True)
    with pytest.raises(UserError, match="multiple of 4"):
        sampler()


def test_unknown_masks_per_case_is_refused_with_the_choices():
    with pytest.raises(UserError, match="'one'.*'all'"):
        check_settings(TrainConfig(masks_per_case="every"))
