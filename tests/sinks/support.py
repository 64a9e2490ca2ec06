"""What the sink tests share: items with ack tokens of a real offset tracker, the real Acknowledger over a
SQLite state file, and a Brevo simulator on loopback with the real client in front of it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from amplitude_brevo.health import Health
from amplitude_brevo.pipeline.acks import Acknowledger, OffsetTracker
from amplitude_brevo.pipeline.dedupe import DedupeRecord
from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, BrevoFaults, BucketLimit, make_brevo_app
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import BrevoClient
from amplitude_brevo.sinks.budgets import Budgets
from amplitude_brevo.state import StateStore

KEY = "xkeysib-sink-test-key"
HOUR = "20261101T00"


@dataclass
class Limit:
    requests: int
    per: float


def tracker(name: str = "export.next_hour", source: str = "export") -> OffsetTracker:
    """A source's offset tracker whose one position, HOUR, moves the checkpoint to 20261101T01 when done."""
    return OffsetTracker(name, source, lambda position: "20261101T01")


class RecordingAcks(Acknowledger):
    """The daemon's Acknowledger over a real state file, also noting each call."""

    def __init__(self, state: StateStore) -> None:
        super().__init__(state, DedupeRecord(state, 7 * 86400))
        self.settled: list[tuple[str, list[Item], dict[int, str]]] = []
        self.dry: list[tuple[str, list[Item]]] = []

    async def settle(self, sink: str, items: Sequence[Item], refused: Mapping[int, str] | None = None) -> None:
        assert all(0 <= i < len(items) for i in refused or {}), "refused indexes are positions in items"
        self.settled.append((sink, list(items), dict(refused or {})))
        await super().settle(sink, items, refused)

    def settle_dry(self, sink: str, items: Sequence[Item]) -> None:
        self.dry.append((sink, list(items)))
        super().settle_dry(sink, items)

    def keys(self) -> list[str]:
        """Every settled item's key, in settle order."""
        return [item.key for _, items, _ in self.settled for item in items if item.key]

    def assert_each_settled_once(self) -> None:
        keys = self.keys()
        assert len(keys) == len(set(keys)), Counter(keys).most_common(3)


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


def items(n: int, source: OffsetTracker | None = None, start: int = 0, **per_index: dict[str, Any]) -> list[Item]:
    """`n` events read at HOUR of `source` (a new tracker by default), which is then sealed."""
    source = source or tracker()
    token = source.token(HOUR)
    source.add(HOUR, n)
    source.seal(HOUR)
    return [
        Item(f"events:key-{i}", orjson.dumps(payload(i, **per_index.get(f"i{i}", {}))), token)
        for i in range(start, start + n)
    ]


def ids(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["event_properties"]["amplitude_insert_id"] for e in events)


@dataclass
class Env:
    app: web.Application
    server: TestServer
    client: BrevoClient
    state: StateStore
    acks: RecordingAcks
    health: Health
    log: list[tuple[float, str, int]] = field(default_factory=list)

    @property
    def brevo(self) -> Any:
        return self.app[BREVO_STATE]

    def paths(self) -> Counter[str]:
        return Counter(path for _, path, _ in self.log)

    async def delivered_keys(self, keys: list[str]) -> set[str]:
        unseen = await self.state.unseen(["events:" + k for k in keys])
        return {k for k in keys if "events:" + k not in unseen}


@asynccontextmanager
async def brevo_env(tmp_path: Any, *, limits: dict[str, BucketLimit] | None = None,
                    faults: BrevoFaults | None = None, budgets: dict[str, Limit] | None = None,
                    batch_status: int | None = None, batch_body: Any = None, events_batch_max: int = 1000,
                    events_batch_bucket: str = "other", hold: Any = None,
                    backoff: Backoff | None = None) -> AsyncIterator[Env]:
    """The simulator (fast limits unless `limits` says otherwise), a client with budgets `budgets`, and a
    state file. `batch_status`/`batch_body` replace every /events/batch answer; `hold(request)` runs first."""
    app = make_brevo_app(api_key=KEY, faults=faults, events_batch_max=events_batch_max,
                         events_batch_bucket=events_batch_bucket,
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
    health = Health()
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        state = await StateStore.open(tmp_path / "state.db")
        client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                             budgets=Budgets(rates), backoff=backoff or Backoff(base=0.01, cap=0.05), health=health)
        try:
            yield Env(app, server, client, state, RecordingAcks(state), health, log)
        finally:
            await state.close()
