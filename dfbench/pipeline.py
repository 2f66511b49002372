"""The extraction pipeline's overlapped stages: images decoded ahead of the model, shards written behind it.

* :class:`Prefetcher` decodes the images of the next batches on a thread pool (Pillow releases the GIL while it
  decodes and resizes) while the model runs the current one; at most ``ahead`` batches wait decoded.
* :class:`BackgroundWriter` hashes and writes the cache's shards on one thread behind a bounded queue
  (``depth`` batches): the model does not wait for the disk, and memory stays bounded. The first error the
  writer meets is raised in the caller at its next ``put`` or at ``close`` — the run fails with that one line —
  and the writer stops; a shard is written atomically (temp file, then rename), so a failure or a kill leaves
  only whole shards.

Both keep the sequential path's order: batch ``i`` is decoded from the same files, extracted the same way and
written as the ``i``-th shard, so the cache's contents are bit-identical to the one-thread path's.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
#: decoder threads (the machine's cores, at most 8: decoding is cheap next to a diffusion model)
DECODE_WORKERS = 8


class Prefetcher:
    """``batches`` decoded by ``decode`` on ``workers`` threads, ``ahead`` batches before they are needed."""

    def __init__(self, batches: Sequence[Sequence[T]], decode: Callable[[T], Any], ahead: int = 2,
                 workers: int | None = None) -> None:
        self.batches, self.decode, self.ahead = batches, decode, max(1, ahead)
        self.workers = workers or max(1, min(DECODE_WORKERS, len(batches) or 1))

    def __iter__(self) -> Iterator[list[Any]]:
        with ThreadPoolExecutor(self.workers, thread_name_prefix="dfbench-decode") as pool:
            pending: deque[list[Future[Any]]] = deque()
            submitted = 0
            for _ in range(len(self.batches)):
                while submitted < len(self.batches) and len(pending) <= self.ahead:
                    pending.append([pool.submit(self.decode, item) for item in self.batches[submitted]])
                    submitted += 1
                yield [future.result() for future in pending.popleft()]


class BackgroundWriter:
    """Calls ``write(item)`` for every ``put`` item on one thread, in order, ``depth`` items queued at most."""

    def __init__(self, write: Callable[[Any], Any], depth: int = 2) -> None:
        self.write = write
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="dfbench-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                return
            if self.error is None:
                try:
                    self.write(item)
                except BaseException as error:  # surfaced in the caller's thread (put / close)
                    self.error = error

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        """Queue ``item`` (waits while the queue is full); raises the writer's error if it has met one."""
        self._raise()
        self.queue.put(item)

    def close(self) -> None:
        """Wait until every queued item is written; raises the writer's error if it has met one."""
        self.queue.put(_STOP)
        self.thread.join()
        self._raise()

    def abandon(self) -> None:
        """Stop after the queued items (the caller is failing for another reason)."""
        self.queue.put(_STOP)
        self.thread.join()


_STOP = object()
