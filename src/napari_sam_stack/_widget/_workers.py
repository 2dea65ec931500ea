"""Background work: napari thread workers that never raise into napari's traceback dialog.

Worker functions run wrapped: an exception becomes a :class:`Failed` result that the
main thread turns into a notification. Layers are touched only in the callbacks
(main thread).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QObject, Signal


@dataclass
class Failed:
    """What a worker returns instead of raising."""

    error: BaseException


def guarded(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        try:
            return fn()
        except Exception as e:  # reported by the caller as a notification
            return Failed(e)

    return run


def _guarded_gen(gen_fn: Callable[[], Any]) -> Callable[[], Any]:
    def run():
        try:
            return (yield from gen_fn())
        except Exception as e:
            return Failed(e)

    return run


class _Relay(QObject):
    """Carries progress from a worker thread to the main thread (queued signal)."""

    progressed = Signal(int, int)


class Task:
    """One cancellable long task (embeddings, propagation, model loading) with a progress bar.

    ``fn(task)`` runs in a worker thread; it may call ``task.progress(done, total)`` and
    poll ``task.is_cancelled()``. With ``generator=True`` it yields values that reach
    ``on_yield`` in the main thread. ``on_done(result)`` / ``on_cancel(result)`` run in the
    main thread when it ends; ``result`` is the return value or a :class:`Failed`.
    """

    def __init__(self, fn, *, desc: str, total: int = 0, generator: bool = False,
                 on_yield=None, on_done=None, on_cancel=None):
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.cancelled = threading.Event()
        self.pbar = progress(total=total, desc=desc)
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._on_done, self._on_cancel = on_done, on_cancel
        self.result: Any = None
        self.done = False
        wrapped = _guarded_gen(lambda: fn(self)) if generator else guarded(lambda: fn(self))
        self.worker = create_worker(wrapped, _start_thread=False)
        if on_yield is not None:
            self.worker.yielded.connect(on_yield)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    # called from the worker thread
    def progress(self, done: int, total: int) -> None:
        self._relay.progressed.emit(int(done), int(total))

    def is_cancelled(self) -> bool:
        return self.cancelled.is_set()

    def cancel(self) -> None:
        self.cancelled.set()
        self.worker.quit()

    def _on_progress(self, done: int, total: int) -> None:
        self.set_progress(done, total)

    def set_progress(self, done: int, total: int | None = None) -> None:
        """Move the progress bar (main thread)."""
        if total is not None and self.pbar.total != total:
            self.pbar.total = total
        if done != self.pbar.n:
            self.pbar.update(done - self.pbar.n)

    def _returned(self, result) -> None:
        self.result = result

    def _finished(self) -> None:
        self.done = True
        self.pbar.close()
        if self.cancelled.is_set() and self._on_cancel is not None:
            self._on_cancel(self.result)
        elif self._on_done is not None:
            self._on_done(self.result)


class LatestOnly:
    """Runs short jobs (one decoder call) one at a time, newest request per key wins.

    ``submit(key, fn)`` queues ``fn``; a request superseded by a newer one for the same
    key before it finishes has its result dropped, so a fast series of clicks never shows
    a stale mask. ``invalidate()`` drops everything in flight (object cleared, session changed).
    """

    def __init__(self, on_result: Callable[[Any, Any], None], on_error: Callable[[BaseException], None]):
        self._on_result, self._on_error = on_result, on_error
        self._seq = 0
        self._latest: dict[Any, int] = {}
        self._pending: dict[Any, tuple[int, Callable]] = {}
        self._worker = None

    @property
    def busy(self) -> bool:
        return self._worker is not None or bool(self._pending)

    def submit(self, key, fn: Callable[[], Any]) -> None:
        self._seq += 1
        self._latest[key] = self._seq
        self._pending[key] = (self._seq, fn)
        if self._worker is None:
            self._start_next()

    def invalidate(self) -> None:
        self._seq += 1
        self._latest.clear()
        self._pending.clear()

    def _start_next(self) -> None:
        from napari.qt.threading import create_worker

        if not self._pending:
            return
        key = next(iter(self._pending))
        seq, fn = self._pending.pop(key)
        worker = create_worker(guarded(fn), _start_thread=False)
        worker.returned.connect(lambda result: self._returned(key, seq, result))
        worker.finished.connect(self._finished)
        self._worker = worker
        worker.start()

    def _returned(self, key, seq, result) -> None:
        if self._latest.get(key) != seq:
            return  # stale: a newer request for this key exists, or everything was invalidated
        if isinstance(result, Failed):
            self._on_error(result.error)
        else:
            self._on_result(key, result)

    def _finished(self) -> None:
        self._worker = None
        self._start_next()

    def wait(self, timeout_ms: int = 60000) -> None:
        """Block (processing Qt events) until idle: for scripts and tests."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        t = QElapsedTimer()
        t.start()
        while self.busy and t.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            threading.Event().wait(0.005)
