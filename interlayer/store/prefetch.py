"""Reading ahead on a background thread: the next items of an iterator (a cache's gathered
batches, copied to the device) are produced while the caller works on the current one.

At most ``depth`` items wait in the bounded queue (plus the one the thread is producing),
in the order the iterator yields them, so the caller sees exactly the items it would have
read itself. An exception of the iterator is raised in the caller at the item where it
happened; when the caller stops early (``break``, an error, or closing the generator),
the thread stops after its current item and the iterator is closed on it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["prefetched"]

_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items``, produced up to ``depth`` ahead on a background thread (``depth=0``: as they
    are asked for, on the calling thread)."""
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    break
            else:
                put((_END, None))
        except BaseException as err:  # noqa: BLE001 - raised in the caller, at this item
            put((_END, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="interlayer-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
