"""BrevoEventsSink against the Brevo simulator: batches, item errors, fallbacks, rate limits, retries, acks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from amplitude_brevo.pipeline.acks import Acknowledger, OffsetTracker
from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.pipeline.remap import BrevoEvent
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, BrevoFaults, BucketLimit, make_brevo_app
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import BrevoClient
from amplitude_brevo.sinks.brevo_events import BrevoEventsSink
from amplitude_brevo.sinks.budgets import Budgets
from amplitude_brevo.state import StateStore

KEY = "xkeysib-sink-test-key"
HOUR = datetime(2026, 11, 1, 0, tzinfo=UTC)


@dataclass
class Limit:
    requests: int
    per: float


class Source:
    """Stands in for the export source: one hour of `expected` items, whose completion moves a checkpoint."""

    def __init__(self, expected: int, checkpoint_name: str = "test.checkpoint") -> None:
        self.tracker = OffsetTracker(checkpoint_name, "export", lambda hour: "20261101T01")
        self.tracker.owner = self  # type: ignore[attr-defined]
        self.token = self.tracker.token(HOUR)
        self.tracker.add(HOUR, expected)
        self.tracker.seal(HOUR)
        self.acked: list[str] = []
        self.committed_keys: list[str] = []


def source_of(item: Item) -> Source:
    return item.token.tracker.owner


class RecordingAcks(Acknowledger):
    """The real acknowledger, also noting on each item's Source what was acknowledged and committed."""

    async def settle(self, sink, items, refused=None):
        for item in items:
            source_of(item).acked.append(item.key)
        await super().settle(sink, items, refused)
        for item in items:
            source_of(item).committed_keys.append(item.key)

    def settle_dry(self, sink, items):
        for item in items:
            source_of(item).acked.append(item.key)
        super().settle_dry(sink, items)


def payload(i: int, **overrides: Any) -> dict[str, Any]:
    body = {
        "event_name": "order_completed",
        "event_date": "2026-11-01T00:10:00.000Z",
        "identifiers": {"ext_id": f"user-{i}", "email_id": f"user{i}@example.org"},
        "contact_properties": {"PLAN": "pro", "ORDER_COUNT": i},
        "event_properties": {"n": i, "amplitude_event_type": "Purchase", "amplitude_insert_id": f"key-{i}"},
    }
    body.update(overrides)
    return body


def items(n: int, source: Source | None = None, **per_index: dict[str, Any]) -> list[Item]:
    source = source or Source(expected=n)
    return [Item(f"events:key-{i}", BrevoEvent(f"key-{i}", payload(i, **per_index.get(f"i{i}", {}))).body, source.token)
            for i in range(n)]


def ids(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["event_properties"]["amplitude_insert_id"] for e in events)


class _NoDedupe:
    def committed(self, keys):
        pass

    def released(self, keys):
        pass


@dataclass
class Env:
    app: web.Application
    server: TestServer
    client: BrevoClient
    state: StateStore
    log: list[tuple[float, str, int]]

    @property
    def brevo(self):
        return self.app[BREVO_STATE]

    def sink(self, **kwargs: Any) -> BrevoEventsSink:
        kwargs.setdefault("batch_size", 5)
        return BrevoEventsSink(queue=None, client=self.client, acks=RecordingAcks(self.state, _NoDedupe()), **kwargs)

    def paths(self) -> Counter[str]:
        return Counter(path for _, path, _ in self.log)

    async def delivered_keys(self, keys: list[str]) -> set[str]:
        unseen = await self.state.unseen(["events:" + k for k in keys])
        return {k for k in keys if "events:" + k not in unseen}


@asynccontextmanager
async def brevo_env(tmp_path, *, limits: dict[str, BucketLimit] | None = None, faults: BrevoFaults | None = None,
                    budgets: dict[str, Limit] | None = None, batch_status: int | None = None,
                    batch_body: Any = None, events_batch_max: int = 1000,
                    hold: Any = None) -> AsyncIterator[Env]:
    app = make_brevo_app(api_key=KEY, faults=faults, events_batch_max=events_batch_max,
                         limits=limits or {"events": BucketLimit(1000, 1.0), "events_batch": BucketLimit(1000, 1.0)})
    log: list[tuple[float, str, int]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        if hold is not None:
            await hold(request)
        if batch_status is not None and request.path == "/v3/events/batch":
            response: web.StreamResponse = web.json_response(batch_body, status=batch_status)
        else:
            response = await handler(request)
        log.append((time.monotonic(), request.path, response.status))
        return response

    app.middlewares.insert(0, record)  # outermost: sees every /v3 request and its final status
    rates = {"brevo_events": Limit(1000, 1), "brevo_events_batch": Limit(1000, 1), **(budgets or {})}
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        state = await StateStore.open(tmp_path / "state.db")
        client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                             budgets=Budgets(rates), backoff=Backoff(base=0.01, cap=0.05))
        try:
            yield Env(app, server, client, state, log)
        finally:
            await state.close()


async def test_202_delivers_everything_and_commits_keys_with_the_checkpoint(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = env.sink(batch_size=5)
        batch = items(12)
        await sink.deliver(batch)
        assert ids(env.brevo.events) == Counter({f"key-{i}": 1 for i in range(12)})
        assert env.brevo.events[3] == payload(3), "sent as built"
        assert env.paths() == {"/v3/events/batch": 3}, "chunks of 5, 5 and 2"
        assert sink.stats.delivered == 12 and sink.stats.dead_lettered == 0
        keys = [f"key-{i}" for i in range(12)]
        assert await env.delivered_keys(keys) == set(keys)
        assert sorted(source_of(batch[0]).acked) == sorted("events:" + k for k in keys)
        assert await env.state.get_checkpoint("test.checkpoint") == "20261101T01"
        assert await env.state.list_dead_letters() == []


async def test_batches_use_events_batch_and_a_lone_item_uses_events(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = env.sink(batch_size=5)
        await sink.deliver(items(11))  # 5 + 5 + 1
        assert env.paths() == {"/v3/events/batch": 2, "/v3/events": 1}
        assert sink.stats.batch_requests == 2 and sink.stats.single_requests == 1


async def test_207_partial_dead_letters_exactly_the_failed_items_with_brevos_message(tmp_path):
    faults = BrevoFaults(reject_ext_ids=frozenset({"user-3", "user-7"}))
    async with brevo_env(tmp_path, faults=faults) as env:
        sink = env.sink(batch_size=10)
        batch = items(10, i5={"identifiers": {"ext_id": "user-5", "email_id": "not-an-email"}})
        await sink.deliver(batch)
        assert [s for _, _, s in env.log] == [207]
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(10)} - {"key-3", "key-5", "key-7"}
        letters = await env.state.list_dead_letters()
        assert [(orjson.loads(d.item)["event_properties"]["n"], d.reason) for d in letters] == [
            (3, "Brevo refused the event: contact user-3 cannot receive events"),
            (5, "Brevo refused the event: identifiers.email_id is invalid"),
            (7, "Brevo refused the event: contact user-7 cannot receive events"),
        ]
        assert all(d.sink == "brevo_events" for d in letters)
        assert sink.stats.delivered == 7 and sink.stats.dead_lettered == 3
        # Dead-lettered items are handled too: every item is acknowledged and its key recorded.
        assert len(source_of(batch[0]).acked) == 10
        assert await env.state.get_checkpoint("test.checkpoint") == "20261101T01"


async def test_400_all_failed_dead_letters_every_item_without_resending(tmp_path):
    faults = BrevoFaults(reject_ext_ids=frozenset(f"user-{i}" for i in range(4)))
    async with brevo_env(tmp_path, faults=faults) as env:
        sink = env.sink(batch_size=4)
        await sink.deliver(items(4))
        assert [(p, s) for _, p, s in env.log] == [("/v3/events/batch", 400)]
        assert env.brevo.events == []
        letters = await env.state.list_dead_letters()
        assert [d.reason for d in letters] == [
            f"Brevo refused the event: contact user-{i} cannot receive events" for i in range(4)
        ]


async def test_a_refused_request_without_item_detail_is_split_to_isolate_the_cause(tmp_path):
    async with brevo_env(tmp_path, events_batch_max=3) as env:  # "at most 3 events per batch": no eventIndex
        sink = env.sink(batch_size=8)
        await sink.deliver(items(8))
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(8)}
        assert max(ids(env.brevo.events).values()) == 1
        statuses = [s for _, p, s in env.log if p == "/v3/events/batch"]
        assert statuses[0] == 400 and statuses.count(202) >= 2
        assert await env.state.list_dead_letters() == []


async def test_an_invalid_lone_item_is_dead_lettered_with_the_events_answer(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = env.sink(batch_size=5)
        await sink.deliver(items(1, i0={"event_name": "bad name"}))
        assert [(p, s) for _, p, s in env.log] == [("/v3/events", 400)]
        (letter,) = await env.state.list_dead_letters()
        assert letter.reason == "Brevo refused the event: HTTP 400 invalid_parameter: event_name is invalid"


@pytest.mark.parametrize("status", [404, 405])
async def test_events_batch_missing_falls_back_to_events_for_good(tmp_path, status):
    body = {"code": "document_not_found", "message": "Not found"}
    async with brevo_env(tmp_path, batch_status=status, batch_body=body) as env:
        sink = env.sink(batch_size=5)
        with capture_logs() as logs:
            await sink.deliver(items(10))
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(10)}
        assert env.paths() == {"/v3/events/batch": 2, "/v3/events": 10}
        assert any(e["event"] == "brevo.events_batch.unavailable" for e in logs)
        await sink.deliver(items(4, Source(expected=4)))
        assert env.paths()["/v3/events/batch"] == 2, "not asked again"
        assert await env.state.list_dead_letters() == []


async def test_a_207_without_item_detail_is_not_resent(tmp_path):
    async with brevo_env(tmp_path, batch_status=207, batch_body={"status": "partial"}) as env:
        sink = env.sink(batch_size=5)
        with capture_logs() as logs:
            await sink.deliver(items(5))
        assert env.paths() == {"/v3/events/batch": 1}, "resending would duplicate the accepted events"
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["brevo.events_batch.partial_without_detail"]
        assert await env.delivered_keys([f"key-{i}" for i in range(5)]) == {f"key-{i}" for i in range(5)}


async def test_a_spent_batch_budget_sends_singles_instead_of_waiting(tmp_path):
    async with brevo_env(tmp_path, budgets={"brevo_events_batch": Limit(1, 3600)}) as env:
        sink = env.sink(batch_size=5)
        started = time.monotonic()
        await sink.deliver(items(15))
        assert time.monotonic() - started < 5
        assert env.paths() == {"/v3/events/batch": 1, "/v3/events": 10}
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(15)}


async def test_429_waits_at_least_the_reset_before_the_next_request_on_that_budget(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(3, 1.0)}) as env:
        window = env.brevo.windows["events"]
        for _ in range(3):  # someone else spent this second's allowance
            window.take(env.brevo.clock())
        sink = env.sink(batch_size=1)
        await sink.deliver(items(1))
        (t429, _, s1), (t_next, _, s2) = env.log
        assert (s1, s2) == (429, 204)
        reset = 1  # the simulator's x-sib-ratelimit-reset: whole seconds, at least 1
        assert t_next - t429 >= reset - 0.05
        assert env.client.rate_limited_total == 1
        assert ids(env.brevo.events) == {"key-0": 1}


async def test_remaining_zero_pauses_the_budget_without_a_429(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(2, 1.0)}) as env:
        sink = env.sink(batch_size=1, concurrency=1)
        await sink.deliver(items(5))
        assert env.brevo.rate_limited == 0
        assert [s for _, _, s in env.log] == [204] * 5
        times = [t for t, _, _ in env.log]
        assert times[2] - times[1] >= 0.9 and times[4] - times[3] >= 0.9, "each spent window is waited out"
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(5)}


async def test_injected_5xx_and_connection_resets_are_retried_until_delivered_once(tmp_path):
    faults = BrevoFaults(error_rate=0.4, error_statuses=(500, 502, 503), reset_rate=0.2, seed=11)
    async with brevo_env(tmp_path, faults=faults) as env:
        sink = env.sink(batch_size=4)
        await sink.deliver(items(30))
        counts = ids(env.brevo.events)
        assert set(counts) == {f"key-{i}" for i in range(30)} and max(counts.values()) == 1
        assert env.brevo.injected > 0 and env.brevo.resets > 0
        assert any(status >= 500 for _, _, status in env.log)
        assert await env.state.list_dead_letters() == []
        assert sink.stats.delivered == 30


async def test_dry_run_sends_nothing_and_commits_nothing(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = env.sink(dry_run=True)
        batch = items(6)
        with capture_logs() as logs:
            await sink.deliver(batch)
        assert env.log == [] and env.brevo.events == []
        assert sink.stats.would_send == 6 and sink.stats.delivered == 0
        assert [e["would_send"] for e in logs if e["event"] == "brevo.dry_run.event"] == [orjson.loads(i.body) for i in batch]
        assert len(source_of(batch[0]).acked) == 6, "the in-memory cursor moves so a dry backfill finishes"
        assert await env.delivered_keys([f"key-{i}" for i in range(6)]) == set()
        assert await env.state.checkpoints() == {}


async def test_a_batch_cancelled_mid_way_records_what_brevo_already_has(tmp_path):
    # The batch budget allows one request: chunk 1 goes to /events/batch, the rest to /events, where the
    # simulator's window allows 3 requests before a 429 that says "come back in a while".
    async with brevo_env(tmp_path, limits={"events": BucketLimit(3, 30.0), "events_batch": BucketLimit(100, 1.0)},
                         budgets={"brevo_events_batch": Limit(1, 3600)}) as env:
        sink = env.sink(batch_size=5)
        source = Source(expected=10)
        batch = items(10, source)
        task = asyncio.create_task(sink.deliver(batch))
        async with asyncio.timeout(10):
            while sink.client.rate_limited_total == 0:  # our side has read a 429 ...
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # ... and the 204s sent before it (the rest wait out the 30 s reset)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        arrived = set(ids(env.brevo.events))
        assert len(arrived) == 5 + 3
        assert await env.delivered_keys([f"key-{i}" for i in range(10)]) == arrived
        assert sorted(source.acked) == sorted("events:" + k for k in arrived)
        assert await env.state.get_checkpoint("test.checkpoint") is None, "two items are still outstanding"


async def test_each_request_is_recorded_when_answered_not_when_the_whole_batch_is(tmp_path):
    # The record is what stops a re-send after kill -9: a chunk Brevo accepted must not wait unrecorded for
    # the batch's other requests (which the budgets may pace over seconds).
    release = asyncio.Event()

    async def hold(request: web.Request) -> None:
        if b'"key-5"' in await request.read():
            await release.wait()

    async with brevo_env(tmp_path, hold=hold) as env:
        source = Source(expected=10)
        task = asyncio.create_task(env.sink(batch_size=5).deliver(items(10, source)))
        first = [f"key-{i}" for i in range(5)]
        try:
            async with asyncio.timeout(10):
                while await env.delivered_keys(first) != set(first):
                    await asyncio.sleep(0.01)
            assert not task.done() and sorted(source.committed_keys) == sorted("events:" + k for k in first)
            assert await env.state.get_checkpoint("test.checkpoint") is None
        finally:
            release.set()
        await task
        assert await env.delivered_keys([f"key-{i}" for i in range(10)]) == {f"key-{i}" for i in range(10)}
        assert await env.state.get_checkpoint("test.checkpoint") == "20261101T01"


async def test_batch_and_single_bodies_are_the_events_bytes_joined_not_re_encoded(tmp_path):
    sent: list[tuple[str, Any]] = []

    class Capture:
        budgets = {"brevo_events_batch": type("B", (), {"has_capacity": lambda self, n: True})()}

        async def call(self, method: str, path: str, payload: Any = None, **_: Any) -> Any:
            sent.append((path, payload))
            return type("R", (), {"status": 202, "body": None, "message": ""})()

    state = await StateStore.open(tmp_path / "state.db")
    try:
        batch = items(3, Source(expected=4))
        # an event whose bytes differ from a re-encoding of its dict: sent as it is
        batch.append(Item("events:key-3", b'{"event_name":"x","event_properties":{"n":1.50}}', batch[0].token))
        sink = BrevoEventsSink(queue=None, client=Capture(), acks=RecordingAcks(state, _NoDedupe()),  # type: ignore[arg-type]
                               batch_size=10)
        await sink.deliver(batch)
        sink._batch_endpoint = False
        await sink.deliver(items(1, Source(expected=1)))
    finally:
        await state.close()
    (path, body), (single_path, single) = sent
    assert path == "/events/batch"
    assert body == b'{"events":[' + b",".join(i.body for i in batch) + b"]}"
    assert orjson.loads(body)["events"][:3] == [payload(i) for i in range(3)]
    assert (single_path, single) == ("/events", orjson.dumps(payload(0)))
