"""BrevoEventsSink against the Brevo simulator: batches, item errors, splitting, rate limits, 404 outages,
retries, dry runs, and what is settled when."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from amplitude_brevo.sandbox.brevo_sim import BrevoFaults, BucketLimit
from amplitude_brevo.sinks.brevo_events import BrevoEventsSink
from tests.sinks.support import Env, Limit, brevo_env, ids, items, payload, tracker


def sink_for(env: Env, **kwargs: Any) -> BrevoEventsSink:
    kwargs.setdefault("batch_size", 5)
    return BrevoEventsSink(queue=None, client=env.client, acks=env.acks, **kwargs)


async def test_202_delivers_everything_and_settles_each_item_once(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = sink_for(env, batch_size=5)
        batch = items(12)
        await sink.deliver(batch)
        assert ids(env.brevo.events) == Counter({f"key-{i}": 1 for i in range(12)})
        assert env.brevo.events[3] == payload(3), "sent as built"
        assert set(env.paths()) == {"/v3/events/batch"}
        assert sink.stats.delivered == 12 and sink.stats.dead_lettered == 0
        keys = [f"key-{i}" for i in range(12)]
        assert await env.delivered_keys(keys) == set(keys)
        env.acks.assert_each_settled_once()
        assert sorted(env.acks.keys()) == sorted("events:" + k for k in keys)
        assert all(refused == {} and sink_name == "brevo_events" for sink_name, _, refused in env.acks.settled)
        assert await env.state.list_dead_letters() == []
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"


async def test_batches_use_events_batch_and_a_lone_item_uses_events(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = sink_for(env, batch_size=5)
        await sink.deliver(items(11))  # 5, then 5 or 6 more as the size grows, and possibly one lone item
        assert env.paths()["/v3/events/batch"] == 2
        assert sink.stats.batch_requests == 2 and sink.stats.single_requests == env.paths()["/v3/events"]
        await sink.deliver(items(1, start=20))
        assert env.paths()["/v3/events/batch"] == 2 and env.paths()["/v3/events"] >= 1


async def test_207_partial_dead_letters_exactly_the_failed_items_with_brevos_message(tmp_path):
    faults = BrevoFaults(reject_ext_ids=frozenset({"user-3", "user-7"}))
    async with brevo_env(tmp_path, faults=faults) as env:
        sink = sink_for(env, batch_size=10)
        await sink.deliver(items(10, i5={"identifiers": {"ext_id": "user-5", "email_id": "not-an-email"}}))
        assert [s for _, _, s in env.log] == [207]
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(10)} - {"key-3", "key-5", "key-7"}
        letters = await env.state.list_dead_letters()
        assert [(orjson.loads(d.item)["event_properties"]["n"], d.reason) for d in letters] == [
            (3, "Brevo refused the event: contact user-3 cannot receive events"),
            (5, "Brevo refused the event: identifiers.email_id is invalid"),
            (7, "Brevo refused the event: contact user-7 cannot receive events"),
        ]
        assert all(d.sink == "brevo_events" and d.source == "export" for d in letters)
        assert sink.stats.delivered == 7 and sink.stats.dead_lettered == 3
        # Dead-lettered items are settled too: every item once, its key recorded.
        env.acks.assert_each_settled_once()
        assert len(env.acks.keys()) == 10
        assert await env.state.get_checkpoint("export.next_hour") == "20261101T01"


async def test_a_dead_letter_names_the_source_of_its_items_token(tmp_path):
    faults = BrevoFaults(reject_ext_ids=frozenset({"user-1", "user-4"}))
    async with brevo_env(tmp_path, faults=faults) as env:
        batch = items(3, tracker("ingest.spool", "ingest")) + items(3, start=3)
        await sink_for(env, batch_size=10).deliver(batch)
        letters = await env.state.list_dead_letters()
        assert [(d.source, orjson.loads(d.item)["event_properties"]["n"]) for d in letters] == [
            ("ingest", 1), ("export", 4)
        ]


async def test_400_all_failed_dead_letters_every_item_without_resending(tmp_path):
    faults = BrevoFaults(reject_ext_ids=frozenset(f"user-{i}" for i in range(4)))
    async with brevo_env(tmp_path, faults=faults) as env:
        await sink_for(env, batch_size=4).deliver(items(4))
        assert [(p, s) for _, p, s in env.log] == [("/v3/events/batch", 400)]
        assert env.brevo.events == []
        letters = await env.state.list_dead_letters()
        assert [d.reason for d in letters] == [
            f"Brevo refused the event: contact user-{i} cannot receive events" for i in range(4)
        ]


async def test_a_refused_request_without_item_detail_is_split_to_isolate_the_cause(tmp_path):
    async with brevo_env(tmp_path, events_batch_max=3) as env:  # "at most 3 events per batch": no eventIndex
        sink = sink_for(env, batch_size=8)
        await sink.deliver(items(8))
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(8)}
        assert max(ids(env.brevo.events).values()) == 1
        statuses = [s for _, p, s in env.log if p == "/v3/events/batch"]
        assert statuses[0] == 400 and statuses.count(202) >= 2
        assert await env.state.list_dead_letters() == []
        assert sink.sizer.current <= 3, "the size Brevo refused is not tried again"


async def test_an_invalid_lone_item_is_dead_lettered_with_the_events_answer(tmp_path):
    async with brevo_env(tmp_path) as env:
        await sink_for(env, batch_size=5).deliver(items(1, i0={"event_name": "bad name"}))
        assert [(p, s) for _, p, s in env.log] == [("/v3/events", 400)]
        (letter,) = await env.state.list_dead_letters()
        assert letter.reason == "Brevo refused the event: HTTP 400 invalid_parameter: event_name is invalid"


async def test_a_207_without_item_detail_is_not_resent(tmp_path):
    async with brevo_env(tmp_path, batch_status=207, batch_body={"status": "partial"}) as env:
        with capture_logs() as logs:
            await sink_for(env, batch_size=5).deliver(items(5))
        assert env.paths() == {"/v3/events/batch": 1}, "resending would duplicate the accepted events"
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["brevo.batch.partial_without_detail"]
        assert await env.delivered_keys([f"key-{i}" for i in range(5)]) == {f"key-{i}" for i in range(5)}


async def test_batch_size_doubles_while_brevo_accepts_and_shrinks_below_a_refused_size(tmp_path):
    sizes: list[int] = []

    async def count(request: web.Request) -> None:
        if request.path == "/v3/events/batch":
            sizes.append(len(orjson.loads(await request.read())["events"]))

    async with brevo_env(tmp_path, events_batch_max=300, hold=count) as env:
        sink = sink_for(env, batch_size=50)
        for n in range(4):
            await sink.deliver(items(1000, start=1000 * n))
        statuses = [s for _, p, s in env.log if p == "/v3/events/batch"]
        assert sizes[:4] == [50, 100, 200, 400], "one request at a time tries a new size, doubling"
        assert sizes[4:6] == [200, 200], "400 was refused without detail: split in halves"
        refused = [n for n, status in zip(sizes, statuses, strict=True) if status == 400]
        assert all(n > 300 for n in refused) and len(refused) <= 4, refused
        assert max(n for n, status in zip(sizes, statuses, strict=True) if status == 202) == 300
        assert sink.sizer.current == 300, "halfway between accepted (200) and refused (400) and then kept"
        assert len(env.brevo.events) == 4000 and max(ids(env.brevo.events).values()) == 1
        assert await env.state.list_dead_letters() == []


async def test_batch_size_grows_to_the_maximum(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = sink_for(env, batch_size=100)
        for n in range(3):
            await sink.deliver(items(1000, start=1000 * n))
        assert sink.sizer.current == 1000
        assert sink.stats.batch_requests == 7, "100, 200, 400 and the 300 left; 800 and 200; 1000"
        assert len(env.brevo.events) == 3000


async def test_a_spent_hourly_batch_window_sends_singles_instead_of_waiting(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(1000, 1.0), "events_batch": BucketLimit(1, 3600)},
                         budgets={"brevo_events_batch": Limit(1, 3600)}) as env:
        sink = sink_for(env, batch_size=5)
        started = time.monotonic()
        await sink.deliver(items(15))
        assert time.monotonic() - started < 5
        assert env.paths() == {"/v3/events/batch": 1, "/v3/events": 10}
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(15)}
        assert env.brevo.rate_limited == 0, "the answer's remaining=0 said so: no 429 needed"


async def test_an_hourly_configured_batch_budget_learns_brevos_per_second_window(tmp_path):
    # The plan's table puts /events/batch at 100 an hour; this Brevo counts it with /events, 10 a second.
    async with brevo_env(tmp_path, limits={"events": BucketLimit(1000, 1.0)}, events_batch_bucket="events",
                         budgets={"brevo_events_batch": Limit(2, 3600)}) as env:
        sink = sink_for(env, batch_size=5)
        with capture_logs() as logs:
            await sink.deliver(items(40))
        assert env.paths() == {"/v3/events/batch": sink.stats.batch_requests} and sink.stats.batch_requests > 2
        assert sink.stats.single_requests == 0, "not exploded into 100x the requests"
        learned = [(e["budget"], e["requests"], e["per"]) for e in logs if e["event"] == "brevo.budget.learned"]
        assert learned == [("brevo_events_batch", 1000, 1.0)]


async def test_a_429_with_a_short_reset_resends_the_batch_after_the_reset(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(1000, 1.0), "events_batch": BucketLimit(2, 1.0)}) as env:
        window = env.brevo.windows["events_batch"]
        for _ in range(2):  # someone else spent this second's allowance
            window.take(env.brevo.clock())
        sink = sink_for(env, batch_size=10)
        await sink.deliver(items(10))
        (t429, p1, s1), (t_next, p2, s2) = env.log
        assert (p1, s1, p2, s2) == ("/v3/events/batch", 429, "/v3/events/batch", 202), "the batch, not 10 singles"
        assert t_next - t429 >= 1 - 0.05, "the simulator's x-sib-ratelimit-reset: whole seconds, at least 1"
        assert env.client.rate_limited_total == 1
        assert ids(env.brevo.events) == {f"key-{i}": 1 for i in range(10)}


async def test_429_waits_at_least_the_reset_before_the_next_request_on_that_budget(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(3, 1.0)}) as env:
        window = env.brevo.windows["events"]
        for _ in range(3):  # someone else spent this second's allowance
            window.take(env.brevo.clock())
        await sink_for(env, batch_size=1).deliver(items(1))
        (t429, _, s1), (t_next, _, s2) = env.log
        assert (s1, s2) == (429, 204)
        assert t_next - t429 >= 1 - 0.05
        assert ids(env.brevo.events) == {"key-0": 1}


async def test_remaining_zero_pauses_the_budget_without_a_429(tmp_path):
    async with brevo_env(tmp_path, limits={"events": BucketLimit(2, 1.0)}) as env:
        await sink_for(env, batch_size=1, concurrency=1).deliver(items(5))
        assert env.brevo.rate_limited == 0
        assert [s for _, _, s in env.log] == [204] * 5
        times = [t for t, _, _ in env.log]
        # Paced evenly (2 a second, one every 0.5 s), and a spent window waited out: never 3 in one window.
        assert all(times[i + 2] - times[i] >= 0.85 for i in range(3)), "each spent window is waited out"
        assert times[4] - times[0] < 2.5, "and not more: the pause ends with the window, not a second later"
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(5)}


async def test_injected_5xx_and_connection_resets_are_retried_until_delivered_once(tmp_path):
    faults = BrevoFaults(error_rate=0.4, error_statuses=(500, 502, 503), reset_rate=0.2, seed=11)
    async with brevo_env(tmp_path, faults=faults) as env:
        sink = sink_for(env, batch_size=4)
        await sink.deliver(items(30))
        counts = ids(env.brevo.events)
        assert set(counts) == {f"key-{i}" for i in range(30)} and max(counts.values()) == 1
        assert env.brevo.injected > 0 and env.brevo.resets > 0
        assert any(status >= 500 for _, _, status in env.log)
        assert await env.state.list_dead_letters() == []
        assert sink.stats.delivered == 30


@pytest.mark.parametrize("batch_size", [5, 1], ids=["events-batch", "events"])
async def test_brevo_answering_404_everywhere_is_an_outage_not_a_verdict(tmp_path, batch_size):
    health_seen: list[bool] = []

    async def watch(request: web.Request) -> None:
        health_seen.append(env_ref[0].health.healthy)

    env_ref: list[Env] = []
    async with brevo_env(tmp_path, faults=BrevoFaults(not_found_requests=8), hold=watch) as env:
        env_ref.append(env)
        with capture_logs() as logs:
            await sink_for(env, batch_size=batch_size).deliver(items(12))
        statuses = [s for _, _, s in env.log]
        assert statuses[:8] == [404] * 8 and set(statuses[8:]) <= {202, 204}
        assert await env.state.list_dead_letters() == [], "nothing dead-lettered"
        assert set(ids(env.brevo.events)) == {f"key-{i}" for i in range(12)}, "everything delivered after"
        assert health_seen[0] is True and health_seen[8] is False, "readiness failed while Brevo answered 404"
        assert env.health.healthy, "and recovered with the first answer"
        failing = [e for e in logs if e["event"] == "health.failing"]
        assert failing and failing[0]["check"].startswith("brevo /events")
        assert "connectors.brevo.api_url" in failing[0]["hint"]
        assert any(e["event"] == "health.recovered" for e in logs)


async def test_dry_run_sends_nothing_and_settles_in_memory_only(tmp_path):
    async with brevo_env(tmp_path) as env:
        sink = sink_for(env, dry_run=True)
        batch = items(6)
        with capture_logs() as logs:
            await sink.deliver(batch)
        assert env.log == [] and env.brevo.events == []
        assert sink.stats.would_send == 6 and sink.stats.delivered == 0
        assert [e["would_send"] for e in logs if e["event"] == "brevo.dry_run.event"] == [payload(i) for i in range(6)]
        assert env.acks.dry == [("brevo_events", batch)] and env.acks.settled == []
        assert batch[0].token.tracker.last_value == "20261101T01", "the in-memory cursor moves: a dry backfill ends"
        assert await env.delivered_keys([f"key-{i}" for i in range(6)]) == set()
        assert await env.state.checkpoints() == {}


async def test_a_batch_cancelled_mid_way_records_what_brevo_already_has(tmp_path):
    # The batch window allows one request an hour: chunk 1 goes to /events/batch, the rest to /events, where
    # the simulator's window allows 3 requests in 30 s; the others wait for it.
    async with brevo_env(tmp_path, limits={"events": BucketLimit(3, 30.0), "events_batch": BucketLimit(1, 3600)},
                         budgets={"brevo_events_batch": Limit(1, 3600)}) as env:
        task = asyncio.create_task(sink_for(env, batch_size=5).deliver(items(10)))
        async with asyncio.timeout(10):
            while len(env.acks.keys()) < 5 + 3:
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        arrived = set(ids(env.brevo.events))
        assert len(arrived) == 5 + 3
        assert await env.delivered_keys([f"key-{i}" for i in range(10)]) == arrived
        assert sorted(env.acks.keys()) == sorted("events:" + k for k in arrived)
        assert await env.state.get_checkpoint("export.next_hour") is None, "two items are still outstanding"


async def test_each_request_is_recorded_when_answered_not_when_the_whole_batch_is(tmp_path):
    # The record is what stops a re-send after kill -9: a chunk Brevo accepted must not wait unrecorded for
    # the batch's other requests (which the budgets may pace over seconds).
    release = asyncio.Event()

    async def hold(request: web.Request) -> None:
        if b'"key-5"' in await request.read():
            await release.wait()

    async with brevo_env(tmp_path, hold=hold) as env:
        task = asyncio.create_task(sink_for(env, batch_size=5).deliver(items(10)))
        first = [f"key-{i}" for i in range(5)]
        try:
            async with asyncio.timeout(10):
                while await env.delivered_keys(first) != set(first):
                    await asyncio.sleep(0.01)
            assert not task.done() and sorted(env.acks.keys()) == sorted("events:" + k for k in first)
        finally:
            release.set()
        await task
        assert await env.delivered_keys([f"key-{i}" for i in range(10)]) == {f"key-{i}" for i in range(10)}


async def test_batch_and_single_bodies_are_the_events_bytes_joined_not_re_encoded(tmp_path):
    sent: list[tuple[str, bytes]] = []

    async def capture(request: web.Request) -> None:
        sent.append((request.path, await request.read()))

    async with brevo_env(tmp_path, hold=capture) as env:
        batch = items(3)
        # an event whose bytes differ from a re-encoding of its dict: sent as it is
        odd = b'{"event_name":"x","identifiers":{"ext_id":"u"},"event_properties":{"n":1.50}}'
        token = batch[0].token
        token.tracker.add(token.position, 1)
        batch.append(type(batch[0])("events:key-3", odd, token))
        await sink_for(env, batch_size=10).deliver(batch)
        await sink_for(env, batch_size=1).deliver(items(1, start=9))
    (path, body), (single_path, single) = sent
    assert path == "/v3/events/batch"
    assert body == b'{"events":[' + b",".join(i.body for i in batch) + b"]}"
    assert orjson.loads(body)["events"][:3] == [payload(i) for i in range(3)]
    assert (single_path, single) == ("/v3/events", orjson.dumps(payload(9)))
