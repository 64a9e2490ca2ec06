"""The shared Brevo sink machinery: a contacts-shaped sink on it, and the lifecycle every sink has
(workers, stop with a backlog behind a slow Brevo, the queue closing, a crashing worker)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.pipeline.queue import BatchQueue
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BucketLimit
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import BrevoClient, BrevoResponse
from amplitude_brevo.sinks.brevo_events import BrevoEventsSink
from amplitude_brevo.sinks.brevo_sink import BatchSize, BrevoSink, SinkStats
from amplitude_brevo.sinks.budgets import Budgets
from amplitude_brevo.state import StateStore
from tests.sinks.support import HOUR, KEY, Limit, RecordingAcks, brevo_env, ids, items, tracker


class ContactsSink(BrevoSink):
    """How a later sink uses the machinery: another path and budget, no single endpoint, and Brevo's
    contacts-style item errors (a 404 naming positions, the whole request refused)."""

    name = "brevo_contacts"
    noun = "contact"
    batch_path = "/contacts/batch"
    batch_budget = "brevo_contacts"
    max_batch_size = 100
    item_verdicts = {404: frozenset({"document_not_found"})}

    def batch_body(self, bodies: list[bytes]) -> bytes:
        return b'{"contacts":[' + b",".join(bodies) + b"]}"

    def refused_items(self, response: BrevoResponse, size: int) -> dict[int, str]:
        found = re.search(r"indexes ([\d,\s]+)", str(response.body.get("message", ""))) \
            if response.status == 404 and isinstance(response.body, dict) else None
        positions = [int(n) for n in found.group(1).split(",")] if found else []
        return {p: "no such contact" for p in positions if 0 <= p < size}


def contacts(n: int) -> list[Item]:
    source = tracker()
    token = source.token(HOUR)
    source.add(HOUR, n)
    source.seal(HOUR)
    return [Item(None, orjson.dumps({"ext_id": f"u{i}", "attributes": {"N": i}}), token) for i in range(n)]


async def test_a_contacts_shaped_sink_dead_letters_the_named_items_and_resends_the_rest(tmp_path):
    known = {f"u{i}" for i in range(10)} - {"u3", "u4", "u8"}
    applied: list[str] = []
    requests: list[int] = []

    async def contacts_batch(request: web.Request) -> web.Response:
        batch = (await request.json())["contacts"]
        requests.append(len(batch))
        missing = [i for i, c in enumerate(batch) if c["ext_id"] not in known]
        if missing:  # Brevo refuses the whole request, naming the positions
            message = "No contact found for indexes " + ",".join(map(str, missing))
            return web.json_response({"code": "document_not_found", "message": message}, status=404)
        applied.extend(c["ext_id"] for c in batch)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v3/contacts/batch", contacts_batch)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        state = await StateStore.open(tmp_path / "state.db")
        try:
            client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                                 budgets=Budgets({"brevo_contacts": Limit(1000, 1)}),
                                 backoff=Backoff(0.001, 0.002, max_attempts=5))
            acks = RecordingAcks(state)
            sink = ContactsSink(queue=None, client=client, acks=acks, batch_size=10)
            batch = contacts(10)
            await sink.deliver(batch)
            assert sorted(applied) == sorted(known) and requests == [10, 7]
            letters = await state.list_dead_letters()
            assert [(orjson.loads(d.item)["ext_id"], d.reason, d.sink) for d in letters] == [
                (f"u{i}", "Brevo refused the contact: no such contact", "brevo_contacts") for i in (3, 4, 8)
            ]
            assert sum(len(settled) for _, settled, _ in acks.settled) == 10
            assert await state.get_checkpoint("export.next_hour") == "20261101T01"
        finally:
            await state.close()


def test_batch_size_policy():
    size = BatchSize(100, 1000)
    for expected in (200, 400, 800, 1000, 1000):
        size.accepted(size.current)
        assert size.current == expected
    size = BatchSize(100, 1000)
    size.accepted(60)
    assert size.current == 100, "a smaller request says nothing about the current size"
    size.accepted(100)
    size.accepted(200)  # 400 next
    size.refused(400)
    assert size.current == 200 and size.refused_min == 400
    size.accepted(200)
    assert size.current == 300, "halfway between accepted and refused"
    size.refused(300)
    size.accepted(200)
    assert size.current == 250
    size.refused(250)
    size.accepted(200)
    assert size.current == 225
    size.refused(225)
    size.accepted(200)
    assert size.current == 200, "212 is no real step above 200: stay"
    size.refused(150)
    assert size.current == 200 and size.refused_min == 225, "a bad item, not the size: 200 went through"
    fresh = BatchSize(1000, 1000)
    fresh.refused(1000)
    assert fresh.current == 500
    assert BatchSize(5000, 1000).current == 1000 and BatchSize(0, 1000).current == 1


def test_a_sinks_own_counters_follow_the_shared_ones_in_its_stats():
    class Counted(SinkStats):
        __slots__ = ("created",)

        def __init__(self) -> None:
            super().__init__()
            self.created = 2

    assert Counted().as_dict() == {**SinkStats().as_dict(), "created": 2}
    assert list(SinkStats().as_dict()) == ["delivered", "dead_lettered", "batch_requests", "single_requests",
                                           "would_send"]


class SmallBatches(BrevoEventsSink):
    max_batch_size = 10


async def test_stop_with_50000_items_behind_a_10_per_second_brevo_returns_within_2_seconds(tmp_path):
    held, release = asyncio.Event(), asyncio.Event()
    in_flight: set[str] = set()
    batches = 0

    async def hold_the_eleventh(request: web.Request) -> None:
        nonlocal batches
        if request.path == "/v3/events/batch":
            batches += 1
            if batches == 11:  # the second window's first request: in flight when the stop comes
                in_flight.update(f"events:{e['event_properties']['amplitude_insert_id']}"
                                 for e in orjson.loads(await request.read())["events"])
                held.set()
                await release.wait()

    # The events bucket at 10 requests/s, /events/batch counted in it, configured as the plan says (100/h).
    async with brevo_env(tmp_path, limits={"events": BucketLimit(10, 1.0)}, events_batch_bucket="events",
                         budgets={"brevo_events_batch": Limit(100, 3600), "brevo_events": Limit(10, 1)},
                         hold=hold_the_eleventh) as env:
        queue: BatchQueue[Item] = BatchQueue("brevo_events", max_items=1000, max_wait=0.01, capacity=50_000)
        backlog = items(50_000)
        env.acks.dedupe.inflight.update(item.key for item in backlog)  # as the source does when it queues
        await queue.put_many(backlog)
        # One worker, batches of 10: the queue batch's two requests at a time, one held, one waiting.
        sink = SmallBatches(queue=queue, client=env.client, acks=env.acks, batch_size=10, workers=1)
        budget = env.client.budgets["brevo_events_batch"]
        running = asyncio.create_task(sink.run())
        try:
            async with asyncio.timeout(10):
                await held.wait()
                while sink.stats.batch_requests <= budget.acquired_total:  # until one waits for the window
                    await asyncio.sleep(0.01)
            sink.stop()
            stopped = time.monotonic()
            for _ in range(20):  # the waiting requests give up while the held one is still on its way
                await asyncio.sleep(0)
        finally:
            release.set()
        async with asyncio.timeout(5):
            await running
        # Well under the window's second: what waits for the window gives up at once.
        assert time.monotonic() - stopped < 0.5
        settled = env.acks.keys()
        received = {f"events:{k}" for k in ids(env.brevo.events)}
        assert in_flight and in_flight <= set(settled), "the request in flight at the stop finished and was settled"
        assert set(settled) == received, "what Brevo received is settled, and nothing else was sent"
        assert len(env.log) >= 11 and 0 < len(settled) < 50_000 and len(queue) > 0
        assert sink.stats.batch_requests > budget.acquired_total == len(env.log), "those waiting were never sent"
        assert backlog[0].token.tracker.outstanding == 50_000 - len(settled), "the rest is left unacknowledged"
        assert await env.state.get_checkpoint("export.next_hour") is None
        assert env.brevo.rate_limited == 0
        # Taken but never sent: no longer "on their way", so a re-read (restart, the path switched on again
        # by a reload) queues them again; the daemon releases what is still queued the same way.
        still_queued = {item.key for item in await queue.discard()}
        assert env.acks.dedupe.inflight == still_queued
        assert len(settled) + len(still_queued) < 50_000, "some were taken, not sent, and released"


async def test_run_returns_when_the_queue_is_closed_and_drained(tmp_path):
    async with brevo_env(tmp_path) as env:
        queue: BatchQueue[Item] = BatchQueue("brevo_events", max_items=30, max_wait=0.01, capacity=1000)
        await queue.put_many(items(100))
        await queue.close()
        sink = BrevoEventsSink(queue=queue, client=env.client, acks=env.acks, batch_size=10, workers=3)
        async with asyncio.timeout(10):
            await sink.run()
        assert len(env.brevo.events) == 100 and sink.stats.delivered == 100
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"


async def test_stop_while_waiting_for_a_batch_returns_at_once(tmp_path):
    async with brevo_env(tmp_path) as env:
        queue: BatchQueue[Item] = BatchQueue("brevo_events", max_items=30, max_wait=60, capacity=1000)
        await queue.put_many(items(3))  # a batch that waits max_wait for more
        sink = BrevoEventsSink(queue=queue, client=env.client, acks=env.acks)
        running = asyncio.create_task(sink.run())
        for _ in range(10):  # let the workers start waiting for the batch to fill
            await asyncio.sleep(0)
        sink.stop()
        async with asyncio.timeout(1):
            await running
        assert len(queue) == 3 and env.log == [], "nothing taken, nothing sent"


async def test_one_crashing_worker_stops_the_others_and_its_error_propagates(tmp_path):
    async with brevo_env(tmp_path) as env:
        class Failing(RecordingAcks):
            async def settle(self, sink: str, items: Any, refused: Any = None) -> None:
                raise RuntimeError("disk full")

        queue: BatchQueue[Item] = BatchQueue("brevo_events", max_items=5, max_wait=0.01, capacity=1000)
        await queue.put_many(items(500))
        sink = BrevoEventsSink(queue=queue, client=env.client, acks=Failing(env.state), batch_size=5, workers=3)
        async with asyncio.timeout(10):
            with pytest.raises(RuntimeError, match="disk full"):
                await sink.run()
        left = [t for t in asyncio.all_tasks() if t.get_name().startswith("brevo_events.worker") and not t.done()]
        assert left == [], "no worker goes on sending once run() has raised"
        assert len(env.log) <= 3 * 2, "each worker got at most its batch's first answers"
