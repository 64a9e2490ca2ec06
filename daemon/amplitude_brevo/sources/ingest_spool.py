"""Producer: the ingest spool's requests → the Brevo sinks, beside the export tail (issue 9 item 4).

Reads the spool in order from its own checkpoint, `ingest.brevo` (the forwarder to Amplitude has another,
so an outage of either upstream delays nothing of the other). Each read of up to `READ` spooled requests
is one position of this source's `OffsetTracker`: `ingest/brevo_feed.py` maps the requests, the
`ClaimingQueuer` queues the new items under the position's token (the dedupe record is the export's), and
the checkpoint moves past the read once every item of it is delivered or dead-lettered. Then the spool
rows both consumers are done with are deleted (`spool_release`).

The ingest server wakes the source on each commit; it also looks every `poll` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..ingest.brevo_feed import BrevoFeed
from ..ingest.entries import decode_entry
from ..logs import get_logger
from ..pipeline.acks import Acknowledger, OffsetTracker
from ..pipeline.claims import Candidates, ClaimingQueuer
from ..pipeline.dedupe import DedupeRecord
from ..pipeline.items import Item
from ..pipeline.queue import BatchQueue, QueueClosed
from ..pipeline.remap import MappingRules, enabled_sinks
from ..state import DeadLetter
from ..state.checkpoints import number_key, number_of
from ..state.spool import BREVO_CHECKPOINT, FORWARDED_CHECKPOINT

log = get_logger("ingest")

CHECKPOINT = BREVO_CHECKPOINT
SOURCE = "ingest"  # dead letters' source
READ = 200  # spooled requests read (and queued) at once: one tracker position


def spool_readers(cfg: Config) -> list[str]:
    """The checkpoints a spool row must be past to be deleted (`spool_release`): this producer's while a
    Brevo sink is on, the forwarder's while `ingest.forward_to_amplitude` is."""
    return [name for name, on in ((CHECKPOINT, bool(enabled_sinks(cfg))),
                                  (FORWARDED_CHECKPOINT, cfg.ingest.forward_to_amplitude)) if on]


@dataclass
class SpoolStats:
    requests: int = 0
    rows: int = 0
    mapped: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    released: int = 0  # spool rows deleted
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "rows": self.rows, "mapped": self.mapped,
                "deduplicated": self.deduplicated, "dead_lettered": self.dead_lettered,
                "released": self.released, "skipped": dict(self.skipped)}


class SpoolSource:
    """Feeds the spool's requests to the queues of `queues` (by sink name); see the module docstring.

    `release`: the checkpoints whose minimum a spool row must be past to be deleted (this one's, and
    `ingest.forwarded` while forwarding is on)."""

    role = "producer"
    name = "ingest_spool"

    def __init__(self, *, cfg: Config, queues: Mapping[str, BatchQueue[Item]], dedupe: DedupeRecord,
                 acks: Acknowledger, release: Sequence[str] = (CHECKPOINT,), metrics: Any = None,
                 poll: float = 1.0, bell: Any = None) -> None:
        self.bell = bell  # ingest/bell.py: rung on each commit of the ingest server
        self.cfg = cfg
        self.feed = BrevoFeed(MappingRules.from_config(cfg))
        self.queues = dict(queues)
        self.dedupe = dedupe
        self.acks = acks
        self.state = acks.state
        self.release = tuple(release)
        self.metrics = metrics
        self.poll = poll
        self.stats = SpoolStats()
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._moved = False  # the checkpoint moved since the last release
        self.tracker = OffsetTracker(CHECKPOINT, SOURCE, number_key)
        self.tracker.on_advance = self._advanced
        self.queuer = ClaimingQueuer(queues=self.queues, dedupe=dedupe, tracker=self.tracker, stats=self.stats,
                                     metrics=metrics)
        self.read_through = 0  # the last spool id read

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self.queues)

    def wake(self) -> None:
        """New requests were spooled (the ingest server's commit)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg
        self.feed = BrevoFeed(MappingRules.from_config(cfg))  # requests read from now on use the new mapping
        self.release = tuple(spool_readers(cfg))

    def _advanced(self, _position: Any) -> None:
        self._moved = True
        self._wake.set()

    async def run(self) -> None:
        if self.bell is not None:
            self.bell.subscribe(self._wake)
        try:
            self.read_through = number_of(await self.state.get_checkpoint(CHECKPOINT))
            log.info("ingest.brevo.started", checkpoint=CHECKPOINT, after=self.read_through, sinks=list(self.sinks))
            while not self.stopping.is_set():
                if self._moved:
                    await self._release()
                rows = await self.state.spool_read(self.read_through, READ)
                if rows:
                    await self._queue(rows)
                    continue
                await self._idle()
        except QueueClosed:
            pass
        finally:
            self.queuer.discard_pending()
            if self.bell is not None:
                self.bell.unsubscribe(self._wake)
        log.info("ingest.brevo.stopped", read_through=self.read_through, **self.stats.as_dict())

    async def _idle(self) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), self.poll)
        except TimeoutError:
            pass

    async def _release(self) -> None:
        self._moved = False
        try:
            deleted = await self.state.spool_release(list(self.release))
        except Exception as exc:  # noqa: BLE001 - a failed delete is retried at the next move
            log.warning("ingest.spool.release_failed", error=str(exc))
            self._moved = True
            return
        self.stats.released += deleted

    async def _queue(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Map, dead-letter and queue one read of spooled requests, as one position."""
        position = rows[-1][0]
        self.tracker.open(position)
        batch = Candidates()
        letters: list[DeadLetter] = []
        sink = ",".join(self.sinks)
        feed = self.feed
        rows_read = 0
        for spool_id, _kind, body in rows:
            self.stats.requests += 1
            try:
                request = decode_entry(body)
            except (ValueError, KeyError, TypeError) as exc:
                letters.append(DeadLetter(source=SOURCE, sink=sink, item={"spool_id": spool_id},
                                          reason=f"spool entry {spool_id} cannot be read: {exc}"))
                continue
            try:
                chunk = feed.map_request(spool_id, request)
            except Exception as exc:  # a case mapping does not know: that request only, never a crash loop
                letters.append(DeadLetter(source=SOURCE, sink=sink, item={"spool_id": spool_id, "kind": request.kind},
                                          reason=f"cannot map the request: {type(exc).__name__}: {exc}"))
                continue
            self.stats.rows += chunk.rows
            rows_read += chunk.rows
            for reason, count in chunk.skipped.items():
                self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + count
            for _event, _line, item, reason in chunk.letters:
                letters.append(DeadLetter(source=SOURCE, sink=sink, item=item, reason=reason))
            batch.add(chunk)
        if letters:
            await self.acks.dead_letter(letters)
            self.stats.dead_lettered += len(letters)
            log.warning("ingest.brevo.dead_lettered", count=len(letters), first_reason=letters[0].reason,
                        hint="amplitude-brevo dlq list --source ingest")
            if self.metrics:
                for name in self.sinks:
                    self.metrics.items_out.labels(sink=name, outcome="dead_lettered").inc(len(letters))
        if self.metrics and rows_read:
            self.metrics.items_in.labels(source=SOURCE).inc(rows_read)
        await self.queuer.flush(position, batch)
        await self.queuer.queue_pending()
        self.tracker.seal(position)
        self.read_through = position
        await self.acks.checkpoint(self.tracker)
