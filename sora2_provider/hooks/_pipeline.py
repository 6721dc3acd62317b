"""The download pipeline: the thread that reads the network hands every chunk to a hashing thread and a writing
thread through bounded queues, so sha256 and the store's own work (page-cache copies and write-back, object-store
part uploads) overlap with the transfer instead of taking turns with it.

Memory stays bounded: each queue holds at most ``QUEUE_CHUNKS`` chunks, and a producer facing a full queue waits.
Chunks are immutable ``bytes`` shared by both queues, never copied. An error in a worker is kept and raised, the
same exception object, in the producer at its next chunk (or when it drains or closes the pipeline); a failed
worker keeps emptying its queue so the producer never waits forever on it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from typing import Any

QUEUE_CHUNKS = 4  # chunks (1 MiB each when streaming a video) waiting per stage
_STOP = object()


class BoundedQueue(queue.Queue[Any]):
    """A FIFO of at most ``maxsize`` items that remembers the most it ever held (``peak``)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a pipeline queue must be bounded (maxsize >= 1)")
        super().__init__(maxsize)
        self.peak = 0

    def _put(self, item: Any) -> None:  # called with the queue's mutex held
        super()._put(item)
        self.peak = max(self.peak, len(self.queue))


class Stage:
    """One worker thread that applies ``work`` to every item put, in order."""

    def __init__(self, name: str, work: Callable[[bytes], Any], bound: int = QUEUE_CHUNKS) -> None:
        self.name = name
        self.work = work
        self.queue = BoundedQueue(bound)
        self.error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` (waiting while the queue is full); raise the worker's error if it failed."""
        self.raise_error()
        self.queue.put(chunk)

    def drain(self) -> None:
        """Wait until every queued chunk was handled; raise the worker's error if it failed."""
        self.queue.join()
        self.raise_error()

    def stop(self, cancel: bool = False) -> None:
        """End the worker once it handled what is queued; with ``cancel``, what is still queued is dropped."""
        self._cancelled = self._cancelled or cancel
        if self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                if self.error is None and not self._cancelled:
                    self.work(item)
            except BaseException as err:  # kept for the producer, which raises it in its own thread
                self.error = err
            finally:
                self.queue.task_done()


class ChunkPipeline:
    """Fans every chunk out to a sha256 thread and a writer thread (``write`` is the destination's ``write``).

    Use it as a context manager: leaving the block normally drains both stages and raises a worker's error;
    leaving it on an exception stops both workers (dropping what they still hold) and lets that exception through.
    Either way both threads have ended when the block is left, so the destination can be closed or discarded.
    """

    def __init__(self, write: Callable[[bytes], Any], bound: int = QUEUE_CHUNKS) -> None:
        self._sha = hashlib.sha256()
        self.hasher = Stage("sora2-sha256", self._sha.update, bound)
        self.writer = Stage("sora2-writer", write, bound)
        self._stages = (self.writer, self.hasher)
        self._started = False

    def __enter__(self) -> ChunkPipeline:
        for stage in self._stages:
            stage.start()
        self._started = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            failed = exc_type is not None or any(stage.error is not None for stage in self._stages)
            for stage in self._stages:
                stage.stop(cancel=failed)
            self._started = False

    def put(self, chunk: bytes) -> None:
        if not self._started:
            raise RuntimeError("the pipeline is not running: use it in a with block")
        for stage in self._stages:
            stage.put(chunk)

    def drain(self) -> None:
        """Wait until every chunk is hashed and written; raise a worker's error (the writer's first)."""
        for stage in self._stages:
            stage.drain()

    def sha256(self) -> hashlib._Hash:
        """A copy of the hash of every chunk put so far (waits for the hashing thread to catch up)."""
        self.hasher.drain()
        return self._sha.copy()
