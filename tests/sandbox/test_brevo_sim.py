"""Tests for the loopback Brevo simulator, over a real aiohttp server on 127.0.0.1."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from yarl import URL

from amplitude_brevo.sandbox.brevo_sim import (
    BREVO_STATE,
    BrevoFaults,
    BrevoState,
    BucketLimit,
    make_brevo_app,
)

KEY = "xkeysib-sandbox-test"
RL_HEADERS = ("x-sib-ratelimit-limit", "x-sib-ratelimit-remaining", "x-sib-ratelimit-reset")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Sim:
    """A running simulator plus a client session that sends the API key."""

    def __init__(
        self, app: aiohttp.web.Application, server: TestServer, session: aiohttp.ClientSession
    ) -> None:
        self.app, self.server, self.session = app, server, session

    @property
    def state(self) -> BrevoState:
        return self.app[BREVO_STATE]

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.session.request(method, path, **kwargs) as resp:
            raw = await resp.read()
            body = await resp.json() if raw and resp.content_type == "application/json" else raw or None
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Reply:
        return await self.call("POST", path, json=json, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("GET", path, **kwargs)

    async def received(self) -> dict[str, Any]:
        return (await self.get("/_sandbox/brevo/received")).body

    async def counts(self) -> dict[str, Any]:
        return (await self.get("/_sandbox/brevo/received/count")).body


@pytest.fixture
async def start_sim():
    started: list[Sim] = []

    async def _start(**kwargs: Any) -> Sim:
        kwargs.setdefault(
            "limits", {b: BucketLimit(10_000, 3600) for b in ("events", "contacts", "orders", "other")}
        )
        app = make_brevo_app(api_key=KEY, **kwargs)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        session = aiohttp.ClientSession(
            base_url=URL.build(scheme="http", host="127.0.0.1", port=server.port), headers={"api-key": KEY}
        )
        sim = Sim(app, server, session)
        started.append(sim)
        return sim

    yield _start
    for sim in started:
        await sim.session.close()
        await sim.server.close()


@pytest.fixture
async def sim(start_sim) -> Sim:
    return await start_sim()


def event(name: str = "order_completed", **extra: Any) -> dict[str, Any]:
    return {"event_name": name, "identifiers": {"ext_id": "amp-user-1"}, **extra}


def order(oid: str = "ord-1", **extra: Any) -> dict[str, Any]:
    return {
        "id": oid,
        "createdAt": "2025-03-01T16:59:23Z",
        "updatedAt": "2025-03-01T16:59:23.383Z",
        "status": "completed",
        "amount": 59.8,
        "identifiers": {"ext_id": "amp-user-1"},
        "products": [{"productId": "A1", "price": 29.9, "quantity": 2}],
        **extra,
    }


def assert_brevo_error(reply: Reply, status: int, code: str | None = None) -> None:
    assert reply.status == status, reply.body
    assert isinstance(reply.body, dict)
    assert isinstance(reply.body["code"], str) and isinstance(reply.body["message"], str)
    if code is not None:
        assert reply.body["code"] == code, reply.body


# ---------------------------------------------------------------------------------------------- auth & bodies


async def test_auth_required(sim: Sim) -> None:
    for headers in ({"api-key": "wrong"}, {}):
        async with aiohttp.ClientSession(base_url=sim.session._base_url, headers=headers) as other:
            async with other.post("/v3/events", json=event()) as resp:
                assert resp.status == 401
                assert await resp.json() == {"code": "unauthorized", "message": "Key not found"}
    assert (await sim.received())["events"] == []


async def test_body_must_be_json(sim: Sim) -> None:
    assert_brevo_error(
        await sim.post("/v3/events", data="x=1", headers={"content-type": "text/plain"}),
        406,
        "not_acceptable",
    )
    bad_json = await sim.post("/v3/events", data="{nope", headers={"content-type": "application/json"})
    assert_brevo_error(bad_json, 400, "bad_request")
    assert_brevo_error(await sim.post("/v3/events", json=[1, 2]), 400, "bad_request")
    assert_brevo_error(await sim.post("/v3/events"), 400, "missing_parameter")


async def test_unknown_path_and_method_use_brevo_error_shape(sim: Sim) -> None:
    assert_brevo_error(await sim.get("/v3/nothing/here"), 404, "document_not_found")
    assert_brevo_error(await sim.call("DELETE", "/v3/events"), 405, "method_not_allowed")


# ---------------------------------------------------------------------------------------------- rate limits


async def test_rate_limit_fixed_window_429_with_headers(start_sim, clock) -> None:
    sim = await start_sim(limits={"events": BucketLimit(5, 0.5)}, clock=clock)
    replies = [await sim.post("/v3/events", json=event()) for _ in range(8)]
    assert [r.status for r in replies] == [204] * 5 + [429] * 3
    for reply in replies:
        assert all(h in reply.headers for h in RL_HEADERS)
        assert "retry-after" not in reply.headers
        assert reply.headers["x-sib-ratelimit-limit"] == "5"
    assert [int(r.headers["x-sib-ratelimit-remaining"]) for r in replies] == [4, 3, 2, 1, 0, 0, 0, 0]
    for reply in replies[5:]:
        assert int(reply.headers["x-sib-ratelimit-reset"]) >= 1
        assert_brevo_error(reply, 429, "too_many_requests")
    dump = await sim.received()
    assert len(dump["events"]) == 5
    assert dump["rate_limited"] == 3 and dump["statuses"] == {"204": 5, "429": 3}

    clock.advance(0.49)
    assert (await sim.post("/v3/events", json=event())).status == 429, "the same window"
    clock.advance(0.01)  # the window has rolled over
    again = await sim.post("/v3/events", json=event())
    assert again.status == 204
    assert again.headers["x-sib-ratelimit-remaining"] == "4"


async def test_rate_limit_reset_header_counts_down(start_sim) -> None:
    sim = await start_sim(limits={"other": BucketLimit(2, 3600)})
    first = await sim.get("/v3/processes")
    assert first.status == 200
    assert 3590 <= int(first.headers["x-sib-ratelimit-reset"]) <= 3600
    await sim.get("/v3/processes")
    limited = await sim.get("/v3/processes")
    assert limited.status == 429 and limited.headers["x-sib-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-sib-ratelimit-reset"]) <= 3600


async def test_buckets_route_paths(start_sim) -> None:
    sim = await start_sim()
    await sim.post("/v3/events", json=event())
    await sim.post("/v3/events/batch", json={"events": [event()]})
    await sim.get("/v3/contacts/attributes")
    await sim.get("/v3/contacts/lists")
    await sim.post("/v3/contacts", json={"ext_id": "u1"})
    await sim.post("/v3/orders/status", json=order())
    await sim.post("/v3/orders/status/batch", json={"orders": [order()]})
    await sim.get("/v3/processes")
    assert (await sim.received())["requests"] == {"events": 1, "other": 3, "contacts": 3, "orders": 1}

    limits = await sim.post("/_sandbox/brevo/limits", json={"events_batch": {"requests": 1, "per": 60}})
    assert limits.status == 200 and limits.body["events_batch"] == {"requests": 1, "per": 60.0}
    ok = await sim.post("/v3/events/batch", json={"events": [event()]})
    assert ok.status == 202 and ok.headers["x-sib-ratelimit-limit"] == "1"
    assert (await sim.post("/v3/events/batch", json={"events": [event()]})).status == 429
    assert (await sim.received())["requests"]["events_batch"] == 2
    bad = await sim.post("/_sandbox/brevo/limits", json={"nope": {"requests": 1, "per": 1}})
    assert_brevo_error(bad, 400, "invalid_parameter")


async def test_default_limits_are_general_plan() -> None:
    state = make_brevo_app(api_key=KEY)[BREVO_STATE]
    assert {k: (w.limit.requests, w.limit.per) for k, w in state.windows.items()} == {
        "events": (10, 1.0),
        "contacts": (10, 1.0),
        "orders": (5, 1.0),
        "other": (100, 3600.0),
    }
    assert state.bucket_for("POST", "/v3/events/batch") == "other"
    assert state.bucket_for("POST", "/v3/contacts/lists/10/contacts/add") == "contacts"
    assert state.bucket_for("POST", "/v3/orders/status/batch") == "other"


# ---------------------------------------------------------------------------------------------- events


@pytest.mark.parametrize(
    "body",
    [
        {"identifiers": {"ext_id": "u1"}},
        {"event_name": "has space", "identifiers": {"ext_id": "u1"}},
        {"event_name": "x" * 256, "identifiers": {"ext_id": "u1"}},
        {"event_name": "ok"},
        {"event_name": "ok", "identifiers": {}},
        {"event_name": "ok", "identifiers": {"user_id": "u1"}},
        {"event_name": "ok", "identifiers": {"email_id": "not-an-email"}},
        event(event_date="yesterday"),
        event(event_date="2025-03-01T17:39:57"),
        event(event_properties={"bad key": 1}),
        event(event_properties={"blob": "x" * 52_000}),
        event(contact_properties={"NESTED": {"a": 1}}),
        event(contact_properties=["PLAN"]),
    ],
)
async def test_invalid_event_gets_400_shape(sim: Sim, body: dict[str, Any]) -> None:
    assert_brevo_error(await sim.post("/v3/events", json=body), 400, "invalid_parameter")
    assert (await sim.received())["events"] == []


async def test_valid_event_is_stored(sim: Sim) -> None:
    body = event(
        "checkout_completed",
        event_date="2025-03-01T17:39:57+01:00",
        identifiers={"ext_id": "amp-user-8812", "email_id": "ana@example.org"},
        contact_properties={"PLAN": "pro", "LTV": 49.9, "VIP": True},
        event_properties={"amount": 49.9, "items": [{"sku": "A1", "qty": 1}], "nested": {"any key": 1}},
    )
    reply = await sim.post("/v3/events", json=body)
    assert reply.status == 204 and reply.body is None
    assert (await sim.received())["events"] == [body]


async def test_event_contact_properties_update_existing_contact(sim: Sim) -> None:
    await sim.post("/v3/contacts", json={"ext_id": "amp-user-1"})
    assert (
        await sim.post("/v3/events", json=event(contact_properties={"PLAN": "pro", "LTV": "12.5"}))
    ).status == 204
    contact = (await sim.get("/v3/contacts/amp-user-1", params={"identifierType": "ext_id"})).body
    assert contact["attributes"]["PLAN"] == "pro" and contact["attributes"]["LTV"] == 12.5
    # an unknown contact is not created by an event
    await sim.post(
        "/v3/events", json=event(identifiers={"ext_id": "ghost"}, contact_properties={"PLAN": "x"})
    )
    assert len((await sim.received())["contacts"]) == 1


async def test_events_batch_all_valid_202(sim: Sim) -> None:
    events = [event(f"e{i}") for i in range(3)]
    reply = await sim.post("/v3/events/batch", json={"events": events})
    assert reply.status == 202
    assert reply.body == {"message": "Events queued", "count": 3}
    assert (await sim.received())["events"] == events


async def test_events_batch_partial_207_groups_indexes(sim: Sim) -> None:
    events = [
        event("ok0"),
        event("bad name"),
        event("ok2", contact_properties={"LTV": 1.5}),  # floats are not allowed in batch items
        event("bad name too"),
        event("ok4", contact_properties={"ORDER_COUNT": 3, "PLAN": "pro"}),
    ]
    reply = await sim.post("/v3/events/batch", json={"events": events})
    assert reply.status == 207
    assert reply.body["status"] == "partial"
    assert (reply.body["total_events"], reply.body["successful_events"], reply.body["failed_events"]) == (
        5,
        2,
        3,
    )
    assert reply.body["errors"] == [
        {"eventIndex": [1, 3], "message": "event_name is invalid"},
        {"eventIndex": [2], "message": "contact_properties values must be string or integer"},
    ]
    assert [e["event_name"] for e in (await sim.received())["events"]] == ["ok0", "ok4"]


async def test_events_batch_all_invalid_400(sim: Sim) -> None:
    reply = await sim.post("/v3/events/batch", json={"events": [{"event_name": "x"}, event("a b")]})
    assert reply.status == 400
    body = reply.body
    assert body["status"] == "failed"
    assert (body["total_events"], body["successful_events"], body["failed_events"]) == (2, 0, 2)
    assert sorted(i for err in body["errors"] for i in err["eventIndex"]) == [0, 1]
    assert isinstance(body["code"], str) and isinstance(body["message"], str)
    assert (await sim.received())["events"] == []


async def test_received_events_carry_the_time_they_were_stored_at(sim: Sim) -> None:
    before = time.time()
    assert (await sim.post("/v3/events", json=event("first"))).status == 204
    middle = time.time()
    batch = [event("second"), event("bad name"), event("third")]
    assert (await sim.post("/v3/events/batch", json={"events": batch})).status == 207
    after = time.time()

    reply = (await sim.get("/_sandbox/brevo/received/events")).body
    assert reply["total"] == 3 and reply["since"] == 0
    assert [r["event"]["event_name"] for r in reply["events"]] == ["first", "second", "third"]
    first, second, third = (r["received_at"] for r in reply["events"])
    assert before <= first <= middle <= second == third <= after
    # Only what came after `since`; the total is still everything stored.
    tail = (await sim.get("/_sandbox/brevo/received/events", params={"since": "2"})).body
    assert tail == {"total": 3, "since": 2, "events": [reply["events"][2]]}
    assert (await sim.get("/_sandbox/brevo/received/events", params={"since": "9"})).body["events"] == []
    assert_brevo_error(await sim.get("/_sandbox/brevo/received/events", params={"since": "-1"}), 400)
    # The plain dump is unchanged: the events as received, without the times.
    assert [e["event_name"] for e in (await sim.received())["events"]] == ["first", "second", "third"]

    sim.state.drop_events()
    assert (await sim.get("/_sandbox/brevo/received/events")).body == {"total": 0, "since": 0, "events": []}


async def test_events_batch_size_and_shape(start_sim) -> None:
    sim = await start_sim(events_batch_max=3)
    assert_brevo_error(
        await sim.post("/v3/events/batch", json={"events": [event()] * 4}), 400, "out_of_range"
    )
    assert_brevo_error(await sim.post("/v3/events/batch", json={}), 400, "missing_parameter")
    assert_brevo_error(await sim.post("/v3/events/batch", json={"events": []}), 400, "invalid_parameter")
    assert (await sim.post("/v3/events/batch", json={"events": [event()] * 3})).status == 202


# ---------------------------------------------------------------------------------------------- contacts


async def test_contact_create_upsert_get_by_ext_id(sim: Sim) -> None:
    created = await sim.post(
        "/v3/contacts",
        json={
            "email": "Ana@Example.org",
            "ext_id": "amp-user-8812",
            "attributes": {"FIRSTNAME": "Ana"},
            "listIds": [12],
        },
    )
    assert created.status == 201 and isinstance(created.body["id"], int)
    cid = created.body["id"]

    dup = await sim.post("/v3/contacts", json={"ext_id": "amp-user-8812"})
    assert_brevo_error(dup, 400, "duplicate_parameter")

    upsert = await sim.post(
        "/v3/contacts",
        json={
            "ext_id": "amp-user-8812",
            "attributes": {"PLAN": "pro", "SMS": "+33612345678"},
            "updateEnabled": True,
        },
    )
    assert upsert.status == 204

    by_ext = await sim.get("/v3/contacts/amp-user-8812", params={"identifierType": "ext_id"})
    assert by_ext.status == 200
    contact = by_ext.body
    assert contact["id"] == cid and contact["email"] == "ana@example.org" and contact["listIds"] == [12]
    assert contact["attributes"] == {
        "FIRSTNAME": "Ana",
        "PLAN": "pro",
        "SMS": "33612345678",
        "EXT_ID": "amp-user-8812",
    }
    for key in ("emailBlacklisted", "smsBlacklisted", "createdAt", "modifiedAt"):
        assert key in contact

    # ext_id is only recognised with identifierType=ext_id
    assert_brevo_error(await sim.get("/v3/contacts/amp-user-8812"), 404, "document_not_found")
    assert (await sim.get("/v3/contacts/ana@example.org")).body["id"] == cid
    assert (await sim.get(f"/v3/contacts/{cid}")).body["id"] == cid
    assert (await sim.get("/v3/contacts/%2B33612345678")).body["id"] == cid
    assert_brevo_error(
        await sim.get("/v3/contacts/ghost", params={"identifierType": "ext_id"}), 404, "document_not_found"
    )
    assert_brevo_error(
        await sim.get("/v3/contacts/x", params={"identifierType": "nope"}), 400, "invalid_parameter"
    )


async def test_contact_update_and_delete(sim: Sim) -> None:
    await sim.post("/v3/contacts", json={"ext_id": "u1", "listIds": [10, 11]})
    await sim.post("/v3/contacts", json={"ext_id": "u2", "email": "two@example.org"})
    put = await sim.call(
        "PUT",
        "/v3/contacts/u1",
        params={"identifierType": "ext_id"},
        json={"attributes": {"EMAIL": "one@example.org", "LTV": 10}, "unlinkListIds": [11]},
    )
    assert put.status == 204
    got = (await sim.get("/v3/contacts/one@example.org")).body
    assert got["attributes"]["LTV"] == 10 and got["listIds"] == [10]
    # taking another contact's email is a conflict
    clash = await sim.call(
        "PUT", "/v3/contacts/one@example.org", json={"attributes": {"EMAIL": "two@example.org"}}
    )
    assert_brevo_error(clash, 400, "duplicate_parameter")
    assert_brevo_error(await sim.call("PUT", "/v3/contacts/nobody@example.org", json={"ext_id": "x"}), 404)
    assert (await sim.call("DELETE", "/v3/contacts/u1", params={"identifierType": "ext_id"})).status == 204
    assert_brevo_error(await sim.call("DELETE", "/v3/contacts/u1", params={"identifierType": "ext_id"}), 404)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"attributes": {"FIRSTNAME": "Ana"}}, "missing_parameter"),
        ({"email": "not-an-email"}, "invalid_parameter"),
        ({"attributes": {"SMS": "0612345678"}}, "invalid_parameter"),
        ({"ext_id": "u1", "attributes": {"NO_SUCH_ATTRIBUTE": 1}}, "invalid_parameter"),
        ({"ext_id": "u1", "listIds": [999]}, "invalid_parameter"),
    ],
)
async def test_invalid_contact_gets_400_shape(sim: Sim, body: dict[str, Any], code: str) -> None:
    assert_brevo_error(await sim.post("/v3/contacts", json=body), 400, code)
    assert (await sim.received())["contacts"] == []


async def test_attribute_values_that_do_not_fit_are_ignored(sim: Sim) -> None:
    attributes = {
        "LAST_ACTIVE": "2025-03-01",
        "LTV": "lots",
        "NEWSLETTER": "maybe",
        "ORDER_COUNT": 3,
        "PLAN": "pro",
    }
    assert (await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": attributes})).status == 201
    stored = (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body["attributes"]
    assert stored == {"LAST_ACTIVE": "2025-03-01", "ORDER_COUNT": 3, "PLAN": "pro", "EXT_ID": "u1"}
    put = await sim.call("PUT", "/v3/contacts/u1", params={"identifierType": "ext_id"},
                         json={"attributes": {"NEWSLETTER": "yes", "PLAN": "free"}})
    assert put.status == 204
    stored = (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body["attributes"]
    assert "NEWSLETTER" not in stored and stored["PLAN"] == "free"
    await sim.call("PUT", "/v3/contacts/u1", params={"identifierType": "ext_id"},
                   json={"attributes": {"NEWSLETTER": False}})
    assert (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body["attributes"][
        "NEWSLETTER"] is False


async def test_contacts_batch_update_only(sim: Sim) -> None:
    await sim.post("/v3/contacts", json={"email": "a@example.org"})
    cid = (await sim.post("/v3/contacts", json={"ext_id": "u2"})).body["id"]
    ok = await sim.post(
        "/v3/contacts/batch",
        json={
            "contacts": [
                {"email": "a@example.org", "attributes": {"PLAN": "free"}, "ext_id": "u1"},
                {"id": cid, "attributes": {"LTV": 5.5}, "listIds": [13]},
            ]
        },
    )
    assert ok.status == 204
    contacts = {c["id"]: c for c in (await sim.received())["contacts"]}
    assert contacts[cid]["attributes"]["LTV"] == 5.5 and contacts[cid]["listIds"] == [13]
    assert (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body["attributes"][
        "PLAN"
    ] == "free"

    two_ids = await sim.post("/v3/contacts/batch", json={"contacts": [{"email": "a@example.org", "id": cid}]})
    assert_brevo_error(two_ids, 400, "invalid_parameter")
    by_ext = await sim.post("/v3/contacts/batch", json={"contacts": [{"ext_id": "u1"}]})
    assert_brevo_error(by_ext, 400, "invalid_parameter")
    unknown = await sim.post(
        "/v3/contacts/batch",
        json={"contacts": [{"id": cid, "attributes": {"PLAN": "x"}}, {"email": "ghost@example.org"}]},
    )
    assert_brevo_error(unknown, 404, "document_not_found")
    assert unknown.body["message"] == "No contact found for indexes 1"
    contacts = {c["id"]: c for c in (await sim.received())["contacts"]}
    assert contacts[cid]["attributes"].get("PLAN") is None  # all or nothing
    assert_brevo_error(await sim.post("/v3/contacts/batch", json={}), 400, "missing_parameter")


async def test_import_creates_contacts_and_process(sim: Sim) -> None:
    await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": {"PLAN": "free"}})
    reply = await sim.post(
        "/v3/contacts/import",
        json={
            "jsonBody": [
                {"email": "new@example.org", "attributes": {"EXT_ID": "u2", "PLAN": "pro", "UNKNOWN": 1}},
                {"attributes": {"EXT_ID": "u1", "PLAN": "pro"}},
                {"email": "broken", "attributes": {}},
            ],
            "listIds": [10],
        },
    )
    assert reply.status == 202
    pid = reply.body["processId"]
    process = (await sim.get(f"/v3/processes/{pid}")).body
    assert process["status"] == "completed" and process["name"] == "IMPORTUSER"
    assert process["info"]["sandbox"]["created"] == 1 and process["info"]["sandbox"]["updated"] == 1
    assert process["info"]["import"]["invalid_emails"] is not None
    u1 = (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body
    assert u1["attributes"]["PLAN"] == "pro" and u1["listIds"] == [10]
    u2 = (await sim.get("/v3/contacts/new@example.org")).body
    assert u2["attributes"] == {"PLAN": "pro", "EXT_ID": "u2"}  # unknown attributes are dropped on import

    csv_reply = await sim.post(
        "/v3/contacts/import",
        json={
            "fileBody": "EMAIL;EXT_ID;LTV\nc@example.org;u3;12.5\n;u4;\n",
            "newList": {"listName": "csv", "folderId": 1},
        },
    )
    assert csv_reply.status == 202
    dump = await sim.received()
    new_list = max(int(k) for k in dump["lists"])
    assert sorted(dump["lists"][str(new_list)]) == ["u3", "u4"]
    assert (await sim.get("/v3/contacts/u3", params={"identifierType": "ext_id"})).body["attributes"][
        "LTV"
    ] == 12.5
    assert_brevo_error(await sim.get("/v3/processes/999"), 404, "document_not_found")

    assert_brevo_error(await sim.post("/v3/contacts/import", json={"jsonBody": []}), 400, "missing_parameter")
    assert_brevo_error(
        await sim.post("/v3/contacts/import", json={"listIds": [10]}), 400, "missing_parameter"
    )
    both = await sim.post(
        "/v3/contacts/import", json={"jsonBody": [], "fileBody": "EMAIL\n", "listIds": [10]}
    )
    assert_brevo_error(both, 400, "invalid_parameter")


# ---------------------------------------------------------------------------------------------- attributes & lists


async def test_attributes_list_and_create(sim: Sim) -> None:
    names = {a["name"]: a for a in (await sim.get("/v3/contacts/attributes")).body["attributes"]}
    assert {
        "EMAIL",
        "FIRSTNAME",
        "LASTNAME",
        "SMS",
        "EXT_ID",
        "PLAN",
        "SIGNUP_DATE",
        "ORDER_COUNT",
        "LTV",
    } <= set(names)
    assert names["LTV"]["type"] == "float" and names["SIGNUP_DATE"]["type"] == "date"
    created = await sim.post("/v3/contacts/attributes/normal/AMP_LAST_EVENT_AT", json={"type": "date"})
    assert created.status == 201
    dup = await sim.post("/v3/contacts/attributes/normal/AMP_LAST_EVENT_AT", json={"type": "date"})
    assert_brevo_error(dup, 400, "duplicate_parameter")
    assert_brevo_error(await sim.post("/v3/contacts/attributes/normal/X", json={"type": "nope"}), 400)
    assert_brevo_error(await sim.post("/v3/contacts/attributes/bogus/X", json={"type": "text"}), 400)
    assert_brevo_error(await sim.post("/v3/contacts/attributes/normal/Y"), 400, "missing_parameter")
    # the new attribute is usable and type-checked
    await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": {"AMP_LAST_EVENT_AT": "2025-01-02"}})
    got = (await sim.get("/v3/contacts/u1", params={"identifierType": "ext_id"})).body
    assert got["attributes"]["AMP_LAST_EVENT_AT"] == "2025-01-02"


async def test_lists_crud_and_paging(sim: Sim) -> None:
    lists = await sim.get("/v3/contacts/lists", params={"limit": "50", "sort": "asc"})
    assert [entry["id"] for entry in lists.body["lists"]] == [10, 11, 12, 13] and lists.body["count"] == 4
    assert_brevo_error(await sim.get("/v3/contacts/lists", params={"limit": "51"}), 400, "out_of_range")
    assert (await sim.get("/v3/contacts/lists/11")).body["name"] == "power_users"
    assert_brevo_error(await sim.get("/v3/contacts/lists/99"), 404, "document_not_found")
    created = await sim.post("/v3/contacts/lists", json={"name": "VIP", "folderId": 1})
    assert created.status == 201 and created.body["id"] == 14
    assert_brevo_error(
        await sim.post("/v3/contacts/lists", json={"name": "no folder"}), 400, "missing_parameter"
    )
    assert_brevo_error(await sim.post("/v3/contacts/lists", json={"name": "x", "folderId": 77}), 400)
    assert_brevo_error(
        await sim.get("/v3/contacts/lists/10/contacts", params={"limit": "501"}), 400, "out_of_range"
    )


async def test_list_add_remove_with_failures_and_limit(sim: Sim) -> None:
    for uid in ("u1", "u2"):
        await sim.post("/v3/contacts", json={"ext_id": uid})
    await sim.post("/v3/contacts", json={"email": "c@example.org"})

    add = await sim.post("/v3/contacts/lists/10/contacts/add", json={"extIds": ["u1", "u2", "ghost"]})
    assert add.status == 201
    assert add.body == {"contacts": {"success": ["u1", "u2"], "failure": ["ghost"]}}
    add_email = await sim.post(
        "/v3/contacts/lists/10/contacts/add", json={"emails": ["C@example.org", "x@example.org"]}
    )
    assert add_email.body["contacts"] == {"success": ["C@example.org"], "failure": ["x@example.org"]}
    members = await sim.get("/v3/contacts/lists/10/contacts")
    assert members.body["count"] == 3

    remove = await sim.post("/v3/contacts/lists/10/contacts/remove", json={"extIds": ["u1", "ghost"]})
    assert remove.status == 201 and remove.body == {"contacts": {"success": ["u1"], "failure": ["ghost"]}}
    assert sorted((await sim.received())["lists"]["10"]) == ["c@example.org", "u2"]

    too_many = await sim.post(
        "/v3/contacts/lists/10/contacts/add", json={"extIds": [f"u{i}" for i in range(151)]}
    )
    assert_brevo_error(too_many, 400, "out_of_range")
    two_kinds = await sim.post(
        "/v3/contacts/lists/10/contacts/add", json={"extIds": ["u1"], "emails": ["c@example.org"]}
    )
    assert_brevo_error(two_kinds, 400, "invalid_parameter")
    assert_brevo_error(
        await sim.post("/v3/contacts/lists/10/contacts/add", json={"all": True}), 400, "missing_parameter"
    )
    assert_brevo_error(await sim.post("/v3/contacts/lists/99/contacts/add", json={"extIds": ["u1"]}), 404)

    everyone = await sim.post("/v3/contacts/lists/10/contacts/remove", json={"all": True})
    assert everyone.status == 201 and everyone.body["contacts"]["total"] == 2
    assert (await sim.received())["lists"]["10"] == []


# ---------------------------------------------------------------------------------------------- orders


async def test_single_order(sim: Sim) -> None:
    assert (await sim.post("/v3/orders/status", json=order())).status == 204
    assert (await sim.received())["orders"] == [{**order(), "historical": False}]


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        ({"id": None}, "missing_parameter"),
        ({"products": None}, "missing_parameter"),
        ({"createdAt": "2025-03-01 16:59:23"}, "invalid_parameter"),
        ({"updatedAt": "2025-03-01T16:59:23+01:00"}, "invalid_parameter"),
        ({"amount": "59.8"}, "invalid_parameter"),
        ({"products": [{"productId": "A1", "price": 1}]}, "missing_parameter"),
        ({"products": [{"productId": "A1", "price": 1, "quantity": 1.5}]}, "invalid_parameter"),
        ({"identifiers": {"user_id": "u1"}}, "invalid_parameter"),
    ],
)
async def test_invalid_order_gets_400_shape(sim: Sim, mutation: dict[str, Any], code: str) -> None:
    body = {k: v for k, v in {**order(), **mutation}.items() if v is not None}
    assert_brevo_error(await sim.post("/v3/orders/status", json=body), 400, code)
    batch = await sim.post("/v3/orders/status/batch", json={"orders": [order("ok"), body]})
    assert_brevo_error(batch, 400, code)
    assert "orders[1]" in batch.body["message"]
    assert (await sim.received())["orders"] == []


async def test_order_batch(sim: Sim) -> None:
    orders = [
        order(f"o{i}", products=[{"productId": "B", "price": 2, "quantityFloat": 0.5}]) for i in range(3)
    ]
    reply = await sim.post(
        "/v3/orders/status/batch", json={"orders": orders, "notifyUrl": "https://example.org/n"}
    )
    assert reply.status == 202 and reply.body["count"] == 3 and isinstance(reply.body["batchId"], int)
    live = await sim.post("/v3/orders/status/batch", json={"orders": [order("live")], "historical": False})
    assert live.status == 202
    stored = (await sim.received())["orders"]
    assert [(o["id"], o["historical"]) for o in stored] == [
        ("o0", True),
        ("o1", True),
        ("o2", True),
        ("live", False),
    ]
    too_many = await sim.post("/v3/orders/status/batch", json={"orders": [order()] * 1001})
    assert_brevo_error(too_many, 400, "out_of_range")
    assert_brevo_error(await sim.post("/v3/orders/status/batch", json={}), 400, "missing_parameter")


# ---------------------------------------------------------------------------------------------- faults


async def test_error_rate_injects_all_statuses_and_stores_nothing(start_sim) -> None:
    sim = await start_sim(faults=BrevoFaults(error_rate=1.0, seed=7))
    replies = [await sim.post("/v3/events", json=event()) for _ in range(40)]
    assert {r.status for r in replies} == {500, 502, 503, 429}
    for reply in replies:
        assert isinstance(reply.body["code"], str) and isinstance(reply.body["message"], str)
        if reply.status == 429:
            assert reply.headers["x-sib-ratelimit-remaining"] == "0"
            assert int(reply.headers["x-sib-ratelimit-reset"]) >= 1
        else:
            assert reply.body["code"] == "internal_error"
    dump = await sim.received()
    assert dump["events"] == [] and dump["injected"] == 40 and dump["rate_limited"] == 0


async def test_faults_are_reproducible_with_a_seed(start_sim) -> None:
    runs = []
    for _ in range(2):
        sim = await start_sim(faults=BrevoFaults(error_rate=0.5, seed=42))
        runs.append([(await sim.post("/v3/events", json=event())).status for _ in range(20)])
    assert runs[0] == runs[1]
    assert 204 in runs[0] and set(runs[0]) - {204}


async def test_reset_rate_closes_connection(start_sim) -> None:
    sim = await start_sim(faults=BrevoFaults(reset_rate=1.0))
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.post("/v3/events", json=event())
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.post("/v3/orders/status", json=order())
    dump = await sim.received()
    assert dump["events"] == [] and dump["orders"] == [] and dump["resets"] == 2
    sim.state.faults.reset_rate = 0.0
    assert (await sim.post("/v3/events", json=event())).status == 204


async def test_outage_window_then_recovery(start_sim, clock) -> None:
    sim = await start_sim(clock=clock)
    control = await sim.post("/_sandbox/brevo/faults", json={"outage_seconds": 30})
    assert control.status == 200 and control.body["outage_until"] == clock.now + 30
    down = await sim.post("/v3/events", json=event())
    assert_brevo_error(down, 503)
    assert (await sim.get("/v3/contacts/attributes")).status == 503
    clock.advance(29.9)
    assert (await sim.post("/v3/events", json=event())).status == 503
    clock.advance(0.1)
    assert (await sim.post("/v3/events", json=event())).status == 204
    assert len((await sim.received())["events"]) == 1


async def test_not_found_fault_answers_404_pages_on_every_path_for_n_requests(sim: Sim) -> None:
    control = await sim.post("/_sandbox/brevo/faults", json={"not_found_requests": 3})
    assert control.status == 200 and control.body["not_found_requests"] == 3
    for method, path, body in (("POST", "/v3/events", event()), ("POST", "/v3/events/batch", {"events": [event()]}),
                               ("GET", "/v3/contacts/attributes", None)):
        reply = await sim.call(method, path, json=body)
        assert reply.status == 404 and b"<h1>404 Not Found</h1>" in reply.body, "a proxy's page, not Brevo's JSON"
        assert not set(RL_HEADERS) & set(reply.headers)
    assert (await sim.post("/v3/events", json=event())).status == 204
    assert len((await sim.received())["events"]) == 1
    assert_brevo_error(await sim.post("/_sandbox/brevo/faults", json={"not_found_requests": -1}), 400)


async def test_not_found_fault_for_n_seconds(start_sim, clock) -> None:
    sim = await start_sim(clock=clock)
    control = await sim.post("/_sandbox/brevo/faults", json={"not_found_seconds": 40})
    assert control.body["not_found_until"] == clock.now + 40
    assert (await sim.post("/v3/events", json=event())).status == 404
    clock.advance(39.9)
    assert (await sim.post("/v3/events/batch", json={"events": [event()]})).status == 404
    clock.advance(0.1)
    assert (await sim.post("/v3/events", json=event())).status == 204


@pytest.mark.parametrize(
    ("bucket", "limit", "shared"), [("other", "100", False), ("events", "10", True)]
)
async def test_events_batch_bucket_layouts(start_sim, bucket: str, limit: str, shared: bool) -> None:
    sim = await start_sim(limits=None, events_batch_bucket=bucket)
    assert sim.state.bucket_for("POST", "/v3/events/batch") == bucket
    single = await sim.post("/v3/events", json=event())
    batch = await sim.post("/v3/events/batch", json={"events": [event()]})
    assert single.headers["x-sib-ratelimit-limit"] == "10" and single.headers["x-sib-ratelimit-remaining"] == "9"
    assert batch.status == 202 and batch.headers["x-sib-ratelimit-limit"] == limit
    if shared:  # one window for both paths: 10 a second
        assert batch.headers["x-sib-ratelimit-remaining"] == "8"
        assert int(batch.headers["x-sib-ratelimit-reset"]) <= 1
    else:  # the "all other endpoints" window: 100 an hour
        assert batch.headers["x-sib-ratelimit-remaining"] == "99"
        assert 3500 < int(batch.headers["x-sib-ratelimit-reset"]) <= 3600
    assert (await sim.received())["requests"] == ({"events": 2} if shared else {"events": 1, "other": 1})


def test_events_batch_bucket_must_be_known() -> None:
    with pytest.raises(ValueError, match="events_batch_bucket"):
        make_brevo_app(api_key=KEY, events_batch_bucket="contacts")


def test_sandbox_flag_picks_the_events_batch_bucket() -> None:
    import argparse

    from amplitude_brevo.sandbox.server import Sandbox, add_sandbox_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_sandbox_arguments(parser)
    assert options_from_args(parser.parse_args([])).brevo_events_batch_bucket == "other"
    options = options_from_args(parser.parse_args(["--events-batch-bucket", "events"]))
    assert Sandbox(options).brevo_app[BREVO_STATE].bucket_for("POST", "/v3/events/batch") == "events"
    with pytest.raises(SystemExit):
        parser.parse_args(["--events-batch-bucket", "nope"])


def test_sandbox_flag_starts_with_ecommerce_inactive() -> None:
    import argparse

    from amplitude_brevo.sandbox.server import Sandbox, add_sandbox_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_sandbox_arguments(parser)
    assert Sandbox(options_from_args(parser.parse_args([]))).brevo_app[BREVO_STATE].ecommerce_active is True
    options = options_from_args(parser.parse_args(["--ecommerce-inactive"]))
    assert Sandbox(options).brevo_app[BREVO_STATE].ecommerce_active is False


async def test_latency_is_added(start_sim) -> None:
    sim = await start_sim(faults=BrevoFaults(latency=0.2))
    started = time.monotonic()
    assert (await sim.post("/v3/events", json=event())).status == 204
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    await sim.received()  # control endpoints are not slowed down
    assert time.monotonic() - started < 0.2


async def test_fault_control_endpoint(sim: Sim) -> None:
    reply = await sim.post(
        "/_sandbox/brevo/faults", json={"error_rate": 1.0, "error_statuses": [502], "seed": 3}
    )
    assert reply.body["error_statuses"] == [502] and reply.body["seed"] == 3
    assert (await sim.post("/v3/events", json=event())).status == 502
    assert_brevo_error(await sim.post("/_sandbox/brevo/faults", json={"error_rate": 2}), 400)
    assert_brevo_error(await sim.post("/_sandbox/brevo/faults", json={"bogus": 1}), 400)
    await sim.post("/_sandbox/brevo/faults", json={"error_rate": 0})
    assert (await sim.post("/v3/events", json=event())).status == 204


# ---------------------------------------------------------------------------------------------- dump & reset


async def test_dump_reflects_accepted_items_only(sim: Sim) -> None:
    await sim.post("/v3/events", json=event("good"))
    await sim.post("/v3/events", json=event("bad name"))
    await sim.post("/v3/orders/status", json=order("good"))
    await sim.post("/v3/orders/status", json=order("bad", amount="x"))
    await sim.post("/v3/contacts", json={"ext_id": "u1", "listIds": [11]})
    await sim.post("/v3/contacts", json={"email": "bad"})
    dump = await sim.received()
    assert [e["event_name"] for e in dump["events"]] == ["good"]
    assert [o["id"] for o in dump["orders"]] == ["good"]
    assert [c["attributes"]["EXT_ID"] for c in dump["contacts"]] == ["u1"]
    assert dump["lists"] == {"10": [], "11": ["u1"], "12": [], "13": []}
    assert dump["rejected"] == 3
    assert dump["statuses"] == {"204": 2, "400": 3, "201": 1}
    assert dump["requests"] == {"events": 2, "orders": 2, "contacts": 2}
    # the in-process state is the same object the dump is built from
    assert sim.state.events[0]["event_name"] == "good"

    assert (await sim.post("/_sandbox/brevo/reset")).status == 204
    dump = await sim.received()
    assert dump["events"] == dump["orders"] == dump["contacts"] == []
    assert dump["requests"] == {} and dump["rejected"] == 0


async def test_received_count_counts_what_the_dump_lists(start_sim) -> None:
    sim = await start_sim(limits={"events": BucketLimit(3, 3600), "other": BucketLimit(10_000, 3600)})
    await sim.post("/v3/events", json=event("good"))
    await sim.post("/v3/events", json=event("bad name"))
    await sim.post("/v3/events", json=event("good"))
    assert (await sim.post("/v3/events", json=event("good"))).status == 429
    await sim.post("/v3/events/batch", json={"events": [event("other"), event("good"), event("bad name")]})
    await sim.post("/v3/orders/status", json=order("o1"))
    await sim.post("/v3/contacts", json={"ext_id": "u1", "listIds": [11]})
    await sim.post("/v3/contacts", json={"email": "c@example.org", "listIds": [11, 12]})
    counts = await sim.counts()
    assert counts == {
        "events": 4, "event_names": {"good": 3, "other": 1}, "orders": 1, "contacts": 2,
        "lists": {"10": 0, "11": 2, "12": 1, "13": 0}, "processes": 0,
        "requests": {"events": 4, "other": 1, "orders": 1, "contacts": 2},
        "statuses": {"204": 3, "400": 1, "429": 1, "207": 1, "201": 2},
        "rejected": 1, "rate_limited": 1, "injected": 0, "resets": 0,
        "contact_writes": {"created": 2, "updated": 0, "unchanged": 0}, "orders_updated": 0,
        "ecommerce_active": True, "ecommerce_activations": 0,
    }
    dump = await sim.received()
    assert counts["events"] == len(dump["events"]) and counts["contacts"] == len(dump["contacts"])
    assert counts["lists"] == {lid: len(members) for lid, members in dump["lists"].items()}
    shared = ("requests", "statuses", "rejected", "rate_limited", "injected", "resets", "contact_writes",
              "orders_updated", "ecommerce_active", "ecommerce_activations")
    assert {k: dump[k] for k in shared} == {k: counts[k] for k in shared}
    assert (await sim.post("/_sandbox/brevo/reset")).status == 204
    assert (await sim.counts())["events"] == 0


# ---------------------------------------------------------------------------------------------- contacts: field reports


async def ext(sim: Sim, ext_id: str) -> Reply:
    return await sim.get(f"/v3/contacts/{ext_id}", params={"identifierType": "ext_id"})


async def two_contacts(sim: Sim) -> tuple[int, int]:
    a = await sim.post("/v3/contacts", json={"ext_id": "u1", "email": "a@example.org",
                                             "attributes": {"SMS": "+33611111111"}})
    b = await sim.post("/v3/contacts", json={"ext_id": "u2", "email": "b@example.org",
                                             "attributes": {"SMS": "+33622222222"}})
    assert a.status == b.status == 201
    return a.body["id"], b.body["id"]


async def test_batch_unknown_contacts_fail_the_whole_call_listing_every_index(sim: Sim) -> None:
    ids = [(await sim.post("/v3/contacts", json={"ext_id": f"u{i}"})).body["id"] for i in range(3)]
    items = [{"id": cid, "attributes": {"PLAN": "pro"}} for cid in ids]
    items += [{"email": "ghost@example.org", "attributes": {"PLAN": "pro"}}, {"id": 999, "attributes": {"PLAN": "x"}}]
    reply = await sim.post("/v3/contacts/batch", json={"contacts": items})
    assert_brevo_error(reply, 404, "document_not_found")
    assert reply.body["message"] == "No contact found for indexes 3,4"
    assert all("PLAN" not in c["attributes"] for c in (await sim.received())["contacts"])  # nothing applied
    assert (await sim.counts())["contact_writes"] == {"created": 3, "updated": 0, "unchanged": 0}
    middle = await sim.post("/v3/contacts/batch", json={"contacts": [items[0], items[3], items[1]]})
    assert middle.status == 404 and middle.body["message"] == "No contact found for indexes 1"
    # retried without the unknown ones, the rest goes through
    assert (await sim.post("/v3/contacts/batch", json={"contacts": items[:3]})).status == 204
    assert all(c["attributes"]["PLAN"] == "pro" for c in (await sim.received())["contacts"])


async def test_batch_identifier_held_by_another_contact_is_a_duplicate_naming_it(sim: Sim) -> None:
    a, b = await two_contacts(sim)
    cases = [
        ({"id": a, "attributes": {"EMAIL": "B@example.org", "PLAN": "pro"}}, ["email"]),
        ({"id": a, "ext_id": "u2", "attributes": {"PLAN": "pro"}}, ["ext_id"]),
        ({"id": a, "attributes": {"SMS": "0033622222222"}}, ["sms"]),
        ({"email": "a@example.org", "ext_id": "u2", "attributes": {"EMAIL": "b@example.org"}}, ["email", "ext_id"]),
    ]
    for item, kinds in cases:
        reply = await sim.post("/v3/contacts/batch", json={"contacts": [{"id": b, "attributes": {"PLAN": "x"}}, item]})
        assert_brevo_error(reply, 400, "duplicate_parameter")
        assert reply.body["metadata"] == {"duplicate_identifiers": kinds}, item
        assert "already associated with another Contact" in reply.body["message"]
    # two items of one call giving the same new email to two contacts
    clash = await sim.post("/v3/contacts/batch", json={"contacts": [
        {"id": a, "attributes": {"EMAIL": "new@example.org"}}, {"id": b, "attributes": {"EMAIL": "new@example.org"}}]})
    assert_brevo_error(clash, 400, "duplicate_parameter")
    assert clash.body["metadata"] == {"duplicate_identifiers": ["email"]}
    dump = await sim.received()
    assert {c["email"] for c in dump["contacts"]} == {"a@example.org", "b@example.org"}
    assert all("PLAN" not in c["attributes"] for c in dump["contacts"])
    # a contact's own identifiers are no conflict
    own = await sim.post("/v3/contacts/batch", json={"contacts": [
        {"id": a, "ext_id": "u1", "attributes": {"EMAIL": "a@example.org", "SMS": "+33611111111", "PLAN": "pro"}}]})
    assert own.status == 204


async def test_post_and_put_contacts_duplicate_identifiers(sim: Sim) -> None:
    await two_contacts(sim)
    for update_enabled in (True, False):
        reply = await sim.post("/v3/contacts", json={"ext_id": "u1", "email": "b@example.org",
                                                     "updateEnabled": update_enabled})
        assert_brevo_error(reply, 400, "duplicate_parameter")
        assert reply.body["metadata"] == {"duplicate_identifiers": ["email"]}
        assert reply.body["message"] == "Unable to update contact, email is already associated with another Contact"
    exists = await sim.post("/v3/contacts", json={"ext_id": "u1", "email": "a@example.org"})
    assert_brevo_error(exists, 400, "duplicate_parameter")
    assert "metadata" not in exists.body  # the contact itself exists: no other contact involved
    put = await sim.call("PUT", "/v3/contacts/u1", params={"identifierType": "ext_id"}, json={"ext_id": "u2"})
    assert_brevo_error(put, 400, "duplicate_parameter")
    assert put.body["metadata"] == {"duplicate_identifiers": ["ext_id"]}
    put = await sim.call("PUT", "/v3/contacts/a@example.org", json={"attributes": {"SMS": "+33622222222"}})
    assert put.body["metadata"] == {"duplicate_identifiers": ["sms"]}
    assert (await ext(sim, "u1")).body["email"] == "a@example.org"
    assert (await sim.counts())["contact_writes"] == {"created": 2, "updated": 0, "unchanged": 0}


async def test_upsert_matched_by_ext_id_takes_the_new_email(sim: Sim) -> None:
    created = await sim.post("/v3/contacts", json={"ext_id": "u1", "email": "old@example.org", "updateEnabled": True})
    assert created.status == 201 and isinstance(created.body["id"], int)
    moved = await sim.post("/v3/contacts", json={"ext_id": "u1", "email": "new@example.org", "updateEnabled": True,
                                                 "attributes": {"PLAN": "pro"}})
    assert moved.status == 204 and moved.body is None
    contacts = (await sim.received())["contacts"]
    assert [(c["id"], c["email"], c["ext_id"]) for c in contacts] == [(created.body["id"], "new@example.org", "u1")]
    assert_brevo_error(await sim.get("/v3/contacts/old@example.org"), 404)
    assert (await sim.get("/v3/contacts/new@example.org")).body["attributes"]["PLAN"] == "pro"
    # the old address is free again
    assert (await sim.post("/v3/contacts", json={"email": "old@example.org"})).status == 201


@pytest.mark.parametrize(
    "email", ["bad@@example.com", "ana..garcia@example.com", ".ana@example.com", "ana@exa_mple.com", "ana@example",
              "ana@-example.com", "ana @example.com", "ana@example.c"],
)
async def test_invalid_email_is_refused_everywhere(sim: Sim, email: str) -> None:
    cid = (await sim.post("/v3/contacts", json={"ext_id": "u1"})).body["id"]
    for reply in (
        await sim.post("/v3/contacts", json={"ext_id": "u2", "email": email}),
        await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": {"EMAIL": email}, "updateEnabled": True}),
        await sim.call("PUT", f"/v3/contacts/{cid}", json={"attributes": {"EMAIL": email}}),
        await sim.post("/v3/contacts/batch", json={"contacts": [{"id": cid, "attributes": {"EMAIL": email}}]}),
    ):
        assert_brevo_error(reply, 400, "invalid_parameter")
        assert reply.body["message"].endswith("Invalid email address")
    assert [c["email"] for c in (await sim.received())["contacts"]] == [None]
    # events and orders check an email_id only for its shape
    shaped = "@" in email and email.count("@") == 1 and " " not in email and "." in email.split("@")[1]
    reply = await sim.post("/v3/events", json=event(identifiers={"ext_id": "u1", "email_id": email}))
    assert reply.status == (204 if shaped else 400)


async def test_valid_emails_are_accepted(sim: Sim) -> None:
    for email in ("Ana.Garcia+news@Example.COM", "o'brien_7@mail.example.co.uk", "x-y@a-b.io"):
        reply = await sim.post("/v3/contacts", json={"email": email})
        assert reply.status == 201, (email, reply.body)
    assert (await sim.get("/v3/contacts/ana.garcia+news@example.com")).status == 200


@pytest.mark.parametrize("value", ["31/02/2024", "2024-02-31", "soon", "2025-03-01T10:00:00Z", 20250301, True])
async def test_date_attribute_not_yyyy_mm_dd_is_400(sim: Sim, value: Any) -> None:
    cid = (await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": {"SIGNUP_DATE": "2025-03-01"}})).body["id"]
    bad = {"SIGNUP_DATE": value, "PLAN": "pro"}
    for reply in (
        await sim.post("/v3/contacts", json={"ext_id": "u2", "attributes": bad}),
        await sim.post("/v3/contacts", json={"ext_id": "u1", "attributes": bad, "updateEnabled": True}),
        await sim.call("PUT", f"/v3/contacts/{cid}", json={"attributes": bad}),
        await sim.post("/v3/contacts/batch", json={"contacts": [{"id": cid, "attributes": bad}]}),
    ):
        assert_brevo_error(reply, 400, "invalid_parameter")
        assert reply.body["message"].endswith("Invalid date format for attribute SIGNUP_DATE")
    [contact] = (await sim.received())["contacts"]
    assert contact["attributes"] == {"SIGNUP_DATE": "2025-03-01", "EXT_ID": "u1"}
    # import drops the value and keeps the row
    imported = await sim.post("/v3/contacts/import", json={"jsonBody": [{"attributes": {"EXT_ID": "u3", **bad}}],
                                                           "listIds": [13]})
    assert imported.status == 202
    assert (await ext(sim, "u3")).body["attributes"] == {"PLAN": "pro", "EXT_ID": "u3"}


async def test_contact_writes_are_counted_created_updated_unchanged(sim: Sim) -> None:
    async def writes() -> dict[str, int]:
        counts, dump = await sim.counts(), await sim.received()
        assert counts["contact_writes"] == dump["contact_writes"]
        return counts["contact_writes"]

    body = {"ext_id": "u1", "email": "a@example.org", "attributes": {"PLAN": "pro", "LTV": 12.5}, "updateEnabled": True}
    assert (await sim.post("/v3/contacts", json=body)).status == 201
    assert (await sim.post("/v3/contacts", json=body)).status == 204
    assert await writes() == {"created": 1, "updated": 0, "unchanged": 1}
    assert (await sim.post("/v3/contacts", json={**body, "attributes": {"LTV": 13}})).status == 204
    assert await writes() == {"created": 1, "updated": 1, "unchanged": 1}
    put = {"attributes": {"LTV": 13}}
    assert (await sim.call("PUT", "/v3/contacts/a@example.org", json=put)).status == 204  # unchanged
    assert (await sim.call("PUT", "/v3/contacts/a@example.org", json={"listIds": [10]})).status == 204  # updated
    assert await writes() == {"created": 1, "updated": 2, "unchanged": 2}
    cid = (await sim.post("/v3/contacts", json={"ext_id": "u2"})).body["id"]
    batch = {"contacts": [{"email": "a@example.org", "attributes": {"LTV": 13}}, {"id": cid, "attributes": {"PLAN": "free"}}]}
    assert (await sim.post("/v3/contacts/batch", json=batch)).status == 204
    assert await writes() == {"created": 2, "updated": 3, "unchanged": 3}
    rows = [{"attributes": {"EXT_ID": "u2", "PLAN": "free"}}, {"attributes": {"EXT_ID": "u1", "PLAN": "starter"}},
            {"email": "c@example.org", "attributes": {}}, {"email": "bad@@example.org", "attributes": {}}]
    assert (await sim.post("/v3/contacts/import", json={"jsonBody": rows, "listIds": [10]})).status == 202
    # u2 joins list 10 (updated), u1 changes plan (updated), c is created, the invalid row is no write
    assert await writes() == {"created": 3, "updated": 5, "unchanged": 3}
    again = [{"attributes": {"EXT_ID": "u2", "PLAN": "free"}}, {"attributes": {"EXT_ID": "u1", "PLAN": "starter"}}]
    assert (await sim.post("/v3/contacts/import", json={"jsonBody": again, "listIds": [10]})).status == 202
    assert await writes() == {"created": 3, "updated": 5, "unchanged": 5}
    # refused calls write nothing
    await sim.post("/v3/contacts/batch", json={"contacts": [{"id": 999}]})
    await sim.post("/v3/contacts", json={"ext_id": "u9", "attributes": {"SIGNUP_DATE": "soon"}})
    assert await writes() == {"created": 3, "updated": 5, "unchanged": 5}
    contacts = {c["ext_id"]: c for c in (await sim.received())["contacts"]}
    assert contacts["u1"]["email"] == "a@example.org" and contacts["u1"]["listIds"] == [10]
    assert contacts["u1"]["attributes"] == {"PLAN": "starter", "LTV": 13, "EXT_ID": "u1"}
    assert contacts[None]["email"] == "c@example.org" and contacts["u2"]["email"] is None
    assert {"id", "email", "ext_id", "attributes", "listIds"} <= contacts["u2"].keys()
    assert (await sim.post("/_sandbox/brevo/reset")).status == 204
    assert await writes() == {"created": 0, "updated": 0, "unchanged": 0}


# ---------------------------------------------------------------------------------------------- imports: reports, polling


async def test_import_reports_invalid_emails_in_a_csv_the_sandbox_serves(sim: Sim) -> None:
    await two_contacts(sim)
    rows = [
        {"email": "ok@example.org", "attributes": {"EXT_ID": "u3"}},
        {"email": "bad@@example", "attributes": {"EXT_ID": "u4"}},
        {"attributes": {"EXT_ID": "u5", "PLAN": "pro"}},  # ext_id only
        {"email": "Ana..G@example.com", "attributes": {"EXT_ID": "u6"}},
        {"email": "b@example.org", "attributes": {"EXT_ID": "u1"}},  # u1's row, b@'s email: two contacts
    ]
    reply = await sim.post("/v3/contacts/import", json={"jsonBody": rows, "listIds": [13]})
    assert reply.status == 202
    process = (await sim.get(f"/v3/processes/{reply.body['processId']}")).body
    assert process["status"] == "completed"
    report = process["info"]["import"]
    base = f"http://127.0.0.1:{sim.server.port}/_sandbox/brevo/processes/{process['id']}"
    assert report["invalid_emails"] == f"{base}/invalid_emails.csv"
    assert report["duplicate_email_id"] == f"{base}/duplicate_email_id.csv"
    assert {k for k, v in report.items() if v is None} == {
        "duplicate_contact_id", "duplicate_ext_id", "duplicate_phone_id", "duplicate_whatsapp_id",
        "duplicate_landline_number_id"}
    async with aiohttp.ClientSession() as plain:  # a plain GET on the URL, as a daemon would fetch it
        async with plain.get(report["invalid_emails"]) as resp:
            assert resp.status == 200 and resp.content_type == "text/csv"
            assert await resp.text() == "email\nbad@@example\nAna..G@example.com\n"
        async with plain.get(report["duplicate_email_id"]) as resp:
            assert await resp.text() == "email\nb@example.org\n"
        async with plain.get(f"{base}/duplicate_ext_id.csv") as resp:
            assert resp.status == 404
    assert process["info"]["sandbox"] == {"created": 2, "updated": 0, "unchanged": 0, "skipped": 0, "invalid": 2,
                                          "duplicates": 1}
    u5 = (await ext(sim, "u5")).body
    assert "email" not in u5 and u5["attributes"] == {"PLAN": "pro", "EXT_ID": "u5"} and u5["listIds"] == [13]
    assert (await ext(sim, "u1")).body["email"] == "a@example.org"  # the duplicate row was not applied
    assert_brevo_error(await ext(sim, "u4"), 404)
    clean = await sim.post("/v3/contacts/import", json={"jsonBody": [{"email": "z@example.org"}], "listIds": [13]})
    clean_report = (await sim.get(f"/v3/processes/{clean.body['processId']}")).body["info"]["import"]
    assert set(clean_report.values()) == {None}


async def test_import_delay_polls_reports_in_process_first(sim: Sim) -> None:
    assert (await sim.post("/_sandbox/brevo/faults", json={"import_delay_polls": 2})).body["import_delay_polls"] == 2
    pid = (await sim.post("/v3/contacts/import", json={"jsonBody": [{"email": "a@example.org"}],
                                                       "listIds": [13]})).body["processId"]
    listed = (await sim.get("/v3/processes")).body["processes"]
    assert [p["status"] for p in listed] == ["in_process"]  # listing does not spend a poll
    statuses = [(await sim.get(f"/v3/processes/{pid}")).body for _ in range(3)]
    assert [p["status"] for p in statuses] == ["in_process", "in_process", "completed"]
    assert "info" not in statuses[0] and statuses[2]["info"]["import"]["invalid_emails"] is None
    assert (await sim.get(f"/v3/processes/{pid}")).body["status"] == "completed"
    assert (await sim.counts())["requests"]["other"] == 5  # /processes spends the "other" bucket
    assert_brevo_error(await sim.post("/_sandbox/brevo/faults", json={"import_delay_polls": -1}), 400)


# ---------------------------------------------------------------------------------------------- orders: ids, eCommerce


async def test_orders_are_kept_by_id_a_resent_id_is_an_update(sim: Sim) -> None:
    assert (await sim.post("/v3/orders/status", json=order("o1"))).status == 204
    assert (await sim.post("/v3/orders/status", json=order("o1", amount=10.0))).status == 204
    batch = await sim.post("/v3/orders/status/batch", json={"orders": [order("o2"), order("o1", status="refunded")]})
    assert batch.status == 202 and batch.body["count"] == 2
    dump = await sim.received()
    assert [(o["id"], o["status"], o["amount"], o["historical"]) for o in dump["orders"]] == [
        ("o1", "refunded", 59.8, True), ("o2", "completed", 59.8, True)]
    counts = await sim.counts()
    assert counts["orders"] == 2 and counts["orders_updated"] == 2 == dump["orders_updated"]


async def test_get_orders_pages(sim: Sim) -> None:
    orders = [order(f"o{i:03d}") for i in range(120)]
    assert (await sim.post("/v3/orders/status/batch", json={"orders": orders})).status == 202
    first = await sim.get("/v3/orders")
    assert first.status == 200 and first.body["count"] == 120 and len(first.body["orders"]) == 50
    assert first.body["orders"][0]["id"] == "o119"  # newest first by default
    page = (await sim.get("/v3/orders", params={"limit": 100, "offset": 100, "sort": "asc"})).body
    assert [o["id"] for o in page["orders"]] == [f"o{i:03d}" for i in range(100, 120)]
    assert_brevo_error(await sim.get("/v3/orders", params={"limit": 101}), 400, "out_of_range")
    assert (await sim.counts())["requests"] == {"other": 4}


async def test_ecommerce_inactive_answers_403_until_activated(start_sim) -> None:
    sim = await start_sim(ecommerce_active=False)
    calls = [
        ("POST", "/v3/orders/status", order()),
        ("POST", "/v3/orders/status/batch", {"orders": [order()]}),
        ("GET", "/v3/orders", None),
        ("GET", "/v3/ecommerce/config/displayCurrency", None),
    ]
    for method, path, body in calls:
        reply = await sim.call(method, path, json=body)
        assert_brevo_error(reply, 403, "permission_denied")
        assert reply.body["message"] == (
            "eCommerce is not activated on this account. Activate it with POST /ecommerce/activate or in Brevo "
            "(Settings > eCommerce)")
    assert (await sim.received())["orders"] == [] and (await sim.counts())["ecommerce_active"] is False
    activate = await sim.call("POST", "/v3/ecommerce/activate")  # no body at all
    assert activate.status == 200
    assert (await sim.post("/v3/orders/status", json=order())).status == 204
    assert (await sim.get("/v3/ecommerce/config/displayCurrency")).body == {"code": "EUR"}
    assert (await sim.get("/v3/orders")).body["count"] == 1
    counts = await sim.counts()
    assert counts["ecommerce_active"] is True and counts["ecommerce_activations"] == 1
    assert counts["requests"] == {"orders": 2, "other": 6}
    # switched off at runtime, and back on reset
    assert (await sim.post("/_sandbox/brevo/ecommerce", json={"active": False})).body == {"active": False}
    assert_brevo_error(await sim.post("/v3/orders/status", json=order("o2")), 403, "permission_denied")
    assert (await sim.get("/_sandbox/brevo/ecommerce")).body == {"active": False}
    assert_brevo_error(await sim.post("/_sandbox/brevo/ecommerce", json={"active": "no"}), 400)
    assert (await sim.post("/_sandbox/brevo/ecommerce", json={"active": True})).body == {"active": True}
    assert (await sim.post("/v3/orders/status", json=order("o2"))).status == 204
    await sim.post("/_sandbox/brevo/reset")
    assert (await sim.get("/_sandbox/brevo/ecommerce")).body == {"active": False}


async def test_display_currency_can_be_set(sim: Sim) -> None:
    assert (await sim.post("/v3/ecommerce/config/displayCurrency", json={"code": "USD"})).body == {"code": "USD"}
    assert (await sim.get("/v3/ecommerce/config/displayCurrency")).body == {"code": "USD"}
    assert_brevo_error(await sim.post("/v3/ecommerce/config/displayCurrency", json={"code": "usd"}), 422)


async def test_orders_batch_drop_fault_loses_the_last_order_and_says_so_in_count(sim: Sim) -> None:
    assert (await sim.post("/_sandbox/brevo/faults", json={"orders_batch_drop": 1})).body["orders_batch_drop"] == 1
    short = await sim.post("/v3/orders/status/batch", json={"orders": [order("a"), order("b"), order("c")]})
    assert short.status == 202 and short.body["count"] == 2
    full = await sim.post("/v3/orders/status/batch", json={"orders": [order("d"), order("e")]})
    assert full.body["count"] == 2
    assert [o["id"] for o in (await sim.received())["orders"]] == ["a", "b", "d", "e"]
    assert_brevo_error(await sim.post("/_sandbox/brevo/faults", json={"orders_batch_drop": 1.5}), 400)
    invalid = await sim.post("/v3/orders/status/batch", json={
        "orders": [order("f"), order("g"), order("h"), order("i", amount="x")]})
    assert_brevo_error(invalid, 400, "invalid_parameter")
    assert invalid.body["message"].startswith("orders[3]: ")


async def test_orders_batch_may_get_a_window_of_its_own(start_sim) -> None:
    sim = await start_sim(limits=None)
    assert (await sim.post("/v3/orders/status/batch", json={"orders": [order()]})).headers[
        "x-sib-ratelimit-limit"] == "100"
    await sim.post("/_sandbox/brevo/limits", json={"orders_batch": {"requests": 200, "per": 3600}})
    reply = await sim.post("/v3/orders/status/batch", json={"orders": [order()]})
    assert reply.headers["x-sib-ratelimit-limit"] == "200" and reply.headers["x-sib-ratelimit-remaining"] == "199"
    assert (await sim.counts())["requests"] == {"other": 1, "orders_batch": 1}
