"""The review widget's background jobs, on the same kind of worker as the explorer's.

The widget runs its jobs (:mod:`napari_probunet.review.jobs`: loading a model, sampling one
slice or all slices) on one :class:`~napari_probunet.gui.worker.SessionWorker`, which holds the
session lock around each step; the widget takes the lock nowhere else (bundle adoption encodes
its image as a job of its own, ``"encode"``). :class:`JobRunner` turns the worker's messages into
callbacks on the GUI thread, the ones napari's thread workers had, so that the parts read like
this::

    self.runner.start("sample", sampling_job(session, request), yielded=..., returned=...,
                      errored=..., aborted=..., finished=...)

At most one job of a kind runs (the parts refuse a second one); ``finished`` always comes
last, after ``returned``, ``errored`` or ``aborted``, and :attr:`JobRunner.busy` is true until
then. ``changed(kinds)``, when given, hears the kinds running after each start and end (the
review's controller: its ``busy_changed``), before the job's ``aborted`` and ``finished``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from napari_probunet.gui.worker import SessionWorker


@dataclass
class _Callbacks:
    """Where the messages of one job go (each called on the GUI thread)."""

    returned: Callable[[Any], None]
    errored: Callable[[BaseException], None]
    finished: Callable[[], None]
    yielded: Callable[[Any], None] | None = None
    aborted: Callable[[], None] | None = None


class JobRunner:
    """One widget's jobs, by kind (``"load"``, ``"sample"``), on its own :class:`SessionWorker`.

    Args:
        lock: the session's lock (:attr:`ReviewState.lock`).
        parent: the widget (the worker's signals go with it; its end stops the worker). A
            closed widget keeps its worker: a model still loading then still arrives in the
            state, for the explorer, as it did with napari's thread workers.
        changed: called with the kinds running (a frozenset) whenever they change.
    """

    def __init__(self, lock, parent, changed: Callable[[frozenset], None] | None = None) -> None:
        self._worker = worker = SessionWorker(lock, parent=parent, name="probunet-review")
        worker.signals.job_result.connect(self._on_result)
        parent.destroyed.connect(lambda *_: worker.stop())
        self._running: dict[str, tuple[object, _Callbacks]] = {}  # kind -> (token, callbacks)
        #: cancelled jobs whose running step may still yield: token -> yielded callback
        self._abandoned: dict[object, Callable[[Any], None] | None] = {}
        self._changed = changed

    def _tell(self) -> None:
        if self._changed is not None:
            self._changed(frozenset(self._running))

    def start(self, kind: str, job: Iterator, *, returned, errored, finished, yielded=None,
              aborted=None) -> None:
        """Run ``job`` (a generator of :mod:`~napari_probunet.review.jobs`, or
        :func:`~napari_probunet.gui.worker.returning` of a function) off the GUI thread:
        ``yielded(item)`` for each item, then ``returned(value)`` (what it returned),
        ``errored(exc)`` or, after :meth:`cancel`, ``aborted()``; then ``finished()``."""
        token = object()  # this run's messages: any other is stale
        self._running[kind] = (token, _Callbacks(returned, errored, finished, yielded, aborted))
        self._worker.submit(token, kind, job)
        self._tell()

    def running(self, kind: str) -> bool:
        """A job of ``kind`` was started and has not finished (``finished`` not called yet)."""
        return kind in self._running

    @property
    def busy(self) -> bool:
        """Some job has not finished."""
        return bool(self._running)

    def cancel(self, kind: str) -> None:
        """Stop the job of ``kind``: ``aborted``, then ``finished``, at once.

        A running step cannot be interrupted (a whole 1024x1024 image is encoded in one call,
        14 s on a busy laptop), so the job is let go of instead: the widget is free at once,
        the worker finishes that step and runs nothing more of the job, and what the step
        yields still reaches ``yielded`` (an ``("encoded", ...)`` keeps the state in step with
        the session's image); a new job waits for the step behind the session lock."""
        entry = self._running.pop(kind, None)
        if entry is None:
            return
        token, callbacks = entry
        self._worker.cancel_job(kind)
        self._abandoned[token] = callbacks.yielded
        self._tell()
        try:
            if callbacks.aborted is not None:
                callbacks.aborted()
        finally:
            callbacks.finished()

    def call_now(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the GUI thread, under the session lock (keep it short)."""
        return self._worker.call_now(fn)

    def _on_result(self, message) -> None:
        self._worker.delivered()
        token, kind, item, error = message
        kind, _, end = kind.partition(":")
        entry = self._running.get(kind)
        if entry is None or entry[0] is not token:
            if token in self._abandoned:  # a cancelled job's last step
                yielded = self._abandoned.pop(token) if end or error else self._abandoned[token]
                if yielded is not None and error is None and not end:
                    yielded(item)
            return
        callbacks = entry[1]
        if error is None and not end:
            if callbacks.yielded is not None:
                callbacks.yielded(item)
            return
        try:  # the job ended: "finished" even if a callback fails
            if error is not None:
                callbacks.errored(error)
            elif end == "done":
                callbacks.returned(item)
            elif callbacks.aborted is not None:
                callbacks.aborted()
        finally:
            del self._running[kind]
            try:
                self._tell()
            finally:
                callbacks.finished()
