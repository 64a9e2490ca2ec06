"""BrevoOrdersSink against the Brevo simulator (historical, endpoints, refused orders) and against a small
loopback Brevo of its own for what the simulator does not model yet (a short `count`, eCommerce not active)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from amplitude_brevo.pipeline.items import Item
from amplitude_brevo.pipeline.revenue import Revenue, order_body
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BucketLimit
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import BrevoClient
from amplitude_brevo.sinks.brevo_orders import ECOMMERCE_HINT, ECOMMERCE_INACTIVE, BrevoOrdersSink
from amplitude_brevo.sinks.budgets import Budgets
from amplitude_brevo.state import StateStore
from tests.sinks.support import HOUR, KEY, Env, Limit, RecordingAcks, brevo_env, tracker

FAST = {"orders": BucketLimit(1000, 1.0), "other": BucketLimit(1000, 1.0)}
BUDGETS = {"brevo_orders": Limit(1000, 1), "brevo_orders_batch": Limit(1000, 1), "brevo_other": Limit(1000, 1)}


def order(i: int, **overrides: Any) -> dict[str, Any]:
    body = orjson.loads(order_body(f"key-{i}", f"user-{i}", f"user{i}@example.org", "2026-11-01T00:10:00.000Z",
                                   Revenue(10.0 + i, 5.0 + i / 2, 2, f"sku-{i}"), "Purchase"))
    body.update(overrides)
    return body


def orders(n: int, start: int = 0, **per_index: dict[str, Any]) -> list[Item]:
    """`n` orders read at HOUR of a new tracker, which is then sealed."""
    source = tracker()
    token = source.token(HOUR)
    source.add(HOUR, n)
    source.seal(HOUR)
    return [Item(f"orders:key-{i}", orjson.dumps(order(i, **per_index.get(f"i{i}", {}))), token)
            for i in range(start, start + n)]


def sink_for(client: BrevoClient, acks: Any, historical: bool, **kwargs: Any) -> BrevoOrdersSink:
    return BrevoOrdersSink(queue=None, client=client, acks=acks, historical=historical, **kwargs)


@asynccontextmanager
async def sim(tmp_path: Any) -> AsyncIterator[Env]:
    async with brevo_env(tmp_path, limits=FAST, budgets=BUDGETS) as env:
        yield env


def sent_ids(env: Env) -> Counter[str]:
    return Counter(o["id"] for o in env.brevo.orders.values())


async def delivered(state: StateStore, keys: list[str]) -> set[str]:
    unseen = await state.unseen(["orders:" + k for k in keys])
    return {k for k in keys if "orders:" + k not in unseen}


# -- against the simulator ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("historical", [True, False])
async def test_orders_arrive_as_built_with_historical_as_configured(tmp_path, historical):
    async with sim(tmp_path) as env:
        sink = sink_for(env.client, env.acks, historical)
        await sink.deliver(orders(30))
        assert env.paths() == {"/v3/orders/status/batch": 1}
        assert sent_ids(env) == Counter({f"key-{i}": 1 for i in range(30)})
        assert list(env.brevo.orders.values())[7] == {**order(7), "historical": historical}
        keys = [f"key-{i}" for i in range(30)]
        assert await delivered(env.state, keys) == set(keys)
        env.acks.assert_each_settled_once()
        assert all(name == "brevo_orders" and refused == {} for name, _, refused in env.acks.settled)
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"
        assert sink.stats.delivered == 30 and sink.stats.batch_requests == 1


async def test_a_resent_order_keeps_its_id(tmp_path):
    # After a kill -9 the request in flight is sent again: the same ids, which Brevo updates (reference §5).
    async with sim(tmp_path) as env:
        sink = sink_for(env.client, env.acks, True)
        await sink.deliver(orders(3))
        await sink.deliver(orders(3, i1={"amount": 99.0}))
        assert set(sent_ids(env)) == {"key-0", "key-1", "key-2"}, "no new id: an update, not a second order"
        assert env.brevo.orders["key-1"]["amount"] == 99.0 and env.brevo.orders_updated == 3


async def test_an_invalid_order_is_dead_lettered_and_the_rest_delivered(tmp_path):
    async with sim(tmp_path) as env:
        sink = sink_for(env.client, env.acks, True)
        bad = {"products": [{"productId": "sku-3", "price": "free", "quantity": 1}]}
        await sink.deliver(orders(30, i3=bad, i20={"createdAt": "yesterday"}))
        statuses = [s for _, p, s in env.log]
        assert statuses[:2] == [400, 400] and statuses[-1] == 202 and len(statuses) == 3
        assert set(sent_ids(env)) == {f"key-{i}" for i in range(30)} - {"key-3", "key-20"}
        letters = await env.state.list_dead_letters()
        assert sorted((orjson.loads(d.item)["id"], d.reason) for d in letters) == [
            ("key-20", "Brevo refused the order: createdAt must be a UTC date-time YYYY-MM-DDTHH:mm:ss(.SSS)Z"),
            ("key-3", "Brevo refused the order: products[0].price must be a number"),
        ]
        assert all(d.sink == "brevo_orders" for d in letters)
        env.acks.assert_each_settled_once()
        assert len(env.acks.keys()) == 30
        assert sink.stats.delivered == 28 and sink.stats.dead_lettered == 2


async def test_run_mode_sends_few_orders_one_by_one_and_many_as_a_batch(tmp_path):
    async with sim(tmp_path) as env:
        sink = sink_for(env.client, env.acks, False)
        await sink.deliver(orders(5))
        assert env.paths() == {"/v3/orders/status": 5}, "the batch budget is hourly: 5 orders are 5 singles"
        assert all(o["historical"] is False for o in env.brevo.orders.values())
        await sink.deliver(orders(50, start=100))
        assert env.paths() == {"/v3/orders/status": 5, "/v3/orders/status/batch": 1}
        assert len(sent_ids(env)) == 55 and max(sent_ids(env).values()) == 1
        assert sink.stats.single_requests == 5 and sink.stats.batch_requests == 1
        await sink.deliver(orders(1, start=200, i200={"amount": "a lot"}))
        (letter,) = await env.state.list_dead_letters()
        assert letter.reason == "Brevo refused the order: HTTP 400 invalid_parameter: amount must be a number"


async def test_backfill_never_uses_the_single_endpoint(tmp_path):
    async with sim(tmp_path) as env:
        sink = sink_for(env.client, env.acks, True)
        await sink.deliver(orders(5))
        await sink.deliver(orders(1, start=10))
        await sink.deliver(orders(1, start=20, i20={"amount": "a lot"}))
        assert env.paths() == {"/v3/orders/status/batch": 3}, "/orders/status cannot say historical"
        assert all(o["historical"] is True for o in env.brevo.orders.values()) and len(env.brevo.orders) == 6
        (letter,) = await env.state.list_dead_letters()
        assert letter.reason == "Brevo refused the order: amount must be a number"
        assert sink.single_budget is None and not sink.stats.single_requests


# -- a loopback Brevo of our own ----------------------------------------------------------------------------------

@dataclass
class Fake:
    """Orders endpoints whose answers the test chooses: `counts` (per batch request: the count to answer, None
    to leave it out, "all" for the real one), and eCommerce off until activated (when `ecommerce_off`)."""

    counts: list[Any] = field(default_factory=list)
    ecommerce_off: bool = False
    activate_status: int = 204
    stay_off: bool = False  # activation answers 204 but orders are still refused
    key_denied: int = 0  # the next N order requests get a 403 permission_denied about the key
    log: list[tuple[str, int]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)

    def refusal(self) -> web.Response | None:
        if self.key_denied:
            self.key_denied -= 1
            return web.json_response({"code": "permission_denied", "message": "Key not authorized for this IP"},
                                     status=403)
        if self.ecommerce_off:
            return web.json_response({"code": "permission_denied",
                                      "message": "The eCommerce app is not activated on this account"}, status=403)
        return None

    def app(self) -> web.Application:
        async def batch(request: web.Request) -> web.Response:
            if (refused := self.refusal()) is not None:
                return refused
            body = await request.json()
            self.orders.extend(body["orders"])
            count: Any = self.counts.pop(0) if self.counts else "all"
            answer = {"batchId": len(self.log)}
            if count is not None:
                answer["count"] = len(body["orders"]) if count == "all" else count
            return web.json_response(answer, status=202)

        async def single(request: web.Request) -> web.Response:
            if (refused := self.refusal()) is not None:
                return refused
            self.orders.append(await request.json())
            return web.Response(status=204)

        async def activate(request: web.Request) -> web.Response:
            if self.activate_status >= 400:
                return web.json_response({"code": "permission_denied", "message": "not allowed on this plan"},
                                         status=self.activate_status)
            self.ecommerce_off = self.stay_off
            return web.Response(status=self.activate_status)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            response = await handler(request)
            self.log.append((request.path, response.status))
            return response

        app = web.Application(middlewares=[record])
        app.router.add_post("/v3/orders/status/batch", batch)
        app.router.add_post("/v3/orders/status", single)
        app.router.add_post("/v3/ecommerce/activate", activate)
        return app

    def paths(self) -> Counter[str]:
        return Counter(path for path, _ in self.log)


@dataclass
class Own:
    fake: Fake
    client: BrevoClient
    state: StateStore
    acks: RecordingAcks


@asynccontextmanager
async def own(tmp_path: Any, fake: Fake) -> AsyncIterator[Own]:
    rates = {name: Limit(1000, 1) for name in ("brevo_orders", "brevo_orders_batch", "brevo_other")}
    async with TestServer(fake.app()) as server, aiohttp.ClientSession() as session:
        state = await StateStore.open(tmp_path / "state.db")
        client = BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(KEY),
                             budgets=Budgets(rates), backoff=Backoff(base=0.001, cap=0.002))
        try:
            yield Own(fake, client, state, RecordingAcks(state))
        finally:
            await state.close()


def events(logs: list[dict[str, Any]], level: str) -> list[str]:
    return [e["event"] for e in logs if e["log_level"] == level]


async def test_a_short_count_sends_the_batch_again_once(tmp_path):
    async with own(tmp_path, Fake(counts=[7, "all"])) as env:
        sink = sink_for(env.client, env.acks, True)
        with capture_logs() as logs:
            await sink.deliver(orders(10))
        assert env.fake.paths() == {"/v3/orders/status/batch": 2}
        assert Counter(o["id"] for o in env.fake.orders) == Counter({f"key-{i}": 2 for i in range(10)})
        (mismatch,) = [e for e in logs if e["event"] == "brevo.orders.count_mismatch"]
        assert (mismatch["batchId"], mismatch["sent"], mismatch["count"]) == (0, 10, 7)
        assert "brevo.orders.unconfirmed" not in events(logs, "warning")
        keys = [f"key-{i}" for i in range(10)]
        assert await delivered(env.state, keys) == set(keys)
        env.acks.assert_each_settled_once()
        assert sink.stats.delivered == 10 and sink.stats.batch_requests == 2


@pytest.mark.parametrize("counts", [[3, 3], [None, None], [None, 2]])
async def test_still_short_after_one_resend_is_delivered_unconfirmed(tmp_path, counts):
    async with own(tmp_path, Fake(counts=counts)) as env:
        sink = sink_for(env.client, env.acks, True)
        with capture_logs() as logs:
            await sink.deliver(orders(10))
        assert env.fake.paths() == {"/v3/orders/status/batch": 2}, "sent again once, not more"
        assert events(logs, "warning") == ["brevo.orders.count_mismatch", "brevo.orders.unconfirmed"]
        assert await delivered(env.state, [f"key-{i}" for i in range(10)]) == {f"key-{i}" for i in range(10)}
        assert await env.state.list_dead_letters() == []


async def test_a_full_count_is_delivered_without_resending(tmp_path):
    async with own(tmp_path, Fake(counts=[12])) as env:  # more than sent: fine too
        with capture_logs() as logs:
            await sink_for(env.client, env.acks, True).deliver(orders(10))
        assert env.fake.paths() == {"/v3/orders/status/batch": 1}
        assert events(logs, "warning") == []


@pytest.mark.parametrize(("historical", "n", "path"), [
    (True, 30, "/v3/orders/status/batch"),
    (False, 30, "/v3/orders/status/batch"),
    (False, 4, "/v3/orders/status"),
])
async def test_ecommerce_inactive_is_activated_once_then_delivered(tmp_path, historical, n, path):
    async with own(tmp_path, Fake(ecommerce_off=True)) as env:
        sink = sink_for(env.client, env.acks, historical)
        with capture_logs() as logs:
            await sink.deliver(orders(n))
            await sink.deliver(orders(n, start=100))
        assert env.fake.paths()["/v3/ecommerce/activate"] == 1
        assert Counter(status for p, status in env.fake.log if p == path)[403] >= 1
        assert {o["id"] for o in env.fake.orders} == {f"key-{i}" for i in [*range(n), *range(100, 100 + n)]}
        assert "brevo.ecommerce.activated" in events(logs, "info")
        assert events(logs, "error") == []
        assert await env.state.list_dead_letters() == []
        assert sink.stats.delivered == 2 * n
        env.acks.assert_each_settled_once()


@pytest.mark.parametrize(("historical", "n"), [(True, 30), (False, 30), (False, 4)])
async def test_activation_refused_dead_letters_every_order_with_the_hint_and_sends_nothing_more(
    tmp_path, historical, n
):
    async with own(tmp_path, Fake(ecommerce_off=True, activate_status=403)) as env:
        sink = sink_for(env.client, env.acks, historical)
        with capture_logs() as logs:
            await sink.deliver(orders(n))
            requests = len(env.fake.log)
            await sink.deliver(orders(5, start=100))
        assert len(env.fake.log) == requests, "no request once eCommerce is known to be inactive"
        assert env.fake.paths()["/v3/ecommerce/activate"] == 1
        assert env.fake.orders == []
        (error,) = [e for e in logs if e["event"] == "brevo.orders.ecommerce_inactive"]
        assert error["log_level"] == "error" and error["hint"] == ECOMMERCE_HINT
        assert "HTTP 403" in error["reason"] and "eCommerce" in error["brevo"]
        assert "dlq replay --sink brevo_orders" in ECOMMERCE_HINT and "revenue.orders: false" in ECOMMERCE_HINT
        letters = await env.state.list_dead_letters()
        assert len(letters) == n + 5 and {d.reason for d in letters} == {ECOMMERCE_INACTIVE}
        assert {d.sink for d in letters} == {"brevo_orders"}
        env.acks.assert_each_settled_once()
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01", "nothing holds the hour"


async def test_still_refused_after_activating_is_inactive_and_a_reload_tries_again(tmp_path):
    async with own(tmp_path, Fake(ecommerce_off=True, stay_off=True)) as env:
        sink = sink_for(env.client, env.acks, True)
        with capture_logs() as logs:
            await sink.deliver(orders(10))
        assert env.fake.paths() == {"/v3/orders/status/batch": 2, "/v3/ecommerce/activate": 1}
        (error,) = [e for e in logs if e["event"] == "brevo.orders.ecommerce_inactive"]
        assert error["reason"].startswith("orders still refused after activating eCommerce")
        assert len(await env.state.list_dead_letters()) == 10
        # The operator activates eCommerce by hand and reloads: orders go again.
        env.fake.ecommerce_off = False
        cfg = type("Cfg", (), {"connectors": type("C", (), {"brevo": type("B", (), {
            "api_url": env.client.base_url, "api_key": Secret(KEY)})})})
        sink.reload(cfg)
        await sink.deliver(orders(10, start=100))
        assert {o["id"] for o in env.fake.orders} == {f"key-{i}" for i in range(100, 110)}


async def test_a_403_about_the_key_is_retried_not_activated(tmp_path):
    for historical, n in ((True, 30), (False, 2)):
        async with own(tmp_path / str(n), Fake(key_denied=3)) as env:
            sink = sink_for(env.client, env.acks, historical)
            with capture_logs() as logs:
                await sink.deliver(orders(n))
            assert "/v3/ecommerce/activate" not in env.fake.paths()
            assert {o["id"] for o in env.fake.orders} == {f"key-{i}" for i in range(n)}
            assert await env.state.list_dead_letters() == []
            assert "brevo.auth_failed" in events(logs, "error")
            assert sink.inactive is None


@pytest.mark.parametrize("historical", [True, False])
def test_a_batch_body_joins_the_order_bodies_as_they_are(historical):
    sink = BrevoOrdersSink.__new__(BrevoOrdersSink)
    sink._historical_json = b"true" if historical else b"false"
    bodies = [item.body for item in orders(3)]
    body = sink.batch_body(bodies)
    assert body == b'{"orders":[' + b",".join(bodies) + b'],"historical":' + sink._historical_json + b"}"
    assert orjson.loads(body)["historical"] is historical
