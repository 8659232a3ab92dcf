"""The review controller without Qt or napari: its rules and its events.

A real seeded tiny model in a real :class:`~napari_probunet.session.Session`; the jobs are run
the way the review's job runner runs them (plain generators, here to their end on this
thread), the layers are plain objects with ``metadata`` and ``data``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_probunet.review.controller import ReviewController, join_sentences
from napari_probunet.review.jobs import SamplingJob, sampling_job
from napari_probunet.review.state import ReviewState
from napari_probunet.session import Session


class Recorder:
    """Every event of a controller, in order: ``[(name, args), ...]``."""

    NAMES = ("model_changed", "busy_changed", "input_changed", "encoded_changed",
             "domain_changed", "hypotheses_changed", "current_changed", "best_fit_requested",
             "correction_changed", "correction_placed", "sample_requested", "message",
             "layers_changed", "exported")

    def __init__(self, controller: ReviewController) -> None:
        self.seen: list[tuple[str, tuple]] = []
        for name in self.NAMES:
            getattr(controller, name).connect(
                lambda *args, name=name: self.seen.append((name, args)))

    def names(self) -> list[str]:
        return [name for name, _ in self.seen]

    def said(self, level: str) -> list[str]:
        return [args[1] for name, args in self.seen if name == "message" and args[0] == level]


def run_to_end(job):
    """Run a job generator as the worker does; ``(yielded items, returned value)``."""
    items = []
    while True:
        try:
            items.append(next(job))
        except StopIteration as stop:
            return items, stop.value


def layer(meta=None, data=None):
    return SimpleNamespace(metadata=dict(meta or {}), data=data, name="layer", visible=True)


@pytest.fixture
def review(tiny):
    state = ReviewState()
    controller = ReviewController(state)
    events = Recorder(controller)
    controller.model_loaded(tiny, Session(tiny, device="cpu"), "cpu")
    return controller, state, events


def sample(controller, n=4, seed=0, name="image"):
    """Sample ``n`` hypotheses of a seeded image as the sampler does: the encoded region to
    the controller, the hypotheses (with stand-in layers) to the state."""
    image = np.random.default_rng(1).random((32, 32), dtype=np.float32)
    job = SamplingJob(region=image, plane=image, layer_name=name, index=(), roi=(0, 0, 32, 32),
                      n=n, seed=seed)
    items, result = run_to_end(sampling_job(controller.session, job))
    for kind, value in items:
        if kind == "encoded":
            controller.encoded(value)
    layers = [layer({"kind": "hypothesis", "index": i}) for i in range(n)]
    controller.set_hypotheses(result.hypotheses, layers, None, result.plane_signature)
    return result


def test_a_model_load_is_told_to_the_others_and_drops_the_encoding(review, tiny):
    controller, state, events = review
    heard = []
    state.model_changed.connect(lambda: heard.append("explorer"))
    sample(controller)
    assert state.hypotheses is not None
    controller.model_loaded(tiny, Session(tiny, device="cpu"), "cpu")
    assert state.encoded is None and state.hypotheses is None
    assert heard == ["explorer"] and events.seen[-1] == ("model_changed", (True,))
    # a model loaded by another widget of the viewer arrives as the controller's event
    state.model_changed.emit()
    assert events.seen[-1] == ("model_changed", (False,))


def test_a_sample_click_while_loading_waits_for_the_model(review):
    controller, _, events = review
    controller.set_jobs({"load"})
    assert controller.loading and controller.busy and events.names()[-1] == "busy_changed"
    controller.queue_sample()
    controller.set_jobs(set())
    controller.load_finished()
    assert events.names()[-1] == "sample_requested" and not controller.sample_when_ready
    # a failed load forgets the click
    controller.queue_sample()
    controller.load_failed("no such file", "Model not loaded: no such file.")
    controller.load_finished()
    assert events.names().count("sample_requested") == 1
    assert controller.model_error == "no such file"
    assert "Model not loaded: no such file." in events.said("error")


def test_hypotheses_current_and_the_explorer(review):
    controller, state, events = review
    told = []
    state.current_hypothesis_changed.connect(told.append)
    sample(controller, n=4)
    assert controller.current == 0 and told == [0]
    assert events.seen[-2:] == [("hypotheses_changed", ()), ("current_changed", (0, False))]
    controller.previous_hypothesis()  # wraps around
    assert controller.current == 3 and events.seen[-1] == ("current_changed", (3, True))
    assert told[-1] == 3
    # the explorer shows hypothesis 1: the review shows it, and does not tell it back
    state.current_hypothesis_changed.emit(1)
    assert controller.current == 1 and events.seen[-1] == ("current_changed", (1, True))
    assert told[-1] == 1 and len(told) == 3
    # picking a hypothesis's layer makes it current without showing it
    controller.select(2)
    assert events.seen[-1] == ("current_changed", (2, False))


def test_best_fit_goes_through_the_state_and_reaches_the_correction(review):
    controller, state, events = review
    controller.use_as_best_fit()
    assert events.said("warning") == ["No hypotheses yet: click Sample first, then pick the "
                                      "best one."]
    result = sample(controller, n=4)
    controller.use_as_best_fit(7)
    assert events.said("error") == ["No hypothesis 8. There are 4."]
    controller.use_as_best_fit(2)
    name, (choice,) = events.seen[-1]
    assert name == "best_fit_requested" and controller.current == 2
    np.testing.assert_array_equal(choice.labels, result.hypotheses.labels[2])
    # the explorer's point arrives the same way
    state.best_fit_requested.emit("explorer point")
    assert events.seen[-1] == ("best_fit_requested", ("explorer point",))


def test_another_image_chosen_hides_the_hypotheses_choice(review):
    controller, state, events = review
    sample(controller, name="first")
    controller.input.set(image="first")
    assert controller.can_choose and not controller.other_image_chosen
    controller.input.set(image="second")
    assert events.names()[-1] == "input_changed"
    assert controller.other_image_chosen and not controller.can_choose
    # the image the hypotheses were drawn on is deleted: a fresh review
    controller.forget_image()
    assert state.encoded is None and state.hypotheses is None and not controller.can_choose
    assert controller.domain_warnings == []


def test_a_suggested_click_region_is_undone_for_a_small_image_but_a_chosen_one_stays():
    controller = ReviewController(ReviewState())
    inp = controller.input
    inp.set_roi_mode("click", suggested=True)
    assert inp.mode == "click" and inp.mode_suggested
    inp.set_roi_mode("whole")  # the user's choice
    assert not inp.mode_suggested
    inp.set_roi_mode("click")
    assert inp.mode == "click" and not inp.mode_suggested
    with pytest.raises(ValueError, match="unknown region"):
        inp.set_roi_mode("lasso")
    with pytest.raises(ValueError, match="unknown input"):
        inp.set(mode="click")
    assert not inp.all_slices
    inp.set(slices_all=True)
    assert not inp.all_slices  # not a stack
    inp.set(stack=True)
    assert inp.all_slices


def test_a_click_samples_when_asked_to_and_not_twice(review):
    controller, _, events = review
    controller.region_clicked()
    assert events.names()[-1] == "sample_requested"
    controller.set_jobs({"sample"})
    controller.region_clicked()
    assert events.said("info")[-1].startswith("Sampling is running")
    controller.input.set(run_on_click=False)
    controller.set_jobs(set())
    n = events.names().count("sample_requested")
    controller.region_clicked()
    assert events.names().count("sample_requested") == n


def test_hypothesis_layers_still_joining_keep_the_review_busy(review):
    controller, _, events = review
    assert not controller.busy
    controller.set_layer_queue(3, 10)
    assert controller.busy and events.names()[-2:] == ["layers_changed", "busy_changed"]
    controller.set_layer_queue(0, 10)
    assert not controller.busy and controller.layers_deferred == 10


def test_export_writes_the_correction_and_says_so(review, tmp_path):
    from napari_probunet.errors import UserError

    controller, state, events = review
    with pytest.raises(UserError, match="Nothing to export"):
        controller.export(tmp_path / "none.npy")
    result = sample(controller, n=2)
    labels = result.hypotheses.labels[0]
    correction = layer({"kind": "correction", "roi": [0, 0, 32, 32], "plane_shape": [32, 32],
                        "source": "hypothesis", "index": 0,
                        "source_labels": labels.tolist()}, labels.copy())
    controller.place_correction(correction, hide_uncertainty=True)
    assert events.seen[-2:] == [("correction_placed", (True,)), ("correction_changed", ())]
    done = controller.export(tmp_path / "mask.npy")
    assert done.mask.exists() and done.record.exists()
    np.testing.assert_array_equal(np.load(done.mask), labels)
    assert events.seen[-1] == ("exported", (done,))


def test_a_closed_review_emits_nothing_and_lets_go_of_the_state(review, tiny):
    controller, state, events = review
    controller.close()
    before = len(events.seen)
    state.current_hypothesis_changed.emit(0)
    state.model_changed.emit()
    controller.model_loaded(tiny, Session(tiny, device="cpu"), "cpu")  # still the state's
    assert state.model is tiny and len(events.seen) == before


def test_domain_findings_read_as_sentences():
    assert join_sentences(["a colour image.", "the image is large"]) == \
        "a colour image. The image is large."
