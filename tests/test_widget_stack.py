"""The review widget's "All slices" option: every slice of a 3D stack in one run."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_probunet.model.modelfile import load_model
from napari_probunet.model.testing import two_mode_case, wait_idle
from napari_probunet.review import jobs as _jobs
from napari_probunet.session import Session

pytestmark = pytest.mark.usefixtures("isolated_settings")


def make_stack():
    image, _ = two_mode_case()
    stack = np.stack([image, image * 0.8, np.zeros_like(image), image * 1.2]).astype(np.float32)
    return stack  # slice 2 is blank


def test_all_slices_samples_every_slice(review, qtbot, two_mode_model_file):
    viewer, widget = review
    stack = make_stack()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    assert widget.roi_tool.slices_combo.isEnabled()
    widget.controller.input.set(slices_all=True)
    widget.sampler.n_spin.setValue(16)
    widget.sampler.seed_spin.setValue(7)
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    layers = [viewer.layers[f"stack hypothesis {i:02d}"] for i in range(1, 17)]
    assert all(la.data.shape == (4, 32, 32) for la in layers)
    unc = viewer.layers["stack uncertainty"]
    assert unc.data.shape == (4, 32, 32)
    assert widget.sampler.progress.value() == 4 and widget.sampler.progress.maximum() == 4

    direct = Session(load_model(two_mode_model_file), "cpu")
    for k in range(4):
        if k == 2:  # the blank slice is left empty
            assert all(not la.data[k].any() for la in layers)
            assert layers[0].metadata["z_per_slice"][k] is None
            continue
        direct.set_image(stack[k])
        hyp = direct.sample(16, 7)
        for i, la in enumerate(layers):
            np.testing.assert_array_equal(la.data[k], hyp.labels[i])
            np.testing.assert_allclose(la.metadata["z_per_slice"][k], hyp.z[i], rtol=1e-5)
    meta = layers[0].metadata
    assert meta["seed"] == 7 and meta["slices"] == "all" and meta["slices_done"] == 4
    # the state is the current slice's (cycling, best fit, export work on it)
    st = widget.state
    assert st.encoded.slice_index == (1,)
    np.testing.assert_array_equal(st.hypotheses.labels, np.stack([la.data[1] for la in layers]))
    assert st.session.image_signature == st.encoded.image_signature
    widget.controller.next_hypothesis()
    assert layers[1].visible and not layers[0].visible


def test_cancel_after_the_first_slice_keeps_it(review, qtbot, monkeypatch):
    """Cancel stops between slices: the slices done (the current one first) are kept."""
    viewer, widget = review
    decoded, clicked = [], threading.Event()
    original = _jobs.decode_region

    def held(*args, **kwargs):  # hold the worker after the first slice until Cancel is clicked
        out = yield from original(*args, **kwargs)
        decoded.append(1)
        if len(decoded) == 1:
            clicked.wait(20)
        return out

    monkeypatch.setattr(_jobs, "decode_region", held)
    viewer.add_image(make_stack(), name="stack")
    viewer.dims.set_current_step(0, 0)
    widget.controller.input.set(slices_all=True)
    widget.sampler.n_spin.setValue(4)
    assert widget.sampler.sample()
    qtbot.waitUntil(lambda: len(decoded) == 1, timeout=20_000)
    qtbot.mouseClick(widget.sampler.cancel_button, Qt.MouseButton.LeftButton)
    clicked.set()
    wait_idle(qtbot, widget)
    layers = [viewer.layers[f"stack hypothesis {i:02d}"] for i in range(1, 5)]
    assert all(la.data.shape == (4, 32, 32) for la in layers)
    done = layers[0].metadata["slices_done"]
    assert done == 1  # the current slice is always done first; Cancel stops after it
    assert [z is not None for z in layers[0].metadata["z_per_slice"]] == [True, False, False, False]
    np.testing.assert_array_equal(np.stack([la.data[0] for la in layers]),
                                  widget.state.hypotheses.labels)
    assert all(not la.data[done:].any() for la in layers)
    assert widget.state.hypotheses is not None and widget.state.encoded.slice_index == (0,)


def test_option_disabled_for_a_2d_image(review):
    viewer, widget = review
    viewer.add_image(two_mode_case()[0], name="flat")
    widget.roi_tool.image_combo.setCurrentText("flat")
    assert not widget.roi_tool.slices_combo.isEnabled()
    widget.controller.input.set(slices_all=True)
    assert not widget.controller.input.all_slices


def test_the_review_and_probunet_sample_give_a_volume_the_same_hypotheses(
        review, qtbot, two_mode_model_file, tmp_path, capsys):
    """One stack-sampling rule: a NIfTI volume sampled by ``probunet sample`` and by the review's
    *All slices* (the seed typed in is the bundle's) gives the same hypotheses on every slice."""
    import nibabel

    from napari_probunet.cli import main
    from napari_probunet.review import bundle as bundles

    viewer, widget = review
    stack = make_stack()  # (slices, rows, columns) as napari shows a volume
    path = tmp_path / "scan.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.transpose(stack, (2, 1, 0)),
                                     np.diag([0.7, 0.7, 2.5, 1.0])), path)
    out = tmp_path / "bundles"
    rc = main(["sample", str(path), "--model", str(two_mode_model_file), "--out", str(out),
               "-n", "8", "--seed", "5", "--threads", "1"])
    assert rc == 0, capsys.readouterr()
    found = sorted(out.glob("*.probunet.zip"))
    assert len(found) == 3  # the blank slice is skipped (left empty by the review too)
    cli = {bundles.read_bundle(p).manifest["slice_index"]: bundles.read_bundle(p) for p in found}
    seeds = {b.seed for b in cli.values()}
    assert len(seeds) == 1, "every slice of the volume takes the volume's seed"

    layer = viewer.open(path, plugin="napari-probunet")[0]
    assert layer.data.shape == stack.shape
    viewer.dims.set_current_step(0, 0)
    widget.controller.input.set(slices_all=True)
    widget.sampler.n_spin.setValue(8)
    widget.sampler.seed_spin.setValue(seeds.pop())
    assert widget.sampler.sample()
    wait_idle(qtbot, widget)
    name = layer.name
    layers = [viewer.layers[f"{name} hypothesis {i:02d}"] for i in range(1, 9)]
    assert all(not la.data[2].any() for la in layers)
    for k, b in cli.items():
        np.testing.assert_array_equal(b.image, np.asarray(layer.data[k], np.float32))
        for i, la in enumerate(layers):
            np.testing.assert_array_equal(la.data[k], b.hypotheses.labels[i],
                                          err_msg=f"slice {k} #{i}")
