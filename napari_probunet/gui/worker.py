"""The widgets' model worker: one background thread, and the one place the session lock is taken.

Both dock widgets drive the same :class:`~napari_probunet.session.Session` (the viewer's
:class:`~napari_probunet.review.state.ReviewState`); its :attr:`~ReviewState.lock` serialises
them. Every use of the session from a widget goes through a :class:`SessionWorker`, which
takes that lock in one method (:meth:`SessionWorker._locked`) around each unit of work:

- :meth:`~SessionWorker.request_latest`: latest-request-wins work, e.g. decoding the latent
  under the mouse. Only the newest request is kept, and a new one starts only after the GUI took
  the previous result (:meth:`~SessionWorker.take_latest`), so no queue of stale frames builds
  up while dragging.
- :meth:`~SessionWorker.submit`: a job, an iterator whose every ``next()`` runs under the lock
  and whose every item is sent to the GUI thread; a job replaces queued or running jobs of its
  kind. Latest-request work goes first between steps, so a long job (a grid decoded a row at a
  time) never stalls dragging.
- :meth:`~SessionWorker.call_now`: a few milliseconds of work on the calling (GUI) thread,
  under the same lock (e.g. decoding one latent to hand over exactly what is shown).

Results reach the GUI thread through Qt signals (:class:`WorkerSignals`, queued across threads).

How a widget uses it (the explorer does exactly this; the review widget through
:class:`~napari_probunet.gui.review.runner.JobRunner`, which turns the messages into callbacks)::

    self._worker = SessionWorker(state.lock, parent=self, name="probunet-review")
    self._worker.signals.job_result.connect(self._on_job_result)
    ...
    token = self._token                      # bumped when the model or the region changes
    def sample():                            # a generator: each step holds the lock
        for k in range(0, n, chunk):
            yield k, session.sample(chunk, seed=seed + k)
    self._worker.submit(token, "sample", sample())
    self._worker.submit(token, "load", once(lambda: load_model(path)))  # one step
    ...
    def _on_job_result(self, message):
        self._worker.delivered()             # always first: keeps `idle` honest
        token, kind, item, error = message   # kind "<kind>:done" (item: what the job
        if token != self._token:             # returned) when a job ends
            return                           # stale: the model or the region changed since
        ...
    # closeEvent / the viewer goes away:
    self._worker.stop()

A job ends with exactly one of: ``"<kind>:done"`` (its return value as the item; a
:func:`returning` job returns its function's result), a message with ``error`` set, or, after
:meth:`~SessionWorker.cancel_job`, ``"<kind>:cancelled"``. (A job replaced by :meth:`submit`
or dropped by :meth:`cancel` or :meth:`stop` just stops, with no last message.)

Closing during a job: the thread is a daemon, and a daemon thread still inside torch when the
interpreter shuts down aborts the process ("terminate called without an active exception").
So every worker is stopped and its running step waited for (:func:`finish_all_workers`) when
the Qt application quits and, again, at interpreter exit.

Rules that keep it correct: never touch napari layers or Qt widgets inside a job (pass arrays
in, get arrays out; the GUI thread applies them); bump the widget's token and call
:meth:`~SessionWorker.cancel` when the model or the encoded region changes; and drop results
whose token is stale.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, Signal

#: the workers alive (stopped and joined at exit: :func:`finish_all_workers`)
_WORKERS: weakref.WeakSet = weakref.WeakSet()
#: at exit, how long to wait for a running step (a whole-image encode on a slow CPU) to end
EXIT_WAIT_S = 120.0


def finish_all_workers(timeout: float = EXIT_WAIT_S) -> bool:
    """Stop every worker and wait for its running step to end (the application quits).

    Returns whether all threads ended within ``timeout`` seconds in all."""
    end = time.monotonic() + timeout
    workers = list(_WORKERS)
    for worker in workers:
        worker.stop()
    for worker in workers:
        worker.join(max(0.0, end - time.monotonic()))
    return not any(w.alive for w in workers)


atexit.register(finish_all_workers)


def _finish_on_quit() -> None:
    """Also at the Qt application's end (before Python's own shutdown starts)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None and not getattr(app, "_probunet_finish_on_quit", False):
        app._probunet_finish_on_quit = True
        app.aboutToQuit.connect(lambda: finish_all_workers())


class WorkerSignals(QObject):
    """Carries a :class:`SessionWorker`'s results to the GUI thread (queued across threads).

    ``latest_ready()``: a latest-request result waits in :meth:`SessionWorker.take_latest`.
    ``job_result((token, kind, item, error))``: one step of a job, its failure (``error`` set,
    ``item`` None), its end (``kind`` is ``"<kind>:done"``, ``item`` what the job returned) or,
    after :meth:`SessionWorker.cancel_job`, its stop (``"<kind>:cancelled"``, ``item`` None).
    A failed latest request also arrives here, with the ``kind`` it was requested under.
    """

    latest_ready = Signal()
    job_result = Signal(object)  # (token, kind, item, error)


@dataclass
class LatestResult:
    """The result of a latest-request-wins computation."""

    token: Any  # the caller's token when it asked (to drop stale results)
    request: Any  # what the caller passed to describe the request (e.g. the latent)
    value: Any  # what the computation returned
    seconds: float  # how long it took, waiting for the lock included


class SessionWorker:
    """One background thread for all model work of one widget (see the module docstring).

    Args:
        lock: the session's lock (:attr:`ReviewState.lock`), taken around every unit of work.
        parent: the widget; the signals object is its child, so it goes with the widget.
        name: the thread's name (shows in profilers and faulthandler dumps).
        threads: torch threads of this thread (OpenMP/MKL settings are per thread); ``None``
            leaves torch's default. One is fastest for one small decode (SPEC.md).
    """

    def __init__(self, lock, parent: QObject | None = None, name: str = "probunet-worker",
                 threads: int | None = None) -> None:
        self._lock = lock
        self.signals = WorkerSignals(parent)
        self._threads = threads
        self._cond = threading.Condition()
        self._request: tuple | None = None  # (token, kind, fn, request): the newest only
        self._result: LatestResult | None = None
        self._jobs: deque = deque()
        self._current: tuple | None = None
        self._cancelled: list[tuple] = []  # jobs stopped by cancel_job, to be announced
        self._busy = False
        self._in_flight = 0  # job results sent but not handled by the GUI yet
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _WORKERS.add(self)
        _finish_on_quit()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`stop`), at most ``timeout`` seconds."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The thread still runs (a step, or waiting for work)."""
        return self._thread.is_alive()

    @property
    def running_step(self) -> bool:
        """A step (or a latest request) is running on the thread now."""
        with self._cond:
            return self._busy

    # -- GUI side --------------------------------------------------------------------------------
    def request_latest(self, token, kind: str, fn: Callable[[], Any], request: Any = None) -> None:
        """Run ``fn()`` under the lock, replacing any request not started yet.

        The result waits for :meth:`take_latest` (announced by ``signals.latest_ready``); no new
        request starts before the GUI took it. A failure arrives as a ``job_result`` of ``kind``.
        """
        with self._cond:
            self._request = (token, kind, fn, request)
            self._cond.notify()

    def take_latest(self) -> LatestResult | None:
        """The newest latest-request result (None if taken already); lets the next one start."""
        with self._cond:
            result, self._result = self._result, None
            self._cond.notify()
            return result

    def submit(self, token, kind: str, job: Iterator) -> None:
        """Run ``job`` a step at a time; it replaces queued or running jobs of ``kind``."""
        with self._cond:
            self._jobs = deque(j for j in self._jobs if j[1] != kind)
            if self._current is not None and self._current[1] == kind:
                self._current = None
            self._jobs.append((token, kind, job))
            self._cond.notify()

    def call_now(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the calling thread, under the session lock (keep it to milliseconds)."""
        return self._locked(fn)

    def cancel(self) -> None:
        """Drop every pending request, result and job (a running step still finishes)."""
        with self._cond:
            self._request = self._result = self._current = None
            self._jobs.clear()
            self._cond.notify()

    def cancel_job(self, kind: str) -> None:
        """Stop the job of ``kind``: a queued one now, a running one after its running step
        (whose item still arrives). Then ``"<kind>:cancelled"`` arrives instead of
        ``"<kind>:done"``, unless the job failed in that step (its error is its end)."""
        with self._cond:
            stopped = [j for j in self._jobs if j[1] == kind]
            self._jobs = deque(j for j in self._jobs if j[1] != kind)
            if self._current is not None and self._current[1] == kind:
                stopped.append(self._current)
                self._current = None
            self._cancelled.extend(stopped)
            self._cond.notify()

    def delivered(self) -> None:
        """The GUI handled one job result (call it first thing in the ``job_result`` slot)."""
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)

    @property
    def idle(self) -> bool:
        """Nothing requested, queued, running, or sent and not handled yet."""
        with self._cond:
            return not (self._request or self._result or self._jobs or self._current
                        or self._cancelled or self._busy or self._in_flight)

    def stop(self) -> None:
        """End the thread after the running step (the widget is closing)."""
        with self._cond:
            self._stopped = True
            self._request = self._current = None
            self._jobs.clear()
            self._cancelled.clear()
            self._cond.notify()

    # -- worker side -----------------------------------------------------------------------------
    def _locked(self, fn: Callable[[], Any]) -> Any:
        """The one place the session lock is taken."""
        with self._lock:
            return fn()

    def _send(self, message: tuple) -> None:
        """Send a job result to the GUI, which calls :meth:`delivered` when it handled it."""
        with self._cond:
            self._in_flight += 1
        try:
            self.signals.job_result.emit(message)
        except RuntimeError:  # the widget is gone
            self.delivered()

    def _wants_latest(self) -> bool:
        return self._request is not None and self._result is None

    def _run(self) -> None:
        if self._threads is not None:
            try:
                import torch

                torch.set_num_threads(self._threads)  # this thread only
            except Exception:  # noqa: BLE001 - no torch, no decoding either; jobs report errors
                pass
        while True:
            with self._cond:
                while not self._stopped and not (
                        self._cancelled or self._wants_latest() or self._current is not None
                        or self._jobs):
                    self._cond.wait()
                if self._stopped:
                    return
                self._busy = True
                notices, self._cancelled = self._cancelled, []
                request = step = None
                if notices:
                    pass  # announce cancelled jobs first: the GUI waits for them
                elif self._wants_latest():
                    request, self._request = self._request, None
                else:
                    if self._current is None:
                        self._current = self._jobs.popleft()
                    step = self._current
            try:
                for token, kind, _job in notices:
                    self._send((token, kind + ":cancelled", None, None))
                if request is not None:
                    self._run_latest(*request)
                elif step is not None:
                    self._step(step)
            finally:
                with self._cond:
                    self._busy = False

    def _run_latest(self, token, kind: str, fn: Callable[[], Any], request) -> None:
        t0 = time.perf_counter()
        try:
            value = self._locked(fn)
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            self._send((token, kind, None, exc))
            return
        with self._cond:
            fresh = self._result is None
            self._result = LatestResult(token, request, value, time.perf_counter() - t0)
        if fresh:
            with contextlib.suppress(RuntimeError):  # the widget is gone
                self.signals.latest_ready.emit()

    def _step(self, entry) -> None:
        token, kind, job = entry
        try:
            item = self._locked(lambda: next(job))
        except StopIteration as end:
            item, error, done = end.value, None, True
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            item, error, done = None, exc, True
        else:
            error, done = None, False
        if done:
            with self._cond:
                if self._current is entry:
                    self._current = None
                cancelled = any(e is entry for e in self._cancelled)
                if cancelled and error is not None:  # its error is its end: no notice
                    self._cancelled = [e for e in self._cancelled if e is not entry]
            if error is None:
                if not cancelled:  # else "<kind>:cancelled" follows, not its result
                    self._send((token, kind + ":done", item, None))
                return
        self._send((token, kind, item, error))


def once(fn: Callable[[], Any]) -> Iterator:
    """A one-step job: ``submit(token, kind, once(fn))`` sends ``fn()``'s result."""
    yield fn()


def returning(fn: Callable[[], Any]) -> Iterator:
    """A one-step job whose end, ``"<kind>:done"``, carries ``fn()``'s result."""
    return fn()
    yield  # a generator: the worker runs it under the lock like any job
