"""Run an iterator in a background thread, a bounded queue ahead of its consumer.

Decoding (PyAV), resizing (PIL) and normalising (torch) release the GIL for their heavy parts,
so a thread keeps the next frames ready while the model runs on the current window: the model
waits for input only when decoding is slower than the model. The queue is bounded, so memory
stays a few frames whatever the video's length.

    for item in Prefetch(decode_and_resize(source), size=8):
        ...

Exceptions raised in the thread come out of the consumer's ``next()`` in order (warnings go to
the process-wide handler, as from any thread);
``close()`` (or leaving the loop through a ``with`` block or garbage collection) stops the thread
at its next item and closes the inner iterator.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Prefetch"]

T = TypeVar("T")
_END = object()


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch(Generic[T]):
    """Iterate ``items`` in a daemon thread, at most ``size`` items ahead. ``waited`` is the time
    (seconds) the consumer spent blocked on an empty queue."""

    def __init__(self, items: Iterable[T], size: int = 8) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._items = items
        self._done = False
        self.waited = 0.0
        self._thread = threading.Thread(target=self._run, name="mutr-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Raised(e))
            return
        finally:
            close = getattr(self._items, "close", None)
            if close is not None and self._stop.is_set():
                close()
        self._put(_END)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        began = time.perf_counter()
        item = self._queue.get()
        self.waited += time.perf_counter() - began
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread (it finishes the item it is decoding) and drop what it queued."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> "Prefetch[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._done:
            self._stop.set()
