"""The daemon's one dedupe record: keys delivered (in SQLite) and keys on their way (in memory), per sink namespace.

Every source asks the same record, so an event seen via ingest and again via export is delivered once.
Keys carry their sink's namespace (`events:<insert_id>`, `orders:<insert_id>`): the same Amplitude event is
one Brevo event and one Brevo order, each delivered once.

A key is *in flight* from the moment a source queues its item until the Acknowledger's commit of it is in
SQLite (`committed`) — or until the item is dropped unsent (`released`: a path switched off, a dry run).
A lookup reads SQLite on the state store's lookup thread while the source goes on reading; a commit that
lands while the lookup runs may not be visible to it, so each pending lookup collects the keys committed
meanwhile and subtracts them too. Entries older than `state.dedupe_window` are deleted in bounded slices
(`expire_loop`), so a purge never holds the writer thread or the event loop for long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..logs import get_logger
from ..state import StateStore

log = get_logger("dedupe")

EXPIRE_SLICE = 2000  # rows deleted per statement: a few milliseconds of the writer thread
EXPIRE_EVERY = 60.0  # seconds between expiry rounds


class Lookup:
    """One pending lookup of a chunk's keys (see `DedupeRecord.lookup`)."""

    __slots__ = ("keys", "future", "committed_meanwhile")

    def __init__(self, keys: list[str], future: asyncio.Future[set[str]]) -> None:
        self.keys = keys
        self.future = future
        self.committed_meanwhile: set[str] = set()


class DedupeRecord:
    def __init__(self, state: StateStore, window: float, *, metrics: Any = None) -> None:
        self.state = state
        self.window = window
        self.metrics = metrics
        self.inflight: set[str] = set()
        self._pending: list[Lookup] = []
        self.expired_total = 0

    def lookup(self, keys: Sequence[str]) -> Lookup:
        """Start looking `keys` up now; `claim()` it later (the read overlaps whatever comes next)."""
        future = asyncio.ensure_future(self.state.unseen(list(keys)))
        future.add_done_callback(_retrieve)
        pending = Lookup(list(keys), future)
        self._pending.append(pending)
        return pending

    async def claim(self, lookup: Lookup) -> list[bool]:
        """For each key of the lookup: True when it is new — not delivered, not committed since the lookup
        started, not on its way already, not earlier in this lookup — and now claimed as in flight."""
        try:
            unseen = await lookup.future
        finally:
            self._forget(lookup)
        unseen.difference_update(lookup.committed_meanwhile)
        inflight = self.inflight
        fresh = []
        for key in lookup.keys:
            if key in unseen and key not in inflight:
                inflight.add(key)
                fresh.append(True)
            else:
                fresh.append(False)
        return fresh

    def discard(self, lookup: Lookup) -> None:
        """A lookup whose chunk will not be queued (stopping)."""
        lookup.future.cancel()
        self._forget(lookup)

    def committed(self, keys: Iterable[str]) -> None:
        """These keys' commit is in SQLite: lookups from now on see them there."""
        keys = list(keys)
        if not keys:
            return
        self.inflight.difference_update(keys)
        for pending in self._pending:
            pending.committed_meanwhile.update(keys)

    def released(self, keys: Iterable[str]) -> None:
        """These items were dropped unsent (path stopped, dry run): the next read may queue them again."""
        self.inflight.difference_update(keys)

    def _forget(self, lookup: Lookup) -> None:
        try:
            self._pending.remove(lookup)
        except ValueError:
            pass

    # -- expiry --
    async def expire_once(self, now: float | None = None) -> int:
        """Delete every entry older than the window, one bounded slice per writer-thread call."""
        older_than = (time.time() if now is None else now) - self.window
        total = 0
        while True:
            deleted = await self.state.expire_dedupe_slice(older_than, EXPIRE_SLICE)
            total += deleted
            if deleted < EXPIRE_SLICE:
                break
            await asyncio.sleep(0)  # other state work (a delivery being recorded) goes between slices
        if total:
            self.expired_total += total
            log.info("dedupe.expired", keys=total, window_seconds=self.window)
        return total

    async def expire_loop(self, every: float = EXPIRE_EVERY) -> None:
        """Run `expire_once` every `every` seconds until cancelled."""
        while True:
            try:
                await self.expire_once()
            except Exception as exc:  # a busy or failing state file: try again next round, say so
                log.warning("dedupe.expire_failed", error=str(exc))
            await asyncio.sleep(every)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a discarded lookup's exception as seen (asyncio would log it as never retrieved)."""
    if not future.cancelled():
        future.exception()
