"""The bounded batching queue between producers and one sink: blocks producers when full, packs batches."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by `put()` once the queue no longer accepts items (shutdown)."""


class BatchQueue(Generic[T]):
    """Producers `await put()`; the sink's consumer `await next_batch()`.

    A batch is released when it holds `max_items` items or `max_wait` seconds after its first item arrived,
    whichever comes first, or at once after `flush()`. Nothing is ever dropped: when `capacity` items are waiting, `put()` waits
    (backpressure, like Vector's `when_full: block`). `close()` stops intake; consumers then drain what is
    left and receive `None`.
    """

    def __init__(self, name: str, *, max_items: int, max_wait: float, capacity: int) -> None:
        self.name = name
        self._items: deque[T] = deque()
        self._cond = asyncio.Condition()
        self._closed = False
        self._flushing = False  # set by flush(): the next batch goes without waiting to fill
        self.max_items = max_items
        self.max_wait = max_wait
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def reconfigure(self, *, max_items: int, max_wait: float, capacity: int) -> None:
        """Apply new batching settings (SIGHUP) without touching queued items."""
        async with self._cond:
            self.max_items, self.max_wait, self.capacity = max_items, max_wait, capacity
            self._cond.notify_all()

    async def put(self, item: T) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self._closed or len(self._items) < self.capacity)
            if self._closed:
                raise QueueClosed(self.name)
            self._items.append(item)
            self._cond.notify_all()

    async def put_many(self, items: Iterable[T]) -> None:
        """`put()` each item in order, in bulk: one wake-up per run of items that fits, waiting only while full.

        Raises QueueClosed if the queue closes first; the items queued before that stay queued.
        """
        pending = items if isinstance(items, list | tuple) else list(items)
        done, total = 0, len(pending)
        if not total:
            return
        async with self._cond:
            while done < total:
                await self._cond.wait_for(lambda: self._closed or len(self._items) < self.capacity)
                if self._closed:
                    raise QueueClosed(self.name)
                end = min(total, done + self.capacity - len(self._items))
                self._items.extend(islice(pending, done, end))
                done = end
                self._cond.notify_all()

    async def discard(self, predicate: Callable[[T], bool] | None = None) -> list[T]:
        """Remove the queued items `predicate` selects (all without one) and return them: a path switched
        off leaves them unacknowledged, to be read again when it is switched on."""
        async with self._cond:
            if predicate is None:
                dropped, self._items = list(self._items), deque()
            else:
                dropped = [item for item in self._items if predicate(item)]
                if dropped:
                    self._items = deque(item for item in self._items if not predicate(item))
            self._cond.notify_all()
            return dropped

    async def flush(self) -> None:
        """The producer has put all it has for now: the batch being filled goes at once, without waiting
        the rest of `max_wait` for items that are not coming."""
        async with self._cond:
            if self._items:
                self._flushing = True
                self._cond.notify_all()

    async def close(self) -> None:
        async with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def next_batch(self) -> list[T] | None:
        """The next batch, or None once the queue is closed and empty."""
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                await self._cond.wait_for(lambda: self._closed or self._items)
                if not self._items:
                    return None
                deadline = loop.time() + self.max_wait
                while len(self._items) < self.max_items and not self._closed and not self._flushing:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._cond.wait(), remaining)
                    except TimeoutError:
                        break
                if self._items:
                    break
                # Another consumer took them while this one waited for more: wait for the next items.
            count = min(len(self._items), self.max_items)
            batch = [self._items.popleft() for _ in range(count)]
            self._flushing = False
            self._cond.notify_all()
            return batch


async def next_batch_unless(queue: BatchQueue[T], stop: asyncio.Event,
                            release: Callable[[list[T]], None]) -> list[T] | None:
    """`queue.next_batch()`, or None as soon as `stop` is set (or once the queue is closed and drained). A
    batch taken just as the stop came is handed to `release` (never worked on) and None is returned."""
    if stop.is_set():
        return None
    taking = asyncio.ensure_future(queue.next_batch())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((taking, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        taking.cancel()  # if it has not taken a batch yet
    batch = None
    with contextlib.suppress(asyncio.CancelledError):
        batch = await taking
    if batch is not None and stop.is_set():
        release(batch)
        return None
    return batch
