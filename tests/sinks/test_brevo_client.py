"""BrevoClient: validate_response(), retries, and an API key that never shows in reprs, logs or errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from amplitude_brevo.health import Health
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.brevo_sim import BREVO_STATE, BrevoFaults, make_brevo_app
from amplitude_brevo.secrets import Secret
from amplitude_brevo.sinks.brevo_client import (
    BrevoClient,
    BrevoResponse,
    Outcome,
    Stopping,
    validate_response,
)
from amplitude_brevo.sinks.budgets import Budgets, Rate

KEY = "xkeysib-0123456789abcdef-client-test"
EVENT = {"event_name": "order_completed", "identifiers": {"ext_id": "user-1"}}


@dataclass
class Limit:
    requests: int
    per: float


def budgets() -> Budgets:
    names = ("brevo_events", "brevo_events_batch", "brevo_contacts", "brevo_orders", "brevo_other")
    return Budgets({name: Limit(1000, 1) for name in names})


@asynccontextmanager
async def client_for(app: web.Application | None, *, key: str = KEY, backoff: Backoff | None = None,
                     stop: asyncio.Event | None = None) -> AsyncIterator[BrevoClient]:
    async with aiohttp.ClientSession() as session:
        if app is None:
            with socket.socket() as s:  # a port nobody listens on
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            yield BrevoClient(session, base_url=f"http://127.0.0.1:{port}/v3", api_key=Secret(key), budgets=budgets(),
                              backoff=backoff or Backoff(base=0.001, cap=0.002, max_attempts=3), stop=stop)
            return
        async with TestServer(app) as server:
            yield BrevoClient(session, base_url=str(server.make_url("/v3")), api_key=Secret(key), budgets=budgets(),
                              backoff=backoff or Backoff(base=0.001, cap=0.002, max_attempts=3), stop=stop)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.OK), (201, Outcome.OK), (202, Outcome.OK), (204, Outcome.OK), (207, Outcome.OK),
        (400, Outcome.FATAL), (402, Outcome.FATAL), (406, Outcome.FATAL), (409, Outcome.FATAL), (413, Outcome.FATAL), (422, Outcome.FATAL),
        (401, Outcome.RETRY), (403, Outcome.RETRY),  # a key or IP fix is a reload away: hold, don't drop
        (408, Outcome.RETRY), (425, Outcome.RETRY), (429, Outcome.RETRY),
        (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY), (504, Outcome.RETRY),
        # No such endpoint here (a wrong api_url, a proxy): an outage, retried, never a verdict on items.
        (404, Outcome.UNAVAILABLE), (405, Outcome.UNAVAILABLE), (501, Outcome.UNAVAILABLE),
    ],
)
def test_validate_response(status, outcome):
    assert validate_response(status) is outcome


def test_an_endpoint_may_declare_404_a_verdict_on_its_items():
    # contacts: 404 document_not_found "No contact found for indexes 3,4"
    assert validate_response(404, item_statuses={404}) is Outcome.FATAL
    assert validate_response(405, item_statuses={404}) is Outcome.UNAVAILABLE


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"code": "invalid_parameter", "message": "event_name is invalid"}, "invalid_parameter: event_name is invalid"),
        ({"message": "Events queued"}, "Events queued"),
        ("<html>bad gateway</html>", "<html>bad gateway</html>"),
        (None, "HTTP 502"),
    ],
)
def test_response_message(body, message):
    assert BrevoResponse(502, {}, body).message == message


def test_repr_hides_the_key():
    client = BrevoClient(None, base_url="https://api.brevo.com/v3/", api_key=Secret(KEY), budgets=budgets())  # type: ignore[arg-type]
    assert KEY not in repr(client) and "***" in repr(client)
    assert client.base_url == "https://api.brevo.com/v3"
    assert KEY not in repr(vars(client))


def echo_app() -> web.Application:
    """A misbehaving proxy: its 502 page prints the request headers, key included."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(status=502, text=f"upstream failed for request with headers {dict(request.headers)}")

    app = web.Application()
    app.router.add_post("/v3/events", echo)
    return app


def wrong_key_app() -> web.Application:
    return make_brevo_app(api_key="xkeysib-the-right-one")


def outage_app() -> web.Application:
    return make_brevo_app(api_key=KEY, faults=BrevoFaults(outage_until=float("inf")))


@pytest.mark.parametrize("make_app", [wrong_key_app, outage_app, echo_app, None],
                         ids=["401", "503", "echoing-proxy", "connection-refused"])
async def test_the_key_never_reaches_logs_or_errors_of_a_failing_request(make_app):
    async with client_for(make_app() if make_app else None) as client:
        with capture_logs() as logs:
            with pytest.raises(RuntimeError, match="giving up on POST /events after 3 attempts") as failed:
                await client.call("POST", "/events", EVENT)
    assert len([e for e in logs if e["event"] == "brevo.retry"]) == 2
    assert KEY not in repr(logs) and KEY not in str(logs)
    assert KEY not in str(failed.value) and KEY not in repr(failed.value)
    assert KEY not in repr(client)


async def test_an_echoed_key_is_masked_in_the_response_body():
    async with client_for(echo_app()) as client:
        response = await client.send_once("POST", "/events", EVENT)
    assert response.status == 502
    assert KEY not in str(response.body) and "***" in response.body


async def test_a_fatal_answer_is_returned_at_once():
    app = make_brevo_app(api_key=KEY)
    async with client_for(app) as client:
        response = await client.call("POST", "/events", {"event_name": "bad name", "identifiers": {"ext_id": "u"}})
    assert response.status == 400
    assert response.body == {"code": "invalid_parameter", "message": "event_name is invalid"}
    assert app[BREVO_STATE].requests["events"] == 1


async def test_retriable_answers_are_retried_until_ok():
    app = make_brevo_app(api_key=KEY, faults=BrevoFaults(error_rate=0.6, error_statuses=(500, 503, 429), seed=5))
    async with client_for(app, backoff=Backoff(base=0.001, cap=0.002)) as client:
        for _ in range(5):
            response = await client.call("POST", "/events", EVENT)
            assert response.status == 204
    state = app[BREVO_STATE]
    assert state.injected > 0 and len(state.events) == 5


class SlowBackoff(Backoff):
    """A first retry at once, then a minute: only Brevo answering another request gets a second retry out."""

    def delay(self, attempt: int, floor: float = 0.0, rng: Any = None) -> float:
        return max(floor, 0.001 if attempt <= 1 else 60.0)


def flaky_app(failures: dict[str, int], status: int = 503, headers: dict[str, str] | None = None) -> web.Application:
    """`/v3/flaky` answers `status` while `failures["up"]` is 0 (counting the tries), `/v3/account` answers."""

    async def flaky(request: web.Request) -> web.Response:
        failures["tries"] = failures.get("tries", 0) + 1
        failures.setdefault("times", []).append(asyncio.get_running_loop().time())
        if not failures.get("up"):
            return web.json_response({"code": "error", "message": "down"}, status=status, headers=headers)
        return web.json_response({"ok": True})

    async def account(request: web.Request) -> web.Response:
        return web.json_response({"email": "x@example.com"})

    app = web.Application()
    app.router.add_post("/v3/flaky", flaky)
    app.router.add_get("/v3/account", account)
    return app


async def until(predicate, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_brevo_answering_again_ends_the_backoff_of_requests_waiting_to_retry():
    # After an outage, a request deep in its backoff goes again as soon as Brevo answers anything,
    # instead of up to `cap` seconds later.
    tries: dict = {}
    async with client_for(flaky_app(tries), backoff=SlowBackoff(cap=60)) as client:
        task = asyncio.create_task(client.call("POST", "/flaky", {}))
        await until(lambda: tries.get("tries", 0) == 2)  # now in its minute-long wait
        assert (await client.call("GET", "/account")).status == 200
        # Woken, it fails again: its backoff starts over (a quick retry, then the minute).
        await until(lambda: tries["tries"] == 4)
        tries["up"] = 1
        await client.call("GET", "/account")
        response = await asyncio.wait_for(task, 2)
    assert response.status == 200 and tries["tries"] == 5


async def test_a_woken_request_still_gives_up_after_max_attempts():
    tries: dict = {}
    async with client_for(flaky_app(tries), backoff=SlowBackoff(cap=60, max_attempts=3)) as client:
        task = asyncio.create_task(client.call("POST", "/flaky", {}))
        for n in (2, 3):
            await until(lambda n=n: tries.get("tries", 0) == n)
            await client.call("GET", "/account")
        with pytest.raises(RuntimeError, match="after 3 attempts"):
            await asyncio.wait_for(task, 2)


async def test_a_429_reset_is_waited_out_even_when_brevo_answers_meanwhile():
    tries: dict = {}
    app = flaky_app(tries, status=429, headers={"x-sib-ratelimit-limit": "10", "x-sib-ratelimit-remaining": "0",
                                                 "x-sib-ratelimit-reset": "1"})
    async with client_for(app, backoff=SlowBackoff(cap=60)) as client:
        task = asyncio.create_task(client.call("POST", "/flaky", {}))
        await until(lambda: tries.get("tries", 0) == 1)
        tries["up"] = 1
        await client.call("GET", "/account", budget="brevo_events")  # a bucket the 429 did not pause
        response = await asyncio.wait_for(task, 5)
    assert response.status == 200
    assert tries["times"][1] - tries["times"][0] >= 0.9, "the reset Brevo asked for holds"


async def test_response_headers_are_lowercased_and_the_budget_reads_them():
    app = make_brevo_app(api_key=KEY)
    async with client_for(app) as client:
        response = await client.send_once("POST", "/events", EVENT)
    assert response.status == 204 and response.body is None
    assert {"x-sib-ratelimit-limit", "x-sib-ratelimit-remaining", "x-sib-ratelimit-reset"} <= set(response.headers)


async def test_stopping_while_waiting_to_retry_raises_stopping():
    stop = asyncio.Event()
    app = make_brevo_app(api_key=KEY, faults=BrevoFaults(outage_until=float("inf")))
    async with client_for(app, backoff=Backoff(base=5, cap=5), stop=stop) as client:
        task = asyncio.create_task(client.call("POST", "/events", EVENT))
        async with asyncio.timeout(5):
            while app[BREVO_STATE].injected == 0:
                await asyncio.sleep(0.005)
        stop.set()
        with pytest.raises(Stopping, match="503"):
            await asyncio.wait_for(task, 2)


async def test_the_api_key_is_sent_as_the_api_key_header():
    seen: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        seen.update((k.lower(), v) for k, v in request.headers.items())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v3/account", handler)
    async with client_for(app) as client:
        response = await client.call("GET", "/account")
    assert response.body == {"ok": True}
    assert seen["api-key"] == KEY and seen["accept"] == "application/json"
    assert "content-type" not in seen, "no body, no content type"


async def test_a_bytes_payload_is_sent_as_the_json_body_it_already_is():
    received: list[tuple[bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get("content-type", "")))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/v3/events", handler)
    body = b'{"event_name":"x","identifiers":{"ext_id":"u"},"event_properties":{"n":1.50}}'
    async with client_for(app) as client:
        await client.call("POST", "/events", body)
        await client.call("POST", "/events", EVENT)
    assert received[0] == (body, "application/json"), "as is, not re-encoded (1.50 stays 1.50)"
    assert received[1][0] == orjson.dumps(EVENT), "a dict is encoded"


async def test_stop_makes_requests_waiting_for_budget_give_up_and_lets_the_one_in_flight_finish():
    release = asyncio.Event()
    arrived = asyncio.Event()

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return await handler(request)

    app = make_brevo_app(api_key=KEY)
    app.middlewares.insert(0, hold)
    stop = asyncio.Event()
    async with client_for(app, stop=stop) as client:
        client.budgets["brevo_events"].reconfigure(Rate(1, 3600))  # one request an hour
        calls = [asyncio.create_task(client.call("POST", "/events", EVENT)) for _ in range(51)]
        try:
            async with asyncio.timeout(5):
                await arrived.wait()
            await asyncio.sleep(0)
            assert sum(task.done() for task in calls) == 0, "one in flight, fifty waiting for the budget"
            stop.set()
            in_flight, waiting = calls[0], calls[1:]  # tasks start in order: the first took the token
            done, pending = await asyncio.wait(waiting, timeout=0.5)
            assert len(done) == 50, "all give up promptly"
            assert all(isinstance(task.exception(), Stopping) for task in done)
            assert not in_flight.done()
        finally:
            release.set()  # the request already sent is not abandoned
        assert (await in_flight).status == 204
    assert len(app[BREVO_STATE].events) == 1


async def test_a_404_page_fails_health_until_the_path_answers_and_an_item_level_404_does_not():
    health = Health()
    app = make_brevo_app(api_key=KEY, faults=BrevoFaults(not_found_requests=2))
    async with client_for(app, backoff=Backoff(base=0.001, cap=0.002)) as client:
        client.health = health
        failing: list[dict[str, Any]] = []
        with capture_logs() as logs:
            task = asyncio.create_task(client.call("POST", "/events", EVENT))
            while not task.done():
                failing.append(health.failing)
                await asyncio.sleep(0)
            assert (await task).status == 204
        assert any("brevo /events" in f for f in failing), "readiness failed meanwhile"
        assert health.healthy
        (failed,) = [e for e in logs if e["event"] == "health.failing"]
        assert failed["check"] == "brevo /events" and failed["reason"].startswith("HTTP 404 <html>")
        assert len([e for e in logs if e["event"] == "health.recovered"]) == 1


async def test_a_caller_may_declare_brevos_404_an_item_verdict_and_a_404_page_stays_an_outage():
    health = Health()
    answers = [(404, "text/html", "<html>404 Not Found</html>"),
               (404, "application/json", '{"code": "document_not_found", "message": "No contact found for indexes 3,4"}')]

    async def contacts_batch(request: web.Request) -> web.Response:
        status, ctype, text = answers.pop(0)
        return web.Response(status=status, content_type=ctype, text=text)

    app = web.Application()
    app.router.add_post("/v3/contacts/batch", contacts_batch)
    async with client_for(app) as client:
        client.health = health
        with capture_logs() as logs:
            response = await client.call("POST", "/contacts/batch", {"contacts": []},
                                         item_verdicts={404: {"document_not_found"}})
    assert response.status == 404 and response.code == "document_not_found"
    assert response.message == "document_not_found: No contact found for indexes 3,4"
    assert answers == [], "the 404 page was retried as an outage, Brevo's 404 returned as a verdict"
    assert [e["check"] for e in logs if e["event"] == "health.failing"] == ["brevo /contacts/batch"]
    assert health.healthy


def test_readiness_checks_are_named_by_endpoint_not_by_the_contact_asked_about():
    from amplitude_brevo.sinks.brevo_client import path_template

    assert path_template("/contacts/u%401?identifierType=ext_id") == "/contacts/{id}"
    assert path_template("/contacts/ana%40example.org") == "/contacts/{id}"
    assert path_template("/processes/77") == "/processes/{id}"
    assert path_template("/contacts/lists/12/contacts/add") == "/contacts/lists/{id}/contacts/add"
    for fixed in ("/contacts/batch", "/contacts/import", "/contacts/attributes", "/contacts/lists", "/events/batch"):
        assert path_template(fixed) == fixed
