"""The cache's writer thread: shards serialised, checksummed and written in order on a
background thread, fed by a bounded queue, so the model computes the next chunk while the
previous one goes to disk.

**Memory.** At most ``depth`` chunks are handed to the writer and not yet written
(:meth:`ShardWriter.submit` blocks while ``depth`` are); with the chunk the model is
filling, a run holds at most ``depth + 1`` chunks of rows, plus the one shard being
serialised. ``depth=0`` writes each shard on the calling thread (the synchronous path).

**Acknowledged** means listed in the manifest. Each job writes its shard atomically and
then the manifest (:func:`~interlayer.store.cache_files.write_shard`), one job at a time,
in the order submitted; so whatever stops a run (a full disk, an error, a kill), every
shard the manifest lists is whole, no half-written shard is listed, and the same command
resumes after the last listed one.

**Failure.** The first job that fails stops the writer: it starts no further job, and the
error is raised on the calling thread at its next :meth:`~ShardWriter.submit` or at
:meth:`~ShardWriter.close`: an :class:`~interlayer.errors.InterlayerError` as it was
raised (its message names the shard), any other exception as a :class:`ShardWriteError`
naming the shard and the cause. An exception of the caller's while the writer runs
(``KeyboardInterrupt`` included) cancels the jobs not yet started, waits for the one in
progress, and propagates.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType

from ..errors import InterlayerError
from ..io.files import WriteError

__all__ = ["ShardWriteError", "ShardWriter"]


class ShardWriteError(WriteError):
    """The writer thread could not write a shard (the message names it and the cause)."""


class ShardWriter:
    """Runs write jobs in order, on a background thread (``depth >= 1``) or at once (``depth=0``).

    Use as a context manager: leaving the block normally waits for every job (and raises the
    first failure); leaving it by an exception cancels the jobs not yet started.

    Args:
        depth: jobs handed over and not yet done, at most (the bounded queue); 0 runs each
            job on the calling thread inside :meth:`submit`.
        what: what the jobs write, for error messages (``"the shards of /path"``).
    """

    def __init__(self, depth: int, what: str) -> None:
        if depth < 0:
            raise InterlayerError(f"write_queue must be at least 0, got {depth}")
        self.depth = depth
        self.what = what
        self._slots = threading.Semaphore(max(depth, 1))
        self._jobs: queue.SimpleQueue[tuple[str, Callable[[], None]] | None] = queue.SimpleQueue()
        self._failure: tuple[str, BaseException] | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None
        if depth:
            self._thread = threading.Thread(target=self._work, name="interlayer-shard-writer", daemon=True)
            self._thread.start()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.cancel()

    def submit(self, label: str, job: Callable[[], None]) -> None:
        """Run ``job`` (writing ``label``, e.g. ``"shard 3"``) after the jobs before it; blocks
        while ``depth`` jobs are pending. Raises the failure of an earlier job, if any."""
        self._raise_failure()
        if self._thread is None:
            self._run(label, job)
            self._raise_failure()
            return
        self._slots.acquire()
        self._raise_failure()  # it may have failed while this thread waited for a slot
        self._jobs.put((label, job))

    def close(self) -> None:
        """Wait until every submitted job is done; raise the first failure, if any."""
        self._stop()
        self._raise_failure()

    def cancel(self) -> None:
        """Start no further job, wait for the one in progress (its failure is dropped)."""
        self._cancelled = True
        self._stop()

    def _stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            if self._failure is None and not self._cancelled:
                self._run(*item)
            self._slots.release()

    def _run(self, label: str, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread, raised there
            self._failure = (label, err)

    def _raise_failure(self) -> None:
        if self._failure is None:
            return
        label, err = self._failure
        if isinstance(err, InterlayerError) or not isinstance(err, Exception):
            raise err  # named by its own message, or an interrupt (KeyboardInterrupt, SystemExit)
        cause = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise ShardWriteError(f"writing {label} of {self.what} failed: {type(err).__name__}: {cause}; the shards "
                              "listed in its manifest are whole, and the same command resumes after them") from err
