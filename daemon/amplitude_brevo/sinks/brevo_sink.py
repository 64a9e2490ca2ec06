"""What every Brevo sink shares: batches from its queue → requests → Brevo's verdicts → settled items.

A batch's life: taken from the queue (≤ `batching.max_items` items) → cut into requests on the sink's batch
endpoint (while its budget has room soon, else one request per item on the single endpoint, where the sink
has one) → as each request is answered, its items are settled through the Acknowledger: delivered, or
dead-lettered with Brevo's message when Brevo refused that item. Each request's items are settled as soon as
Brevo answers it, in a task of its own, so that neither a shutdown nor a slow sibling request holds back the
record that stops a re-send after a crash.

A concrete sink (`BrevoEventsSink`, later contacts, orders, lists) says only what is particular to its
endpoints: the paths and budgets, how a batch body is built from item bodies, how Brevo names the refused
items of a batch answer, and which statuses are item verdicts. A sink with several routes (contacts) also
says which items a batch answer sends elsewhere (`diverted_items`), overrides `_send` to send its batch
route's items here and the others its own way (with `_call_single`, `_settle`), and keeps what Brevo's
answers taught it in `_record`, before the items are settled. Everything else is here:

* a request refused as a whole without item detail (400/413) is split in halves to isolate the bad item;
  a lone item then goes to the single endpoint for its own verdict;
* the batch size starts at the configured one, doubles after clean answers up to `max_batch_size` (a sink
  with `grows = False` keeps to the configured one), and stays below a size Brevo refused without item
  detail (one request at a time tries a new size);
* a batch endpoint whose budget is spent for longer than `max_pause` (an hourly window) hands its items to
  the single endpoint, unless that spends the same budget; a short wait (a 1-second window, a 429 with a
  short reset) is waited out;
* `stop()`: no new batch is taken and no request not yet sent is sent (waits for a budget or a retry end
  with `Stopping`); requests in flight finish and are settled, then `run()` returns. Items taken but never
  answered for stay unacknowledged and are released from the dedupe record's in-flight set, so the source
  reads and queues them again (after a restart, or when a reload switches the path back on).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import orjson

from ..logs import get_logger
from ..pipeline.items import Item
from ..pipeline.queue import next_batch_unless
from .brevo_client import BrevoClient, BrevoResponse, BudgetPaused, Outcome, Stopping, validate_response

log = get_logger("brevo_sink")

MAX_PAUSE = 5.0  # seconds a batch may wait on its own budget before its items go to the single endpoint
GROWTH_STEP = 1.1  # below a refused size, a larger one is tried only if it is this much larger than an accepted one
CHUNKS_IN_FLIGHT = 2  # batch requests of one queue batch on their way at once


class SinkStats:
    __slots__ = ("delivered", "dead_lettered", "batch_requests", "single_requests", "would_send")

    def __init__(self) -> None:
        self.delivered = 0
        self.dead_lettered = 0
        self.batch_requests = 0
        self.single_requests = 0
        self.would_send = 0

    def as_dict(self) -> dict[str, int]:
        """Every counter, a subclass's (a sink's own outcomes) after these."""
        names = [name for cls in reversed(type(self).__mro__) for name in getattr(cls, "__slots__", ())]
        return {name: getattr(self, name) for name in names}


class BatchSize:
    """How many items one batch request carries.

    Starts at `start`; each time Brevo accepts a request of the current size it doubles, up to `maximum`.
    Once Brevo has refused a request as a whole without saying which item was wrong (400 "at most N", 413),
    sizes from that one up are not tried again; growth then goes halfway between the largest accepted size
    and the smallest refused one, while that is a real step. A refusal of a request no larger than one
    Brevo accepted says nothing about size (an item in it is bad) and changes nothing.
    """

    def __init__(self, start: int, maximum: int) -> None:
        self.maximum = maximum
        self.configure(start)

    def configure(self, start: int) -> None:
        self.start = max(1, min(start, self.maximum))
        self.current = self.start
        self.accepted_max = 0  # the largest request Brevo accepted
        self.refused_min: int | None = None  # the smallest request Brevo refused as a whole, without detail

    @property
    def untried(self) -> bool:
        """The current size is larger than any Brevo has accepted yet."""
        return self.current > self.accepted_max

    def accepted(self, size: int) -> None:
        self.accepted_max = max(self.accepted_max, size)
        if size < self.current:
            return
        target = min(self.current * 2, self.maximum)
        if self.refused_min is not None and target >= self.refused_min:
            target = (self.accepted_max + self.refused_min) // 2
            if target < self.accepted_max * GROWTH_STEP:
                return
        self.current = max(self.current, target)

    def refused(self, size: int) -> None:
        if size <= max(1, self.accepted_max):
            return
        self.refused_min = size if self.refused_min is None else min(self.refused_min, size)
        self.current = self.accepted_max or max(1, min(self.current, size // 2))


class BrevoSink:
    """Drains one queue into Brevo with `workers` batches at a time; single requests go `concurrency` at a time.

    Subclasses set the class attributes and implement `batch_body`, `single_request` and `refused_items`.
    `acks` is the daemon's Acknowledger: `await settle(sink, items, refused)` records Brevo's verdicts (dead
    letters named after each item's source, dedupe keys, checkpoints), `settle_dry(sink, items)` a dry run's,
    and its `dedupe.released(keys)` forgets items taken but never sent. Every item taken from the queue ends
    in exactly one of the three.
    """

    role = "consumer"
    name = "brevo"
    noun = "item"  # in dead-letter reasons: "Brevo refused the event: ..."
    batch_path = ""
    batch_budget = ""
    single_budget: str | None = None  # None: no single endpoint, a lone item goes as a batch of one
    max_batch_size = 1000
    # False: the configured size is also the largest (an endpoint whose real limit is not known to be higher).
    grows = True
    # A remainder of fewer items than this goes to the single endpoint (when the sink has one) rather than
    # to a batch request: 2 sends a lone item alone; orders set more, their batch budget being hourly.
    singles_below = 2
    # Statuses that, with one of these Brevo error codes, are a verdict on items (see BrevoClient.call).
    item_verdicts: Mapping[int, frozenset[str]] = {}

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
        name: str | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        self.queue = queue
        self.client = client
        self.acks = acks
        self.sizer = BatchSize(batch_size, self._largest(batch_size))
        self.workers = workers
        self.dry_run = dry_run
        self.metrics = metrics
        self.stats = SinkStats()
        self._single_slots = asyncio.Semaphore(concurrency)
        self._trying = asyncio.Lock()  # held by the one request trying a batch size not accepted yet
        if client.stop is None:
            client.stop = asyncio.Event()  # the sink's stop is its client's: waiting requests give up
        self._stopping = client.stop
        self._recording: set[asyncio.Future[None]] = set()

    # -- what a concrete sink says about its endpoints --
    def batch_body(self, bodies: list[bytes]) -> bytes:
        raise NotImplementedError

    def single_request(self, item: Item) -> tuple[str, str, bytes]:
        """(method, path, body) of the single endpoint's request for one item (when `single_budget` is set)."""
        raise NotImplementedError

    def refused_items(self, response: BrevoResponse, size: int) -> dict[int, str]:
        """The items a batch answer names as refused: {position in the request: Brevo's message}."""
        raise NotImplementedError

    def diverted_items(self, response: BrevoResponse, size: int) -> list[int]:
        """Positions a batch answer refusing the whole request names as belonging on another route (contacts:
        "No contact found for indexes 3,4" — to be created). They are left in `batch.diverted`, unsettled, for
        the sink's `_send` to deliver; the rest of the request is sent again. None by default."""
        return []

    def would_send(self, item: Item) -> tuple[str, Any]:
        """(path, payload) a dry run logs for `item`."""
        path = self.batch_path if self.batching else self.single_request(item)[1]
        return path, orjson.loads(item.body)

    # -- lifecycle --
    @property
    def batching(self) -> bool:
        """False when the configured batch size is 1: every item goes to the single endpoint."""
        return self.sizer.start > 1 or self.single_budget is None

    async def start(self) -> None:
        """Nothing to open: the client and its session belong to the daemon."""

    def stop(self) -> None:
        """Take no new batch and send no request not sent yet; `run()` returns once in-flight ones are settled."""
        self._stopping.set()

    def _largest(self, batch_size: int) -> int:
        return self.max_batch_size if self.grows else max(1, min(batch_size, self.max_batch_size))

    def resize(self, batch_size: int) -> None:
        """A reload's batch size: from it the sizer starts (and, where the sink does not grow, stops) again."""
        if batch_size != self.sizer.start or self._largest(batch_size) != self.sizer.maximum:
            self.sizer.maximum = self._largest(batch_size)
            self.sizer.configure(batch_size)

    async def run(self) -> None:
        """The workers, until the queue is closed and drained or `stop()`; a worker's crash stops them all."""
        try:
            async with asyncio.TaskGroup() as workers:
                for n in range(self.workers):
                    workers.create_task(self._worker(), name=f"{self.name}.worker{n}")
        except BaseExceptionGroup as crashed:
            if len(crashed.exceptions) == 1:  # one worker's error (the others were cancelled): that one
                raise crashed.exceptions[0] from None
            raise
        finally:
            await self._recorded(set(self._recording))
        log.info("brevo.sink.stopped", sink=self.name, queued=len(self.queue), **self.stats.as_dict())

    async def _worker(self) -> None:
        while (batch := await self._next_batch()) is not None:
            try:
                await self.deliver(batch)
            except Stopping:
                return  # what it did not send is released (see _release)

    async def _next_batch(self) -> list[Item] | None:
        """The next batch, or None once the queue is closed and drained or the sink stops."""
        return await next_batch_unless(self.queue, self._stopping, self._release)

    # -- one batch --
    async def deliver(self, items: list[Item]) -> None:
        """Send one batch; returns once Brevo has answered for every item and each answer is recorded."""
        started = time.monotonic()
        if self.dry_run:
            self._dry_run(items)
            return
        batch = _Batch(items)
        try:
            await self._send(batch)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | Stopping):
                log.info("brevo.batch.interrupted", sink=self.name, count=len(items), settled=batch.settled)
            self._release([item for item, answered in zip(items, batch.answered, strict=True) if not answered])
            await self._recorded(batch.recording)  # what Brevo answered for is recorded whatever stopped the rest
            raise
        await self._recorded(batch.recording)
        seconds = time.monotonic() - started
        if self.metrics:
            self.metrics.batch_latency.labels(sink=self.name).observe(seconds)
        log.info("brevo.batch.sent", sink=self.name, count=len(items), dead_lettered=batch.dead_lettered,
                 requests=batch.requests, batch_size=self.sizer.current, seconds=round(seconds, 3))

    def _dry_run(self, items: list[Item]) -> None:
        for item in items:
            path, payload = self.would_send(item)
            log.info(f"brevo.dry_run.{self.noun}", sink=self.name, path=path, would_send=payload)
        self.stats.would_send += len(items)
        self.acks.settle_dry(self.name, items)

    async def _send(self, batch: _Batch, indexes: Sequence[int] | None = None) -> None:
        """Deliver batch.items[indexes] (every item by default): batch requests while their budget allows,
        then single ones. A sink with several routes overrides this and sends its batch route's items here."""
        todo = deque(range(len(batch.items)) if indexes is None else indexes)
        singles: list[int] = []

        def rest_to_singles() -> bool:
            if self.single_budget is not None and (
                not self.batching or len(todo) < self.singles_below or not self._batch_open()
            ):
                singles.extend(todo)  # the single endpoint has its own budget: use it now
                todo.clear()
            return not todo

        async def cut_and_send() -> None:
            while not rest_to_singles():
                # One request at a time tries a size Brevo has not accepted yet; the others wait for its
                # answer and are cut at the size it leads to.
                async with self._trying if self.sizer.untried else contextlib.nullcontext():
                    if rest_to_singles():
                        return
                    size = self.sizer.current if self.batching else 1
                    chunk = [todo.popleft() for _ in range(min(size, len(todo)))]
                    response = await self._post_batch(batch, chunk)
                singles.extend(await self._answered(batch, chunk, response))

        await _together([cut_and_send() for _ in range(CHUNKS_IN_FLIGHT)])
        await _together([self._send_single(batch, i) for i in singles])

    @property
    def _singles_elsewhere(self) -> bool:
        """The single endpoint spends another budget than the batch one: a way around a spent batch budget."""
        return self.single_budget is not None and self.single_budget != self.batch_budget

    def _batch_open(self) -> bool:
        if not self._singles_elsewhere:
            return True  # singles would wait on the same budget: the batch waits instead
        return self.client.budgets[self.batch_budget].can_send_within(MAX_PAUSE)

    async def _send_batch(self, batch: _Batch, chunk: list[int]) -> list[int]:
        """One batch request for batch.items[chunk]; returns the indexes still to send one by one."""
        return await self._answered(batch, chunk, await self._post_batch(batch, chunk))

    async def _post_batch(self, batch: _Batch, chunk: list[int]) -> BrevoResponse | None:
        """Brevo's answer to a batch request of batch.items[chunk], or None if its budget is paused for long."""
        self.stats.batch_requests += 1
        batch.requests += 1
        try:
            return await self.client.call(
                "POST", self.batch_path, self.batch_body([batch.items[i].body for i in chunk]),
                budget=self.batch_budget, item_verdicts=self.item_verdicts,
                context={"sink": self.name, "count": len(chunk)},
                max_pause=MAX_PAUSE if self._singles_elsewhere else None,
            )
        except BudgetPaused as exc:
            # The batch bucket is spent for a long while (e.g. 100 requests an hour): single requests meanwhile.
            log.info("brevo.batch.paused", sink=self.name, path=self.batch_path, seconds=round(exc.seconds))
            return None

    async def _answered(self, batch: _Batch, chunk: list[int], response: BrevoResponse | None) -> list[int]:
        """Settle what Brevo's answer decided for batch.items[chunk]; the indexes still to send one by one."""
        if response is None:
            return list(chunk)
        if validate_response(response.status) is not Outcome.OK and (
            moved := self.diverted_items(response, len(chunk))
        ):
            # Refused as a whole, naming items that belong on another route: those go there, the rest again.
            gone = {chunk[p] for p in moved if 0 <= p < len(chunk)}
            batch.diverted.extend(sorted(gone))
            rest = [i for i in chunk if i not in gone]
            return await self._send_batch(batch, rest) if rest else []
        errors = self.refused_items(response, len(chunk))
        refused = {chunk[p]: self._reason(message) for p, message in errors.items()}
        if validate_response(response.status) is Outcome.OK:
            self.sizer.accepted(len(chunk))
            if response.status == 207 and not errors:
                # Some items were accepted but the answer does not say which failed: sending the request again
                # would duplicate the accepted ones in Brevo, so count it delivered and say so.
                log.warning("brevo.batch.partial_without_detail", sink=self.name, path=self.batch_path,
                            count=len(chunk), body=str(response.body)[:500])
            self._settle(batch, chunk, refused)
            return []
        if refused:
            # Refused as a whole, naming the culprits: they are dead letters, the others are sent again.
            self._settle(batch, sorted(refused), refused)
            rest = [i for i in chunk if i not in refused]
            return await self._send_batch(batch, rest) if rest else []
        if len(chunk) > 1:
            # Refused as a whole without item detail (e.g. 413, "at most N per batch"): split to isolate the cause.
            self.sizer.refused(len(chunk))
            log.info("brevo.batch.split", sink=self.name, path=self.batch_path, count=len(chunk),
                     status=response.status, reason=response.message[:200], batch_size=self.sizer.current)
            half = len(chunk) // 2
            return await self._send_batch(batch, chunk[:half]) + await self._send_batch(batch, chunk[half:])
        if self.single_budget is not None:
            return list(chunk)  # a lone item refused without detail: let the single endpoint say why
        self._settle(batch, chunk, {chunk[0]: self._reason(f"HTTP {response.status} {response.message}")})
        return []

    async def _send_single(self, batch: _Batch, index: int) -> None:
        response = await self._call_single(batch, *self.single_request(batch.items[index]))
        refused = {}
        if validate_response(response.status) is not Outcome.OK:  # call() returns only answers and verdicts
            refused[index] = self._reason(f"HTTP {response.status} {response.message}")
        self._settle(batch, [index], refused)

    async def _call_single(self, batch: _Batch, method: str, path: str, body: Any) -> BrevoResponse:
        """One request for one item on the single endpoint's budget, `concurrency` at a time."""
        async with self._single_slots:
            response = await self.client.call(method, path, body, budget=self.single_budget,
                                              item_verdicts=self.item_verdicts, context={"sink": self.name})
            # Counted once answered: singles given up while waiting for the budget (a stop) were never sent.
            self.stats.single_requests += 1
            batch.requests += 1
        return response

    def _release(self, items: list[Item]) -> None:
        """Items taken from the queue that Brevo never answered for: the sink stopped (or was cancelled) first.

        They stay unacknowledged, so their source position holds its checkpoint back; and the dedupe record
        no longer counts them as on their way, so that the next read of that position — after a restart, or
        when a reload switches this path on again — queues them again, like the items still queued when the
        daemon discards a stopped sink's queue. (A request cut off in flight may then be sent twice, as
        after a kill.)
        """
        self.acks.release(items)

    def _reason(self, message: str) -> str:
        return f"Brevo refused the {self.noun}: {message}"

    # -- acknowledgements --
    def _settle(self, batch: _Batch, indexes: Sequence[int], refused: Mapping[int, str]) -> None:
        """Brevo has answered for batch.items[indexes]: record them now, not when the whole batch is done.

        The record is what stops a re-send after a crash, so the time between Brevo's answer and the SQLite
        commit is the only window in which a kill -9 can cause a duplicate: one request's answer, not a
        batch's (a batch's requests may be paced over seconds by the budgets). The recording runs as a task
        of its own so that a shutdown cancelling the batch cannot interrupt it half way.
        """
        settled = [batch.items[i] for i in indexes]
        for i in indexes:
            batch.answered[i] = True
        position = {index: n for n, index in enumerate(indexes)}
        letters = {position[i]: reason for i, reason in refused.items()}
        delivered = len(settled) - len(letters)
        batch.settled += len(settled)
        batch.dead_lettered += len(letters)
        self.stats.delivered += delivered
        self.stats.dead_lettered += len(letters)
        if self.metrics:
            self.metrics.items_out.labels(sink=self.name, outcome="delivered").inc(delivered)
            if letters:
                self.metrics.items_out.labels(sink=self.name, outcome="dead_lettered").inc(len(letters))
        recording = asyncio.ensure_future(self._record(batch, indexes, settled, letters))
        batch.recording.append(recording)
        self._recording.add(recording)
        recording.add_done_callback(self._recording.discard)

    async def _record(self, batch: _Batch, indexes: Sequence[int], items: list[Item], letters: dict[int, str]) -> None:
        """Record Brevo's answer for items = batch.items[indexes] (`letters` by position in `items`). A sink
        that keeps what it learned (contacts: their Brevo ids) does so here, before the items are settled."""
        await self.acks.settle(self.name, items, letters)

    @staticmethod
    async def _recorded(recordings: Sequence[asyncio.Future[None]] | set[asyncio.Future[None]]) -> None:
        """Wait for `recordings`; raise the first failure. Being cancelled meanwhile leaves them running
        (asyncio.wait does not cancel what it waits for)."""
        if not recordings:
            return
        await asyncio.wait(recordings)
        for task in recordings:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


class _Batch:
    """One delivery's bookkeeping: its items, how many Brevo has answered for, and their recordings."""

    __slots__ = ("items", "answered", "settled", "dead_lettered", "requests", "recording", "diverted", "notes")

    def __init__(self, items: list[Item]) -> None:
        self.items = items
        self.diverted: list[int] = []  # indexes a batch answer sent to another route (see diverted_items)
        self.notes: dict[int, Any] = {}  # per index: what the sink learned from Brevo's answer, for _record
        self.answered = bytearray(len(items))  # per item: settled
        self.settled = 0
        self.dead_lettered = 0
        self.requests = 0
        self.recording: list[asyncio.Future[None]] = []


async def _together(coros: list[Coroutine[Any, Any, Any]]) -> None:
    """Run `coros` concurrently until all are done.

    `Stopping` in one does not cancel the others: a request already sent finishes (and is settled), one
    still waiting stops by itself; then `Stopping` is raised. Any other error cancels the rest — no request
    is left running (and settling items) after its batch gave up — and propagates.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except Stopping:
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Stopping):
                raise result from None
        raise
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
