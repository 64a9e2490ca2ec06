"""Loopback simulator of Amplitude's ingest APIs: HTTP V2 (`POST /2/httpapi`), Batch (`POST /batch`), Identify
and Group Identify (`POST|GET /identify`, `/groupidentify`), mounted on the Amplitude simulator's app.

Requests are validated by the same protocol module the daemon's own endpoint uses (`ingest/protocol.py`), so
the sandbox refuses what Amplitude refuses, with Amplitude's status and body. What it accepts is recorded as
sent (not normalised) with the caller's address, and Amplitude's dedupe by `insert_id` is counted apart.

Faults, for the forwarder's tests (`POST /_sandbox/amplitude/ingest/faults`, fields of `IngestFaults`):

* `outage_seconds`: every ingest request answers 503 for that long (from the POST);
* `fail_next` / `fail_status`: the next N requests answer that status (500, 502, 503, 504, 413);
* `throttle_users` / `throttle_devices`: a request holding one of their events is refused whole with
  Amplitude's 429, naming them in `throttled_users` / `throttled_devices` and their events' indexes in
  `throttled_events` (nothing of such a request is ingested: §2);
* `quota_users`: the same 429, the users under `exceeded_daily_quota_users`;
* `throttle_all_next`: the next N requests get a 429 that names nobody (project-level throttle);
* `invalid_event_types`: events of these types are refused as invalid (`events_with_invalid_fields`).

`GET /_sandbox/amplitude/ingest` shows what was received; `DELETE` forgets it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from ..ingest.api_keys import KeyRing
from ..ingest.bodies import BadBody, BodyTooLarge, read_body
from ..ingest.protocol import (
    EPS_THRESHOLD,
    INVALID_FIELDS,
    MAX_BODY_BYTES,
    THROTTLED,
    Accepted,
    Answer,
    bad_request,
    parse_events,
    parse_identify,
    success,
    too_large,
)

__all__ = ["AMPLITUDE_INGEST_STATE", "IngestFaults", "IngestSimState", "setup_ingest_routes"]

_FAILURE_STATUSES = frozenset({413, 500, 502, 503, 504})


@dataclass
class IngestFaults:
    outage_seconds: float = 0.0
    fail_next: int = 0
    fail_status: int = 503
    throttle_users: set[str] = field(default_factory=set)
    throttle_devices: set[str] = field(default_factory=set)
    quota_users: set[str] = field(default_factory=set)
    throttle_all_next: int = 0
    invalid_event_types: set[str] = field(default_factory=set)
    _outage_until: float = 0.0  # monotonic time the outage ends

    def update(self, data: dict[str, Any]) -> None:
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown ingest faults: {sorted(unknown)}")
        for name, value in data.items():
            if name in ("throttle_users", "throttle_devices", "quota_users", "invalid_event_types"):
                setattr(self, name, {str(v) for v in value or ()})
            elif name in ("fail_next", "throttle_all_next", "fail_status"):
                setattr(self, name, int(value))
            else:
                setattr(self, name, float(value))
        if self.fail_status not in _FAILURE_STATUSES:
            raise ValueError(f"fail_status must be one of {sorted(_FAILURE_STATUSES)}")
        if "outage_seconds" in data:
            self._outage_until = time.monotonic() + self.outage_seconds

    def in_outage(self) -> bool:
        return time.monotonic() < self._outage_until

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            out[f.name] = sorted(value) if isinstance(value, set) else value
        out["in_outage"] = self.in_outage()
        return out


@dataclass
class IngestSimState:
    keys: KeyRing
    faults: IngestFaults = field(default_factory=IngestFaults)
    events: list[dict[str, Any]] = field(default_factory=list)  # as sent, with "kind" and "caller" added
    identifies: list[dict[str, Any]] = field(default_factory=list)
    group_identifies: list[dict[str, Any]] = field(default_factory=list)
    insert_ids: set[str] = field(default_factory=set)  # Amplitude's dedupe: an insert_id ingested once
    duplicates: int = 0  # events whose insert_id was ingested before (Amplitude drops them)
    requests: int = 0
    answers: dict[int, int] = field(default_factory=dict)  # status → count

    def to_json(self) -> dict[str, Any]:
        return {
            "events": self.events, "identifies": self.identifies, "group_identifies": self.group_identifies,
            "count": len(self.events), "unique": len(self.insert_ids), "duplicates": self.duplicates,
            "requests": self.requests, "answers": {str(k): v for k, v in sorted(self.answers.items())},
        }

    def clear(self) -> None:
        self.events.clear()
        self.identifies.clear()
        self.group_identifies.clear()
        self.insert_ids.clear()
        self.duplicates = self.requests = 0
        self.answers.clear()


AMPLITUDE_INGEST_STATE = web.AppKey("amplitude_ingest_state", IngestSimState)


def _respond(state: IngestSimState, answer: Answer) -> web.Response:
    state.answers[answer.status] = state.answers.get(answer.status, 0) + 1
    if isinstance(answer.body, str):
        return web.Response(status=answer.status, text=answer.body)
    return web.Response(status=answer.status, body=orjson.dumps(answer.body), content_type="application/json")


def _injected(faults: IngestFaults) -> Answer | None:
    """The answer a request-wide fault gives, if one is on."""
    if faults.in_outage():
        return Answer(503, {"code": 503, "error": "Service unavailable (sandbox outage)"})
    if faults.fail_next > 0:
        faults.fail_next -= 1
        status = faults.fail_status
        if status == 413:
            return too_large()
        return Answer(status, {"code": status, "error": f"sandbox fault {status}"})
    if faults.throttle_all_next > 0:
        faults.throttle_all_next -= 1
        return _throttled([], {}, {}, {})
    return None


def _throttled(indexes: list[int], users: dict[str, int], devices: dict[str, int],
               quota: dict[str, int]) -> Answer:
    return Answer(429, {
        "code": 429, "error": THROTTLED, "eps_threshold": EPS_THRESHOLD, "throttled_devices": devices,
        "throttled_users": users, "throttled_events": indexes, "exceeded_daily_quota_users": quota,
        "exceeded_daily_quota_devices": {},
    })


def _event_faults(faults: IngestFaults, events: list[dict[str, Any]]) -> Answer | None:
    """A 400 for the events of `invalid_event_types`; else a 429 for the throttled and over-quota users and
    devices (the request is refused whole: §2)."""
    invalid = [i for i, e in enumerate(events) if e.get("event_type") in faults.invalid_event_types]
    if invalid:
        return bad_request(INVALID_FIELDS, events_with_invalid_fields={"event_type": invalid})
    indexes: list[int] = []
    users: dict[str, int] = {}
    devices: dict[str, int] = {}
    quota: dict[str, int] = {}
    for i, event in enumerate(events):
        user, device = event.get("user_id"), event.get("device_id")
        if user in faults.quota_users:
            quota[user] = quota.get(user, 500_000) + 1
        elif user in faults.throttle_users:
            users[user] = users.get(user, EPS_THRESHOLD) + 1
        elif device in faults.throttle_devices:
            devices[device] = devices.get(device, EPS_THRESHOLD) + 1
        else:
            continue
        indexes.append(i)
    return _throttled(indexes, users, devices, quota) if indexes else None


async def _body(request: web.Request) -> bytes | Answer:
    """The request body, inflated and within Amplitude's limit, or the answer to a body that is not."""
    try:
        return await read_body(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        return too_large()
    except BadBody as exc:
        return bad_request(f"Invalid request body: {exc}")


async def _events(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_INGEST_STATE]
    state.requests += 1
    kind = "batch" if request.path == "/batch" else "httpapi"
    body = await _body(request)
    if isinstance(body, Answer):
        return _respond(state, body)
    injected = _injected(state.faults)
    if injected is not None:
        return _respond(state, injected)
    parsed = parse_events(body, state.keys, kind=kind)
    if not isinstance(parsed, Accepted):
        return _respond(state, parsed)
    sent = orjson.loads(body)["events"]  # recorded as sent, not as normalised
    refused = _event_faults(state.faults, sent)
    if refused is not None:
        return _respond(state, refused)
    caller = request.remote
    for event in sent:
        insert_id = event.get("insert_id")
        if insert_id is not None and insert_id in state.insert_ids:
            state.duplicates += 1
            continue
        if insert_id is not None:
            state.insert_ids.add(insert_id)
        state.events.append({**event, "kind": kind, "caller": caller})
    return _respond(state, success(parsed, int(time.time() * 1000)))


async def _identify(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_INGEST_STATE]
    state.requests += 1
    group = request.path == "/groupidentify"
    if request.method == "GET":
        form = dict(request.query)
        size = len(request.query_string)
    else:
        body = await _body(request)
        if isinstance(body, Answer):
            return _respond(state, body)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        size = len(body)
    injected = _injected(state.faults)
    if injected is not None:
        return _respond(state, injected)
    parsed = parse_identify(form, state.keys, payload_size_bytes=size, group=group)
    if not isinstance(parsed, Accepted):
        return _respond(state, parsed)
    sent = orjson.loads(form["identification"])
    items = [sent] if isinstance(sent, dict) else sent
    (state.group_identifies if group else state.identifies).extend(
        {**item, "caller": request.remote} for item in items)
    return _respond(state, success(parsed, int(time.time() * 1000)))


async def _get_ingested(request: web.Request) -> web.Response:
    return web.json_response(request.app[AMPLITUDE_INGEST_STATE].to_json(), dumps=lambda v: orjson.dumps(v).decode())


async def _clear_ingested(request: web.Request) -> web.Response:
    request.app[AMPLITUDE_INGEST_STATE].clear()
    return web.json_response({})


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[AMPLITUDE_INGEST_STATE].faults.to_json())


async def _post_faults(request: web.Request) -> web.Response:
    state = request.app[AMPLITUDE_INGEST_STATE]
    try:
        data = await request.json(loads=orjson.loads)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.pop("reset", False):
            state.faults = IngestFaults()
        state.faults.update(data)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.faults.to_json())


def setup_ingest_routes(app: web.Application, *, api_key: str, faults: IngestFaults | None = None) -> IngestSimState:
    """Mount the ingest endpoints and their `/_sandbox/amplitude/ingest…` control routes on `app`."""
    state = IngestSimState(keys=KeyRing([api_key]), faults=faults if faults is not None else IngestFaults())
    app[AMPLITUDE_INGEST_STATE] = state
    app.router.add_post("/2/httpapi", _events)
    app.router.add_post("/batch", _events)
    for path in ("/identify", "/groupidentify"):
        app.router.add_post(path, _identify)
        app.router.add_get(path, _identify)
    app.router.add_get("/_sandbox/amplitude/ingest", _get_ingested)
    app.router.add_delete("/_sandbox/amplitude/ingest", _clear_ingested)
    app.router.add_get("/_sandbox/amplitude/ingest/faults", _get_faults)
    app.router.add_post("/_sandbox/amplitude/ingest/faults", _post_faults)
    return state
