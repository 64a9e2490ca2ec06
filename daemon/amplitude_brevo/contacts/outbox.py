"""The contact outbox: the state file's pending contact writes → the contacts sink, in seq order.

A source like the export, with positions of its own: each pending row's `seq` (state/contacts.py). It reads
the rows above its read cursor, queues one item per row for `brevo_contacts`, and its `OffsetTracker`
moves the `contacts.written` checkpoint past a seq once Brevo has answered for that row (written or
dead-lettered), so a restart — or a kill -9 — sends again exactly what was pending and not yet answered.

Coalescing: once it has read everything pending, it waits `window` (`batching.max_wait`) before reading
again, so that a user folded several times meanwhile is read, and written, once.

One write per contact at a time: a row whose user already has a write on its way waits until that one is
answered (a later write must not overtake an earlier one and leave Brevo with older values); while it
waits, a newer row of the same user replaces it, and it is read again when it goes (the answer may have
made the contact known to Brevo: then it is an update, not a second create).

In burst mode (`backfill`, the demo) it finishes once `upstream` (the export's "every hour folded") is set
and nothing is pending or on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ..logs import get_logger
from ..pipeline.acks import OffsetTracker
from ..pipeline.items import Item
from ..pipeline.remap import CONTACTS_SINK
from ..state.checkpoints import number_key, number_of
from ..state.contacts import CONTACTS_CHECKPOINT, PendingContact

log = get_logger("contacts")

SOURCE = "contacts"
READ_SIZE = 1000  # pending rows read at once
POLL_SECONDS = 5.0  # a look at the state file even without a wake-up (another writer, a missed one)


class _OutboxTracker(OffsetTracker):
    """An OffsetTracker that also says which positions were resolved (the outbox frees their users)."""

    def __init__(self, *args: Any, on_done: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_done = on_done

    def done(self, position: Any, count: int = 1) -> None:
        super().done(position, count)
        self._on_done(position)


class ContactOutbox:
    role = "producer"
    name = "contacts_outbox"

    def __init__(self, *, queue: Any, state: Any, acks: Any, dry_run: bool = False,
                 upstream: asyncio.Event | None = None, read_size: int = READ_SIZE,
                 poll_seconds: float = POLL_SECONDS, window: float = 0.0) -> None:
        self.queue = queue
        self.window = window
        self.state = state
        self.acks = acks
        self.upstream = upstream
        self.read_size = read_size
        self.poll_seconds = poll_seconds
        self.tracker = _OutboxTracker(CONTACTS_CHECKPOINT, SOURCE, number_key, record=not dry_run,
                                      on_done=self._answered)
        self.cursor = 0  # the last seq read
        self._in_flight: dict[str, int] = {}  # user → seq of the write on its way
        self._users: dict[int, str] = {}  # seq on its way → user
        self._waiting: dict[str, PendingContact] = {}  # user → the row waiting for the write on its way
        self._ready: list[PendingContact] = []  # rows whose user became free: queued at the next turn
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.queued = 0

    @property
    def sinks(self) -> tuple[str, ...]:
        return (CONTACTS_SINK,)

    def reload(self, cfg: Any) -> None:
        self.window = cfg.batching.max_wait

    def wake(self) -> None:
        """New pending rows (the folder committed some)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def start(self) -> None:
        self.cursor = number_of(await self.state.get_checkpoint(CONTACTS_CHECKPOINT))

    def pending(self) -> int:
        """Writes queued or on their way, and rows waiting for one."""
        return self.tracker.outstanding + len(self._waiting)

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            queued = await self._queue_ready()
            rows = await self.state.pending_contacts(self.cursor, self.read_size)
            if rows:
                caught_up = len(rows) < self.read_size
                await self._queue_rows(rows)
                del rows  # queued: not held through the window below
                if caught_up:
                    await self.queue.flush()  # caught up: what is queued need not wait to fill a batch
                    await self._hold()
                continue
            if not queued and self._finished():
                await self.acks.checkpoint(self.tracker)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _hold(self) -> None:
        """Caught up with the folder: wait a batch window before reading again, so that the folds of a user
        meanwhile become one write (its row's seq moves past the cursor with each fold: read once, newest).
        Not once the export has folded everything: nothing more is coming."""
        if self.window > 0 and not (self.upstream is not None and self.upstream.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.window)

    def _finished(self) -> bool:
        return (self.upstream is not None and self.upstream.is_set() and not self.tracker.outstanding
                and not self._waiting and not self._ready)

    async def _queue_rows(self, rows: list[PendingContact]) -> None:
        items = []
        superseded = False
        for row in rows:
            self.cursor = row.seq
            self.tracker.token(row.seq)
            self.tracker.add(row.seq)
            self.tracker.seal(row.seq)
            if row.user_id in self._in_flight:
                older = self._waiting.get(row.user_id)
                self._waiting[row.user_id] = row
                if older is not None:
                    superseded = True
                    self.tracker.done(older.seq)  # never sent: the newer row carries what Brevo should get
                continue
            items.append(self._item(row))
        if superseded:
            await self.acks.checkpoint(self.tracker)
        await self._put(items)

    async def _queue_ready(self) -> int:
        ready, self._ready = self._ready, []
        items = []
        for row in ready:
            # Read again: the write just answered may have told the state what Brevo now holds (its id, that
            # it exists), which decides the route (an update, not a second create); the values are the newest.
            fresh = await self.state.pending_contact(row.user_id)
            items.append(self._item(row, fresh))
        await self._put(items)
        return len(ready)

    def _item(self, row: PendingContact, fresh: PendingContact | None = None) -> Item:
        self._in_flight[row.user_id] = row.seq
        self._users[row.seq] = row.user_id
        return Item(None, (fresh or row).body(), self.tracker.token(row.seq))

    async def _put(self, items: list[Item]) -> None:
        if items:
            self.queued += len(items)
            await self.queue.put_many(items)

    def _answered(self, seq: Any) -> None:
        """Brevo answered for the write of `seq` (tracker callback): its user is free for the next one."""
        user = self._users.pop(seq, None)
        if user is None:
            return  # a superseded row, never sent
        if self._in_flight.get(user) == seq:
            del self._in_flight[user]
        waiting = self._waiting.pop(user, None)
        if waiting is not None:
            self._ready.append(waiting)
        self._wake.set()
