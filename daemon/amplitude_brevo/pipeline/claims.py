"""Queueing what a source's rows became: the new items only, each with the ack token of its position.

Every row source (the export tail, the ingest spool) hands its mapped chunks to a `ClaimingQueuer`: the
dedupe keys of a chunk are looked up on the state's lookup thread while the source reads the next chunk,
and at the next flush the chunk's items whose keys are new (`DedupeRecord.claim`: not delivered, not in
flight) are queued for their sinks, together, with the token of the chunk's position. Items without a key
(idempotent writes: profile snapshots) are never filtered. So the two sources share one dedupe record and
one way of counting: an event read live and again from an export reaches each sink once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .acks import OffsetTracker
from .dedupe import DedupeRecord, Lookup
from .items import Item
from .queue import BatchQueue


class Candidates:
    """Chunks' outputs by sink, each in row order: (dedupe keys (or None), bodies)."""

    __slots__ = ("by_sink", "size")

    def __init__(self) -> None:
        self.by_sink: dict[str, tuple[list[str | None], list[bytes]]] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, chunk: Any) -> None:
        """Append a chunk's outputs (`MappedChunk.outputs`: sink → SinkOutput)."""
        for sink, output in chunk.outputs.items():
            if not output.bodies:
                continue
            known = self.by_sink.get(sink)
            if known is None:
                self.by_sink[sink] = (list(output.keys), list(output.bodies))
            else:
                known[0].extend(output.keys)
                known[1].extend(output.bodies)
            self.size += len(output.bodies)

    def lookup_keys(self) -> list[str]:
        """Every key to look up, sink by sink in `by_sink` order, each sink's in row order."""
        return [key for keys, _ in self.by_sink.values() for key in keys if key is not None]


@dataclass(slots=True, eq=False)
class _PendingChunk:
    position: Any
    batch: Candidates
    lookup: Lookup


class ClaimingQueuer:
    """Queues `Candidates` for the sinks of `queues`, one chunk behind its dedupe lookup (see the module
    docstring). `stats` is any object with `mapped` and `deduplicated` counters; `metrics` counts repeats."""

    def __init__(self, *, queues: Mapping[str, BatchQueue[Item]], dedupe: DedupeRecord, tracker: OffsetTracker,
                 stats: Any, metrics: Any = None) -> None:
        self.queues = queues  # shared with the source: a test or a reload may add to it
        self.dedupe = dedupe
        self.tracker = tracker
        self.stats = stats
        self.metrics = metrics
        self._pending: _PendingChunk | None = None

    async def flush(self, position: Any, batch: Candidates) -> None:
        """Start the dedupe lookup of `batch` (read at `position`) and queue the chunk before it."""
        if not len(batch):
            return
        self.stats.mapped += len(batch)
        chunk = _PendingChunk(position, batch, self.dedupe.lookup(batch.lookup_keys()))
        await self.queue_pending()
        self._pending = chunk

    async def queue_pending(self) -> None:
        """Queue the items of the chunk waiting for its dedupe lookup that are new, and count them at its
        position (the tracker's outstanding items)."""
        chunk, self._pending = self._pending, None
        if chunk is None:
            return
        fresh = await self.dedupe.claim(chunk.lookup)  # in the order of chunk.batch.lookup_keys()
        token = self.tracker.token(chunk.position)
        by_sink: dict[str, list[Item]] = {}
        repeats: dict[str, int] = {}
        at = 0
        for sink, (keys, bodies) in chunk.batch.by_sink.items():
            keyed = len(keys) - keys.count(None)
            if not keyed:  # idempotent writes (profiles): nothing to look up
                items = [Item(None, body, token) for body in bodies]
            elif keyed == len(keys):
                flags = fresh[at:at + keyed]
                items = [Item(key, body, token) for key, body, new in zip(keys, bodies, flags, strict=True) if new]
            else:
                flags = iter(fresh[at:at + keyed])
                items = [Item(key, body, token) for key, body in zip(keys, bodies, strict=True)
                         if key is None or next(flags)]
            at += keyed
            if len(items) != len(bodies):
                repeats[sink] = len(bodies) - len(items)
            if items:
                by_sink[sink] = items
        if repeats:
            self.stats.deduplicated += sum(repeats.values())
            if self.metrics:
                for sink, count in repeats.items():
                    self.metrics.items_out.labels(sink=sink, outcome="deduplicated").inc(count)
        self.tracker.add(chunk.position, sum(map(len, by_sink.values())))
        for sink, items in by_sink.items():
            await self.queues[sink].put_many(items)

    def discard_pending(self) -> None:
        """The chunk waiting for its lookup will not be queued (stopping): its position stays open."""
        chunk, self._pending = self._pending, None
        if chunk is not None:
            self.dedupe.discard(chunk.lookup)
