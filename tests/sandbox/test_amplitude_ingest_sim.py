"""The sandbox's Amplitude ingest side (sandbox/amplitude_ingest.py): Amplitude's answers, what it records, its
faults. Over a real loopback server; the official SDK for the success path."""

from __future__ import annotations

import asyncio
import gzip
import threading
from datetime import UTC, datetime
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.sandbox.amplitude_ingest import AMPLITUDE_INGEST_STATE
from amplitude_brevo.sandbox.amplitude_sim import make_amplitude_app
from amplitude_brevo.sandbox.sample_data import DatasetSpec

KEY = "sandbox-ingest-key"
SPEC = DatasetSpec(start=datetime(2026, 11, 1, tzinfo=UTC), hours=1, rows_per_hour=10, users=5)


def event(user: str = "user-00001", n: int = 0, **extra) -> dict:
    return {"event_type": "Page View", "user_id": user, "time": 1_793_491_180_058 + n, "insert_id": f"{user}-{n}",
            **extra}


@pytest.fixture
async def amp():
    app = make_amplitude_app(SPEC, api_key=KEY, secret_key="secret")
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield server, session, app[AMPLITUDE_INGEST_STATE]


async def post(amp, path: str, payload, *, gzipped: bool = False):
    server, session, _ = amp
    data = orjson.dumps(payload)
    headers = {"Content-Type": "application/json"}
    if gzipped:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    async with session.post(server.make_url(path), data=data, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def faults(amp, **values):
    server, session, _ = amp
    async with session.post(server.make_url("/_sandbox/amplitude/ingest/faults"), json=values) as resp:
        assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("path", ["/2/httpapi", "/batch"])
async def test_accepted_events_are_recorded_as_sent_and_deduplicated_by_insert_id(amp, path):
    events = [event(n=1, ip="$remote", event_properties={"a.b": 1}), event(n=2), event(n=1)]
    status, body = await post(amp, path, {"api_key": KEY, "events": events}, gzipped=path == "/batch")
    assert status == 200 and body["code"] == 200 and body["events_ingested"] == 3
    state = amp[2]
    assert [e["insert_id"] for e in state.events] == ["user-00001-1", "user-00001-2"]
    assert state.duplicates == 1, "Amplitude keeps one event per insert_id"
    first = {k: v for k, v in state.events[0].items() if k not in ("kind", "caller")}
    assert first == events[0], "recorded as sent"
    assert state.events[0]["kind"] == path.strip("/").split("/")[-1] and state.events[0]["caller"] == "127.0.0.1"


@pytest.mark.parametrize(("payload", "status", "error"), [
    ({"api_key": "wrong", "events": [event()]}, 400, "Invalid API key"),
    ({"events": [event()]}, 400, "Request missing required field"),
    ({"api_key": KEY, "events": [{"user_id": "user-00001"}]}, 400, "Request missing required field"),
    ({"api_key": KEY, "events": [event(user="abc")]}, 400, None),
    ({"api_key": KEY, "events": [event()] * 2001}, 413, "Payload too large"),
])
async def test_what_amplitude_refuses_the_sandbox_refuses_and_records_nothing(amp, payload, status, error):
    got_status, body = await post(amp, "/2/httpapi", payload)
    assert got_status == status and body["code"] == status
    if error:
        assert body["error"].startswith(error)
    assert amp[2].events == []


async def test_a_throttled_user_refuses_the_request_naming_their_events(amp):
    await faults(amp, throttle_users=["user-00002"])
    events = [event("user-00001", 1), event("user-00002", 2), event("user-00003", 3), event("user-00002", 4)]
    status, body = await post(amp, "/batch", {"api_key": KEY, "events": events})
    assert status == 429 and body["throttled_events"] == [1, 3] and list(body["throttled_users"]) == ["user-00002"]
    assert amp[2].events == [], "a 429 ingests nothing of the request"
    status, _ = await post(amp, "/batch", {"api_key": KEY, "events": [events[0], events[2]]})
    assert status == 200 and len(amp[2].events) == 2, "the others go through once resent without them"


async def test_over_quota_users_and_project_throttles(amp):
    await faults(amp, quota_users=["user-00009"], throttle_all_next=1)
    status, body = await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event("user-00001")]})
    assert status == 429 and body["throttled_users"] == {} and body["throttled_events"] == []
    status, body = await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event("user-00001"), event("user-00009")]})
    assert status == 429 and list(body["exceeded_daily_quota_users"]) == ["user-00009"]
    assert body["throttled_events"] == [1]


async def test_invalid_event_types_outages_and_failures(amp):
    await faults(amp, invalid_event_types=["Bad"])
    status, body = await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event(), event(n=1, event_type="Bad")]})
    assert status == 400 and body["events_with_invalid_fields"] == {"event_type": [1]}
    await faults(amp, reset=True, fail_next=2, fail_status=500)
    assert (await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event()]}))[0] == 500
    assert (await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event()]}))[0] == 500
    assert (await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event()]}))[0] == 200
    await faults(amp, outage_seconds=60)
    assert (await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event(n=5)]}))[0] == 503
    await faults(amp, outage_seconds=0)
    assert (await post(amp, "/2/httpapi", {"api_key": KEY, "events": [event(n=5)]}))[0] == 200
    assert [e["insert_id"] for e in amp[2].events] == ["user-00001-0", "user-00001-5"]


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_identify_and_group_identify_are_recorded(amp, method):
    server, session, state = amp
    ident = [{"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}, "$add": {"logins": 1}}}]
    group = {"group_type": "company", "group_value": "acme", "group_properties": {"$set": {"plan": "ent"}}}
    for path, item in (("/identify", ident), ("/groupidentify", group)):
        fields = {"api_key": KEY, "identification": orjson.dumps(item).decode()}
        if method == "GET":
            request = session.get(server.make_url(path).with_query(fields))
        else:
            request = session.post(server.make_url(path), data=urlencode(fields),
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        async with request as resp:
            assert resp.status == 200, await resp.text()
    assert [{k: v for k, v in i.items() if k != "caller"} for i in state.identifies] == ident
    assert [{k: v for k, v in i.items() if k != "caller"} for i in state.group_identifies] == [group]
    fields = {"api_key": "wrong", "identification": orjson.dumps(ident).decode()}
    async with session.post(server.make_url("/identify"), data=fields) as resp:
        assert resp.status == 400 and (await resp.json())["error"].startswith("Invalid API key")


async def test_the_official_sdk_sends_to_the_sandbox(amp):
    from amplitude import Amplitude, BaseEvent, Config

    server, session, state = amp
    delivered = threading.Event()
    codes: list[int] = []

    def callback(_event, code, _message=None):
        codes.append(code)
        if len(codes) == 3:
            delivered.set()

    client = Amplitude(KEY, Config(server_url=str(server.make_url("/2/httpapi")), flush_queue_size=3,
                                   callback=callback))
    for n in range(3):
        client.track(BaseEvent(event_type="Signed Up", user_id="user-00042", insert_id=f"sdk-{n}"))
    client.flush()
    for _ in range(200):
        if delivered.is_set():
            break
        await asyncio.sleep(0.02)  # the SDK sends from its own thread; this loop serves its requests
    client.shutdown()
    assert codes == [200, 200, 200]
    assert sorted(e["insert_id"] for e in state.events) == ["sdk-0", "sdk-1", "sdk-2"]
