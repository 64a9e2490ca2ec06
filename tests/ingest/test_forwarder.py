"""Forwarding the spool to Amplitude (ingest/forwarder.py) against the sandbox's Amplitude ingest side, with a
real state file: events arrive unchanged but for `ip`, and Amplitude's answers are obeyed."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from amplitude_brevo.ingest.entries import encode_entry
from amplitude_brevo.ingest.forwarder import CHECKPOINT, AmplitudeForwarder
from amplitude_brevo.ingest.protocol import Accepted
from amplitude_brevo.retry import Backoff
from amplitude_brevo.sandbox.amplitude_ingest import AMPLITUDE_INGEST_STATE
from amplitude_brevo.sandbox.amplitude_sim import make_amplitude_app
from amplitude_brevo.sandbox.sample_data import DatasetSpec
from amplitude_brevo.secrets import Secret
from amplitude_brevo.state.checkpoints import number_key

KEY = "forward-amplitude-key"
SPEC = DatasetSpec(start=datetime(2026, 11, 1, tzinfo=UTC), hours=1, rows_per_hour=10, users=5)
FAST = Backoff(base=0.01, cap=0.05)


def event(user: str, n: int, **extra) -> dict:
    return {"event_type": "Page View", "user_id": user, "time": 1_793_491_180_000 + n, "insert_id": f"{user}-{n}",
            **extra}


async def spool(state, events: list[dict], *, caller: str = "203.0.113.7", kind: str = "batch") -> int:
    accepted = Accepted(kind, events, "fp", 100)
    (spool_id,) = await state.spool_append(kind, [encode_entry(accepted, caller=caller, received_at_ms=1)])
    return spool_id


@pytest.fixture
async def amplitude():
    app = make_amplitude_app(SPEC, api_key=KEY, secret_key="secret")
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        yield server, session, app[AMPLITUDE_INGEST_STATE]


def forwarder(state, amplitude, **kwargs) -> AmplitudeForwarder:
    server, session, _ = amplitude
    return AmplitudeForwarder(state=state, session=session, ingest_url=str(server.make_url("/")),
                              api_key=Secret(KEY), backoff=FAST, poll=0.02, **kwargs)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def running(fwd: AmplitudeForwarder):
    task = asyncio.create_task(fwd.run())
    await asyncio.sleep(0)
    return task


async def stopped(fwd: AmplitudeForwarder, task) -> None:
    fwd.stop()
    await asyncio.wait_for(task, 5)


async def test_events_arrive_unchanged_but_for_a_missing_or_remote_ip(state, amplitude):
    sent = [event("user-00001", 1, ip="$remote"), event("user-00001", 2), event("user-00002", 3, ip="198.51.100.9")]
    last = await spool(state, sent[:2])
    last = await spool(state, sent[2:], caller="192.0.2.1")
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    received = amplitude[2].events
    await until(lambda: len(received) == 3)
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    got = {e["insert_id"]: {k: v for k, v in e.items() if k not in ("kind", "caller")} for e in received}
    assert got["user-00001-1"] == {**sent[0], "ip": "203.0.113.7"}
    assert got["user-00001-2"] == {**sent[1], "ip": "203.0.113.7"}
    assert got["user-00002-3"] == sent[2], "an ip the app set is kept"
    assert {e["kind"] for e in received} == {"batch"}
    assert await state.get_checkpoint(CHECKPOINT) == number_key(last)


async def test_a_throttled_user_waits_and_the_others_keep_flowing(state, amplitude):
    server, session, sim = amplitude
    sim.faults.update({"throttle_users": ["user-00002"]})
    await spool(state, [event("user-00001", 1), event("user-00002", 2), event("user-00003", 3)])
    await spool(state, [event("user-00002", 4), event("user-00001", 5)])
    fwd = forwarder(state, amplitude, throttle_pause=0.3)
    task = await running(fwd)
    await until(lambda: {e["insert_id"] for e in sim.events} == {"user-00001-1", "user-00003-3", "user-00001-5"})
    assert await state.get_checkpoint(CHECKPOINT) is None, "the throttled user's events hold the checkpoint"
    sim.faults.update({"throttle_users": []})
    await until(lambda: len(sim.events) == 5)
    await until(lambda: fwd._written == 2)
    await stopped(fwd, task)
    assert sim.answers.get(429, 0) >= 1 and fwd.dead_lettered == 0


async def test_refused_and_over_quota_events_are_dead_lettered_alone(state, amplitude):
    _, _, sim = amplitude
    sim.faults.update({"invalid_event_types": ["Broken"], "quota_users": ["user-00009"]})
    last = await spool(state, [event("user-00001", 1), event("user-00001", 2, event_type="Broken"),
                               event("user-00009", 3), event("user-00003", 4)])
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    assert sorted(e["insert_id"] for e in sim.events) == ["user-00001-1", "user-00003-4"]
    letters = await state.list_dead_letters()
    reasons = {orjson.loads(letter.item)["insert_id"]: letter.reason for letter in letters}
    assert set(reasons) == {"user-00001-2", "user-00009-3"}
    assert "invalid_fields: event_type" in reasons["user-00001-2"]
    assert "daily quota" in reasons["user-00009-3"]


async def test_an_outage_and_server_errors_lose_nothing(state, amplitude):
    _, _, sim = amplitude
    sim.faults.update({"fail_next": 3, "fail_status": 503})
    ids = [await spool(state, [event(f"user-{u:05d}", n) for n in range(3)]) for u in range(4)]
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: len(sim.events) == 12)
    await until(lambda: fwd._written == ids[-1])
    sim.faults.update({"outage_seconds": 0.3})
    later = await spool(state, [event("user-00007", 9)])
    fwd.wake()
    await until(lambda: len(sim.events) == 13)
    await until(lambda: fwd._written == later)
    await stopped(fwd, task)
    assert sim.answers.get(503, 0) >= 4 and sim.duplicates == 0 and fwd.dead_lettered == 0


async def test_a_413_splits_the_request(state, amplitude):
    _, _, sim = amplitude
    sim.faults.update({"fail_next": 1, "fail_status": 413})
    last = await spool(state, [event("user-00001", n) for n in range(10)])
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    assert len(sim.events) == 10 and sim.answers[413] == 1 and sim.requests >= 3


async def test_identify_requests_are_forwarded(state, amplitude):
    _, _, sim = amplitude
    ident = [{"user_id": "user-00001", "user_properties": {"$set": {"plan": "pro"}}}]
    last = await spool(state, ident, kind="identify")
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: fwd._written == last)
    await stopped(fwd, task)
    assert [{k: v for k, v in i.items() if k != "caller"} for i in sim.identifies] == ident


async def test_a_restart_resumes_from_the_checkpoint(state, amplitude):
    _, _, sim = amplitude
    first = await spool(state, [event("user-00001", 1)])
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: fwd._written == first)
    await stopped(fwd, task)
    second = await spool(state, [event("user-00002", 2)])
    fwd = forwarder(state, amplitude)
    task = await running(fwd)
    await until(lambda: fwd._written == second)
    await stopped(fwd, task)
    assert [e["insert_id"] for e in sim.events] == ["user-00001-1", "user-00002-2"] and sim.requests == 2


async def test_a_wrong_api_key_drops_nothing(state, amplitude):
    server, session, sim = amplitude
    await spool(state, [event("user-00001", 1)])
    fwd = AmplitudeForwarder(state=state, session=session, ingest_url=str(server.make_url("/")),
                             api_key=Secret("not-the-key"), backoff=FAST, poll=0.02)
    task = await running(fwd)
    await until(lambda: sim.requests >= 2)
    await stopped(fwd, task)
    assert sim.events == [] and fwd.dead_lettered == 0 and await state.list_dead_letters() == []
    assert await state.get_checkpoint(CHECKPOINT) is None
