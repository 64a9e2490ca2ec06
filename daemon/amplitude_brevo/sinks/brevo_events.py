"""Consumer: delivers queued events to Brevo (`/events/batch`, falling back to `/events`) and acknowledges them.

A batch's life: taken from the queue (≤ `batching.max_items`) → split into requests (`/events/batch` chunks
while that budget has room, single `/events` otherwise) → as each request is answered, its items end
delivered or dead-lettered: their dead letters are stored, then their keys and any checkpoint they complete
are committed in one SQLite transaction. A batch interrupted by shutdown (cancelled at the drain deadline)
has thereby recorded what Brevo already answered for, so a restart re-sends only the rest.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..logs import get_logger
from .brevo_client import BrevoClient, BudgetPaused, Outcome, Stopping, validate_response

log = get_logger("brevo_events")

SINK = "brevo_events"
BATCH_BUDGET = "brevo_events_batch"
BATCH_MAX_PAUSE = 5.0  # seconds a batch may wait on its own budget before its events go to /events instead
SINGLE_BUDGET = "brevo_events"


@dataclass
class SinkStats:
    delivered: int = 0
    dead_lettered: int = 0
    batch_requests: int = 0
    single_requests: int = 0
    would_send: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered, "dead_lettered": self.dead_lettered,
            "batch_requests": self.batch_requests, "single_requests": self.single_requests,
            "would_send": self.would_send,
        }


class BrevoEventsSink:
    """Drains the `brevo_events` queue with `workers` concurrent batches; singles go out `concurrency` at a time."""

    role = "consumer"

    def __init__(
        self,
        *,
        queue: Any,
        client: BrevoClient,
        acks: Any,
        batch_size: int = 100,
        workers: int = 2,
        concurrency: int = 8,
        dry_run: bool = False,
        metrics: Any = None,
        name: str = SINK,
    ) -> None:
        self.name = name
        self.queue = queue
        self.client = client
        self.acks = acks
        self.batch_size = batch_size
        self.workers = workers
        self._single_slots = asyncio.Semaphore(concurrency)
        self.dry_run = dry_run
        self.metrics = metrics
        self.stats = SinkStats()
        self._batch_endpoint = batch_size > 1

    async def start(self) -> None:
        pass

    def stop(self) -> None:
        """Take no new batch; requests not sent yet are not sent (the client raises Stopping)."""
        if self.client.stop is not None:
            self.client.stop.set()

    def reload(self, cfg: Any) -> None:
        brevo = cfg.connectors.brevo
        self.client.reconfigure(base_url=brevo.api_url, api_key=brevo.api_key)
        size = brevo.events_batch_size
        self.batch_size = size
        self._batch_endpoint = size > 1

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.workers)))

    async def _worker(self) -> None:
        stop = self.client.stop
        try:
            while (batch := await self.queue.next_batch()) is not None:
                if stop is not None and stop.is_set():
                    return  # taken after the stop: left unacknowledged, read again after restart
                await self.deliver(batch)
        except Stopping:
            # The client gave up waiting to retry because the daemon stops: what is left is re-read on restart.
            log.info("brevo.sink.stopped", sink=self.name, queued=len(self.queue))

    # -- one batch --
    async def deliver(self, items: list[Any]) -> None:
        started = time.monotonic()
        if self.dry_run:
            for item in items:
                log.info("brevo.dry_run.event", would_send=orjson.loads(item.body))
            self.stats.would_send += len(items)
            self.acks.settle_dry(self.name, items)
            return
        batch = _Batch(items)
        try:
            await self._send(batch, list(range(len(items))))
        except BaseException as exc:
            if isinstance(exc, (asyncio.CancelledError, Stopping)):
                log.info("brevo.batch.interrupted", sink=self.name, count=len(items), acknowledged=batch.settled)
            await batch.recorded()  # what Brevo answered for is recorded whatever stopped the rest
            raise
        await batch.recorded()
        if self.metrics:
            self.metrics.batch_latency.labels(sink=self.name).observe(time.monotonic() - started)
        log.info("brevo.batch.sent", sink=self.name, count=len(items), dead_lettered=batch.dead_lettered,
                 seconds=round(time.monotonic() - started, 3))

    async def _send(self, batch: _Batch, indexes: list[int]) -> None:
        """Deliver batch.items[indexes]; each request's items are recorded as soon as Brevo answers it."""
        singles: list[int] = []
        chunks = [indexes[i:i + self.batch_size] for i in range(0, len(indexes), max(1, self.batch_size))]
        batch_tasks = []
        budget = self.client.budgets[BATCH_BUDGET]
        for chunk in chunks:
            # Count the requests already planned: a chunk that would have to wait for the batch budget goes
            # to /events now instead (its own budget), rather than queueing behind a nearly spent hourly one.
            if self._batch_endpoint and len(chunk) > 1 and budget.has_capacity(len(batch_tasks) + 1):
                batch_tasks.append(self._send_batch(batch, chunk))
            else:
                singles.extend(chunk)
        results = await _gather(batch_tasks)
        for leftover in results:
            singles.extend(leftover)
        await _gather([self._send_single(batch, i) for i in singles])

    async def _send_batch(self, batch: _Batch, chunk: list[int]) -> list[int]:
        """One `/events/batch` request; returns indexes still to send one by one."""
        items = batch.items
        # The events' bodies are JSON already: join them, no decoding or re-encoding.
        body = b'{"events":[' + b",".join([items[i].body for i in chunk]) + b"]}"
        self.stats.batch_requests += 1
        try:
            response = await self.client.call("POST", "/events/batch", body, budget=BATCH_BUDGET,
                                              context={"sink": self.name, "count": len(chunk)},
                                              max_pause=BATCH_MAX_PAUSE)
        except BudgetPaused as exc:
            # The batch bucket is spent for a long while (e.g. 100 requests/hour): single events meanwhile.
            log.info("brevo.events_batch.paused", sink=self.name, seconds=round(exc.seconds), fallback="/events")
            return list(chunk)
        if response.status in (200, 201, 202, 204):
            self._settle(batch, chunk, {})
            return []
        if response.status in (207, 400):
            failed = _failed_indexes(response.body, len(chunk))
            if failed:
                refused = {chunk[position]: f"Brevo refused the event: {message}"
                           for position, message in failed.items()}
                self._settle(batch, chunk, refused)
                return []
            if response.status == 207:
                # Some events were accepted but the body does not say which failed: sending the chunk again
                # would duplicate the accepted ones in Brevo, so count it delivered and say so.
                log.warning("brevo.events_batch.partial_without_detail", sink=self.name, count=len(chunk),
                            body=str(response.body)[:500])
                self._settle(batch, chunk, {})
                return []
        if response.status in (404, 405, 501):
            # This account or proxy has no batch endpoint: fall back to single events from now on.
            log.warning("brevo.events_batch.unavailable", status=response.status, fallback="/events")
            self._batch_endpoint = False
            return list(chunk)
        if validate_response(response.status) is Outcome.FATAL and len(chunk) > 1:
            # The whole request was refused without item detail (e.g. 413): split to isolate the cause.
            half = len(chunk) // 2
            left = await self._send_batch(batch, chunk[:half])
            right = await self._send_batch(batch, chunk[half:])
            return left + right
        return list(chunk)  # a single item refused as a whole: let /events say why

    async def _send_single(self, batch: _Batch, index: int) -> None:
        async with self._single_slots:
            self.stats.single_requests += 1
            response = await self.client.call("POST", "/events", batch.items[index].body,
                                              budget=SINGLE_BUDGET, context={"sink": self.name})
        refused = {}
        if validate_response(response.status) is Outcome.FATAL:
            refused[index] = f"Brevo refused the event: HTTP {response.status} {response.message}"
        self._settle(batch, [index], refused)

    # -- acknowledgements --
    def _settle(self, batch: _Batch, indexes: list[int], refused: dict[int, str]) -> None:
        """Brevo has answered for batch.items[indexes]: record them now, not when the whole batch is done.

        The record is what stops a re-send after a crash, so the time between Brevo's answer and the SQLite
        commit is the only window in which a kill -9 can cause a duplicate: one request's answer, not a
        batch's (a batch's requests may be paced over seconds by the budgets). The recording runs as its own
        task so that a shutdown cancelling the batch cannot interrupt it half way.
        """
        settled = [batch.items[i] for i in indexes]
        position = {index: n for n, index in enumerate(indexes)}
        refused_here = {position[i]: reason for i, reason in refused.items()}
        letters = refused_here
        delivered = len(indexes) - len(letters)
        batch.settled += len(indexes)
        batch.dead_lettered += len(letters)
        self.stats.delivered += delivered
        self.stats.dead_lettered += len(letters)
        if self.metrics:
            self.metrics.items_out.labels(sink=self.name, outcome="delivered").inc(delivered)
            if letters:
                self.metrics.items_out.labels(sink=self.name, outcome="dead_lettered").inc(len(letters))
        batch.recording.append(asyncio.ensure_future(self.acks.settle(self.name, settled, refused_here)))


class _Batch:
    """One delivery's bookkeeping: its items, how many Brevo has answered for, and their recordings."""

    __slots__ = ("items", "settled", "dead_lettered", "recording")

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.settled = 0
        self.dead_lettered = 0
        self.recording: list[asyncio.Future[None]] = []

    async def recorded(self) -> None:
        """Wait for every recording started so far; raise the first failure. Being cancelled meanwhile
        leaves them running (asyncio.wait does not cancel what it waits for)."""
        if not self.recording:
            return
        await asyncio.wait(self.recording)
        for task in self.recording:
            if task.exception() is not None:
                raise task.exception()


async def _gather(coros: list[Any]) -> list[Any]:
    """`asyncio.gather`, except that when one fails the others are cancelled before the error propagates,
    so no request is left running (and mutating the batch's bookkeeping) after the batch gave up."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _failed_indexes(body: Any, size: int) -> dict[int, str]:
    """`errors: [{eventIndex: [..], message}]` of a 207/400 from `/events/batch` → {position: message}."""
    failed: dict[int, str] = {}
    if not isinstance(body, dict):
        return failed
    for error in body.get("errors") or []:
        if not isinstance(error, dict):
            continue
        indexes = error.get("eventIndex")
        if isinstance(indexes, int):
            indexes = [indexes]
        for index in indexes or []:
            if isinstance(index, int) and 0 <= index < size:
                failed[index] = str(error.get("message") or "invalid event")
    return failed
